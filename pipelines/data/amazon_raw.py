"""Turn the raw Amazon Review 2018 files of a domain into a [`DomainData`].

Input, per category (Ni et al., "Justifying recommendations using distantly-labeled reviews and fine-grained
aspects", EMNLP 2019): `<Category>.json.gz` (one review per line: `reviewerID`, `asin`, `unixReviewTime`,
`overall`, `reviewText`, ...) and `meta_<Category>.json.gz` (one item per line: `asin`, `title`, `category`
(a list), `brand`, `imageURL` / `imageURLHighRes` (lists), ...). Lines are JSON, or Python dict literals as in
some of the released metadata files; both are read. Item images are not in these files: pass a folder of
`<asin>.jpg|.jpeg|.png` files as `image_dir` (e.g. downloaded from `imageURLHighRes`).

Processing follows UniSRec's `dataset/preprocessing/process_amazon.py` (RUCAIBox/UniSRec), which MISSRec
(gimpong/MM23-MISSRec, no pre-processing script of its own) points to for custom data:

1. **Dedupe**: the 2018 review files hold some reviews more than once. UniSRec reads the
   "ratings only" CSV into a *set* of `(user, item, rating, time)`; we drop later lines with the same
   `(reviewerID, asin, unixReviewTime)` and keep the first. The same user buying the same item again at
   another time stays, as in UniSRec.
2. **Items without metadata** (no line in the meta file) lose their reviews, before k-core (as UniSRec).
   The first meta line of an ASIN wins when the meta file repeats it (as UniSRec's `generate_text`).
3. **Iterative k-core**: drop users with fewer than `min_interactions` and items with fewer than
   `min_item_interactions` reviews, repeated until nothing changes (UniSRec's `filter_inters` loop; the
   result is the unique largest sub-graph meeting both thresholds, whatever the removal order).
4. **Chronological order** per user by `unixReviewTime`; ties keep the file order (UniSRec sorts an
   unordered set, so its ties are random: its README warns about it). Users come in the order of their
   first review line in the file, dropped reviews included (UniSRec: set order, i.e. random).
5. **Item ids** 1..N in order of first appearance when the users' sequences are read one after the other
   (UniSRec's `convert_inters2dict`, shifted by one for the padding id 0).
6. **Leave-one-out** splits with at most `max_history` items per history ([`leave_one_out`], RecBole's).
7. **Item text** = cleaned title, categories and brand, each ending with one `.`, joined by spaces, e.g.
   `"Gorilla Glue, 8 ounce. Industrial & Scientific Tapes, Adhesives & Sealants. Gorilla."` -- the format
   of the released `Scientific.text`. Cleaning as UniSRec's `clean_text` (list fields joined by spaces,
   HTML entities unescaped, `"` and line breaks removed, trailing dots folded into one, a field of 2000
   characters or more dropped as page junk) plus HTML tags removed and runs of whitespace folded. Unlike
   UniSRec an empty field adds nothing (UniSRec writes a lone `.`), so an item with no title, category or
   brand gets `""` and `has_text=False`.
8. **Features** with `pipelines/data/feature_extraction.py` (CLIP text/image, or a sentence encoder for text).
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import logging
import os
import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .domain_data import AMAZON_CATEGORIES, DomainData, leave_one_out
from .feature_extraction import TEXT_KINDS, extract_catalogue_text_features, extract_image_features, shard_folder

logger = logging.getLogger(__name__)

try:  # optional: orjson parses the review lines about 3x faster; its errors are ValueErrors too
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    _loads = json.loads

# Public locations of the Amazon Review 2018 per-category files. The dataset page moved from
# https://nijianmo.github.io/amazon/index.html to https://cseweb.ucsd.edu/~jmcauley/datasets/amazon_v2/, whose
# links point to mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/{categoryFiles,metaFiles2}/ (found with the
# code search, e.g. dataset READMEs linking `.../metaFiles2/meta_Industrial_and_Scientific.json.gz` from that
# page). The same paths were published earlier under datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/ and
# jmcauley.ucsd.edu/data/amazon_v2/, kept here as mirrors. "Complete review data" = categoryFiles (all reviews,
# the input of `prepare_amazon_2018`); categoryFilesSmall holds the ratings-only CSVs and the 5-core subsets.
AMAZON_2018_URL = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2"
AMAZON_2018_MIRRORS = (
    AMAZON_2018_URL,
    "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2",
    "https://jmcauley.ucsd.edu/data/amazon_v2",
)
AMAZON_2018_REVIEWS_FOLDER = "categoryFiles"
AMAZON_2018_META_FOLDER = "metaFiles2"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # preference order when an ASIN has several files
TEXT_FIELDS = ("title", "category", "brand")
MAX_FIELD_CHARS = 2000  # UniSRec drops a cleaned field this long or longer (pages of HTML/JS in some titles)
_TAG = re.compile(r"<[^<>]*>")
_SPACE = re.compile(r"\s+")
_TRAILING_DOTS = re.compile(r"[\s.]+$")


def category_name(domain: str) -> str:
    """The 2018 file stem of `domain`: a key of `AMAZON_CATEGORIES` (`"Scientific"`) or a stem itself."""
    if domain in AMAZON_CATEGORIES:
        return AMAZON_CATEGORIES[domain]
    if domain in AMAZON_CATEGORIES.values():
        return domain
    raise ValueError(
        f"unknown Amazon domain {domain!r}; expected one of {sorted(AMAZON_CATEGORIES)} "
        f"or a category file stem such as {AMAZON_CATEGORIES['Scientific']!r}"
    )


def raw_file_names(domain: str) -> dict[str, str]:
    """`{"reviews": "<Category>.json.gz", "meta": "meta_<Category>.json.gz"}` for `domain`."""
    stem = category_name(domain)
    return {"reviews": f"{stem}.json.gz", "meta": f"meta_{stem}.json.gz"}


def raw_file_urls(domain: str, base_url: str = AMAZON_2018_URL) -> dict[str, str]:
    """Download locations of a domain's raw files: `{"reviews": url, "meta": url}`.

    Args:
        domain: a key of `AMAZON_CATEGORIES` (e.g. `"Scientific"`) or a category stem
            (`"Industrial_and_Scientific"`).
        base_url: the `amazon_v2` folder; one of `AMAZON_2018_MIRRORS` if the default host is down.
    """
    names = raw_file_names(domain)
    base = base_url.rstrip("/")
    return {
        "reviews": f"{base}/{AMAZON_2018_REVIEWS_FOLDER}/{names['reviews']}",
        "meta": f"{base}/{AMAZON_2018_META_FOLDER}/{names['meta']}",
    }


# ---------------------------------------------------------------------------------------------- reading


def _open_lines(path: Path):
    """A binary line iterator over `path`, gunzipping when it starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _check_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist (or is not a file)")
    return path


def iter_json_lines(
    path: str | os.PathLike, *, progress: bool = True, desc: str | None = None
) -> Iterator[tuple[int, dict]]:
    """Stream `(line_number, record)` from a JSON-lines file, gzip-compressed or not.

    A line is parsed as JSON, else as a Python dict literal (the format of some 2018 metadata files). Blank
    lines are skipped. A line that is neither, or is not a dict, raises a `ValueError` naming the file and
    line; so does a corrupt or truncated gzip stream.

    Args:
        path: the file.
        progress: show a `tqdm` bar counting lines.
        desc: the bar's label (default: the file name).
    """
    from tqdm.auto import tqdm

    path = _check_file(path, "input")
    lineno = 0
    try:
        with (
            _open_lines(path) as f,
            tqdm(desc=desc or f"reading {path.name}", unit=" lines", disable=not progress) as bar,
        ):
            for lineno, line in enumerate(f, 1):
                if lineno % 10_000 == 0:  # a bar update per line would cost more than the parsing
                    bar.update(10_000)
                if not line.strip():
                    continue
                try:
                    record = _loads(line)
                except ValueError:
                    record = _parse_slowly(line, path, lineno)
                if not isinstance(record, dict):
                    raise ValueError(f"{path}:{lineno}: expected an object, got {type(record).__name__}")
                yield lineno, record
            bar.update(lineno % 10_000)
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError; a truncated stream an EOFError
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{path}: unreadable after line {lineno} ({type(error).__name__}: {error})") from error


def _parse_slowly(line: bytes, path: Path, lineno: int):
    """A line the fast parser refused: JSON with the standard library (it accepts NaN), else a Python literal."""
    try:
        return json.loads(line)
    except ValueError:
        pass
    try:
        return ast.literal_eval(line.decode("utf-8").strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        snippet = line[:80].decode("utf-8", "replace").strip()
        raise ValueError(f"{path}:{lineno}: not a JSON object nor a Python dict literal: {snippet!r}") from None


def _required_str(record: dict, key: str, path: Path, lineno: int) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{path}:{lineno}: {key!r} is missing or not a non-empty string (got {value!r})")
    return value


def read_metadata(path: str | os.PathLike, *, progress: bool = True) -> dict[str, dict]:
    """ASIN -> its text fields (`title`, `category`, `brand`, where present) from a `meta_*.json.gz` file.

    The first line of an ASIN wins when the file repeats it. Other fields are not kept (the files are large).
    """
    path = _check_file(path, "metadata")
    meta: dict[str, dict] = {}
    for lineno, record in iter_json_lines(path, progress=progress, desc=f"reading {path.name}"):
        asin = _required_str(record, "asin", path, lineno)
        if asin not in meta:
            meta[asin] = {key: record[key] for key in TEXT_FIELDS if key in record}
    return meta


@dataclass
class ReviewTable:
    """Reviews as parallel arrays, one row per kept review line, in file order.

    Attributes:
        users: `[U]` reviewerIDs, in the order of their first review line (skipped reviews included);
            `user_codes` index it.
        items: `[I]` ASINs; `item_codes` index it.
        user_codes, item_codes: `[R]` int64.
        times: `[R]` int64 `unixReviewTime`.
        lines: `[R]` int64 line numbers (1-based) of the reviews.
        skipped_without_meta: reviews dropped because their item has no metadata.
    """

    users: list[str]
    items: list[str]
    user_codes: np.ndarray
    item_codes: np.ndarray
    times: np.ndarray
    lines: np.ndarray
    skipped_without_meta: int = 0


def read_reviews(
    path: str | os.PathLike, *, known_items: dict | set | None = None, progress: bool = True
) -> ReviewTable:
    """Read a `<Category>.json.gz` review file into a [`ReviewTable`].

    Args:
        path: the review file.
        known_items: when given, reviews of items not in it (items without metadata) are skipped while reading.
        progress: show a `tqdm` bar counting lines.
    """
    path = _check_file(path, "review")
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    user_codes, item_codes, times, lines = array("q"), array("q"), array("q"), array("q")
    skipped = 0
    for lineno, record in iter_json_lines(path, progress=progress, desc=f"reading {path.name}"):
        user = _required_str(record, "reviewerID", path, lineno)
        asin = _required_str(record, "asin", path, lineno)
        time = record.get("unixReviewTime")
        if isinstance(time, bool) or not isinstance(time, (int, float, str)):
            raise ValueError(f"{path}:{lineno}: 'unixReviewTime' is missing or not a number (got {time!r})")
        try:
            time = int(time)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: 'unixReviewTime' {time!r} is not an integer") from None
        # Codes before the metadata check: users keep the order of their first review line in the file.
        user_code = user_index.setdefault(user, len(user_index))
        if known_items is not None and asin not in known_items:
            skipped += 1
            continue
        user_codes.append(user_code)
        item_codes.append(item_index.setdefault(asin, len(item_index)))
        times.append(time)
        lines.append(lineno)
    return ReviewTable(
        users=list(user_index),
        items=list(item_index),
        user_codes=np.frombuffer(user_codes, dtype=np.int64),
        item_codes=np.frombuffer(item_codes, dtype=np.int64),
        times=np.frombuffer(times, dtype=np.int64),
        lines=np.frombuffer(lines, dtype=np.int64),
        skipped_without_meta=skipped,
    )


# ------------------------------------------------------------------------------------------- filtering


def first_occurrences(*keys: np.ndarray) -> np.ndarray:
    """`[R]` bool: True on the first row of every distinct key tuple (rows compared across all `keys`)."""
    n = len(keys[0])
    order = np.lexsort(tuple(reversed(keys)))  # stable: equal keys stay in row order
    same = np.ones(max(n - 1, 0), dtype=bool)
    for key in keys:
        same &= key[order[1:]] == key[order[:-1]]
    first = np.ones(n, dtype=bool)
    first[order[1:][same]] = False
    return first


def k_core_mask(
    user_codes: np.ndarray, item_codes: np.ndarray, min_user: int, min_item: int | None = None
) -> tuple[np.ndarray, int]:
    """Iterative k-core filter of interactions, vectorised.

    Drops every interaction of users with fewer than `min_user` and items with fewer than `min_item` (default
    `min_user`) remaining interactions, and repeats until nothing changes (repeated user-item pairs count
    each time, as in UniSRec).

    Returns:
        `([R] bool mask of the kept interactions, number of filtering rounds that removed something)`.
    """
    min_item = min_user if min_item is None else min_item
    user_codes, item_codes = np.asarray(user_codes), np.asarray(item_codes)
    keep = np.ones(len(user_codes), dtype=bool)
    rounds = 0
    num_users = int(user_codes.max()) + 1 if len(user_codes) else 0
    num_items = int(item_codes.max()) + 1 if len(item_codes) else 0
    while True:
        user_count = np.bincount(user_codes[keep], minlength=num_users)
        item_count = np.bincount(item_codes[keep], minlength=num_items)
        new_keep = keep & (user_count[user_codes] >= min_user) & (item_count[item_codes] >= min_item)
        if np.array_equal(new_keep, keep):
            return keep, rounds
        keep, rounds = new_keep, rounds + 1


# ------------------------------------------------------------------------------------------------ text


def clean_text(value) -> str:
    """One metadata field as text (UniSRec's `clean_text` plus tag stripping; see the module docstring).

    Lists are joined by spaces, HTML entities unescaped, tags, `"` and line breaks removed, whitespace folded,
    trailing dots (and spaces between them) folded into exactly one. Returns `""` for a missing or empty field or one of
    `MAX_FIELD_CHARS` characters or more.
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value if v is not None)
    elif isinstance(value, dict):
        value = " ".join(str(v) for v in value.values() if v is not None)
    text = html.unescape(str(value))
    text = _TAG.sub(" ", text).replace('"', "")
    text = _SPACE.sub(" ", text).strip()
    text = _TRAILING_DOTS.sub("", text)
    if not text or len(text) + 1 >= MAX_FIELD_CHARS:
        return ""
    return text + "."


def item_text(meta: dict) -> str:
    """The text of an item: its cleaned `title`, `category` and `brand`, space-joined (`""` if none)."""
    return " ".join(part for part in (clean_text(meta.get(key)) for key in TEXT_FIELDS) if part)


# ---------------------------------------------------------------------------------------------- images


def find_item_images(image_dir: str | os.PathLike, asins) -> list[str | None]:
    """Per ASIN, the path of `<image_dir>/<asin>.jpg|.jpeg|.png` (suffix in any case), or None.

    When an ASIN has several files, `.jpg` beats `.jpeg` beats `.png`. Other files are ignored.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} does not exist (or is not a folder)")
    found: dict[str, tuple[int, str]] = {}
    with os.scandir(image_dir) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            rank = IMAGE_SUFFIXES.index(suffix.lower()) if suffix.lower() in IMAGE_SUFFIXES else -1
            if rank >= 0 and entry.is_file() and (stem not in found or rank < found[stem][0]):
                found[stem] = (rank, entry.path)
    return [found[a][1] if a in found else None for a in asins]


# ------------------------------------------------------------------------------------------ the domain


@dataclass
class AmazonDomain:
    """The outcome of [`read_amazon_2018`]: everything but the feature tables.

    Attributes:
        data: the [`DomainData`] with `features={}` and `has_image` set from `image_paths`.
        image_paths: `[N]` the image file of each item, or None.
        stats: counts along the way (`reviews`, `duplicates`, `without_metadata`, `k_core_rounds`,
            `interactions`, `users`, `items`).
    """

    data: DomainData
    image_paths: list[str | None]
    stats: dict[str, int] = field(default_factory=dict)


def read_amazon_2018(
    reviews_path: str | os.PathLike,
    meta_path: str | os.PathLike,
    *,
    domain: str,
    image_dir: str | os.PathLike | None = None,
    min_interactions: int = 5,
    min_item_interactions: int | None = None,
    max_history: int = 50,
    progress: bool = True,
) -> AmazonDomain:
    """Steps 1-7 of the module docstring: filtered, ordered, split domain with texts and image paths.

    Arguments as [`prepare_amazon_2018`]. Features are not computed (`data.features == {}`).
    """
    min_item_interactions = min_interactions if min_item_interactions is None else min_item_interactions
    if min_interactions < 3:
        raise ValueError(f"min_interactions={min_interactions} must be >= 3 (leave-one-out needs 3 items a user)")
    if min_item_interactions < 1:
        raise ValueError(f"min_item_interactions={min_item_interactions} must be >= 1")
    if max_history < 1:
        raise ValueError(f"max_history={max_history} must be >= 1")
    reviews_path = _check_file(reviews_path, "review")
    meta_path = _check_file(meta_path, "metadata")
    if image_dir is not None and not Path(image_dir).is_dir():
        raise FileNotFoundError(f"image folder {image_dir} does not exist (or is not a folder)")

    meta = read_metadata(meta_path, progress=progress)
    table = read_reviews(reviews_path, known_items=meta, progress=progress)
    first = first_occurrences(table.user_codes, table.item_codes, table.times)
    duplicates = int((~first).sum())
    core, rounds = k_core_mask(
        table.user_codes[first], table.item_codes[first], min_interactions, min_item_interactions
    )
    rows = np.flatnonzero(first)[core]
    stats = {
        "reviews": len(table.user_codes) + table.skipped_without_meta,
        "without_metadata": table.skipped_without_meta,
        "duplicates": duplicates,
        "k_core_rounds": rounds,
        "interactions": len(rows),
    }
    if not len(rows):
        raise ValueError(
            f"{reviews_path}: no user is left after filtering ({stats['reviews']} reviews, "
            f"{stats['without_metadata']} of items without metadata in {meta_path}, {duplicates} duplicates; "
            f"k-core with >= {min_interactions} reviews per user and >= {min_item_interactions} per item)"
        )

    # Chronological per user (ties: file order); users by their first review in the file. Rows are in file
    # order already, so a stable sort on (user code, time) is enough.
    order = rows[np.lexsort((table.times[rows], table.user_codes[rows]))]
    user_codes, item_codes = table.user_codes[order], table.item_codes[order]
    # Item ids 1..N by first appearance in this user-by-user stream.
    codes, first_at = np.unique(item_codes, return_index=True)
    item_order = codes[np.argsort(first_at)]
    item_id = np.zeros(len(table.items), dtype=np.int64)
    item_id[item_order] = np.arange(1, len(item_order) + 1)
    ids = item_id[item_codes]
    boundaries = np.flatnonzero(np.diff(user_codes)) + 1
    users = [table.users[c] for c in user_codes[np.concatenate([[0], boundaries])]]
    histories = np.split(ids, boundaries)

    source_ids = [table.items[c] for c in item_order]
    texts = [item_text(meta[asin]) for asin in source_ids]
    image_paths = find_item_images(image_dir, source_ids) if image_dir is not None else [None] * len(source_ids)
    stats.update(users=len(users), items=len(source_ids))
    logger.info(
        "%s: %d reviews, %d without metadata, %d duplicates; %d-core (%d rounds) -> %d users, %d items, "
        "%d interactions", reviews_path.name, stats["reviews"], stats["without_metadata"], duplicates,
        min_interactions, rounds, len(users), len(source_ids), len(rows),
    )  # fmt: skip
    data = DomainData(
        name=domain,
        source_ids=np.array(source_ids, dtype=object),
        texts=np.array(texts, dtype=object),
        features={},
        has_text=np.array([bool(t) for t in texts]),
        has_image=np.array([p is not None for p in image_paths]),
        splits=leave_one_out(users, histories, max_history=max_history),
    )
    return AmazonDomain(data=data, image_paths=image_paths, stats=stats)


def prepare_amazon_2018(
    reviews_path: str | os.PathLike,
    meta_path: str | os.PathLike,
    *,
    domain: str,
    image_dir: str | os.PathLike | None = None,
    min_interactions: int = 5,
    min_item_interactions: int | None = None,
    max_history: int = 50,
    text_encoder: str = "clip",
    text_model: str | None = None,
    image_model: str | None = None,
    batch_size: int = 64,
    device=None,
    feature_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> DomainData:
    """Raw Amazon 2018 files of one domain -> a [`DomainData`] with text and image features.

    Args:
        reviews_path: `<Category>.json.gz` (the complete review file; see [`raw_file_urls`]).
        meta_path: `meta_<Category>.json.gz`.
        domain: the name of the result (e.g. `"Scientific"`).
        image_dir: a folder of `<asin>.jpg|.jpeg|.png`; items without a file get `has_image=False` and a zero
            image row. None: no item has an image.
        min_interactions: k-core threshold for users (>= 3: leave-one-out needs 3 items a user).
        min_item_interactions: k-core threshold for items (default: `min_interactions`).
        max_history: the longest history kept per example.
        text_encoder: `"clip"` (CLIP text tower, default model openai/clip-vit-base-patch32) or `"sentence"`
            (a sentence encoder, default the offline all-MiniLM-L6-v2).
        text_model: a model name or folder for the text encoder (None: the encoder's default).
        image_model: a CLIP model name or folder for images. None: `text_model` when `text_encoder="clip"` (the
            same CLIP embeds both modalities, as in MISSRec), else the default CLIP. Unused without `image_dir`.
        batch_size, device: for the encoders.
        feature_dir: where extraction writes its shards (a `text-...`/`image-...` subfolder per model and item
            list), so an interrupted run resumes. None: nothing is written.
        progress: show progress bars.

    Without `image_dir` the domain is text-only: it has no image feature table (`has_image` is all False), and a
    model trained on it reads text only.

    Raises:
        FileNotFoundError: a missing review, metadata or image location.
        ValueError: a malformed line (names the file and line), bad arguments, or no user left after filtering.
    """
    if text_encoder not in TEXT_KINDS:
        raise ValueError(f"text_encoder={text_encoder!r}; expected one of {list(TEXT_KINDS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    read = read_amazon_2018(
        reviews_path,
        meta_path,
        domain=domain,
        image_dir=image_dir,
        min_interactions=min_interactions,
        min_item_interactions=min_item_interactions,
        max_history=max_history,
        progress=progress,
    )

    data = read.data
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
    if image_dir is not None:
        if image_model is None and text_encoder == "clip":
            image_model = text_model
        image_features = extract_image_features(
            read.image_paths,
            image_model,
            batch_size=batch_size,
            device=device,
            shard_dir=shard_folder(feature_dir, "image", image_model, read.image_paths),
            progress=progress,
        )
        data.features["image_features"] = np.ascontiguousarray(image_features, dtype=np.float32)
    data.__post_init__()  # validate the feature tables against the catalogue
    return data
