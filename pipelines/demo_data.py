"""A seeded synthetic multi-modal catalogue with real structure: the project's own demo data.

Items belong to latent interests; their text and image features are two noisy random projections of the
same latent vector, and some items miss one modality (all-zero row). Users drift between a few interests
of their own, so the next item is predictable from the recent history but not from popularity alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DemoData:
    """A demo domain.

    Attributes:
        text_features: `[N, text_dim]` float32 (row i = item id i + 1; all-zero row = no text).
        image_features: `[N, image_dim]` float32 (all-zero row = no image).
        item_interest: `[N]` the latent interest of each item.
        histories: one int64 array of item ids (1-based, oldest first) per user.
    """

    text_features: np.ndarray
    image_features: np.ndarray
    item_interest: np.ndarray
    histories: list[np.ndarray]

    @property
    def num_items(self) -> int:
        return len(self.text_features)

    def split(self) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
        """Leave-one-out by time: `{"train", "validation", "test"}` -> (histories, targets).

        The last item of each user is the test target, the second last the validation target; every earlier
        prefix of length >= 1 is a training example.
        """
        train_h, train_t, valid_h, valid_t, test_h, test_t = [], [], [], [], [], []
        for seq in self.histories:
            for end in range(1, len(seq) - 2):
                train_h.append(seq[:end])
                train_t.append(seq[end])
            valid_h.append(seq[:-2])
            valid_t.append(seq[-2])
            test_h.append(seq[:-1])
            test_t.append(seq[-1])
        return {
            "train": (train_h, np.array(train_t)),
            "validation": (valid_h, np.array(valid_t)),
            "test": (test_h, np.array(test_t)),
        }


def make_demo_data(
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
    seed: int = 0,
) -> DemoData:
    """Generate a demo domain (see the module docstring). Same seed, same data.

    Returns:
        A [`DemoData`] with `num_items` items and `num_users` histories of `min_length..max_length` items.
    """
    if num_items < num_interests or min_length < 4 or max_length < min_length:
        raise ValueError("need num_items >= num_interests and 4 <= min_length <= max_length")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_interests, latent_dim)) * 2.0
    interest = rng.permutation(np.arange(num_items) % num_interests)
    latent = centres[interest] + rng.standard_normal((num_items, latent_dim))
    text = latent @ rng.standard_normal((latent_dim, text_dim)) + 0.5 * rng.standard_normal((num_items, text_dim))
    image = latent @ rng.standard_normal((latent_dim, image_dim)) + 0.5 * rng.standard_normal((num_items, image_dim))
    missing = rng.random(num_items) < missing_rate
    drop_text = missing & (rng.random(num_items) < 0.5)
    text[drop_text] = 0.0
    image[missing & ~drop_text] = 0.0

    members = [np.flatnonzero(interest == k) for k in range(num_interests)]
    # Zipf-like popularity inside each interest, so popularity is a real (but weaker) baseline.
    weights = [1.0 / np.arange(1, len(m) + 1) ** 0.8 for m in members]
    weights = [w / w.sum() for w in weights]
    histories = []
    for _ in range(num_users):
        own = rng.choice(num_interests, size=3, replace=False)
        current = own[0]
        seq = []
        for _ in range(rng.integers(min_length, max_length + 1)):
            if rng.random() > stay_probability:
                current = rng.choice(own)
            seq.append(rng.choice(members[current], p=weights[current]) + 1)
        histories.append(np.array(seq, dtype=np.int64))
    return DemoData(text.astype(np.float32), image.astype(np.float32), interest, histories)


def pad_histories(histories: list[np.ndarray], max_length: int) -> np.ndarray:
    """Left-aligned `[B, L]` int64 matrix of the `max_length` most recent items of each history (0 = padding)."""
    width = min(max_length, max(len(h) for h in histories))
    out = np.zeros((len(histories), width), dtype=np.int64)
    for row, seq in enumerate(histories):
        recent = seq[-width:]
        out[row, : len(recent)] = recent
    return out
