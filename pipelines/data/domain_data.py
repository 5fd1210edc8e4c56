"""The in-memory form every data source produces before it becomes `datasets` tables.

A source (the MISSRec/UniSRec files, raw Amazon 2018 reviews, the demo generator) yields a [`DomainData`]:
the item catalogue with its feature tables, and the leave-one-out splits as flat id arrays with offsets
(the layout of an Arrow list column, so the builder writes them without a per-row Python loop).
Item ids are 1-based everywhere (0 is padding); item id `i + 1` is row `i` of every item table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Domain name -> Amazon Review 2018 category file stem (`<stem>.json.gz`, `meta_<stem>.json.gz`).
AMAZON_CATEGORIES: dict[str, str] = {
    "Food": "Grocery_and_Gourmet_Food",
    "Home": "Home_and_Kitchen",
    "CDs": "CDs_and_Vinyl",
    "Kindle": "Kindle_Store",
    "Movies": "Movies_and_TV",
    "Scientific": "Industrial_and_Scientific",
    "Pantry": "Prime_Pantry",
    "Instruments": "Musical_Instruments",
    "Arts": "Arts_Crafts_and_Sewing",
    "Office": "Office_Products",
}
PRETRAINING_DOMAINS = ("Food", "Home", "CDs", "Kindle", "Movies")
DOWNSTREAM_DOMAINS = ("Scientific", "Pantry", "Instruments", "Arts", "Office")
SPLITS = ("train", "validation", "test")
FEATURE_COLUMNS = ("text_features", "image_features", "alt_text_features")


@dataclass
class SequenceSplit:
    """One split of (history -> next item) examples.

    Attributes:
        users: `[R]` user source ids (e.g. the reviewerID), one per example.
        offsets: `[R + 1]` int64; example r's history is `items[offsets[r]:offsets[r + 1]]`.
        items: `[offsets[-1]]` int32 item ids (1-based), oldest first.
        targets: `[R]` int32 item id that follows each history.
    """

    users: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    targets: np.ndarray

    def __post_init__(self) -> None:
        self.users = np.asarray(self.users, dtype=object)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int32)
        self.targets = np.asarray(self.targets, dtype=np.int32)
        if not (len(self.users) == len(self.targets) == len(self.offsets) - 1 and self.offsets[-1] == len(self.items)):
            raise ValueError(
                f"inconsistent split: {len(self.users)} users, {len(self.targets)} targets, "
                f"{len(self.offsets)} offsets ending at {self.offsets[-1]}, {len(self.items)} history items"
            )

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def lengths(self) -> np.ndarray:
        """`[R]` history lengths."""
        return np.diff(self.offsets)

    def keep_recent(self, max_history: int) -> SequenceSplit:
        """This split with every history cut to its `max_history` most recent items (itself if none is longer)."""
        lengths = np.minimum(self.lengths, max_history)
        if np.array_equal(lengths, self.lengths):
            return self
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        index = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - (self.offsets[1:] - lengths), lengths)
        return SequenceSplit(self.users, offsets, self.items[index], self.targets)

    def history(self, row: int) -> np.ndarray:
        """The history of example `row` (int32 item ids, oldest first)."""
        return self.items[self.offsets[row] : self.offsets[row + 1]]


@dataclass
class DomainData:
    """A domain: its catalogue and its leave-one-out splits.

    Attributes:
        name: the domain name (e.g. `"Scientific"`).
        source_ids: `[N]` item source ids (ASINs); item id `i + 1` is `source_ids[i]`.
        texts: `[N]` item texts (`""` where there is none).
        features: `{"text_features": [N, d_t], "image_features": [N, d_i]}` float32, optionally
            `"alt_text_features"` (an alternative text view, for the word-drop augmentation). A missing
            modality is an all-zero row.
        has_text, has_image: `[N]` bool, whether the item has that modality.
        splits: `{"train", "validation", "test"}` -> [`SequenceSplit`].
    """

    name: str
    source_ids: np.ndarray
    texts: np.ndarray
    features: dict[str, np.ndarray]
    has_text: np.ndarray
    has_image: np.ndarray
    splits: dict[str, SequenceSplit] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.source_ids = np.asarray(self.source_ids, dtype=object)
        self.texts = np.asarray(self.texts, dtype=object)
        self.has_text = np.asarray(self.has_text, dtype=bool)
        self.has_image = np.asarray(self.has_image, dtype=bool)
        n = len(self.source_ids)
        for name, table in self.features.items():
            if name not in FEATURE_COLUMNS:
                raise ValueError(f"unknown feature table {name!r}; expected one of {list(FEATURE_COLUMNS)}")
            if table.ndim != 2 or len(table) != n:
                raise ValueError(f"{name} has shape {tuple(table.shape)}, expected [{n}, d] (one row per item)")
        if not (len(self.texts) == len(self.has_text) == len(self.has_image) == n):
            raise ValueError(f"item columns disagree on the number of items ({n} source ids)")
        for split_name, split in self.splits.items():
            for what, ids in (("history", split.items), ("target", split.targets)):
                bad = np.flatnonzero((ids < 1) | (ids > n))
                if bad.size:
                    raise ValueError(f"{self.name} {split_name}: {what} item id {ids[bad[0]]} outside 1..{n}")

    @property
    def num_items(self) -> int:
        return len(self.source_ids)


def leave_one_out(
    users: list[str] | np.ndarray, histories: list[np.ndarray], max_history: int = 50
) -> dict[str, SequenceSplit]:
    """Split each user's chronological item ids (1-based) the RecBole / UniSRec way.

    The last item is the test target, the second last the validation target, and every earlier prefix of
    length >= 1 (a user with n items gives n - 3 of them) predicts its next item in train. Every history keeps
    its `max_history` most recent items. Users need at least 3 items.

    Returns:
        `{"train", "validation", "test"}` -> [`SequenceSplit`].
    """
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    if len(lengths) and lengths.min() < 3:
        raise ValueError(f"user {users[int(lengths.argmin())]!r} has {lengths.min()} items; leave-one-out needs 3")
    flat = np.concatenate(histories).astype(np.int32) if histories else np.zeros(0, np.int32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    users = np.asarray(users, dtype=object)
    # Example = (user u, end position e): history flat[max(start, end - max_history):end], target flat[end].
    per_user_train = np.maximum(lengths - 3, 0)
    train_user = np.repeat(np.arange(len(lengths)), per_user_train)
    train_pos = np.arange(per_user_train.sum()) - np.repeat(np.cumsum(per_user_train) - per_user_train, per_user_train)
    ends = {
        # RecBole writes the training prefixes of a user longest first.
        "train": (train_user, starts[train_user] + lengths[train_user] - 3 - train_pos),
        "validation": (np.arange(len(lengths)), starts + lengths - 2),
        "test": (np.arange(len(lengths)), starts + lengths - 1),
    }
    splits = {}
    for name, (owner, end) in ends.items():
        begin = np.maximum(starts[owner], end - max_history)
        history_lengths = end - begin
        offsets = np.concatenate([[0], np.cumsum(history_lengths)]).astype(np.int64)
        index = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - begin, history_lengths)
        splits[name] = SequenceSplit(users[owner], offsets, flat[index], flat[end])
    return splits
