"""Turn a domain in RecBole's "atomic files" into a [`DomainData`] (the format of RecBole's public datasets).

Input, for a domain `<D>` (tab separated, each file starting with a `name:type` header line, RecBole's types
`token`, `token_seq`, `float`, `float_seq`):

- `<D>.inter`: one interaction a line, with at least the columns `user_id`, `item_id` and `timestamp`
  (other columns are ignored);
- `<D>.item`: one item a line, `item_id` and the text fields (e.g. `title:token_seq`, `categories:token_seq`,
  `brand:token`). Every item of `<D>.inter` needs a row; rows of items without interactions are ignored.

Processing:

1. Interactions are ordered per user by `timestamp` (ties keep the file order); users come in the order of
   their first line. Repeated (user, item) interactions stay (repeat visits are part of the sequence).
2. Users with fewer than 3 interactions are dropped (leave-one-out needs a train, a validation and a test
   item) and counted in the statistics; so are the items left without interactions by that drop.
3. Item ids 1..N in order of first appearance over the ordered users, as the Amazon sources.
4. Chronological leave-one-out, histories capped at `max_history` ([`leave_one_out`]).
5. Item text: the `text_fields` of `<D>.item`, each field's words whitespace-folded, joined by spaces.
   Default fields: every `token` / `token_seq` column but `item_id`, in file order. An item whose fields are
   all empty gets `""` and `has_text=False` (a missing modality), counted in the statistics.
6. Text features with `pipelines/data/feature_extraction.py` (the sentence encoder by default, CLIP text as an
   option). The domain is text-only: it has no image table.

Malformed input (a missing column, a wrong number of fields, a timestamp that is not a number, an item missing
from `<D>.item`) raises a `ValueError` naming the file and the line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .domain_data import DomainData, leave_one_out
from .feature_extraction import TEXT_KINDS, extract_catalogue_text_features
from .text_files import open_utf8

logger = logging.getLogger(__name__)

REQUIRED_INTER_COLUMNS = ("user_id", "item_id", "timestamp")
TEXT_TYPES = ("token", "token_seq")
MIN_INTERACTIONS = 3  # leave-one-out: a train, a validation and a test item
_SPACE = re.compile(r"\s+")


def atomic_file(folder: str | os.PathLike, domain: str, suffix: str) -> Path:
    """`<folder>/<domain>.<suffix>`; a missing file raises `FileNotFoundError` naming it."""
    path = Path(folder) / f"{domain}.{suffix}"
    if not path.is_file():
        raise FileNotFoundError(f"missing {path} (the RecBole atomic files of domain {domain!r})")
    return path


def read_header(path: Path, header_line: str) -> list[tuple[str, str]]:
    """`[(name, type), ...]` of an atomic file's first line (`name:type` fields); a malformed one raises."""
    columns = []
    for field in header_line.rstrip("\n").split("\t"):
        name, _, kind = field.partition(":")
        if not name or not kind:
            raise ValueError(f"{path}:1: header field {field!r} is not of the form name:type (e.g. item_id:token)")
        columns.append((name, kind))
    names = [name for name, _ in columns]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}:1: header {names} names a column twice")
    return columns


def _lines(path: Path, columns: int) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line after the header; a line without `columns` fields raises."""
    with open_utf8(path) as f:
        next(f, None)
        for lineno, line in enumerate(f, 2):
            line = line.rstrip("\n").rstrip("\r")
            if line.strip():
                fields = line.split("\t")
                if len(fields) != columns:
                    raise ValueError(f"{path}:{lineno}: expected {columns} tab-separated columns, got {len(fields)}")
                yield lineno, fields


def _columns_of(path: Path, wanted: Sequence[str]) -> tuple[list[tuple[str, str]], list[int]]:
    """The header of an atomic file and the positions of its `wanted` columns (a missing one raises)."""
    with open_utf8(path) as f:
        header = read_header(path, f.readline())
    names = [name for name, _ in header]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise ValueError(f"{path}:1: the header has no column {missing[0]!r} (columns: {names})")
    return header, [names.index(name) for name in wanted]


def read_interactions(path: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """The `user_id`, `item_id` and `timestamp` columns of an `.inter` file, and each row's line number.

    Returns:
        `(users, items, timestamps [R] float64, line numbers [R] int64)`, in file order.
    """
    header, (user_col, item_col, time_col) = _columns_of(path, REQUIRED_INTER_COLUMNS)
    users, items, times, linenos = [], [], [], []
    for lineno, fields in _lines(path, len(header)):
        users.append(fields[user_col])
        items.append(fields[item_col])
        times.append(fields[time_col])
        linenos.append(lineno)
    try:
        timestamps = np.array(times, dtype=np.float64)
    except ValueError:
        row = next(r for r, t in enumerate(times) if not _is_number(t))
        raise ValueError(f"{path}:{linenos[row]}: timestamp {times[row]!r} is not a number") from None
    if not np.isfinite(timestamps).all():
        row = int(np.flatnonzero(~np.isfinite(timestamps))[0])
        raise ValueError(f"{path}:{linenos[row]}: timestamp {times[row]!r} is not a finite number")
    empty = next((r for r, (u, i) in enumerate(zip(users, items)) if not u.strip() or not i.strip()), None)
    if empty is not None:
        raise ValueError(f"{path}:{linenos[empty]}: empty user_id or item_id")
    return users, items, timestamps, np.array(linenos, dtype=np.int64)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def read_item_texts(path: Path, text_fields: Sequence[str] | None = None) -> tuple[dict[str, str], list[str]]:
    """`{item_id: text}` from an `.item` file (see the module docstring, step 5), and the fields used.

    Args:
        path: the `.item` file.
        text_fields: the columns whose values make the text, in this order (None: every `token`/`token_seq`
            column but `item_id`, in file order).
    """
    header, (item_col,) = _columns_of(path, ["item_id"])
    names = [name for name, _ in header]
    if text_fields is None:
        text_fields = [name for name, kind in header if name != "item_id" and kind in TEXT_TYPES]
        if not text_fields:
            raise ValueError(f"{path}:1: no text column (of type token or token_seq) besides item_id: {names}")
    else:
        text_fields = list(text_fields)
        missing = [name for name in text_fields if name not in names]
        if missing or not text_fields:
            raise ValueError(f"{path}:1: text_fields {text_fields} are not all columns of the header {names}")
    text_cols = [names.index(name) for name in text_fields]
    texts: dict[str, str] = {}
    for lineno, fields in _lines(path, len(header)):
        item = fields[item_col]
        if item in texts:
            raise ValueError(f"{path}:{lineno}: item {item!r} has a second row")
        texts[item] = " ".join(w for w in (_SPACE.sub(" ", fields[c]).strip() for c in text_cols) if w)
    return texts, text_fields


def read_atomic_domain(
    folder: str | os.PathLike,
    domain: str,
    *,
    text_fields: Sequence[str] | None = None,
    max_history: int = 50,
) -> tuple[DomainData, dict]:
    """Steps 1-5 of the module docstring: the ordered, split domain with its item texts, no features yet.

    Returns:
        `(data, statistics)`: `data.features == {}`; statistics count the interactions read, the users and
        interactions dropped for having fewer than 3 interactions, the items left, the items without text and
        the text fields used.
    """
    if max_history < 1:
        raise ValueError(f"max_history={max_history} must be >= 1")
    inter_path, item_path = atomic_file(folder, domain, "inter"), atomic_file(folder, domain, "item")
    users, items, timestamps, linenos = read_interactions(inter_path)
    if not users:
        raise ValueError(f"{inter_path}: no interaction")
    item_texts, fields = read_item_texts(item_path, text_fields)
    user_names, user_codes = np.unique(np.array(users, dtype=object), return_inverse=True)
    item_names, item_codes = np.unique(np.array(items, dtype=object), return_inverse=True)
    unknown = [r for r, known in enumerate(name in item_texts for name in item_names) if not known]
    if unknown:
        row = int(np.flatnonzero(np.isin(item_codes, unknown))[0])
        raise ValueError(f"{inter_path}:{linenos[row]}: item {items[row]!r} has no row in {item_path}")

    counts = np.bincount(user_codes, minlength=len(user_names))
    kept = counts[user_codes] >= MIN_INTERACTIONS
    rows = np.flatnonzero(kept)
    if not len(rows):
        raise ValueError(f"{inter_path}: no user has {MIN_INTERACTIONS} or more interactions")
    # Users in the order of their first line; within a user by time, ties in file order (a stable sort).
    first_line = np.full(len(user_names), len(users), dtype=np.int64)
    np.minimum.at(first_line, user_codes, np.arange(len(users)))
    user_rank = np.argsort(np.argsort(first_line, kind="stable"), kind="stable")
    order = rows[np.lexsort((timestamps[rows], user_rank[user_codes[rows]]))]
    ordered_users, ordered_items = user_codes[order], item_codes[order]
    codes, first_at = np.unique(ordered_items, return_index=True)
    item_order = codes[np.argsort(first_at)]
    item_id = np.zeros(len(item_names), dtype=np.int64)
    item_id[item_order] = np.arange(1, len(item_order) + 1)
    boundaries = np.flatnonzero(np.diff(ordered_users)) + 1
    user_ids = [str(user_names[c]) for c in ordered_users[np.concatenate([[0], boundaries])]]
    histories = np.split(item_id[ordered_items], boundaries)

    source_ids = np.array([str(item_names[c]) for c in item_order], dtype=object)
    texts = np.array([item_texts[s] for s in source_ids], dtype=object)
    has_text = np.array([bool(t) for t in texts])
    statistics = {
        "interactions_read": len(users),
        "users_read": len(user_names),
        "users_dropped_below_3_interactions": int((counts < MIN_INTERACTIONS).sum()),
        "interactions_dropped_with_them": int((~kept).sum()),
        "items_without_interactions_after_drop": len(item_names) - len(item_order),
        "users": len(user_ids),
        "items": len(source_ids),
        "interactions": len(order),
        "items_without_text": int((~has_text).sum()),
        "text_fields": fields,
    }
    logger.info(
        "%s: %d interactions of %d users read; %d users with < %d interactions dropped (%d interactions); "
        "%d users, %d items (%d without text) kept",
        inter_path.name, len(users), len(user_names), statistics["users_dropped_below_3_interactions"],
        MIN_INTERACTIONS, statistics["interactions_dropped_with_them"], len(user_ids), len(source_ids),
        statistics["items_without_text"],
    )  # fmt: skip
    data = DomainData(
        name=domain,
        source_ids=source_ids,
        texts=texts,
        features={},
        has_text=has_text,
        has_image=np.zeros(len(source_ids), dtype=bool),
        splits=leave_one_out(user_ids, histories, max_history=max_history),
    )
    return data, statistics


def prepare_atomic_domain(
    folder: str | os.PathLike,
    domain: str,
    *,
    text_fields: Sequence[str] | None = None,
    max_history: int = 50,
    text_encoder: str = "sentence",
    text_model: str | None = None,
    batch_size: int = 64,
    device=None,
    feature_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[DomainData, dict]:
    """RecBole atomic files of one domain -> a text-only [`DomainData`] with text features, and its statistics.

    Args:
        folder: the folder with `<domain>.inter` and `<domain>.item`.
        domain: the file prefix (e.g. `"MovieLens100K"`).
        text_fields: the `.item` columns that make an item's text (None: every text column; see the module
            docstring).
        max_history: the longest history kept per example.
        text_encoder: `"sentence"` (default: the offline all-MiniLM-L6-v2, 384-d) or `"clip"` (CLIP's text tower).
        text_model: a model name or folder for the encoder (None: the encoder's default).
        batch_size, device: for the encoder.
        feature_dir: where extraction writes its shards, so an interrupted run resumes (None: nothing is written).
        progress: show progress bars.

    Raises:
        FileNotFoundError: a missing `.inter` or `.item` file.
        ValueError: malformed input (names the file and line) or bad arguments.
    """
    if text_encoder not in TEXT_KINDS:
        raise ValueError(f"text_encoder={text_encoder!r}; expected one of {list(TEXT_KINDS)}")
    data, statistics = read_atomic_domain(folder, domain, text_fields=text_fields, max_history=max_history)
    text_features = extract_catalogue_text_features(
        data.texts,
        text_encoder=text_encoder,
        text_model=text_model,
        batch_size=batch_size,
        device=device,
        feature_dir=feature_dir,
        progress=progress,
    )
    data.features = {"text_features": text_features}
    data.__post_init__()
    return data, statistics
