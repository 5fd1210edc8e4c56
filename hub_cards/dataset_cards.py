"""Dataset cards for built domains, and their export to a Hub-ready parquet folder."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from ..pipelines.data.domain_data import SPLITS
from ..pipelines.data.loading import MultiModalDomain, domain_statistics
from ..utils_missrec import write_atomically

TEMPLATE = Path(__file__).with_name("dataset_card_template.md")
SOURCE_DESCRIPTIONS = {
    "missrec": "the MISSRec/UniSRec pre-processed files of the Amazon Review 2018 domain (Ni et al., 2019)",
    "raw": "the raw Amazon Review 2018 reviews and metadata (Ni et al., 2019), 5-core filtered",
    "atomic": "RecBole atomic files (`<D>.inter` interactions with timestamps, `<D>.item` item text), ordered by time "
    "per user, with text features extracted by missrec-hf",
    "demo": "the project's seeded synthetic generator (no real users or products)",
}
LIMITATIONS = {
    "atomic": "Logged interactions (reviews, ratings, check-ins) are a proxy for what people want, with a popularity "
    "bias; users with fewer than 3 interactions are dropped (see the build statistics). The source datasets keep "
    "their own licences and terms: check them before any non-research use.",
    "demo": "Synthetic data for tests and demos: it has the structure MISSRec exploits (latent interests shared by "
    "text and image features, users drifting between a few interests) but says nothing about real shoppers.",
}
DEFAULT_LIMITATIONS = (
    "Reviews are a proxy for purchases, and the 5-core filtering keeps active users and popular items only. "
    "Item texts and images come from sellers' metadata. The Amazon Review data are for research use; check "
    "the terms of the original release before any other use."
)


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M"


def config_names(domain: MultiModalDomain) -> dict[str, str]:
    """`{"sequences": "<name>-sequences", "items": "<name>-items"}`, the config names of an export."""
    return {table: f"{domain.name}-{table}" for table in ("sequences", "items")}


def dataset_card(domain: MultiModalDomain, repo_id: str | None = None) -> DatasetCard:
    """A dataset card for `domain`, with its statistics and the `configs:` block of [`export_domain`].

    Args:
        domain: a built domain (its `build` dict names the source and `max_history`).
        repo_id: the Hub repository the card will live in (used in the usage snippet; default: a local folder).
    """
    stats = domain_statistics(domain)
    names = config_names(domain)
    source = domain.build.get("source", "missrec")
    configs = [
        {
            "config_name": names["sequences"],
            "data_files": [{"split": s, "path": f"data/{names['sequences']}/{s}-*.parquet"} for s in SPLITS],
        },
        {
            "config_name": names["items"],
            "data_files": [{"split": "items", "path": f"data/{names['items']}/items-*.parquet"}],
        },
    ]
    card_data = DatasetCardData(
        license="other" if source != "demo" else "apache-2.0",
        pretty_name=f"MISSRec multi-modal Amazon: {domain.name}",
        size_categories=_size_category(stats["interactions"]),
        task_categories=["other"],
        tags=["recommendation", "sequential-recommendation", "multi-modal", "missrec"],
        configs=configs,
    )
    rows = [
        ("users", f"{stats['users']:,}"),
        ("items", f"{stats['items']:,}"),
        ("interactions", f"{stats['interactions']:,}"),
        ("average / max sequence length", f"{stats['avg_sequence_length']:.2f} / {stats['max_sequence_length']}"),
        ("density", f"{stats['density']:.5f}"),
        ("items with text / image", f"{stats['items_with_text']:,} / {stats['items_with_image']:,}"),
        *((f"{split} examples", f"{count:,}") for split, count in stats["examples"].items()),
    ]
    return DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        pretty_name=card_data.pretty_name,
        description=f"Sequential-recommendation data of the **{domain.name}** domain: user histories and a "
        f"catalogue with {' and '.join(m for m in ('text', 'image') if f'{m}_features' in stats['feature_dims'])} "
        "features, "
        "ready for MISSRec.",
        source_description=SOURCE_DESCRIPTIONS[source],
        sequences_config=names["sequences"],
        items_config=names["items"],
        sequence_splits=", ".join(f"`{s}`" for s in SPLITS),
        repo_or_folder=repo_id or "path/to/exported/folder",
        statistics=rows,
        feature_dims=list(stats["feature_dims"].items()),
        max_history=domain.build.get("max_history", 50),
        limitations=LIMITATIONS.get(source, DEFAULT_LIMITATIONS),
    )


def export_domain(domain: MultiModalDomain, folder: str | os.PathLike, repo_id: str | None = None) -> Path:
    """Write `domain` as parquet files plus a dataset card, so `load_dataset(folder, config_name)` works.

    Layout: `data/<name>-sequences/{train,validation,test}-00000-of-00001.parquet`,
    `data/<name>-items/items-00000-of-00001.parquet` and `README.md` (the card, with its `configs:` block).

    Returns:
        The folder.
    """
    folder = Path(folder)
    names = config_names(domain)
    tables = {(names["sequences"], split): domain.sequences[split] for split in SPLITS}
    tables[names["items"], "items"] = domain.items
    for (config, split), table in tables.items():
        target = folder / "data" / config / f"{split}-00000-of-00001.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, table.to_parquet)
    dataset_card(domain, repo_id).save(folder / "README.md")
    return folder
