"""Model and adapter cards (huggingface_hub `ModelCard`) for trained MISSRec runs, with their `model-index`.

The numbers come from the run's `metrics.json` (written by `train.py`): `test` / `test_exclude_history` for MISSRec
(the two evaluation protocols), `sasrec_test` and `popularity_test` for the baselines when present, and `recipe`
for the training settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..pipelines.training.checkpointing import trained_epochs

MODEL_TEMPLATE = Path(__file__).with_name("model_card_template.md")
ADAPTER_TEMPLATE = Path(__file__).with_name("adapter_card_template.md")
TAGS = ["recommendation", "sequential-recommendation", "multi-modal", "missrec", "custom_code"]
METRIC_ORDER = [f"{name}@{k}" for k in (10, 20, 50) for name in ("hr", "ndcg", "mrr")]
METRIC_NAMES = {"hr": "HR", "ndcg": "NDCG", "mrr": "MRR"}
# What the pipeline serves (the history excluded) first, then the paper's protocol, for the literature.
PROTOCOLS = {"test_exclude_history": "exclude history", "test": "official"}
BASELINES = {"": "MISSRec", "sasrec_": "SASRec", "popularity_": "Popularity"}
# Recipe keys that describe where a run wrote its files, not how it trained.
HIDDEN_RECIPE_KEYS = {"output_dir"}
DEMO_LIMITATIONS = (
    "Trained on the project's seeded **synthetic** demo domain: it shows the software working end to end and says "
    "nothing about real shoppers. Do not use it to recommend real products."
)
REAL_LIMITATIONS = (
    "Trained on {domain}: logged interactions (reviews, ratings, check-ins) are a proxy for what people want, with a "
    "popularity bias (filtered datasets keep active users and popular items). It ranks only its own catalogue plus "
    "cold-start items given as features; items without text or image features score from the modality they have, "
    "or 0. Histories keep their {max_len} most recent items. Check the terms of the source data (Amazon reviews, "
    "Yelp, GroupLens, ...) before any non-research use."
)


def domain_name(recipe: dict[str, Any]) -> str:
    """The training domain of a run's recipe, `"A + B + C"` for a pre-training mix."""
    domain = recipe.get("domain", "demo")
    return " + ".join(domain) if isinstance(domain, list) else str(domain)


def metric_label(key: str) -> str:
    """`"ndcg@10"` -> `"NDCG@10"`."""
    name, k = key.split("@")
    return f"{METRIC_NAMES.get(name, name.upper())}@{k}"


def metric_keys(metrics: dict[str, Any]) -> list[str]:
    """The metric keys of the run's MISSRec test results, in a fixed order (HR, NDCG, MRR at 10, 20, 50)."""
    test = metrics.get("test")
    if not isinstance(test, dict) or not test:
        raise ValueError("metrics.json has no 'test' results (a dict such as {'hr@10': ..., 'ndcg@10': ...})")
    return [k for k in METRIC_ORDER if k in test] + sorted(k for k in test if k not in METRIC_ORDER)


def eval_results(metrics: dict[str, Any], dataset_name: str, dataset_type: str) -> list[EvalResult]:
    """`model-index` entries: every MISSRec test metric under both protocols (`metric_config` names the protocol)."""
    results = []
    for key, protocol in PROTOCOLS.items():
        for metric in metric_keys(metrics) if key in metrics else []:
            if metric not in metrics[key]:
                continue
            results.append(
                EvalResult(
                    task_type="sequential-recommendation",
                    task_name="Sequential recommendation",
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_split="test",
                    metric_type=metric,
                    metric_name=f"{metric_label(metric)} ({protocol})",
                    metric_config=protocol.replace(" ", "_"),
                    metric_value=round(float(metrics[key][metric]), 6),
                )
            )
    return results


def results_table(metrics: dict[str, Any]) -> str:
    """A markdown table of MISSRec and the baselines of the run under both protocols."""
    keys = metric_keys(metrics)
    lines = [
        "| model | protocol | " + " | ".join(metric_label(k) for k in keys) + " |",
        "|---|---|" + "---:|" * len(keys),
    ]
    for prefix, model in BASELINES.items():
        for key, protocol in PROTOCOLS.items():
            row = metrics.get(prefix + key)
            if isinstance(row, dict):
                values = " | ".join(f"{row[k]:.4f}" if k in row else "–" for k in keys)
                lines.append(f"| {model} | {protocol} | {values} |")
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return f"`{json.dumps(value)}`"
    return "–" if value is None else f"`{value}`"


def recipe_setting_rows(recipe: dict[str, Any]) -> list[tuple[str, str]]:
    """`(key, value)` rows of a training recipe's settings (not where it wrote its files)."""
    return [(f"`{k}`", _value(v)) for k, v in recipe.items() if k not in HIDDEN_RECIPE_KEYS]


def recipe_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """`(key, value)` rows of the training recipe, plus the epochs actually run and the best validation NDCG@10."""
    rows = recipe_setting_rows(metrics.get("recipe") or {})
    epochs = metrics.get("epochs")
    if isinstance(epochs, list) and epochs:
        rows.append(("epochs run", str(len(trained_epochs(epochs)))))
        scored = [e for e in epochs if isinstance(e.get("ndcg@10"), (int, float))]
        if scored:
            best = max(scored, key=lambda e: e["ndcg@10"])
            when = "before training" if best.get("epoch") == 0 else f"epoch {best.get('epoch', '?')}"
            rows.append(("best validation NDCG@10", f"{best['ndcg@10']:.4f} ({when})"))
    if "num_processes" in metrics:
        rows.append(("processes", str(metrics["num_processes"])))
    return rows


def model_rows(config: Any) -> list[tuple[str, str]]:
    """The model settings worth reading on a card, from a `MISSRecConfig`."""
    keys = (
        "num_items",
        "modalities",
        "id_mode",
        "text_feature_dim",
        "image_feature_dim",
        "hidden_size",
        "num_encoder_layers",
        "num_decoder_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_seq_length",
        "seq_mm_fusion",
        "item_mm_fusion",
        "interest_method",
        "num_interests",
    )
    return [(f"`{k}`", _value(getattr(config, k))) for k in keys if hasattr(config, k)]


def usage_snippet(model: str, history: Sequence[int | str], adapter: str | None = None, top_k: int = 5) -> str:
    """Python that loads the model (and adapter) with `pipeline(...)` and prints recommendations for `history`."""
    adapter_argument = f"\n    adapter={adapter!r}," if adapter is not None else ""
    return (
        "from transformers import pipeline\n\n"
        "recommend = pipeline(\n"
        f'    "sequential-recommendation",\n    model={model!r},{adapter_argument}\n    trust_remote_code=True,\n)\n'
        f"history = {list(history)!r}  # most recent last\n"
        f"for item in recommend(history, top_k={top_k}, return_text=True):\n"
        '    print(item["item_id"], item["source_id"], round(item["score"], 3), item["text"])'
    )


def _limitations(metrics: dict[str, Any], config: Any) -> str:
    recipe = metrics.get("recipe") or {}
    if recipe.get("domain", "demo") == "demo":
        return DEMO_LIMITATIONS
    return REAL_LIMITATIONS.format(domain=domain_name(recipe), max_len=getattr(config, "max_seq_length", 50))


def _common(metrics: dict[str, Any], config: Any, domain: str, data_description: str | None) -> dict[str, Any]:
    inductive = getattr(config, "id_mode", "inductive") == "inductive"
    return {
        "domain": domain,
        "num_items": config.num_items,
        "model_rows": model_rows(config),
        "recipe_rows": recipe_rows(metrics),
        "results_table": results_table(metrics),
        "data_description": data_description or f"The {domain} domain (see the training recipe below).",
        "limitations": _limitations(metrics, config),
        "cold_start_note": "" if inductive else "; inductive models only, this one is transductive",
        "intended_use_note": ""
        if inductive
        else " This model is transductive (item-id embeddings), so new items "
        "need fine-tuning before they can be recommended.",
    }


def model_card(
    config: Any,
    metrics: dict[str, Any],
    *,
    model_id: str,
    history: Sequence[int | str],
    model_name: str | None = None,
    data_description: str | None = None,
    dataset_id: str | None = None,
) -> ModelCard:
    """The card of a full MISSRec model folder.

    Args:
        config: the model's `MISSRecConfig`.
        metrics: the run's `metrics.json` content.
        model_id: the Hub id (or folder) the usage snippet loads.
        history: an example history (source ids or item ids) for the snippet.
        model_name: the card title (default: the last part of `model_id`).
        data_description: a paragraph on the training data.
        dataset_id: the Hub dataset the model was trained on, when published.
    """
    recipe = metrics.get("recipe") or {}
    domain = domain_name(recipe)
    name = model_name or Path(str(model_id)).name
    pretrained = recipe.get("pretrained")
    card_data = ModelCardData(
        model_name=name,
        license="apache-2.0",
        library_name="transformers",
        tags=TAGS,
        datasets=[dataset_id] if dataset_id else None,
        base_model=pretrained if _looks_like_hub_id(pretrained) else None,
        eval_results=eval_results(metrics, dataset_name=domain, dataset_type=dataset_id or domain),
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(MODEL_TEMPLATE),
        model_name=name,
        description=f"Next-item recommendation on the **{domain}** domain ({config.num_items:,} items).",
        usage_snippet=usage_snippet(str(model_id), history),
        **_common(metrics, config, domain, data_description),
    )


def adapter_card(
    config: Any,
    metrics: dict[str, Any],
    *,
    base_model: str,
    adapter_id: str,
    history: Sequence[int | str],
    peft_config: dict[str, Any],
    model_name: str | None = None,
    data_description: str | None = None,
    dataset_id: str | None = None,
) -> ModelCard:
    """The card of a MISSRec LoRA adapter folder (`library_name: peft`, `base_model`).

    Args:
        config: the adapted model's `MISSRecConfig` (base config with the adapter's catalogue size).
        metrics: the run's `metrics.json` content.
        base_model: the base model's Hub id (or folder).
        adapter_id: the adapter's Hub id (or folder), loaded by the usage snippet.
        history: an example history for the snippet.
        peft_config: the adapter's `adapter_config.json` content.
    """
    recipe = metrics.get("recipe") or {}
    domain = domain_name(recipe)
    name = model_name or Path(str(adapter_id)).name
    card_data = ModelCardData(
        model_name=name,
        license="apache-2.0",
        library_name="peft",
        base_model=base_model,
        tags=[*TAGS, "lora", "peft"],
        datasets=[dataset_id] if dataset_id else None,
        eval_results=eval_results(metrics, dataset_name=domain, dataset_type=dataset_id or domain),
    )
    common = _common(metrics, config, domain, data_description)
    common["model_rows"] = [
        ("PEFT type", _value(peft_config.get("peft_type"))),
        (
            "LoRA rank / alpha / dropout",
            f"{peft_config.get('r')} / {peft_config.get('lora_alpha')} / {peft_config.get('lora_dropout')}",
        ),
        ("LoRA targets", _value(sorted(peft_config.get("target_modules") or []))),
        ("saved whole", _value(sorted(peft_config.get("modules_to_save") or []))),
        *common["model_rows"],
    ]
    link = base_model if _looks_like_hub_id(base_model) else None
    return ModelCard.from_template(
        card_data,
        template_path=str(ADAPTER_TEMPLATE),
        model_name=name,
        description=f"Next-item recommendation on the **{domain}** domain ({config.num_items:,} items).",
        base_model=base_model,
        base_model_link=f"https://huggingface.co/{link}" if link else base_model,
        usage_snippet=usage_snippet(str(base_model), history, adapter=str(adapter_id)),
        **common,
    )


def _looks_like_hub_id(value: Any) -> bool:
    """`org/name` that is not a local path."""
    if not isinstance(value, str) or value.count("/") != 1 or value.startswith((".", "/", "~")):
        return False
    return not Path(value).exists()
