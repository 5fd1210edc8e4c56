"""Read and write the MISSRec / UniSRec pre-processed domain format.

A folder holds, for a domain `<D>` (tab separated, each text file starting with a RecBole header line):

- `<D>.train.inter`, `<D>.valid.inter`, `<D>.test.inter`: `user_id:token  item_id_list:token_seq  item_id:token`,
  0-based user and item indices;
- `<D>.item2index` (`ASIN<TAB>index`) and `<D>.user2index` (`reviewerID<TAB>index`), no header;
- `<D>.text` (optional): `item_id:token  text:token_seq`, the ASIN and the item's text;
- `<D>.feat1CLS` (text), `<D>.feat3CLS` (image), optional `<D>.feat2CLS` (an alternative text view): raw
  little-endian float32, one row per item index. An all-zero row means the modality is missing. A domain needs
  the text file, the image file or both (a text-only domain has no `feat3CLS`);
- `<D>.feature_widths.json` (optional, written by this project): each feature file's width, e.g.
  `{"feat1CLS": 384, "feat3CLS": 512}`.

A feature file's width is its size over the number of items (bytes / 4 / N). Read alone, that is ambiguous: a
file cut short by a multiple of N floats reads as narrower features, every row shifted. So the width must be
recorded (`feature_widths.json`, or `text_dim` / `image_dim` given); otherwise it must be one of the encoders'
widths in [`COMMON_FEATURE_WIDTHS`], and the domain's unrecorded files must share it (as the released folders'
CLIP features do). Anything else, or a width that disagrees with the record, is an error naming the files and
the sizes.

Every malformed line raises a `ValueError` naming the file and the line; nothing is silently dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ...utils_missrec import write_atomically
from .domain_data import DomainData, SequenceSplit
from .text_files import open_utf8

INTER_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token"
TEXT_HEADER = "item_id:token\ttext:token_seq"
SPLIT_FILES = {"train": "train.inter", "validation": "valid.inter", "test": "test.inter"}
FEATURE_FILES = {"text_features": "feat1CLS", "alt_text_features": "feat2CLS", "image_features": "feat3CLS"}
WIDTHS_FILE = "feature_widths.json"
# The output widths of common encoders: MiniLM 384; CLIP ViT-B 512; BERT-base, CLIP ViT-L 768; BERT-large, CLIP
# ViT-H 1024; ViT-H/14 1280; OpenAI ada-002 1536; ResNet-50 2048; text-embedding-3-large 3072; VGG 4096; and 256.
COMMON_FEATURE_WIDTHS = (256, 384, 512, 768, 1024, 1280, 1536, 2048, 3072, 4096)


def _path(folder: str | os.PathLike, domain: str, suffix: str, required: bool = True) -> Path | None:
    path = Path(folder) / f"{domain}.{suffix}"
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"missing {path} (the MISSRec-format files of domain {domain!r})")
        return None
    return path


def _rows(path: Path, columns: int, header: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """(line number, tab-separated fields) of each line after the optional `header`; a wrong count raises."""
    with open_utf8(path) as f:
        if header is not None and (first := f.readline().rstrip("\n")) != header:
            raise ValueError(f"{path}:1: expected the header {header!r}, got {first!r}")
        for lineno, line in enumerate(f, 1 if header is None else 2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != columns:
                raise ValueError(f"{path}:{lineno}: expected {columns} tab-separated columns, got {len(fields)}")
            yield lineno, fields


def _read_index(path: Path) -> dict[str, int]:
    """`token<TAB>index` lines -> {token: index}; indices must be exactly 0..n-1."""
    index: dict[str, int] = {}
    for lineno, (token, value) in _rows(path, 2):
        try:
            index[token] = int(value)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: index {value!r} is not an integer") from None
    values = np.fromiter(index.values(), dtype=np.int64, count=len(index))
    if not np.array_equal(np.sort(values), np.arange(len(values))):
        raise ValueError(f"{path}: indices must be 0..{len(values) - 1}, each once, one per distinct token")
    return index


def _as_indices(path: Path, linenos: list[int], fields: list[str], what: str) -> np.ndarray:
    """Parse whitespace-separated integer `fields` (one string per line) in one numpy call; name a bad line."""
    try:
        return np.array(" ".join(fields).split(), dtype=np.int64)
    except ValueError:
        for lineno, field in zip(linenos, fields):
            if not all(token.lstrip("-").isdigit() for token in field.split()):
                raise ValueError(f"{path}:{lineno}: {what} {field!r} is not made of integer indices") from None
        raise


def _read_inter(path: Path, users: np.ndarray, num_items: int) -> SequenceSplit:
    """One `.inter` file -> a [`SequenceSplit`] with 1-based item ids (parsing and checks vectorised)."""
    linenos, user_fields, history_fields, target_fields = [], [], [], []
    for lineno, (user, history, target) in _rows(path, 3, INTER_HEADER):
        linenos.append(lineno)
        user_fields.append(user)
        history_fields.append(history)
        target_fields.append(target)
    user_ids = _as_indices(path, linenos, user_fields, "user")
    targets = _as_indices(path, linenos, target_fields, "target")
    lengths = np.array([len(h.split()) for h in history_fields], dtype=np.int64)
    items = _as_indices(path, linenos, history_fields, "history")
    if len(user_ids) != len(linenos) or len(targets) != len(linenos):
        row = next(
            r for r, (u, t) in enumerate(zip(user_fields, target_fields)) if len(u.split()) != 1 or len(t.split()) != 1
        )
        raise ValueError(f"{path}:{linenos[row]}: user and target must be one integer index each")
    if (lengths == 0).any():
        raise ValueError(f"{path}:{linenos[int(np.argmax(lengths == 0))]}: empty history")
    bad_users = np.flatnonzero((user_ids < 0) | (user_ids >= len(users)))
    if bad_users.size:
        row = bad_users[0]
        raise ValueError(
            f"{path}:{linenos[row]}: user index {user_ids[row]} is not in user2index (0..{len(users) - 1})"
        )
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    # An item position's line: the history it belongs to, or the target column.
    for ids, line_of in ((items, np.searchsorted(offsets, np.arange(len(items)), side="right") - 1), (targets, None)):
        bad = np.flatnonzero((ids < 0) | (ids >= num_items))
        if bad.size:
            row = bad[0] if line_of is None else line_of[bad[0]]
            raise ValueError(
                f"{path}:{linenos[row]}: item index {ids[bad[0]]} is not in item2index (0..{num_items - 1})"
            )
    return SequenceSplit(users[user_ids], offsets, items + 1, targets + 1)


def _check_split(path: Path, split: SequenceSplit, name: str) -> None:
    """A split must hold rows, and an evaluation split one row per user (a duplicate would be ranked twice)."""
    if len(split) == 0:
        raise ValueError(f"{path}: no rows after the header: the {name} split of a domain cannot be empty")
    if name == "train":
        return
    users, first = np.unique(split.users.astype(str), return_index=True)
    if len(users) < len(split):
        row = int(np.setdiff1d(np.arange(len(split)), first)[0])
        earlier = int(np.flatnonzero(split.users.astype(str) == str(split.users[row]))[0])
        raise ValueError(
            f"{path}:{row + 2}: user {split.users[row]!r} already has a {name} row (line {earlier + 2}): "
            "leave-one-out evaluation holds one row per user"
        )


def _read_texts(path: Path | None, item_index: dict[str, int]) -> np.ndarray:
    texts = np.full(len(item_index), "", dtype=object)
    if path is None:
        return texts
    for _, (source_id, text) in _rows(path, 2, TEXT_HEADER):
        # The released files hold texts of items outside the index too (dropped by filtering): skip them.
        if source_id in item_index:
            texts[item_index[source_id]] = text.strip()
    return texts


def feature_width(path: str | os.PathLike, num_items: int) -> int:
    """The width of a raw float32 feature file of `num_items` rows, from its size; a size that is not a whole
    number of float32 rows of one width raises a `ValueError` naming the file."""
    size = os.path.getsize(path)
    if num_items < 1 or size == 0 or size % (4 * num_items):
        raise ValueError(
            f"{path}: {size} bytes is not {num_items} rows (one per item of item2index) of float32 features "
            "of one width: the file does not belong to this item index, or it is truncated"
        )
    return size // (4 * num_items)


def read_feature_file(path: str | os.PathLike, num_items: int, dim: int | None = None) -> np.ndarray:
    """A raw float32 feature file as a read-only `[num_items, dim]` memory map (no copy).

    `dim=None` infers the width from the file size ([`feature_width`]) and accepts it only if it is one of
    [`COMMON_FEATURE_WIDTHS`]; a given `dim` (the recorded or expected width) is checked against the size.
    """
    if dim is None:
        dim = feature_width(path, num_items)
        if dim not in COMMON_FEATURE_WIDTHS:
            raise ValueError(
                f"{path}: {os.path.getsize(path)} bytes over {num_items} items is {dim} floats per item, a width no "
                f"common encoder has ({', '.join(map(str, COMMON_FEATURE_WIDTHS))}): the file is cut short or "
                f"belongs to another item index. If {dim} is right, record it in the folder's "
                f'<domain>.{WIDTHS_FILE} (e.g. {{"{Path(path).suffix[1:]}": {dim}}}) or pass text_dim / image_dim'
            )
    size = os.path.getsize(path)
    if size != 4 * dim * num_items:
        rows = f"{size // (4 * dim)} rows" if size % (4 * dim) == 0 else "not a whole number of float32 rows"
        raise ValueError(
            f"{path}: {size} bytes is {rows} of width {dim}, but item2index lists {num_items} items "
            f"({4 * dim * num_items} bytes): the file is cut short or belongs to another item index or width"
        )
    features = np.memmap(path, dtype="<f4", mode="r", shape=(num_items, dim))
    if not np.isfinite(features).all():
        row = int(np.flatnonzero(~np.isfinite(features).all(1))[0])
        raise ValueError(f"{path}: row {row} (item index {row}) holds NaN or Inf")
    return features


def read_recorded_widths(folder: str | os.PathLike, domain: str) -> dict[str, int]:
    """The feature widths `<domain>.feature_widths.json` records (`{"feat1CLS": 384, ...}`; `{}` without one)."""
    path = Path(folder) / f"{domain}.{WIDTHS_FILE}"
    if not path.is_file():
        return {}
    try:
        widths = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    suffixes = set(FEATURE_FILES.values())
    if not isinstance(widths, dict) or any(
        k not in suffixes or not isinstance(v, int) or isinstance(v, bool) or v < 1 for k, v in widths.items()
    ):
        raise ValueError(f"{path}: expected {{suffix: width}} over {sorted(suffixes)} with positive integer widths")
    return widths


def expected_width(recorded: int | None, given: int | None, path: Path) -> int | None:
    """The width a feature file must have: the one given by the caller and the recorded one must agree."""
    if recorded is not None and given is not None and recorded != given:
        raise ValueError(f"{path}: the folder records width {recorded}, but width {given} was asked for")
    return given if given is not None else recorded


def read_missrec_folder(
    folder: str | os.PathLike, domain: str, *, text_dim: int | None = None, image_dim: int | None = None
) -> DomainData:
    """Read a domain in the MISSRec/UniSRec format (see the module docstring).

    Args:
        folder: the folder with the `<domain>.*` files.
        domain: the file prefix, e.g. `"Scientific"`.
        text_dim, image_dim: expected widths of the text (`feat1CLS`, `feat2CLS`) and image (`feat3CLS`)
            features; `None` (default) infers each from its file.

    Returns:
        A [`DomainData`]: item `i + 1` is index `i` of the files, has_text / has_image are the non-zero rows
        (all False for a modality without a file).
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
    for name, suffix in SPLIT_FILES.items():
        _check_split(_path(folder, domain, suffix), splits[name], name)
    features, recorded, inferred = {}, read_recorded_widths(folder, domain), {}
    for name, suffix in FEATURE_FILES.items():
        path = _path(folder, domain, suffix, required=False)
        if path is not None:
            given = image_dim if name == "image_features" else text_dim
            dim = expected_width(recorded.get(suffix), given, Path(path))
            features[name] = read_feature_file(path, len(item_index), dim)
            if dim is None:
                inferred[suffix] = features[name].shape[1]
    if len(set(inferred.values())) > 1:  # a common width cut to another common width (512 -> 256) shows here
        widths = ", ".join(f"{domain}.{suffix} {width}" for suffix, width in inferred.items())
        raise ValueError(
            f"{Path(folder) / domain}: the feature files' widths, inferred from their sizes, differ ({widths}): one "
            f"may be cut short. If they are right (two encoders), record them in {domain}.{WIDTHS_FILE}, e.g. "
            + json.dumps({suffix: width for suffix, width in inferred.items()})
        )
    if "text_features" not in features and "image_features" not in features:
        raise FileNotFoundError(
            f"{Path(folder) / domain}: neither {domain}.feat1CLS (text) nor {domain}.feat3CLS (image) exists; "
            "a domain needs the features of at least one modality"
        )
    if "alt_text_features" in features and "text_features" not in features:
        raise ValueError(f"{Path(folder) / domain}.feat2CLS is an alternative text view, but there is no feat1CLS")
    if "alt_text_features" in features and features["alt_text_features"].shape != features["text_features"].shape:
        raise ValueError(
            f"{Path(folder) / domain}.feat2CLS has width {features['alt_text_features'].shape[1]}, but feat1CLS has "
            f"{features['text_features'].shape[1]}: the two text views must have one width"
        )
    none = np.zeros(len(item_index), dtype=bool)
    return DomainData(
        name=domain,
        source_ids=source_ids,
        texts=_read_texts(_path(folder, domain, "text", required=False), item_index),
        features=features,
        has_text=features["text_features"].any(1) if "text_features" in features else none,
        has_image=features["image_features"].any(1) if "image_features" in features else none,
        splits=splits,
    )


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

    def lines(rows) -> Callable[[BinaryIO], None]:
        return lambda file: file.writelines(row.encode("utf-8") for row in rows)

    name = data.name
    write_atomically(folder / f"{name}.item2index", lines((f"{s}\t{i}\n" for i, s in enumerate(data.source_ids))))
    write_atomically(folder / f"{name}.user2index", lines((f"{u}\t{i}\n" for u, i in users.items())))
    write_atomically(
        folder / f"{name}.text",
        lines([TEXT_HEADER + "\n", *(f"{s}\t{t}\n" for s, t in zip(data.source_ids, data.texts) if t)]),
    )
    for split_name, suffix in SPLIT_FILES.items():
        split = data.splits[split_name]
        rows = (
            f"{users[split.users[r]]}\t{' '.join(map(str, split.history(r) - 1))}\t{split.targets[r] - 1}\n"
            for r in range(len(split))
        )
        write_atomically(folder / f"{name}.{suffix}", lines([INTER_HEADER + "\n", *rows]))
    widths = {}
    for feature_name, suffix in FEATURE_FILES.items():
        if feature_name in data.features:
            table = np.ascontiguousarray(data.features[feature_name], dtype="<f4")
            write_atomically(folder / f"{name}.{suffix}", table.tofile)
            widths[suffix] = table.shape[1]
    write_feature_widths(folder, name, widths)
    return folder


def write_feature_widths(folder: str | os.PathLike, domain: str, widths: dict[str, int]) -> None:
    """Record each feature file's width in `<domain>.feature_widths.json` (entries for other files kept)."""
    path = Path(folder) / f"{domain}.{WIDTHS_FILE}"
    merged = {**read_recorded_widths(folder, domain), **widths}
    write_atomically(path, lambda file: file.write(json.dumps(merged, sort_keys=True).encode()))
