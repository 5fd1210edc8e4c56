"""Training batches straight from the Arrow tables: padded histories, pre-training augmentations, catalogue.

The sequences table is read once, zero-copy, into flat numpy arrays (item ids + offsets); a batch is then a
handful of vectorised gathers, with no per-row Python. Use the collator as `collate_fn` of a
`torch.utils.data.DataLoader` over `range(len(sequences))` (the loader yields row indices; Accelerate
shards them across processes as usual).
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np
import torch


def arrow_table(dataset: datasets.Dataset):
    """The Arrow table of `dataset` in its row order (a `select`/`shuffle`/`filter` view is materialised first)."""
    if dataset._indices is not None:
        dataset = dataset.flatten_indices()
    return dataset.data.table


def feature_matrix(items: datasets.Dataset, column: str) -> np.ndarray:
    """A fixed-width feature column of `items` as a `[N, d]` float32 array (zero-copy for a single Arrow chunk)."""
    if column not in items.features:
        raise ValueError(f"the items table has no column {column!r}; it has {list(items.features)}")
    data = arrow_table(items)[column].combine_chunks()
    return data.flatten().to_numpy(zero_copy_only=False).reshape(len(data), items.features[column].length)


def catalogue_features(items: datasets.Dataset) -> dict[str, torch.Tensor]:
    """`{"text_features", "image_features"}` -> `[N, d]` tensors for `MISSRecModel.set_catalogue` (row i = item i + 1).

    Only the modalities the table has are returned (a text-only domain gives `text_features` alone). Rows of items
    without a modality are zero (the model's "missing" marker). The tensors are copies (the model keeps its
    catalogue in buffers of its own).
    """
    return {
        name: torch.tensor(feature_matrix(items, name))
        for name in ("text_features", "image_features")
        if name in items.features
    }


def catalogue_modalities(features: dict[str, torch.Tensor]) -> str:
    """The `MISSRecConfig.modalities` value that reads what a catalogue has: `"text"`, `"image"` or `"both"`."""
    has = [m for m in ("text", "image") if f"{m}_features" in features]
    if not has:
        raise ValueError("the catalogue has neither text_features nor image_features")
    return "both" if len(has) == 2 else has[0]


class SequenceCollator:
    """Turns row indices of a sequences table into model inputs.

    Args:
        sequences: a sequences `Dataset` (`history`, `target` columns).
        max_seq_length: histories keep their most recent `max_seq_length` items.
        item_drop_ratio: pre-training "item drop": the augmented view drops each item with this probability
            (keeping at least one). 0 disables the augmented view unless `word_drop_ratio` > 0.
        word_drop_ratio: pre-training "word drop": in the augmented view, each item's text features are
            replaced by its alternative text view (`alt_text_features`) with this probability.
        text_features, alt_text_features: `[N, d]` catalogue text features and their alternative view (row
            i = item i + 1); needed when `word_drop_ratio` > 0.
        seed: seed of the augmentations. A batch's random draws depend only on the seed, the epoch (see
            [`set_epoch`]) and the batch's rows, not on how many batches came before: a run resumed mid-epoch
            (or a loader that prefetches) gets exactly the augmentations of an uninterrupted run.

    Calling it with `rows` (a sequence of B row indices) returns `item_seq` `[B, L]` (left-aligned, 0 = pad),
    `lengths` `[B]`, `labels` `[B]`, and with augmentations `augmented_item_seq` `[B, L]`,
    `augmented_lengths` `[B]` and, for word drop, `augmented_text_features` `[B, L, d]`.
    """

    def __init__(
        self,
        sequences: datasets.Dataset,
        max_seq_length: int,
        *,
        item_drop_ratio: float = 0.0,
        word_drop_ratio: float = 0.0,
        text_features: np.ndarray | None = None,
        alt_text_features: np.ndarray | None = None,
        seed: int = 0,
    ):
        if max_seq_length < 1:
            raise ValueError(f"max_seq_length={max_seq_length} must be >= 1")
        for name, ratio in (("item_drop_ratio", item_drop_ratio), ("word_drop_ratio", word_drop_ratio)):
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"{name}={ratio} must be in [0, 1)")
        if word_drop_ratio > 0 and (text_features is None or alt_text_features is None):
            raise ValueError(
                "word_drop_ratio > 0 needs text_features and alt_text_features (the items' two text views)"
            )
        if (
            text_features is not None
            and alt_text_features is not None
            and text_features.shape != alt_text_features.shape
        ):
            raise ValueError(f"text views differ in shape: {text_features.shape} vs {alt_text_features.shape}")
        table = arrow_table(sequences)
        history = table["history"].combine_chunks()
        self.offsets = history.offsets.to_numpy() - history.offsets[0].as_py()
        self.items = history.flatten().to_numpy()
        self.targets = table["target"].to_numpy()
        self.max_seq_length = max_seq_length
        self.item_drop_ratio = item_drop_ratio
        self.word_drop_ratio = word_drop_ratio
        # Row 0 = padding, rows 1..N = text, N+1..2N = the alternative view: word drop is then one gather.
        self.text_views = (
            None
            if word_drop_ratio == 0
            else np.concatenate([np.zeros_like(text_features[:1]), text_features, alt_text_features])
        )
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.targets)

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentations of `epoch` from now on (call it with the sampler's `set_epoch`)."""
        self.epoch = epoch

    def pad(self, rows: np.ndarray, whole_history: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """`[B, L]` int64 left-aligned most recent items of the histories of `rows`, and `[B]` lengths.

        Histories keep their `max_seq_length` most recent items, or all of them with `whole_history` (e.g. every
        item the exclude-history protocol must not recommend)."""
        ends = self.offsets[rows + 1]
        lengths = ends - self.offsets[rows]
        if not whole_history:
            lengths = np.minimum(lengths, self.max_seq_length)
        width = int(lengths.max()) if len(rows) else 0
        positions = np.arange(width)
        index = (ends - lengths)[:, None] + positions
        keep = positions < lengths[:, None]
        return np.where(keep, self.items[np.where(keep, index, 0)], 0).astype(np.int64), lengths.astype(np.int64)

    def _item_drop(
        self, item_seq: np.ndarray, lengths: np.ndarray, generator: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        keep = (item_seq != 0) & (generator.random(item_seq.shape) >= self.item_drop_ratio)
        last = np.arange(len(lengths)), lengths - 1
        keep[last] |= ~keep.any(1)  # never drop a whole history: keep its most recent item
        order = np.argsort(~keep, axis=1, kind="stable")  # kept items first, in their order
        dropped = np.take_along_axis(np.where(keep, item_seq, 0), order, axis=1)
        return dropped, keep.sum(1)

    def __call__(self, rows: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        rows = np.asarray(rows, dtype=np.int64)
        item_seq, lengths = self.pad(rows)
        batch = {
            "item_seq": torch.from_numpy(item_seq),
            "lengths": torch.from_numpy(lengths),
            "labels": torch.from_numpy(self.targets[rows].astype(np.int64)),
        }
        if self.item_drop_ratio == 0 and self.word_drop_ratio == 0:
            return batch
        # The rows of a batch (a slice of the epoch's permutation) identify it within the epoch.
        generator = np.random.default_rng([self.seed, self.epoch, int(rows[0]) if len(rows) else 0, len(rows)])
        augmented, augmented_lengths = (
            self._item_drop(item_seq, lengths, generator) if self.item_drop_ratio > 0 else (item_seq, lengths)
        )
        batch["augmented_item_seq"] = torch.from_numpy(augmented)
        batch["augmented_lengths"] = torch.from_numpy(augmented_lengths)
        if self.word_drop_ratio > 0:
            swap = generator.random(augmented.shape) < self.word_drop_ratio
            num_items = (len(self.text_views) - 1) // 2
            views = np.where(augmented != 0, augmented + swap * num_items, 0)
            batch["augmented_text_features"] = torch.from_numpy(self.text_views[views])
        return batch
