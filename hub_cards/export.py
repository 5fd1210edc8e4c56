"""Export a training run (a full model or a LoRA adapter), a pre-trained base or a built domain as a Hub-ready
folder, and push it.

    python -m modeling_missrec.hub_cards.export model --run_dir runs/demo --output_dir exports/missrec-demo
    python -m modeling_missrec.hub_cards.export model --run_dir runs/lora --base_model exports/missrec-demo \\
        --output_dir exports/missrec-demo-lora
    python -m modeling_missrec.hub_cards.export base --run_dir runs/demo-pretrain --output_dir exports/missrec-base \\
        [--transfer_results TABLE_FILE]
    python -m modeling_missrec.hub_cards.export dataset --domain Scientific \\
        --data_dir ../shared/data/amazon-scientific-mm --output_dir exports/scientific
    ... --push_to_hub org/name [--private] [--token TOKEN]

`model` reads a `train.py` output folder (weights + `metrics.json`) and writes:
- a full model: `config.json` with `auto_map` and `custom_pipelines`, the flat remote-code files (model and the
  `sequential-recommendation` pipeline), `model.safetensors`, `item_metadata.json`, `metrics.json` and a
  `README.md` model card (model-index metrics of the run, intended use, data, recipe, limitations, a usage
  snippet that runs as written);
- a LoRA adapter (the run folder holds `adapter_config.json`): the adapter files (`base_model_name_or_path` set to
  `--base_model_id`), `catalogue.safetensors`, `item_metadata.json`, `metrics.json` and an adapter card
  (`library_name: peft`, `base_model`). The base must be servable: an exported model folder or its Hub id.

`base` reads a pre-training run (`stage: pretrain`) and writes it without its catalogue (`num_items: 0`): the
sequence encoder and adaptors, 6 MB for the four-domain text base, whose 60k pre-training items take 100 MB. It
writes `config.json` with `auto_map`, the remote code, `model.safetensors`, `metrics.json` and a base card
(pre-training data and their terms, the budget and validation curve, how to give it a catalogue, and
`--transfer_results`, a markdown fragment of what transfer measured with it). `train.py --pretrained FOLDER` gives
it a catalogue (zero-shot with `--epochs 0`, or fine-tuning).

Item metadata and an adapter's catalogue are taken from the run folder when `train.py` wrote them, else rebuilt
from the run's data (the recipe's domain; `--data_dir` overrides where its files are).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from transformers import pipeline

from .. import MISSRecModel
from ..configuration.recipe import SNAPSHOT_PREFIX
from ..pipeline_missrec import TASK
from ..pipelines.data.collator import arrow_table, catalogue_features
from ..pipelines.data.loading import MultiModalDomain, domain_statistics, load_domain
from ..served_files_missrec import (
    CATALOGUE_FILE,
    ITEM_METADATA_FILE,
    load_item_metadata,
    load_missrec_adapter,
    save_catalogue,
    save_item_metadata,
)
from ..utils_missrec import write_atomically
from .base_cards import base_card
from .dataset_cards import SOURCE_DESCRIPTIONS, export_domain
from .model_cards import adapter_card, domain_name, model_card
from .push import HubPushError, push_folder
from .space.app_files import write_space_files

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _empty_output(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"output folder {folder} exists and is not empty: choose a new one")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def read_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's `metrics.json` (`train.py` writes it beside the weights)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: export needs a train.py output folder (weights + metrics.json)")
    with open(path) as f:
        return json.load(f)


def snapshot_metrics(folder: Path) -> dict[str, Any] | None:
    """For an `epoch-<N>` snapshot of a run (`save_epochs`: no `metrics.json` of its own), what the run's metrics say
    of it: the recipe, the data, the processes and the first N epochs, with `snapshot_epoch` N (not the run's test
    numbers or sizes, which are its kept weights'); None for any other folder."""
    match = re.fullmatch(rf"{SNAPSHOT_PREFIX}(\d+)", folder.name)
    if match is None or (folder / "metrics.json").is_file() or not (folder / "config.json").is_file():
        return None
    if not (folder.parent / "metrics.json").is_file():
        raise FileNotFoundError(
            f"{folder} is a snapshot of the run {folder.parent}, which has not finished (no metrics.json there yet): "
            "export it once the run has ended"
        )
    epoch = int(match.group(1))
    metrics = read_metrics(folder.parent)
    snapshot = {key: metrics[key] for key in ("recipe", "build", "num_processes") if key in metrics}
    epochs = [e for e in metrics.get("epochs") or [] if e.get("epoch", 0) <= epoch]
    return {**snapshot, "epochs": epochs, "snapshot_epoch": epoch}


# Recipe keys that hold paths of the machine that trained: an exported folder is read on others.
LOCAL_PATH_KEYS = ("data_dir", "output_dir", "pretrained", "resume_from_checkpoint")


def write_shareable_metrics(metrics: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write `out/metrics.json` as an exported folder carries it and return it (for the card): the run's metrics
    with every absolute path of its recipe cut to the folder's own name (`/home/me/data/Scientific` becomes
    `Scientific`), so that nothing of the training machine's file system is shared."""
    recipe = dict(metrics.get("recipe") or {})
    for key in LOCAL_PATH_KEYS:
        value = recipe.get(key)
        if isinstance(value, str) and os.path.isabs(value):
            recipe[key] = Path(value).name
    shareable = {**metrics, "recipe": recipe} if "recipe" in metrics else dict(metrics)
    write_atomically(out / "metrics.json", lambda f: f.write(json.dumps(shareable, indent=2).encode()))
    return shareable


def run_domain(metrics: dict[str, Any], data_dir: str | None = None) -> MultiModalDomain:
    """The domain a run trained on, rebuilt from its recipe (`domain`, `data_dir`, demo size and seed)."""
    recipe = metrics.get("recipe") or {}
    if "domain" not in recipe:
        raise ValueError("metrics.json has no recipe.domain: cannot tell which data the run used")
    domain = recipe["domain"]
    if domain == "demo":
        sizes = {"demo_num_items": recipe.get("num_items"), "demo_num_users": recipe.get("num_users")}
        sizes = {k: v for k, v in sizes.items() if v is not None}
        return load_domain("demo", demo_seed=recipe.get("seed", 0), **sizes)
    return load_domain(domain, data_dir=data_dir or recipe.get("data_dir"))


def item_popularity(domain: MultiModalDomain) -> np.ndarray:
    """`[N]` how often each item is a training target (the popularity baseline's counts)."""
    targets = arrow_table(domain.sequences["train"])["target"].to_numpy()
    return np.bincount(targets, minlength=len(domain.items) + 1)[1:]


def data_description(domain: MultiModalDomain | None, metrics: dict[str, Any]) -> str:
    """A paragraph on the training data: source and statistics of the domain."""
    recipe = metrics.get("recipe") or {}
    if domain is None:  # the run's record: how its data were built (train.py writes it into metrics.json)
        build = metrics.get("build") or {}
        source = SOURCE_DESCRIPTIONS.get(build.get("source") or "", "the domain's files")
        counts = build.get("statistics") or {}
        counted = "" if "users" not in counts else f": {counts['users']:,} users, {counts['items']:,} items"
        return f"The **{domain_name(recipe)}** domain, built from {source}{counted} (see the training recipe)."
    stats = domain_statistics(domain)
    source = SOURCE_DESCRIPTIONS.get(domain.build.get("source", "missrec"), "the domain's files")
    return (
        f"**{domain.name}**, built from {source}: {stats['users']:,} users, {stats['items']:,} items, "
        f"{stats['interactions']:,} interactions; item features "
        + ", ".join(f"{k} {v}-d" for k, v in stats["feature_dims"].items())
        + ". Splits are leave-one-out by time (RecBole / UniSRec): each user's last item is the test target, the "
        "one before it the validation target, every earlier prefix a training example."
    )


def _item_metadata(run_dir: Path, out: Path, num_items: int, domain_fn) -> dict[str, Any]:
    """Copy the run's `item_metadata.json`, or write one from the run's domain; returns its content."""
    if (run_dir / ITEM_METADATA_FILE).is_file():
        shutil.copy2(run_dir / ITEM_METADATA_FILE, out / ITEM_METADATA_FILE)
    else:
        domain = domain_fn()
        table = arrow_table(domain.items)
        save_item_metadata(
            out,
            table["source_id"].to_pylist(),
            table["text"].to_pylist(),
            popularity=item_popularity(domain),
        )
    metadata = load_item_metadata(out)
    if metadata["num_items"] != num_items:
        raise ValueError(
            f"the item metadata describes {metadata['num_items']} items but the model's catalogue has {num_items}: "
            "is --data_dir the data the run trained on?"
        )
    return metadata


def example_history(metadata: dict[str, Any], length: int = 3) -> list[str]:
    """Source ids of a plausible history for usage snippets: the most popular items (or the first ones)."""
    popularity = metadata.get("popularity")
    order = np.argsort(-np.asarray(popularity), kind="stable") if popularity else np.arange(metadata["num_items"])
    return [metadata["source_ids"][i] for i in order[:length][::-1]]


def export_model(
    run_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    base_model_id: str | None = None,
    data_dir: str | None = None,
    dataset_id: str | None = None,
    item_index: str | None = None,
) -> Path:
    """Write a Hub-ready folder for a `train.py` run: a full model or, when the run saved one, a LoRA adapter.

    Args:
        run_dir: the run's output folder (weights or adapter files, `metrics.json`).
        output_dir: a new (or empty) folder.
        repo_id: the Hub id the folder will be pushed to (used by the card's snippet; default: the folder path).
        base_model: adapters only: the base model, an exported folder or Hub id (default: the recipe's
            `pretrained`, then the adapter's `base_model_name_or_path`).
        base_model_id: adapters only: the base's Hub id written into the adapter config and card (default:
            `base_model`).
        data_dir: where the run's domain files are, when not where the recipe says.
        dataset_id: the Hub dataset of the training data, for the card's metadata.
        item_index: full models only: also save the catalogue's item index of this kind (`"exact"` or
            `"approximate"`) as `item_index.safetensors`, which `pipeline(..., index=FOLDER)` serves without
            building it.

    Returns:
        The output folder.
    """
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    out = _empty_output(output_dir)
    domain_cache: list[MultiModalDomain] = []

    def domain() -> MultiModalDomain:
        if not domain_cache:
            domain_cache.append(run_domain(metrics, data_dir))
        return domain_cache[0]

    target = repo_id or str(out.resolve())
    if (run_dir / "adapter_config.json").is_file():
        if item_index is not None:
            raise ValueError("item_index is saved with full models: an adapter's index is built where it is served")
        return _export_adapter(
            run_dir, out, metrics, domain, domain_cache, target, base_model, base_model_id, dataset_id
        )
    model = MISSRecModel.from_pretrained(run_dir).eval()
    pipeline(TASK, model=model).save_pretrained(out)  # weights, config (auto_map, custom_pipelines), remote code
    if item_index is not None:
        model.build_item_index(item_index).save_pretrained(out)
    metadata = _item_metadata(run_dir, out, model.config.num_items, domain)
    shared = write_shareable_metrics(metrics, out)
    card = model_card(
        model.config,
        shared,
        model_id=target,
        history=example_history(metadata),
        data_description=data_description(domain_cache[0] if domain_cache else None, shared),
        dataset_id=dataset_id,
    )
    card.save(out / "README.md")
    return out


def export_base(
    run_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    transfer_results: str | os.PathLike | None = None,
) -> Path:
    """Write a pre-trained base as a Hub-ready folder, without its pre-training catalogue.

    Args:
        run_dir: the output folder of a `train.py` run with `stage: pretrain` (weights, `metrics.json`), or one of
            its `epoch-<N>` snapshots (`save_epochs`), whose card tells its first N epochs.
        output_dir: a new (or empty) folder.
        repo_id: the Hub id the folder will be pushed to (used by the card's commands; default: the folder path).
        transfer_results: a markdown file of the transfer measurements made with this base, shown on the card.

    Returns:
        The output folder.
    """
    run_dir = Path(run_dir)
    metrics = snapshot_metrics(run_dir) or read_metrics(run_dir)
    stage = (metrics.get("recipe") or {}).get("stage")
    if stage != "pretrain":
        raise ValueError(
            f"{run_dir} is a stage={stage!r} run: a base is a pre-training run (stage: pretrain); export a "
            "fine-tuned run with `model`"
        )
    results = None if transfer_results is None else Path(transfer_results).read_text()
    out = _empty_output(output_dir)
    model = MISSRecModel.from_pretrained(run_dir).eval()
    model.clear_catalogue()
    model.save_pretrained(out)
    write_shareable_metrics(metrics, out)
    write_base_card(out, results, model_id=repo_id)
    return out


def write_base_card(
    folder: str | os.PathLike, transfer_results: str | None = None, *, model_id: str | None = None
) -> Path:
    """Write the card of an exported base folder from its config and (shareable) metrics: at export, and again when
    a transfer run recorded later changes the measurements it shows (weights, config and metrics untouched).

    Args:
        folder: a folder `export_base` wrote (config, `metrics.json`).
        transfer_results: the markdown fragment of transfer measurements the card shows (default: a line saying
            there are none).
        model_id: the Hub id (or folder) the card's commands load (default: the folder path).

    Returns:
        The card's path.
    """
    folder = Path(folder)
    config = MISSRecModel.config_class.from_pretrained(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    card = base_card(config, metrics, model_id=model_id or str(folder.resolve()), transfer_results=transfer_results)
    card.save(folder / "README.md")
    return folder / "README.md"


def _export_adapter(run_dir, out, metrics, domain, domain_cache, target, base_model, base_model_id, dataset_id) -> Path:
    with open(run_dir / "adapter_config.json") as f:
        peft_config = json.load(f)
    recipe = metrics.get("recipe") or {}
    base_model = base_model or recipe.get("pretrained") or peft_config.get("base_model_name_or_path")
    if not base_model:
        raise ValueError("the adapter's base model is unknown: pass --base_model (an exported folder or Hub id)")
    if os.path.isdir(base_model):
        with open(Path(base_model) / "config.json") as f:
            if TASK not in (json.load(f).get("custom_pipelines") or {}):
                raise ValueError(
                    f"the base model {base_model} has no custom_pipelines, so the adapter could not be served from it: "
                    f"export it first (python -m modeling_missrec.hub_cards.export model --run_dir {base_model} "
                    "--output_dir BASE_EXPORT) and pass --base_model BASE_EXPORT (or its Hub id)"
                )
    base_model_id = base_model_id or base_model
    for name in ADAPTER_FILES:
        shutil.copy2(run_dir / name, out / name)
    peft_config["base_model_name_or_path"] = base_model_id
    with open(out / "adapter_config.json", "w") as f:
        json.dump(peft_config, f, indent=2)
    base = MISSRecModel.from_pretrained(base_model)
    if (run_dir / CATALOGUE_FILE).is_file():
        shutil.copy2(run_dir / CATALOGUE_FILE, out / CATALOGUE_FILE)
    else:
        save_catalogue(out, catalogue_features(domain().items), base=base)
    model = load_missrec_adapter(base, out)  # also checks that adapter, catalogue and base fit together
    config = model.get_base_model().config
    metadata = _item_metadata(run_dir, out, config.num_items, domain)
    shared = write_shareable_metrics(metrics, out)
    card = adapter_card(
        config,
        shared,
        base_model=base_model_id,
        adapter_id=target,
        history=example_history(metadata),
        peft_config=peft_config,
        data_description=data_description(domain_cache[0] if domain_cache else None, shared),
        dataset_id=dataset_id,
    )
    card.save(out / "README.md")
    return out


def export_dataset(
    domain: str,
    output_dir: str | os.PathLike,
    *,
    data_dir: str | None = None,
    repo_id: str | None = None,
    demo_num_items: int | None = None,
    demo_num_users: int | None = None,
    demo_seed: int = 0,
) -> Path:
    """Build `domain` and write it as parquet plus a dataset card (see `dataset_cards.export_domain`)."""
    out = _empty_output(output_dir)
    if domain == "demo":
        sizes = {"demo_num_items": demo_num_items, "demo_num_users": demo_num_users}
        built = load_domain("demo", demo_seed=demo_seed, **{k: v for k, v in sizes.items() if v is not None})
    else:
        built = load_domain(domain, data_dir=data_dir)
    return export_domain(built, out, repo_id=repo_id)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_missrec.hub_cards.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    model = commands.add_parser("model", help="a train.py run folder: full model or LoRA adapter")
    model.add_argument("--run_dir", required=True, help="train.py output folder (weights or adapter, metrics.json)")
    model.add_argument("--base_model", help="adapters: the base (exported folder or Hub id); default: the recipe's")
    model.add_argument("--base_model_id", help="adapters: the base's Hub id for the adapter config and card")
    model.add_argument("--data_dir", help="the run's domain files, when not where the recipe says")
    model.add_argument("--dataset_id", help="Hub dataset of the training data, for the card")
    model.add_argument(
        "--item_index",
        choices=["exact", "approximate"],
        help="full models: also save the catalogue's item index (item_index.safetensors) for the pipeline to load",
    )
    model.add_argument(
        "--space",
        action="store_true",
        help="also write the demo page as the folder's app (app.py, requirements.txt): a Hub Space",
    )
    base = commands.add_parser("base", help="a pre-training run as a base without its catalogue, with its card")
    base.add_argument(
        "--run_dir", required=True, help="train.py output folder of a stage: pretrain run, or its epoch-N snapshot"
    )
    base.add_argument(
        "--transfer_results", help="a markdown file of what transfer measured with this base, for the card"
    )
    base.add_argument(
        "--model_id",
        help="what the card's commands load the base as (default: the --push_to_hub id, else the output folder's "
        "absolute path), e.g. a path relative to where they run, for a base shipped inside a repository",
    )
    dataset = commands.add_parser("dataset", help="a built domain as parquet + dataset card")
    dataset.add_argument("--domain", required=True, help="'demo', an Amazon domain name or one's own prefix")
    dataset.add_argument("--data_dir", help="the domain's MISSRec-format files")
    dataset.add_argument("--demo_num_items", type=int)
    dataset.add_argument("--demo_num_users", type=int)
    dataset.add_argument("--demo_seed", type=int, default=0)
    for sub in (model, base, dataset):
        sub.add_argument("--output_dir", required=True, help="a new or empty folder")
        sub.add_argument("--push_to_hub", metavar="ORG/NAME", help="upload the folder to this Hub repository")
        sub.add_argument("--private", action="store_true", help="create the Hub repository private")
        sub.add_argument("--token", help="Hub token (default: the logged-in one or HF_TOKEN)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repo_id = args.push_to_hub
    if args.command == "model":
        out = export_model(
            args.run_dir,
            args.output_dir,
            repo_id=repo_id,
            base_model=args.base_model,
            base_model_id=args.base_model_id,
            data_dir=args.data_dir,
            dataset_id=args.dataset_id,
            item_index=args.item_index,
        )
        repo_type = "model"
        if args.space:
            try:
                write_space_files(out)
            except ValueError as error:
                print(f"error: {error}", file=sys.stderr)
                return 1
            repo_type = "space"
    elif args.command == "base":
        model_id = args.model_id or repo_id
        out = export_base(args.run_dir, args.output_dir, repo_id=model_id, transfer_results=args.transfer_results)
        repo_type = "model"
    else:
        out = export_dataset(
            args.domain,
            args.output_dir,
            data_dir=args.data_dir,
            repo_id=repo_id,
            demo_num_items=args.demo_num_items,
            demo_num_users=args.demo_num_users,
            demo_seed=args.demo_seed,
        )
        repo_type = "dataset"
    print(f"exported to {out}")
    if repo_id:
        try:
            url = push_folder(out, repo_id, repo_type=repo_type, private=args.private or None, token=args.token)
        except HubPushError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
