"""Read and write the MISSRec / UniSRec pre-processed domain format.

A folder holds, for a domain `<D>` (tab separated, each text file starting with a RecBole header line):

- `<D>.train.inter`, `<D>.valid.inter`, `<D>.test.inter`: `user_id:token  item_id_list:token_seq  item_id:token`,
  0-based user and item indices;
- `<D>.item2index` (`ASIN<TAB>index`) and `<D>.user2index` (`reviewerID<TAB>index`), no header;
- `<D>.text` (optional): `item_id:token  text:token_seq`, the ASIN and the item's text;
- `<D>.feat1CLS` (text), `<D>.feat3CLS` (image), optional `<D>.feat2CLS` (an alternative text view): raw
  little-endian float32, one row per item index. An all-zero row means the modality is missing.

Every malformed line raises a `ValueError` naming the file and the line; nothing is silently dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .domain_data import DomainData, SequenceSplit

INTER_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token"
TEXT_HEADER = "item_id:token\ttext:token_seq"
SPLIT_FILES = {"train": "train.inter", "validation": "valid.inter", "test": "test.inter"}
FEATURE_FILES = {"text_features": "feat1CLS", "alt_text_features": "feat2CLS", "image_features": "feat3CLS"}


def _path(folder: str | os.PathLike, domain: str, suffix: str, required: bool = True) -> Path | None:
    path = Path(folder) / f"{domain}.{suffix}"
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"missing {path} (the MISSRec-format files of domain {domain!r})")
        return None
    return path


def _read_index(path: Path) -> dict[str, int]:
    """`token<TAB>index` lines -> {token: index}; indices must be exactly 0..n-1."""
    index: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2:
                raise ValueError(f"{path}:{lineno}: expected 2 tab-separated columns, got {len(fields)}")
            try:
                index[fields[0]] = int(fields[1])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: index {fields[1]!r} is not an integer") from None
    values = np.fromiter(index.values(), dtype=np.int64, count=len(index))
    if not np.array_equal(np.sort(values), np.arange(len(values))):
        raise ValueError(f"{path}: indices must be 0..{len(values) - 1}, each once, one per distinct token")
    return index


def _read_inter(path: Path, users: np.ndarray, num_items: int) -> SequenceSplit:
    """One `.inter` file -> a [`SequenceSplit`] with 1-based item ids."""
    user_rows, lengths, flat, targets = [], [], [], []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n")
        if header != INTER_HEADER:
            raise ValueError(f"{path}:1: expected the header {INTER_HEADER!r}, got {header!r}")
        for lineno, line in enumerate(f, 2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise ValueError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(fields)}")
            try:
                user, history, target = int(fields[0]), [int(t) for t in fields[1].split()], int(fields[2])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: user, history and target must be integer indices") from None
            if not 0 <= user < len(users):
                raise ValueError(f"{path}:{lineno}: user index {user} is not in user2index (0..{len(users) - 1})")
            bad = [i for i in (*history, target) if not 0 <= i < num_items]
            if bad:
                raise ValueError(f"{path}:{lineno}: item index {bad[0]} is not in item2index (0..{num_items - 1})")
            if not history:
                raise ValueError(f"{path}:{lineno}: empty history")
            user_rows.append(user)
            lengths.append(len(history))
            flat.extend(history)
            targets.append(target)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    return SequenceSplit(users[np.array(user_rows, dtype=np.int64)], offsets, np.array(flat) + 1, np.array(targets) + 1)


def _read_texts(path: Path | None, item_index: dict[str, int]) -> np.ndarray:
    texts = np.full(len(item_index), "", dtype=object)
    if path is None:
        return texts
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n")
        if header != TEXT_HEADER:
            raise ValueError(f"{path}:1: expected the header {TEXT_HEADER!r}, got {header!r}")
        for lineno, line in enumerate(f, 2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2:
                raise ValueError(f"{path}:{lineno}: expected 2 tab-separated columns, got {len(fields)}")
            # The released files hold texts of items outside the index too (dropped by filtering): skip them.
            if fields[0] in item_index:
                texts[item_index[fields[0]]] = fields[1].strip()
    return texts


def read_feature_file(path: str | os.PathLike, num_items: int, dim: int) -> np.ndarray:
    """A raw float32 feature file as a read-only `[num_items, dim]` memory map (no copy)."""
    size = os.path.getsize(path)
    if size % (4 * dim):
        raise ValueError(f"{path}: {size} bytes is not a whole number of float32 rows of width {dim}")
    if size // (4 * dim) != num_items:
        raise ValueError(f"{path}: {size // (4 * dim)} rows of width {dim}, but item2index lists {num_items} items")
    features = np.memmap(path, dtype="<f4", mode="r", shape=(num_items, dim))
    if not np.isfinite(features).all():
        row = int(np.flatnonzero(~np.isfinite(features).all(1))[0])
        raise ValueError(f"{path}: row {row} (item index {row}) holds NaN or Inf")
    return features


def read_missrec_folder(
    folder: str | os.PathLike, domain: str, *, text_dim: int = 512, image_dim: int = 512
) -> DomainData:
    """Read a domain in the MISSRec/UniSRec format (see the module docstring).

    Args:
        folder: the folder with the `<domain>.*` files.
        domain: the file prefix, e.g. `"Scientific"`.
        text_dim, image_dim: widths of the text (`feat1CLS`, `feat2CLS`) and image (`feat3CLS`) features.

    Returns:
        A [`DomainData`]: item `i + 1` is index `i` of the files, has_text / has_image are the non-zero rows.
    """
    item_index = _read_index(_path(folder, domain, "item2index"))
    user_index = _read_index(_path(folder, domain, "user2index"))
    source_ids = np.empty(len(item_index), dtype=object)
    source_ids[list(item_index.values())] = list(item_index.keys())
    users = np.empty(len(user_index), dtype=object)
    users[list(user_index.values())] = list(user_index.keys())
    splits = {
        name: _read_inter(_path(folder, domain, suffix), users, len(item_index)) for name, suffix in SPLIT_FILES.items()
    }
    features = {}
    for name, suffix in FEATURE_FILES.items():
        path = _path(folder, domain, suffix, required=name != "alt_text_features")
        if path is not None:
            dim = image_dim if name == "image_features" else text_dim
            features[name] = read_feature_file(path, len(item_index), dim)
    return DomainData(
        name=domain,
        source_ids=source_ids,
        texts=_read_texts(_path(folder, domain, "text", required=False), item_index),
        features=features,
        has_text=features["text_features"].any(1),
        has_image=features["image_features"].any(1),
        splits=splits,
    )


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_missrec_folder(data: DomainData, folder: str | os.PathLike) -> Path:
    """Write `data` in the MISSRec/UniSRec format (the inverse of [`read_missrec_folder`]).

    Every file is written under a temporary name and renamed, so a reader never sees half a file.

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    users = {u: i for i, u in enumerate(dict.fromkeys(data.splits["test"].users))}
    for split in data.splits.values():
        for user in split.users:
            users.setdefault(user, len(users))

    def lines(path: Path, rows) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(rows)

    name = data.name
    _write_atomic(
        folder / f"{name}.item2index", lambda p: lines(p, (f"{s}\t{i}\n" for i, s in enumerate(data.source_ids)))
    )
    _write_atomic(folder / f"{name}.user2index", lambda p: lines(p, (f"{u}\t{i}\n" for u, i in users.items())))
    _write_atomic(
        folder / f"{name}.text",
        lambda p: lines(p, [TEXT_HEADER + "\n", *(f"{s}\t{t}\n" for s, t in zip(data.source_ids, data.texts) if t)]),
    )
    for split_name, suffix in SPLIT_FILES.items():
        split = data.splits[split_name]
        rows = (
            f"{users[split.users[r]]}\t{' '.join(map(str, split.history(r) - 1))}\t{split.targets[r] - 1}\n"
            for r in range(len(split))
        )
        _write_atomic(folder / f"{name}.{suffix}", lambda p, rows=rows: lines(p, [INTER_HEADER + "\n", *rows]))
    for feature_name, suffix in FEATURE_FILES.items():
        if feature_name in data.features:
            table = np.ascontiguousarray(data.features[feature_name], dtype="<f4")
            _write_atomic(folder / f"{name}.{suffix}", table.tofile)
    return folder
