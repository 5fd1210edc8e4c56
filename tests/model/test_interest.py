"""Interest discovery: k-means, DPC-KNN and interest-token construction."""

from __future__ import annotations

import pytest
import torch

from modeling_missrec import dpc_knn, interest_tokens, kmeans
from modeling_missrec.interest_missrec import assign_to_nearest


def planted_clusters(num_clusters: int = 6, per_cluster: int = 50, dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_clusters, dim, generator=generator) * 10
    truth = torch.arange(num_clusters).repeat_interleave(per_cluster)
    x = centres[truth] + torch.randn(len(truth), dim, generator=generator)
    order = torch.randperm(len(truth), generator=generator)
    return x[order], truth[order]


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when the two labelings group the points identically (up to renaming)."""
    return torch.equal(a[:, None] == a[None], b[:, None] == b[None])


@pytest.mark.parametrize("seed", range(4))
def test_kmeans_recovers_planted_clusters(seed):
    x, truth = planted_clusters(seed=seed)
    result = kmeans(x, 6, seed=seed)
    assert same_partition(result.labels, truth)
    # Each centroid equals the mean of its members.
    for k in range(6):
        assert torch.allclose(result.centroids[k], x[result.labels == k].mean(0), atol=1e-4)
    assert result.inertia == pytest.approx(float(((x - result.centroids[result.labels]) ** 2).sum()), rel=1e-4)


def test_kmeans_is_deterministic_and_seeded():
    x, _ = planted_clusters(num_clusters=20, per_cluster=10)
    a, b = kmeans(x, 12, seed=1), kmeans(x, 12, seed=1)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)


def test_kmeans_never_leaves_a_cluster_empty():
    # Mostly duplicated points: random seeds coincide, so clusters start empty and must be re-seeded.
    x = torch.cat([torch.zeros(50, 2), torch.randn(10, 2, generator=torch.Generator().manual_seed(0)) + 5])
    result = kmeans(x, 6, init="random", seed=0)
    assert torch.bincount(result.labels, minlength=6).min() >= 1


def exact_greedy_seeding(x: torch.Tensor, num_clusters: int, trials: int) -> dict[frozenset, float]:
    """Probability of every seed set of greedy k-means++, by enumerating all draws: the first seed uniform, then
    for each seed `trials` independent D^2 draws of which the one leaving the lowest potential is kept."""
    import itertools

    sq = torch.cdist(x.double(), x.double()).square()
    n, out = len(x), {}

    def grow(chosen: list[int], closest: torch.Tensor, prob: float) -> None:
        if len(chosen) == num_clusters:
            key = frozenset(chosen)
            out[key] = out.get(key, 0.0) + prob
            return
        p = closest / closest.sum()
        for draws in itertools.product(range(n), repeat=trials):
            weight = float(torch.prod(p[list(draws)]))
            if weight > 0:
                best = min(draws, key=lambda c: float(torch.minimum(closest, sq[c]).sum()))  # first of ties
                grow([*chosen, best], torch.minimum(closest, sq[best]), prob * weight)

    for first in range(n):
        grow([first], sq[first], 1.0 / n)
    return out


def test_kmeans_plus_plus_candidates_are_exact_d2_draws():
    """Candidates come from pools drawn before the latest seeds were added; rejection sampling must make each an
    exact draw from the current D^2 distribution. The seed sets of many seeded runs follow the enumerated law
    (stale draws, accepting every pool vector not yet at distance zero, are ~0.25 away in total variation)."""
    from modeling_missrec.interest_missrec import _kmeans_plus_plus

    x = torch.tensor([[0.0, 0.0], [0.2, 0.1], [0.1, 0.3], [10.0, 0.0], [10.3, 0.2], [3.0, 0.5]])
    expected = exact_greedy_seeding(x, 3, trials=2)  # 6 vectors for 3 seeds: 2 trials per seed
    runs = 3000
    counts: dict[frozenset, int] = {}
    for seed in range(runs):
        seeds = _kmeans_plus_plus(x, 3, torch.Generator().manual_seed(seed))
        key = frozenset(seeds.tolist())
        assert len(key) == 3
        counts[key] = counts.get(key, 0) + 1
    total_variation = 0.5 * sum(abs(counts.get(k, 0) / runs - expected.get(k, 0.0)) for k in expected | counts)
    assert total_variation < 0.08  # 0.03 with this code: the sampling noise of 3000 runs


def test_kmeans_plus_plus_with_fewer_distinct_vectors_than_seeds():
    """Once every vector coincides with a seed the potential is zero; seeding still ends with distinct vectors."""
    from modeling_missrec.interest_missrec import _kmeans_plus_plus

    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).repeat(4, 1)
    seeds = _kmeans_plus_plus(x, 5, torch.Generator().manual_seed(0))
    assert len(set(seeds.tolist())) == 5
    assert len({tuple(v) for v in x[seeds].tolist()}) == 3
    result = kmeans(x, 5, seed=0)
    assert result.labels.min() >= 0 and result.labels.max() <= 4
    assert result.inertia == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_plus_plus_never_draws_a_seed_twice(seed):
    """Copies of a vector are distinct seeds, and a seed's own rounding-level distance to itself (the matmul gives
    +-1e-3 here, not 0) must not let it be drawn again."""
    from modeling_missrec.interest_missrec import _kmeans_plus_plus

    x = (torch.randn(10, 300, generator=torch.Generator().manual_seed(seed)) * 3 + 3).repeat(5, 1)
    seeds = _kmeans_plus_plus(x, 20, torch.Generator().manual_seed(seed))
    assert len(set(seeds.tolist())) == 20


def test_one_step_kmeans_matches_a_single_lloyd_update():
    x, _ = planted_clusters()
    one = kmeans(x, 6, init="random", max_iter=1, seed=5)
    seeds = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(5))[:6]]
    labels, _ = assign_to_nearest(x, seeds)
    expected = torch.stack([x[labels == k].mean(0) for k in range(6)])
    assert one.n_iter == 1
    assert torch.allclose(one.centroids, expected, atol=1e-5)


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_lloyd_with_bounds_equals_plain_lloyd(iterations):
    """The Hamerly bounds only skip work: after each number of iterations the labels and centroids are those of
    plain Lloyd (assign every vector, then average), and the inertia is the exact sum over the vectors."""
    from modeling_missrec.interest_missrec import _lloyd

    x, _ = planted_clusters(num_clusters=12, per_cluster=40, dim=16, seed=3)
    x = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4)) * 10  # overlapping clusters
    start = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(2))[:12]].clone()
    labels, _ = assign_to_nearest(x, start)
    for _ in range(iterations):
        centroids = torch.stack([x[labels == k].mean(0) for k in range(12)])
        labels, _ = assign_to_nearest(x, centroids)
    result = _lloyd(x, start, max_iter=iterations, tol=0.0)
    assert result.n_iter == iterations
    assert torch.equal(result.labels, labels)
    torch.testing.assert_close(result.centroids, centroids, atol=1e-5, rtol=0)
    assert result.inertia == pytest.approx(float((x - centroids[labels]).square().sum()), rel=1e-5)


def test_dpc_knn_recovers_planted_clusters():
    x, truth = planted_clusters(num_clusters=5, per_cluster=40)
    result = dpc_knn(x, 5, local_size=10)
    assert same_partition(result.labels, truth)
    assert result.labels.max() == 4


def test_dpc_knn_chunked_equals_unchunked(monkeypatch):
    import modeling_missrec.interest_missrec as interest

    x, _ = planted_clusters(num_clusters=4, per_cluster=30)
    full = dpc_knn(x, 4, local_size=5)
    monkeypatch.setattr(interest, "_BLOCK_FLOATS", 7 * len(x))  # 7-row chunks
    chunked = dpc_knn(x, 4, local_size=5)
    assert torch.equal(full.labels, chunked.labels)


def reference_tokens(ids: torch.Tensor) -> list[list[int]]:
    return [sorted(set(row.tolist()) - {0}) for row in ids]


@pytest.mark.parametrize("rows", [17, 1])  # a batch, and one row (a single request: a path of its own)
@pytest.mark.parametrize("seed", range(5))
def test_interest_tokens_equal_a_reference_set_construction(seed, rows):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 9, (rows, 23), generator=generator)
    ids[rows // 5] = 0  # a row with no interest at all
    ids[-1, :3] = 0  # and one with some padding
    tokens, counts = interest_tokens(ids, return_counts=True)
    expected = reference_tokens(ids)
    assert counts == [len(r) for r in expected]
    assert torch.equal(interest_tokens(ids), tokens)
    assert tokens.shape == (rows, max(1, max(len(r) for r in expected)))
    for row, want in zip(tokens.tolist(), expected):
        assert row[: len(want)] == want
        assert all(v == 0 for v in row[len(want) :])


def test_interest_tokens_of_a_single_row_are_its_distinct_ids():
    ids = torch.tensor([[7, 0, 3, 7, 3, 12]])
    assert interest_tokens(ids).tolist() == [[3, 7, 12]]


@pytest.mark.parametrize("rows", [3, 1])
def test_interest_tokens_of_only_padding_is_one_empty_column(rows):
    tokens, counts = interest_tokens(torch.zeros(rows, 5, dtype=torch.long), return_counts=True)
    assert torch.equal(tokens, torch.zeros(rows, 1, dtype=torch.long))
    assert counts == [0] * rows


@pytest.mark.parametrize(
    ("x", "k", "message"),
    [
        (torch.randn(10), 2, "expected a \\[N, d\\] matrix"),
        (torch.randn(10, 3), 0, "num_clusters=0"),
        (torch.randn(10, 3), 11, "num_clusters=11"),
        (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1, "NaN or Inf"),
    ],
)
def test_clustering_rejects_bad_input(x, k, message):
    with pytest.raises(ValueError, match=message):
        kmeans(x, k)
    with pytest.raises(ValueError, match=message):
        dpc_knn(x, k, local_size=1)
