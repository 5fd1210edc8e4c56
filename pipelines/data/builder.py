"""`datasets` builder of the multi-modal Amazon domains, and one-call loading of a domain or a mix of domains.

Each domain has two builder configs: `"<Domain>-sequences"` (splits train / validation / test; columns
`user`, `history`, `target`, `split`) and `"<Domain>-items"` (split `items`; columns `item_id`,
`source_id`, `text`, `text_features`, `image_features`, optional `alt_text_features`, `has_text`,
`has_image`). Item ids are 1-based (0 is padding), so `history`/`target` index `items` by `item_id`, and
item `i` is row `i - 1`. Three sources feed a config:

- `source="missrec"`: the MISSRec/UniSRec pre-processed files in `data_dir` (see `missrec_files`);
- `source="raw"`: raw Amazon Review 2018 files (`<Category>.json.gz`, `meta_<Category>.json.gz`) from
  `data_dir`, or downloaded from their public location when `data_dir` is not given; 5-core filtering,
  leave-one-out, text building and feature extraction run once, and their result is kept in the MISSRec
  format under the builder's cache, so the `sequences` and `items` configs share it;
- `source="atomic"`: RecBole atomic files (`<D>.inter` with user/item/timestamp, `<D>.item` with text fields)
  in `data_dir`, the format of RecBole's public datasets (see `atomic_files`); like `"raw"`, ordering, splits and
  text features run once and are kept in the MISSRec format under the builder's cache, with the build statistics
  (users dropped, items without text, ...) in `build.json`;
- `source="demo"`: the seeded synthetic domain of `demo_data` (domain name `"demo"`).

Feature widths come from the data (a text-only domain has no `image_features` column).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from ...utils_missrec import write_atomically
from .demo_data import make_demo_domain
from .domain_data import AMAZON_CATEGORIES, FEATURE_COLUMNS, SPLITS, DomainData
from .missrec_files import read_missrec_folder, write_missrec_folder

TABLES = ("sequences", "items")
SOURCES = ("missrec", "raw", "atomic", "demo")
BUILD_REPORT = "build.json"  # in a prepared folder: written last, it marks the folder complete
TABLES_VERSION = datasets.Version("1.2.0")
ITEMS_SPLIT = "items"
_ROWS_PER_TABLE = 8192

SEQUENCE_FEATURES = datasets.Features(
    {
        "user": datasets.Value("string"),
        "history": datasets.List(datasets.Value("int32")),
        "target": datasets.Value("int32"),
        "split": datasets.Value("string"),
    }
)


@dataclass
class MISSRecDomainConfig(datasets.BuilderConfig):
    """One table of one domain.

    Attributes:
        domain: an Amazon domain of the paper (`AMAZON_CATEGORIES`), `"demo"`, or, for `source="missrec"`, the
            file prefix of one's own domain (letters, digits, `_`).
        table: `"sequences"` or `"items"`.
        source: `"missrec"`, `"raw"`, `"atomic"` or `"demo"` (see the module docstring); `"demo"` for the demo
            domain.
        text_dim, image_dim: expected feature widths of the MISSRec files (`None`: inferred from the files), and
            the widths of the demo domain (`None`: 512).
        max_history: most recent items kept per history (every source).
        min_interactions: k of the k-core filtering of raw reviews (users and items).
        text_encoder: `"clip"` (CLIP text tower) or `"sentence"` (a sentence encoder, e.g. MiniLM) for raw and
            atomic data (`None`: `"clip"` for raw Amazon data, as MISSRec; `"sentence"` for atomic files).
        text_fields: atomic files only: the `.item` columns that make an item's text (`None`: every text column).
        text_model, image_model: local path or Hub id of the text / CLIP image model (`None`: the defaults of
            `feature_extraction`).
        image_dir: local folder of item images named by source id, for raw data (`None`: no images).
        device, batch_size: where and in what batches features are extracted.
        demo_num_items, demo_num_users, demo_seed: size and seed of the demo domain.
        data_fingerprint: names, sizes and contents of the input files (set by `load_domain`), so the cache is
            rebuilt when the files change.
    """

    domain: str = "Scientific"
    table: str = "sequences"
    source: str = "missrec"
    text_dim: int | None = None
    image_dim: int | None = None
    max_history: int = 50
    min_interactions: int = 5
    text_encoder: str | None = None
    text_fields: tuple[str, ...] | None = None
    text_model: str | None = None
    image_model: str | None = None
    image_dir: str | None = None
    device: str | None = None
    batch_size: int = 64
    demo_num_items: int = 600
    demo_num_users: int = 1000
    demo_seed: int = 0
    data_fingerprint: str | None = None
    # Part of the cache path: bumped when the tables a config builds change (1.1: demo domains share one
    # feature space, so pre-training transfers across them; 1.2: a domain without images has no image column).
    version: datasets.Version | str | None = TABLES_VERSION

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        """Raise a `ValueError` naming the first invalid field (`datasets` sets overrides without `__post_init__`)."""
        if self.text_fields is not None:
            self.text_fields = tuple(self.text_fields)  # a list from a recipe; hashable for the cache key
        if self.source == "raw" and self.domain not in AMAZON_CATEGORIES:
            known = list(AMAZON_CATEGORIES)
            raise ValueError(f"source='raw' needs an Amazon domain, one of {known}; got {self.domain!r}")
        if not self.domain.replace("_", "").isalnum():
            raise ValueError(f"domain={self.domain!r} must be a file prefix of letters, digits and '_'")
        if self.table not in TABLES:
            raise ValueError(f"table={self.table!r} is not one of {list(TABLES)}")
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r} is not one of {list(SOURCES)}")
        if (self.domain == "demo") != (self.source == "demo"):
            raise ValueError(
                f"source='demo' goes with domain='demo' only (got domain={self.domain!r}, source={self.source!r})"
            )
        if self.max_history < 1 or self.min_interactions < 1:
            raise ValueError(
                f"max_history={self.max_history} and min_interactions={self.min_interactions} must be >= 1"
            )


def _configs() -> list[MISSRecDomainConfig]:
    configs = []
    for domain in (*AMAZON_CATEGORIES, "demo"):
        for table in TABLES:
            source = "demo" if domain == "demo" else "missrec"
            configs.append(MISSRecDomainConfig(name=f"{domain}-{table}", domain=domain, table=table, source=source))
    return configs


def sequence_table(data: DomainData, split: str, start: int = 0, stop: int | None = None) -> pa.Table:
    """Rows `start:stop` of a split as an Arrow table with the `SEQUENCE_FEATURES` columns (no per-row loop)."""
    part = data.splits[split]
    stop = len(part) if stop is None else stop
    offsets = part.offsets[start : stop + 1]
    history = pa.ListArray.from_arrays(
        pa.array(offsets - offsets[0], pa.int32()), pa.array(part.items[offsets[0] : offsets[-1]], pa.int32())
    )
    return pa.table(
        {
            "user": pa.array(part.users[start:stop].tolist(), pa.string()),
            "history": history,
            "target": pa.array(part.targets[start:stop], pa.int32()),
            "split": pa.array([split] * (stop - start), pa.string()),
        }
    )


def item_table(data: DomainData, start: int = 0, stop: int | None = None) -> pa.Table:
    """Items `start:stop` as an Arrow table; feature tables become fixed-size list columns without a copy per row."""
    stop = data.num_items if stop is None else stop
    columns = {
        "item_id": pa.array(np.arange(start + 1, stop + 1, dtype=np.int32)),
        "source_id": pa.array(data.source_ids[start:stop].tolist(), pa.string()),
        "text": pa.array(data.texts[start:stop].tolist(), pa.string()),
    }
    for name in FEATURE_COLUMNS:
        if name in data.features:
            block = np.ascontiguousarray(data.features[name][start:stop], dtype=np.float32)
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
    columns["has_text"] = pa.array(data.has_text[start:stop])
    columns["has_image"] = pa.array(data.has_image[start:stop])
    return pa.table(columns)


class MISSRecAmazon(datasets.ArrowBasedBuilder):
    """The multi-modal Amazon review domains of MISSRec (and the demo domain), see the module docstring."""

    VERSION = TABLES_VERSION
    BUILDER_CONFIG_CLASS = MISSRecDomainConfig
    BUILDER_CONFIGS = _configs()
    DEFAULT_CONFIG_NAME = "demo-sequences"

    def _info(self) -> datasets.DatasetInfo:
        self.config.validate()
        # Item features are typed by the first table written (their widths depend on the source).
        features = SEQUENCE_FEATURES if self.config.table == "sequences" else None
        return datasets.DatasetInfo(
            description=f"MISSRec multi-modal Amazon domain {self.config.domain}: {self.config.table}",
            features=features,
            homepage="https://github.com/gimpong/MM23-MISSRec",
        )

    def _domain_data(self, dl_manager: datasets.DownloadManager) -> DomainData:
        config = self.config
        if config.source == "demo":
            return make_demo_domain(
                num_items=config.demo_num_items,
                num_users=config.demo_num_users,
                text_dim=config.text_dim or 512,
                image_dim=config.image_dim or 512,
                max_history=config.max_history,
                seed=config.demo_seed,
            )
        if config.source == "missrec":
            if config.data_dir is None:
                raise ValueError(f"source='missrec' reads the {config.domain}.* files from data_dir; none was given")
            data = read_missrec_folder(
                config.data_dir, config.domain, text_dim=config.text_dim, image_dim=config.image_dim
            )
            data.splits = {name: split.keep_recent(config.max_history) for name, split in data.splits.items()}
            return data
        return read_missrec_folder(self._prepare(dl_manager), config.domain)

    def text_encoder(self) -> str:
        """The text encoder of a prepared source: the config's, else the source's default."""
        return self.config.text_encoder or ("sentence" if self.config.source == "atomic" else "clip")

    def _prepared_folder(self) -> Path:
        config = self.config
        settings = [config.source, config.data_dir, config.data_fingerprint, config.min_interactions]
        settings += [config.max_history, self.text_encoder(), config.text_fields]
        settings += [config.text_model, config.image_model, config.image_dir]
        key = datasets.fingerprint.Hasher.hash(settings)
        return Path(self._cache_dir_root) / "missrec_prepared" / f"{config.domain}-{key}"

    def build_report(self) -> dict | None:
        """What preparing a raw or atomic source counted (users dropped, items without text, ...), or None."""
        report = self._prepared_folder() / BUILD_REPORT
        return json.loads(report.read_text()) if self.config.source in ("raw", "atomic") and report.is_file() else None

    def _prepare(self, dl_manager: datasets.DownloadManager) -> Path:
        """Raw 2018 or atomic files -> MISSRec files in the cache, once per setting (shared by both tables)."""
        config, folder = self.config, self._prepared_folder()
        if (folder / BUILD_REPORT).is_file() and not dl_manager.download_config.force_download:
            return folder
        if config.source == "atomic":
            data, statistics = self._prepare_atomic(folder)
        else:
            data, statistics = self._prepare_raw(dl_manager, folder)
        write_missrec_folder(data, folder)
        report = json.dumps(statistics, indent=2).encode()
        write_atomically(folder / BUILD_REPORT, lambda file: file.write(report))  # last: marks it complete
        return folder

    def _prepare_atomic(self, folder: Path) -> tuple[DomainData, dict]:
        from .atomic_files import prepare_atomic_domain

        config = self.config
        if config.data_dir is None:
            raise ValueError(f"source='atomic' reads {config.domain}.inter / .item from data_dir; none was given")
        return prepare_atomic_domain(
            config.data_dir,
            config.domain,
            text_fields=config.text_fields,
            max_history=config.max_history,
            text_encoder=self.text_encoder(),
            text_model=config.text_model,
            batch_size=config.batch_size,
            device=config.device,
            feature_dir=folder / "feature_shards",
        )

    def _prepare_raw(self, dl_manager: datasets.DownloadManager, folder: Path) -> tuple[DomainData, dict]:
        from .amazon_raw import prepare_amazon_2018, raw_file_names, raw_file_urls

        config = self.config
        if config.data_dir is not None:
            files = {key: os.path.join(config.data_dir, name) for key, name in raw_file_names(config.domain).items()}
        else:
            files = dl_manager.download(raw_file_urls(config.domain))
        data = prepare_amazon_2018(
            files["reviews"],
            files["meta"],
            domain=config.domain,
            image_dir=config.image_dir,
            min_interactions=config.min_interactions,
            max_history=config.max_history,
            text_encoder=self.text_encoder(),
            text_model=config.text_model,
            image_model=config.image_model,
            batch_size=config.batch_size,
            device=config.device,
            feature_dir=folder / "feature_shards",
        )
        statistics = {"users": len(data.splits["test"]), "items": data.num_items}
        statistics["items_without_text"] = int((~data.has_text).sum())
        return data, statistics

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        data = self._domain_data(dl_manager)
        if self.config.table == "items":
            return [datasets.SplitGenerator(name=ITEMS_SPLIT, gen_kwargs={"data": data, "split": ITEMS_SPLIT})]
        return [datasets.SplitGenerator(name=split, gen_kwargs={"data": data, "split": split}) for split in SPLITS]

    def _generate_tables(self, data: DomainData, split: str):
        total = data.num_items if split == ITEMS_SPLIT else len(data.splits[split])
        for start in range(0, total, _ROWS_PER_TABLE):
            stop = min(start + _ROWS_PER_TABLE, total)
            yield (
                start,
                item_table(data, start, stop) if split == ITEMS_SPLIT else sequence_table(data, split, start, stop),
            )
