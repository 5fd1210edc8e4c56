"""One call from the data a user has to MISSRec-ready tables: `load_domain`, `mix_domains`, `domain_statistics`."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .builder import ITEMS_SPLIT, MISSRecAmazon
from .collator import arrow_table
from .domain_data import SPLITS


@dataclass
class MultiModalDomain:
    """A built domain (or a mix of domains).

    Attributes:
        name: the domain name, or the `+`-joined names of a mix.
        sequences: `DatasetDict` with splits train / validation / test (`user`, `history`, `target`, `split`).
        items: `Dataset` of the catalogue, row `i` = item id `i + 1` (`item_id`, `source_id`, `text`,
            `text_features`, `image_features`, optional `alt_text_features`, `has_text`, `has_image`).
        build: how it was built (`source`, `max_history`, ... of the builder config; `domains` for a mix).
    """

    name: str
    sequences: datasets.DatasetDict
    items: datasets.Dataset
    build: dict = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return len(self.items)


def files_fingerprint(*folders: str | os.PathLike | None) -> str | None:
    """A hash of the names (within their folder), sizes and contents of the files in `folders` (None if none is
    given).

    Contents rather than modification times: the same folder written again with the same bytes (a fresh checkout,
    data re-provisioned at each session) keeps its cache, and re-encoding a catalogue's text costs minutes where
    hashing its files costs a fraction of a second (35 MB in 0.14 s here; a folder of many GB of images costs
    seconds at each load). The folder's path is part of the cache key too (`load_domain`).
    """
    entries = []
    for position, folder in enumerate(folders):
        if folder is not None and Path(folder).is_dir():
            for path in sorted(Path(folder).rglob("*")):
                if path.is_file():
                    entries.append((position, path.relative_to(folder).as_posix(), path.stat().st_size, _digest(path)))
    return datasets.fingerprint.Hasher.hash(entries) if entries else None


def _digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_domain(
    domain: str = "demo",
    *,
    source: str | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download_mode: str | None = None,
    **config_kwargs,
) -> MultiModalDomain:
    """Build (or reuse from the `datasets` cache) both tables of a domain.

    Args:
        domain: `"demo"`, an Amazon domain (`"Scientific"`, `"Food"`, ...) or the file prefix of one's own
            MISSRec-format domain. `"demo-<k>"` is the demo domain of seed `k` (named so that several demo
            domains can be mixed).
        source: `"missrec"` (default for Amazon domains), `"raw"`, `"atomic"` (RecBole atomic files) or `"demo"`
            (the demo domain's only source).
        data_dir: folder of the MISSRec files, of the raw 2018 files or of the atomic files.
        cache_dir: the `datasets` cache folder (default: the `datasets` default). Tables are rebuilt when the
            settings or the files in `data_dir` / `image_dir` (names, sizes, contents) change.
        download_mode: `datasets` download mode; `"force_redownload"` rebuilds everything, raw preparation too.
        config_kwargs: other [`MISSRecDomainConfig`] fields (`text_encoder`, `text_fields`, `image_dir`, ...).

    Returns:
        A [`MultiModalDomain`]; for raw and atomic sources, `build["statistics"]` holds what preparing the source
        counted (users dropped for having fewer than 3 interactions, items without text, ...).
    """
    name = domain
    seeded_demo = re.fullmatch(r"demo-(\d+)", domain)
    if seeded_demo:
        domain, config_kwargs["demo_seed"] = "demo", int(seeded_demo.group(1))
    source = source or ("demo" if domain == "demo" else "missrec")
    # One cache entry per folder, however the path is spelled (relative to another working directory, say).
    data_dir = None if data_dir is None else os.path.abspath(data_dir)
    fingerprint = files_fingerprint(data_dir, config_kwargs.get("image_dir"))
    tables = {}
    for table in ("sequences", "items"):
        # Own domains (not among the predefined configs) get a custom config derived from the default one.
        config_name = f"{domain}-{table}"
        known = config_name in MISSRecAmazon.builder_configs
        builder = MISSRecAmazon(
            config_name=config_name if known else None,
            **({} if known else {"name": config_name, "domain": domain, "table": table}),
            data_fingerprint=fingerprint,
            cache_dir=None if cache_dir is None else str(cache_dir),
            data_dir=None if data_dir is None else str(data_dir),
            source=source,
            **config_kwargs,
        )
        builder.download_and_prepare(download_mode=download_mode)
        tables[table] = builder.as_dataset()
    build = {key: getattr(builder.config, key) for key in ("source", "max_history", "min_interactions")}
    build["text_encoder"] = builder.text_encoder() if builder.config.source in ("raw", "atomic") else None
    report = builder.build_report()
    if report is not None:
        build["statistics"] = report
    return MultiModalDomain(name, tables["sequences"], tables["items"][ITEMS_SPLIT], build)


def _shift_ids(column: pa.ChunkedArray, offset: int) -> pa.Array:
    """Add `offset` to the item ids of an int32 column or list<int32> column, keeping its layout."""
    column = column.combine_chunks()
    if pa.types.is_list(column.type):
        shifted = pc.add(column.flatten(), pa.scalar(offset, pa.int32()))
        return pa.ListArray.from_arrays(pc.subtract(column.offsets, column.offsets[0]), shifted)
    return pc.add(column, pa.scalar(offset, pa.int32()))


def _prefix(column: pa.ChunkedArray, prefix: str) -> pa.Array:
    return pc.binary_join_element_wise(prefix, column.combine_chunks(), "")


def mix_domains(domains: Sequence[MultiModalDomain], name: str | None = None) -> MultiModalDomain:
    """Concatenate domains for multi-domain pre-training, namespacing their ids.

    Items of the k-th domain are renumbered after those of the domains before it; source ids and users become
    `"<Domain>:<id>"`. All domains must share the feature columns and widths.

    Returns:
        A [`MultiModalDomain`] named `name` (default: the names joined with `+`).
    """
    if not domains:
        raise ValueError("mix_domains needs at least one domain")
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise ValueError(f"domain names must be distinct to namespace their ids, got {names}")
    schema = domains[0].items.features
    for domain in domains[1:]:
        if domain.items.features != schema:
            raise ValueError(
                f"domains {domains[0].name!r} and {domain.name!r} have different item columns or feature widths: "
                f"{schema} vs {domain.items.features}"
            )
    offsets = np.concatenate([[0], np.cumsum([d.num_items for d in domains])[:-1]])
    items, sequences = [], {split: [] for split in SPLITS}
    for domain, offset in zip(domains, offsets):
        table = domain.items.data.table
        table = table.set_column(0, "item_id", _shift_ids(table["item_id"], int(offset)))
        table = table.set_column(1, "source_id", _prefix(table["source_id"], f"{domain.name}:"))
        items.append(table)
        for split in SPLITS:
            part = domain.sequences[split].data.table
            part = part.set_column(0, "user", _prefix(part["user"], f"{domain.name}:"))
            part = part.set_column(1, "history", _shift_ids(part["history"], int(offset)))
            part = part.set_column(2, "target", _shift_ids(part["target"], int(offset)))
            sequences[split].append(part)
    mixed_items = datasets.Dataset(pa.concat_tables(items), split=datasets.Split(ITEMS_SPLIT))
    mixed_sequences = datasets.DatasetDict(
        {
            split: datasets.Dataset(pa.concat_tables(parts), split=datasets.Split(split))
            for split, parts in sequences.items()
        }
    )
    build = {key: value for key, value in domains[0].build.items() if key != "statistics"}
    build["domains"] = names
    if any("statistics" in d.build for d in domains):
        build["statistics"] = {d.name: d.build.get("statistics") for d in domains}
    return MultiModalDomain(name or "+".join(names), mixed_sequences, mixed_items, build)


def domain_statistics(domain: MultiModalDomain) -> dict[str, float | int | dict]:
    """Statistics of a built domain, computed from its tables.

    A user's sequence length is its number of training examples + 3 (leave-one-out makes one example per
    prefix, plus the validation and test targets), so capped histories do not shorten the counts.
    """
    users = pc.unique(arrow_table(domain.sequences["test"])["user"])
    train_counts = pc.value_counts(arrow_table(domain.sequences["train"])["user"])
    per_user = dict(zip(train_counts.field("values").to_pylist(), train_counts.field("counts").to_pylist()))
    lengths = np.array([per_user.get(user, 0) + 3 for user in users.to_pylist()], dtype=np.int64)
    items = arrow_table(domain.items)
    stats: dict[str, float | int | dict] = {
        "users": len(users),
        "items": len(domain.items),
        "interactions": int(lengths.sum()),
        "avg_sequence_length": float(lengths.mean()) if len(lengths) else 0.0,
        "max_sequence_length": int(lengths.max()) if len(lengths) else 0,
        "items_with_text": int(pc.sum(items["has_text"]).as_py() or 0),
        "items_with_image": int(pc.sum(items["has_image"]).as_py() or 0),
        "examples": {split: len(domain.sequences[split]) for split in SPLITS},
        "feature_dims": {
            name: domain.items.features[name].length
            for name in ("text_features", "image_features", "alt_text_features")
            if name in domain.items.features
        },
    }
    stats["density"] = stats["interactions"] / max(1, stats["users"] * stats["items"])
    return stats
