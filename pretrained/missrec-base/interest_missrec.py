"""Multi-modal interest discovery: k-means, DPC-KNN and interest-token construction.

Everything here is plain torch, seeded and deterministic, and runs on whatever device its inputs are on.
Pairwise work is chunked so memory stays O(chunk * K) (k-means) or O(chunk * N) (DPC-KNN), never O(N^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Upper bound on the floats of one [chunk, K] distance block (16 MiB in float32).
_BLOCK_FLOATS = 1 << 22
# Floats of one chunk of element-wise work (1 MiB in float32), small enough that its temporaries stay in cache.
_CACHE_FLOATS = 1 << 18


@dataclass
class ClusteringResult:
    """Output of [`kmeans`] and [`dpc_knn`].

    Attributes:
        labels: `[N]` long, cluster index of every vector, in `0..K-1`.
        centroids: `[K, d]`, mean of each cluster's members.
        inertia: sum of squared euclidean distances of the vectors to their centroid.
        n_iter: Lloyd iterations run (1 for DPC-KNN).
    """

    labels: torch.Tensor
    centroids: torch.Tensor
    inertia: float
    n_iter: int


def _chunk_size(num_rows: int, num_cols: int, budget: int | None = None) -> int:
    """Rows per chunk so that a `[rows, num_cols]` block holds at most `budget` floats (`_BLOCK_FLOATS`), or
    one row when a single row is already larger."""
    return max(1, min(num_rows, (_BLOCK_FLOATS if budget is None else budget) // max(num_cols, 1)))


def _check_vectors(x: torch.Tensor, num_clusters: int) -> None:
    if x.ndim != 2:
        raise ValueError(f"expected a [N, d] matrix of vectors, got shape {tuple(x.shape)}")
    if not 1 <= num_clusters <= x.shape[0]:
        raise ValueError(f"num_clusters={num_clusters} must be in [1, N={x.shape[0]}]")
    if not torch.isfinite(x).all():
        raise ValueError("the vectors to cluster contain NaN or Inf")


def assign_to_nearest(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every vector, in chunks.

    Args:
        x: `[N, d]` vectors.
        centroids: `[K, d]`.

    Returns:
        `labels` `[N]` long and `sq_dist` `[N]`, the squared euclidean distance to that centroid.
    """
    c_sq = centroids.square().sum(1)
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    sq_dist = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    step = _chunk_size(x.shape[0], centroids.shape[0])
    for start in range(0, x.shape[0], step):
        block = x[start : start + step]
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 does not change the argmin, so it is added afterwards.
        dist = torch.addmm(c_sq, block, centroids.T, beta=1.0, alpha=-2.0)
        best, idx = dist.min(1)
        labels[start : start + step] = idx
        sq_dist[start : start + step] = (best + block.square().sum(1)).clamp_min_(0)
    return labels, sq_dist


def _nearest_two(
    x: torch.Tensor, centroids: torch.Tensor, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest centroid, its squared distance, and the distance (not squared) to the second nearest, of the
    vectors `x[rows]` (all of `x` when `rows` is None; gathered chunk by chunk): `[len(rows)]` each."""
    c_sq = centroids.square().sum(1)
    n, k = (x.shape[0] if rows is None else rows.numel()), centroids.shape[0]
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    sq_dist = torch.empty(n, dtype=x.dtype, device=x.device)
    second = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
    step = _chunk_size(n, k)
    for start in range(0, n, step):
        block = x[start : start + step] if rows is None else x[rows[start : start + step]]
        dist = torch.addmm(c_sq, block, centroids.T, beta=1.0, alpha=-2.0)
        values, idx = dist.topk(min(2, k), dim=1, largest=False)
        values = (values + block.square().sum(1, keepdim=True)).clamp_min_(0)
        labels[start : start + step] = idx[:, 0]
        sq_dist[start : start + step] = values[:, 0]
        if k > 1:
            second[start : start + step] = values[:, 1].sqrt()
    return labels, sq_dist, second


def _own_sq_distances(
    x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared distance of the vectors `x[rows]` (all when `rows` is None) to their own centroid
    `centroids[labels]`, `labels` being `[N]`: `[len(rows)]`, in chunks."""
    n = x.shape[0] if rows is None else rows.numel()
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    step = _chunk_size(n, x.shape[1], _CACHE_FLOATS)
    for start in range(0, n, step):
        index = slice(start, start + step) if rows is None else rows[start : start + step]
        out[start : start + step] = (x[index] - centroids[labels[index]]).square().sum(1)
    return out


def _cluster_sums(x: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum `[K, d]` and count `[K]` of the vectors of each cluster."""
    sums = x.new_zeros(num_clusters, x.shape[1]).index_add_(0, labels, x)
    return sums, torch.bincount(labels, minlength=num_clusters)


def _mean_and_spread(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mean `[d]` (float64) of the vectors and the sum of their squared distances to it (distances of the
    centred vectors: no cancellation), chunk by chunk."""
    mean = x.sum(0).double() / x.shape[0]
    step, centre = _chunk_size(x.shape[0], x.shape[1], _CACHE_FLOATS), mean.to(x.dtype)
    norms = [torch.linalg.vector_norm(x[i : i + step] - centre, dim=1) for i in range(0, x.shape[0], step)]
    return mean, float(torch.cat(norms).double().square().sum())


def _cluster_means(x: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    sums, counts = _cluster_sums(x, labels, num_clusters)
    return sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype), counts


def seeding_sample_size(num_vectors: int, num_clusters: int) -> int:
    """Vectors the k-means++ seeding of [`kmeans`] looks at by default: `min(N, max(2K, 8192))`, which keeps
    seeding cost independent of N."""
    return min(num_vectors, max(2 * num_clusters, 8192))


def seeding_trials(sample_size: int, num_clusters: int) -> int:
    """Candidates per seed of greedy k-means++: `2 + ln K`, or 2 when the sample holds fewer than 4 vectors per
    seed (D^2 draws then already land in distinct regions, and the trials would cost several Lloyd passes)."""
    return 2 + int(math.log(num_clusters)) if sample_size >= 4 * num_clusters else 2


def warm_start_size(num_clusters: int) -> int:
    """Vectors of [`kmeans`]'s warm-start phase: `max(16K, 32768)`, used only when it is at most N / 3 (below that
    the sample saves less than its own iterations cost)."""
    return max(16 * num_clusters, 32768)


def _kmeans_plus_plus(x: torch.Tensor, num_clusters: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding on `x` `[S, d]`: `[K]` indices of the chosen seeds.

    Greedy k-means++ (Arthur & Vassilvitskii; scikit-learn's default) keeps, for each seed, the best of
    [`seeding_trials`] candidates, each a D^2 draw: a vector drawn with probability proportional to its squared
    distance to the nearest seed chosen so far.

    To make the distance work a few large matmuls instead of K small ones, candidates come from pools: a pool
    (at most `_BLOCK_FLOATS / S` vectors) is drawn from the D^2 distribution of the moment the pool is made,
    and all their distance rows are computed at once. Rejection sampling keeps every candidate an exact draw
    from the current distribution: a pool vector `v` drawn when its squared distance was `D0(v)` is accepted,
    when its turn comes, with probability `D(v) / D0(v)` (distances only shrink as seeds are added). A pool
    that runs out of accepted candidates is replaced by a new one.
    """
    n = x.shape[0]
    trials = seeding_trials(n, num_clusters)
    pool_cap = max(trials, _BLOCK_FLOATS // n)
    x_sq = x.square().sum(1)
    # One matmul gives squared distances: [-2v, |v|^2, 1] . [x; 1; |x|^2] = |v - x|^2 (no bias pass over the block).
    columns = torch.cat([x.T, x.new_ones(1, n), x_sq[None]])
    zeros = torch.zeros_like(x_sq)

    def sq_distances(idx: torch.Tensor) -> torch.Tensor:  # [len(idx), S], rounding may leave small negatives
        rows = torch.cat([x[idx] * -2, x_sq[idx, None], x.new_ones(len(idx), 1)], 1)
        return rows @ columns

    first = torch.randint(n, (1,), generator=generator).to(x.device)
    chosen = [first]
    closest = sq_distances(first)[0].clamp_min_(0)
    # Rounding leaves a seed a tiny distance to itself; zero it, so a seed is never drawn again.
    closest[first] = 0
    found = 1
    while found < num_clusters:
        # Sized for a third of the remaining seeds (at least 256 rows, so the matmul stays efficient): the potential
        # drops as seeds are added, and a pool meant for all of them would end up mostly rejected.
        remaining = num_clusters - found
        pool_size = min(pool_cap, trials * remaining, max(trials * math.ceil(remaining / 3), 256))
        cdf = closest.to(torch.float64).cumsum(0)
        if not cdf[-1] > 0:  # every vector coincides with a seed: the remaining seeds are any other vectors
            unused = torch.ones(n, dtype=torch.bool, device=x.device)
            unused[torch.cat(chosen)] = False
            chosen.append(unused.nonzero().flatten()[: num_clusters - found])
            break
        uniforms = torch.rand(2, pool_size, generator=generator, dtype=torch.float64).to(x.device)
        pool = torch.searchsorted(cdf, uniforms[0] * cdf[-1]).clamp_max_(n - 1)
        # Accepted while D(v) > u * D0(v): probability D(v) / D0(v).
        threshold = (uniforms[1] * closest[pool]).to(x.dtype)
        distances, pool_ids = sq_distances(pool), pool.tolist()
        picked, start = [], 0
        while found < num_clusters:
            # Most pool vectors are accepted, so a short window usually holds the next `trials` candidates.
            for end in (start + 4 * trials, pool_size) if start + 4 * trials < pool_size else (pool_size,):
                accepted = (closest[pool[start:end]] > threshold[start:end]).tolist()
                positions = [i for i, ok in enumerate(accepted) if ok][:trials]
                if len(positions) == trials:
                    break
            else:
                break  # the pool is used up: draw a new one
            span = positions[-1] + 1
            contiguous = span <= 2 * trials
            if contiguous:  # one block of rows, in which the rejected draws get an infinite potential
                potentials = torch.clamp(distances[start : start + span], min=zeros, max=closest)
                totals = potentials.sum(1)
                if span > trials:
                    totals[[i for i in range(span) if not accepted[i]]] = math.inf
            else:
                rows = torch.tensor(positions, device=x.device) + start
                potentials = torch.clamp(distances[rows], min=zeros, max=closest)
                totals = potentials.sum(1)
            best = int(totals.argmin())
            picked.append(start + (best if contiguous else positions[best]))
            closest = potentials[best]
            closest[pool_ids[picked[-1]]] = 0
            start += span
            found += 1
        chosen.append(torch.tensor([pool_ids[i] for i in picked], dtype=torch.long, device=x.device))
    return torch.cat(chosen)


def _lloyd(x: torch.Tensor, centroids: torch.Tensor, max_iter: int, tol: float) -> ClusteringResult:
    """Lloyd iterations from `centroids` `[K, d]` on `x` `[N, d]` until the relative inertia gain is below `tol`.

    Hamerly's bounds skip most distance work once centroids settle. Every vector keeps an upper bound on the
    distance to its own centroid (grown by that centroid's move) and a lower bound on the distance to every
    other centroid (the second-nearest distance, shrunk by the largest move). Where upper <= lower the label
    cannot change and nothing is computed; elsewhere the upper bound is made exact, and only vectors still
    above their lower bound get a full distance row. The labels are those of plain Lloyd. The inertia of each
    iteration comes from the cluster sums (`sum |x - m|^2 - 2 (c - m).(S - n m) + n |c - m|^2` around the mean
    `m`, so that float32 sums of data far from the origin lose no precision), not from per-vector distances.
    """
    num_clusters = centroids.shape[0]
    mean, spread = _mean_and_spread(x)
    labels, sq_dist, lower = _nearest_two(x, centroids)
    upper = sq_dist.sqrt_()
    previous, n_iter = math.inf, 0
    while True:
        n_iter += 1
        sums, counts = _cluster_sums(x, labels, num_clusters)
        offsets, centred_sums = centroids.double() - mean, sums.double() - counts[:, None] * mean
        inertia = spread + float((counts * offsets.square().sum(1) - 2 * (offsets * centred_sums).sum(1)).sum())
        new_centroids = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():  # re-seed with the vectors farthest from their centroid
            farthest = _own_sq_distances(x, centroids, labels).topk(empty.numel()).indices
            new_centroids[empty] = x[farthest]
        converged = math.isfinite(previous) and previous - inertia <= tol * previous and not empty.numel()
        moves = (new_centroids - centroids).norm(dim=1)
        upper += moves[labels]
        lower -= moves.max()
        centroids = new_centroids
        check = (upper > lower).nonzero().flatten()
        if check.numel():
            upper[check] = _own_sq_distances(x, centroids, labels, check).sqrt_()
            stale = check[upper[check] > lower[check]]
            if stale.numel():
                labels[stale], sq_dist, lower[stale] = _nearest_two(x, centroids, stale)
                upper[stale] = sq_dist.sqrt_()
        if converged or n_iter >= max_iter:
            inertia = float(_own_sq_distances(x, centroids, labels).sum())
            return ClusteringResult(labels, centroids, inertia, n_iter)
        previous = inertia


def kmeans(
    x: torch.Tensor,
    num_clusters: int,
    *,
    init: str = "k-means++",
    max_iter: int = 30,
    tol: float = 1e-4,
    seed: int = 0,
) -> ClusteringResult:
    """k-means (Lloyd, chunked, with distance bounds), seeded and deterministic.

    For large N the early iterations, where centroids move most and bounds prune nothing, run on a random
    sample of [`warm_start_size`] vectors; Lloyd then continues on all vectors from those centroids.

    Args:
        x: `[N, d]` float vectors (any device).
        num_clusters: K, `1 <= K <= N`.
        init: `"k-means++"` (greedy seeding on a sample of [`seeding_sample_size`] vectors) or `"random"`
            (K distinct vectors drawn uniformly).
        max_iter: maximum Lloyd iterations per phase. With 1 there is no warm start: the vectors are
            assigned to the initial centroids and the centroids updated once (the official code's one step).
        tol: stop when the inertia decreases by less than `tol` relative to the previous iteration.
        seed: seed of the initialisation and of the samples.

    Returns:
        A [`ClusteringResult`] with `labels` `[N]` (each vector's nearest centroid), `centroids` `[K, d]`
        (the means of their members), `inertia` and `n_iter` (iterations on all N vectors).
    """
    _check_vectors(x, num_clusters)
    if init not in ("k-means++", "random"):
        raise ValueError(f"init={init!r} is not one of ['k-means++', 'random']")
    if max_iter < 1:
        raise ValueError(f"max_iter={max_iter} must be >= 1")
    n = x.shape[0]
    generator = torch.Generator().manual_seed(seed)
    if init == "random":
        seeds = torch.randperm(n, generator=generator)[:num_clusters]
    else:
        sample_size = seeding_sample_size(n, num_clusters)
        sample = torch.randperm(n, generator=generator)[:sample_size].to(x.device)
        seeds = sample[_kmeans_plus_plus(x[sample], num_clusters, generator)]
    centroids = x[seeds.to(x.device)].clone()
    warm_size = warm_start_size(num_clusters)
    if max_iter > 1 and 3 * warm_size <= n:
        sample = torch.randperm(n, generator=generator)[: max(warm_size, num_clusters)].to(x.device)
        centroids = _lloyd(x[sample], centroids, max_iter, tol).centroids
    return _lloyd(x, centroids, max_iter, tol)


def dpc_knn(x: torch.Tensor, num_clusters: int, *, local_size: int) -> ClusteringResult:
    """Density-peak clustering with a k-nearest-neighbour density (DPC-KNN), chunked.

    Density of a vector: `exp(-mean of the squared distances to its local_size nearest neighbours)`, with
    distances scaled by `1/sqrt(d)`. Its peak score is the density times the distance to the nearest denser
    vector (ties broken by index, so the result is deterministic). The K highest scores are the centres,
    every vector joins its nearest centre, and centroids are the means of the members.

    Args:
        x: `[N, d]` float vectors.
        num_clusters: K, `1 <= K <= N`.
        local_size: neighbours used for the density, `1 <= local_size <= N`.

    Returns:
        A [`ClusteringResult`] (`n_iter` = 1).
    """
    _check_vectors(x, num_clusters)
    n, d = x.shape
    if not 1 <= local_size <= n:
        raise ValueError(f"local_size={local_size} must be in [1, N={n}]")
    scale = 1.0 / math.sqrt(d)
    x_sq = x.square().sum(1)
    step = _chunk_size(n, n)

    def distance_block(start: int) -> torch.Tensor:
        block = x[start : start + step]
        sq = torch.addmm(x_sq, block, x.T, beta=1.0, alpha=-2.0).add_(x_sq[start : start + step, None])
        return sq.clamp_min_(0).sqrt_().mul_(scale)

    density = torch.empty(n, dtype=x.dtype, device=x.device)
    for start in range(0, n, step):
        nearest = distance_block(start).topk(local_size, dim=1, largest=False).values
        density[start : start + step] = torch.exp(-nearest.square().mean(1))

    index = torch.arange(n, device=x.device)
    delta = torch.empty(n, dtype=x.dtype, device=x.device)
    for start in range(0, n, step):
        dist = distance_block(start)
        rows = index[start : start + step, None]
        d_row = density[start : start + step, None]
        denser = (density[None] > d_row) | ((density[None] == d_row) & (index[None] < rows))
        has_denser = denser.any(1)
        nearest_denser = dist.masked_fill(~denser, math.inf).min(1).values
        delta[start : start + step] = torch.where(has_denser, nearest_denser, dist.max(1).values)

    centres = (delta * density).topk(num_clusters).indices
    labels, _ = assign_to_nearest(x, x[centres])
    labels[centres] = torch.arange(num_clusters, device=x.device)
    centroids, _ = _cluster_means(x, labels, num_clusters)
    inertia = float((x - centroids[labels]).square().sum())
    return ClusteringResult(labels, centroids, inertia, 1)


def interest_tokens(
    interest_ids: torch.Tensor, return_counts: bool = False
) -> torch.Tensor | tuple[torch.Tensor, list[int]]:
    """Distinct non-zero interest ids of every row, ascending, right-padded with 0.

    Vectorised (one sort per batch, no Python loop over rows).

    Args:
        interest_ids: `[B, T]` long, 0 = no interest (padding or missing modality).
        return_counts: also return the number of distinct ids of every row, as a list of `B` ints.

    Returns:
        `[B, Nq]` long with `Nq = max(1, largest number of distinct ids in a row)`, and with `return_counts` the
        counts.
    """
    if interest_ids.ndim != 2:
        raise ValueError(f"expected [B, T] interest ids, got shape {tuple(interest_ids.shape)}")
    if interest_ids.shape[0] == 1:  # one row (a single request) needs no padding: a third of the ops
        ids = interest_ids.unique()  # ascending: a 0 (no interest) can only come first
        ids = ids[1:] if len(ids) and int(ids[0]) == 0 else ids
        counts = [len(ids)]
        out = (ids if len(ids) else ids.new_zeros(1))[None]
        return (out, counts) if return_counts else out
    ids, _ = interest_ids.sort(dim=1)
    first = ids != 0
    first[:, 1:] &= ids[:, 1:] != ids[:, :-1]
    counts = first.sum(1).tolist()
    num_tokens = max(max(counts, default=0), 1)
    # Non-first entries all go to a spare last column, which is dropped.
    slot = torch.where(first, first.cumsum(1) - 1, num_tokens)
    out = ids.new_zeros(ids.shape[0], num_tokens + 1)
    out.scatter_(1, slot, ids)
    out = out[:, :num_tokens]
    return (out, counts) if return_counts else out
