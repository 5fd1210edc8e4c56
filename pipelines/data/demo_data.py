"""A seeded synthetic multi-modal catalogue with real structure: the project's own demo data.

Items belong to latent interests; their text and image features are two noisy random projections of the
same latent vector, and some items miss one modality (all-zero row). The projections and a pool of interest
centres come from a "world" shared by every demo domain (as CLIP features are shared by every Amazon
domain), while each domain's seed picks its own interests, items and users: demo domains of different seeds
are different catalogues in one feature space, which is what pre-training transfers across. Users drift
between a few interests of their own, so the next item is predictable from the recent history but not from
popularity alone. Everything is generated with array operations (one step of all users at a time), so a
domain of 100k items and 1M interactions takes seconds.
"""

from __future__ import annotations

import numpy as np

from .domain_data import DomainData, leave_one_out


def make_demo_domain(
    num_items: int = 600,
    num_users: int = 1000,
    num_interests: int = 12,
    text_dim: int = 512,
    image_dim: int = 512,
    latent_dim: int = 32,
    min_length: int = 6,
    max_length: int = 20,
    stay_probability: float = 0.8,
    missing_rate: float = 0.1,
    max_history: int = 50,
    seed: int = 0,
    name: str = "demo",
    world_seed: int = 0,
    world_interests: int = 64,
    nuisance_scale: float = 8.0,
) -> DomainData:
    """Generate a demo domain (see the module docstring). Same arguments, same data.

    `seed` draws the domain (its interests among the world's `world_interests` centres, its items, users and
    histories); `world_seed` draws the shared feature space (centres and text/image projections).
    `nuisance_scale` is the spread of per-item factors unrelated to interests, written into the features
    along directions the world also fixes: a model must learn to look past them (which pre-training on
    other demo domains teaches, as those directions are shared).

    Returns:
        A [`DomainData`] with `num_items` items and `num_users` users of `min_length..max_length` items each,
        split leave-one-out. Source ids are `"demo-000001"`..., user ids `"user-000000"`...
    """
    if num_interests < 3 or num_items < num_interests:
        raise ValueError(f"need num_interests >= 3 and num_items >= num_interests, got {num_interests}, {num_items}")
    if not 3 <= min_length <= max_length:
        raise ValueError(f"need 3 <= min_length <= max_length, got {min_length}, {max_length}")
    if num_users < 1:
        raise ValueError(f"num_users={num_users} must be >= 1")
    if world_interests < num_interests:
        raise ValueError(f"world_interests={world_interests} must be >= num_interests={num_interests}")
    world = np.random.default_rng(world_seed)
    world_centres = world.standard_normal((world_interests, latent_dim)) * 2.0
    projections = {
        name_: world.standard_normal((2 * latent_dim, dim)).astype(np.float32)
        for name_, dim in (("text_features", text_dim), ("image_features", image_dim))
    }
    rng = np.random.default_rng(seed)
    centres = world_centres[rng.choice(world_interests, num_interests, replace=False)]
    interest = rng.permutation(np.arange(num_items) % num_interests)
    latent = centres[interest] + rng.standard_normal((num_items, latent_dim))
    features = {}
    nuisance = rng.standard_normal((num_items, latent_dim)) * nuisance_scale
    factors = np.concatenate([latent, nuisance], axis=1).astype(np.float32)
    for name_, projection in projections.items():
        noise = rng.standard_normal((num_items, projection.shape[1]), dtype=np.float32)
        features[name_] = factors @ projection + 0.5 * noise
    missing = rng.random(num_items) < missing_rate
    drop_text = missing & (rng.random(num_items) < 0.5)
    features["text_features"][drop_text] = 0.0
    features["image_features"][missing & ~drop_text] = 0.0

    # Zipf-like popularity inside each interest, so popularity is a real (but weaker) baseline. Items of
    # interest k occupy members[starts[k]:starts[k + 1]]; cdf holds k + (within-interest cumulative weight),
    # so one searchsorted draws an item of any interest.
    members = np.argsort(interest, kind="stable")
    counts = np.bincount(interest, minlength=num_interests)
    starts = np.concatenate([[0], np.cumsum(counts)])
    rank = np.arange(num_items) - np.repeat(starts[:-1], counts)
    weights = 1.0 / (rank + 1.0) ** 0.8
    group_sums = np.add.reduceat(weights, starts[:-1])
    within = (np.cumsum(weights) - np.repeat(np.cumsum(group_sums) - group_sums, counts)) / np.repeat(
        group_sums, counts
    )
    cdf = np.repeat(np.arange(num_interests), counts) + within

    own = np.argsort(rng.random((num_users, num_interests)), axis=1)[:, :3]
    current = own[:, 0]
    sequence = np.empty((num_users, max_length), dtype=np.int64)
    for step in range(max_length):
        moves = rng.random(num_users) > stay_probability
        current = np.where(moves, own[np.arange(num_users), rng.integers(0, 3, num_users)], current)
        position = np.searchsorted(cdf, current + rng.random(num_users) * (1 - 1e-12), side="right")
        sequence[:, step] = members[np.minimum(position, starts[current + 1] - 1)] + 1
    lengths = rng.integers(min_length, max_length + 1, num_users)
    histories = [sequence[u, : lengths[u]] for u in range(num_users)]

    has_text, has_image = features["text_features"].any(1), features["image_features"].any(1)
    texts = np.array(
        [f"Demo item {i + 1}, a product of theme {interest[i]}." if has_text[i] else "" for i in range(num_items)],
        dtype=object,
    )
    return DomainData(
        name=name,
        source_ids=np.array([f"demo-{i + 1:06d}" for i in range(num_items)], dtype=object),
        texts=texts,
        features=features,
        has_text=has_text,
        has_image=has_image,
        splits=leave_one_out([f"user-{u:06d}" for u in range(num_users)], histories, max_history),
    )
