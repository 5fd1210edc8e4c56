"""The files a served MISSRec folder carries beside its weights, and loading a LoRA adapter onto its base.

- `item_metadata.json` ([`save_item_metadata`]): per catalogue item its source id (e.g. the ASIN), text and
  training popularity, so outputs name items and histories can be given as source ids;
- `catalogue.safetensors` ([`save_catalogue`]): the catalogue feature tables, for PEFT adapter folders (a
  MISSRec catalogue lives in base-model buffers, which an adapter does not carry), plus a signature and a weight
  fingerprint of the base model the adapter was trained on. [`load_missrec_adapter`] reads it.

Hub remote code, like the pipeline that imports it: it imports only the other remote-code files beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn
from transformers import AutoModel
from transformers.utils import cached_file

from .utils_missrec import unwrap_missrec, write_atomically

try:  # optional: only adapters need it
    from peft import PeftModel
except ImportError:  # pragma: no cover - peft is installed wherever adapters are used
    PeftModel = None

ITEM_METADATA_FILE = "item_metadata.json"
CATALOGUE_FILE = "catalogue.safetensors"
ITEM_METADATA_FORMAT = "missrec-item-metadata"
CATALOGUE_FORMAT = "missrec-catalogue"
# How the adapted model discovers its interests; a fine-tuned model may use other settings than its base (the
# paper clusters 2% of the vectors in pre-training, 50% in fine-tuning), so the adapter's catalogue carries them.
INTEREST_KEYS = (
    "interest_method",
    "interest_ratio",
    "knn_local_ratio",
    "kmeans_init",
    "kmeans_max_iter",
    "kmeans_tol",
    "interest_seed",
)
# How the adapted model scores (fine-tuning may set them on top of its base: `config_overrides`), likewise carried.
SCORING_KEYS = ("score_temperature", "learn_score_temperature", "repeat_bias", "learned_id_weight")
# Config keys an adapter's base must share with the base it was trained on (id_mode is handled on its own).
SIGNATURE_KEYS = (
    "model_type",
    "hidden_size",
    "text_feature_dim",
    "image_feature_dim",
    "modalities",
    "seq_mm_fusion",
    "item_mm_fusion",
    "num_encoder_layers",
    "num_decoder_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_seq_length",
)
# Base weights that a LoRA adapter does not replace (LoRA wraps these projections; the position embedding is
# frozen): the fingerprint of an adapter's base. Modules saved whole with the adapter are left out on purpose.
_FINGERPRINT_PATTERN = re.compile(
    r"^(position_embeddings\.weight|(encoder|decoder)\..*\.(q_proj|k_proj|v_proj|o_proj|fc1|fc2)\.(weight|bias))$"
)


# ---------------------------------------------------------------------------------------------------- files
def save_item_metadata(
    folder: str | os.PathLike,
    source_ids: Sequence[str],
    texts: Sequence[str | None] | None = None,
    *,
    popularity: Sequence[int] | np.ndarray | torch.Tensor | None = None,
) -> Path:
    """Write `item_metadata.json` (source ids, texts, popularity of the catalogue items) into `folder`.

    Entry `i` describes item id `i + 1` (id 0 is padding), the same order as the catalogue feature tables.

    Args:
        folder: a model or adapter folder.
        source_ids: `[N]` unique strings (e.g. ASINs); histories may then be given as source ids.
        texts: `[N]` item texts (None entries allowed), returned with `return_text=True`.
        popularity: `[N]` non-negative counts (e.g. training interactions), used by `fallback="popular"`.

    Returns:
        The path of the written file.
    """
    source_ids = [str(s) for s in source_ids]
    num_items = len(source_ids)
    if len(set(source_ids)) != num_items:
        counts: dict[str, int] = {}
        for s in source_ids:
            counts[s] = counts.get(s, 0) + 1
        raise ValueError(f"source_ids must be unique; repeated: {[s for s, c in counts.items() if c > 1][:5]}")
    if texts is not None:
        texts = [None if t is None else str(t) for t in texts]
        if len(texts) != num_items:
            raise ValueError(f"texts has {len(texts)} entries but source_ids has {num_items}")
    if popularity is not None:
        popularity = np.asarray(popularity)
        if popularity.shape != (num_items,) or not np.issubdtype(popularity.dtype, np.number):
            raise ValueError(f"popularity must be [{num_items}] numbers, got {popularity.dtype} {popularity.shape}")
        if (popularity < 0).any() or not np.isfinite(popularity).all():
            raise ValueError("popularity must be finite and non-negative")
        popularity = popularity.tolist()
    content = {
        "format": ITEM_METADATA_FORMAT,
        "version": 1,
        "num_items": num_items,
        "source_ids": source_ids,
        "texts": texts,
        "popularity": popularity,
    }
    path = Path(folder) / ITEM_METADATA_FILE

    write_atomically(path, lambda file: file.write(json.dumps(content, ensure_ascii=False).encode("utf-8")))
    return path


def _resolve(path_or_repo: str | os.PathLike, filename: str, **hub_kwargs) -> str | None:
    """Local path of `filename` in a folder or Hub repository (downloaded to the cache), or None if it has none.

    Raises `FileNotFoundError` when `path_or_repo` is neither an existing folder nor a valid Hub repository id.
    """
    if os.path.isdir(path_or_repo):
        path = os.path.join(path_or_repo, filename)
        return path if os.path.isfile(path) else None
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(path_or_repo)):
        raise FileNotFoundError(f"{path_or_repo} is neither a folder nor a Hub repository id")
    return cached_file(
        str(path_or_repo),
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )


def load_item_metadata(path_or_repo: str | os.PathLike, **hub_kwargs) -> dict[str, Any] | None:
    """The content of `item_metadata.json` in a folder or Hub repository, or None when there is none.

    Returns:
        `{"num_items", "source_ids" [N], "texts" [N] or None, "popularity" [N] or None, ...}`.
    """
    path = _resolve(path_or_repo, ITEM_METADATA_FILE, **hub_kwargs)
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    if content.get("format") != ITEM_METADATA_FORMAT or len(content.get("source_ids", ())) != content.get("num_items"):
        raise ValueError(f"{path} is not a valid {ITEM_METADATA_FILE} (format {content.get('format')!r})")
    return content


def base_signature(model: nn.Module) -> dict[str, Any]:
    """The config values an adapter's base model must share with the base it was trained on (plus `id_mode`)."""
    config = unwrap_missrec(model).config
    return {key: getattr(config, key, None) for key in (*SIGNATURE_KEYS, "id_mode")}


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the base weights a LoRA adapter builds on (Transformer projections, position embedding).

    Names are canonical (PEFT's `.base_layer` removed, LoRA factors skipped), so a plain model and the same model
    wrapped by PEFT give the same fingerprint.
    """
    digest = hashlib.sha256()
    tensors = {}
    for name, parameter in unwrap_missrec(model).named_parameters():
        if "lora_" in name:
            continue
        name = name.replace(".base_layer", "")
        if _FINGERPRINT_PATTERN.match(name):
            tensors[name] = parameter
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_catalogue(
    folder: str | os.PathLike,
    catalogue: nn.Module | Mapping[str, torch.Tensor | np.ndarray],
    *,
    base: nn.Module | None = None,
) -> Path:
    """Write `catalogue.safetensors` (the item feature tables) into an adapter `folder`.

    Args:
        folder: the adapter folder (or any folder that should carry a catalogue).
        catalogue: a MISSRec model (or `PeftModel`) whose catalogue buffers are saved, or a mapping with
            `text_features` `[N, dt]` and/or `image_features` `[N, di]` (optional `text_present` / `image_present`
            `[N]` bool; default: non-zero rows), row `i` = item id `i + 1`.
        base: the model the adapter is trained on, for the signature and fingerprint checked by
            [`load_missrec_adapter`] (default: `catalogue` itself when it is a model).

    Returns:
        The path of the written file.
    """
    tensors: dict[str, torch.Tensor] = {}
    interests = scoring = None
    if isinstance(catalogue, nn.Module):
        inner = unwrap_missrec(catalogue)
        base = catalogue if base is None else base
        interests = {key: getattr(inner.config, key) for key in INTEREST_KEYS}
        scoring = {key: getattr(inner.config, key) for key in SCORING_KEYS}
        for m in inner.modality_names:
            tensors[f"{m}_features"] = getattr(inner, f"{m}_features")[1:]
            tensors[f"{m}_present"] = getattr(inner, f"{m}_present")[1:]
        if inner.config.num_interests:  # the interests as trained: rediscovery may differ across thread counts
            tensors["interest_centroids"] = inner.interest_centroids
            for m in inner.modality_names:
                tensors[f"{m}_interest_ids"] = getattr(inner, f"{m}_interest_ids")[1:]
    else:
        for m in ("text", "image"):
            if catalogue.get(f"{m}_features") is None:
                continue
            table = torch.as_tensor(np.asarray(catalogue[f"{m}_features"]), dtype=torch.float32)
            if table.ndim != 2:
                raise ValueError(f"{m}_features must be [N, d], got shape {tuple(table.shape)}")
            if not torch.isfinite(table).all():
                bad = (~torch.isfinite(table)).any(1).nonzero().flatten()[:5] + 1
                raise ValueError(f"{m}_features has NaN or Inf for items {bad.tolist()} (item ids, 1-based)")
            present = catalogue.get(f"{m}_present")
            present = table.abs().sum(1) > 0 if present is None else torch.as_tensor(np.asarray(present)).bool()
            tensors[f"{m}_features"], tensors[f"{m}_present"] = table, present
        if not tensors:
            raise ValueError("the catalogue needs text_features and/or image_features")
    rows = {len(t) for k, t in tensors.items() if k != "interest_centroids"}
    if len(rows) != 1:
        raise ValueError(f"the catalogue tables have different numbers of rows: {sorted(rows)}")
    metadata = {"format": CATALOGUE_FORMAT, "version": "1", "num_items": str(rows.pop())}
    if base is not None:
        metadata["base_signature"] = json.dumps(base_signature(base), sort_keys=True)
        metadata["base_fingerprint"] = base_fingerprint(base)
    if interests is not None:
        metadata["interest_settings"] = json.dumps(interests, sort_keys=True)
        metadata["scoring_settings"] = json.dumps(scoring, sort_keys=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    path = Path(folder) / CATALOGUE_FILE
    write_atomically(path, lambda file: file.write(save(tensors, metadata=metadata)))
    return path


def load_catalogue(path_or_repo: str | os.PathLike, **hub_kwargs) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The tables and metadata of `catalogue.safetensors` in a folder or Hub repository, or None without one.

    Returns:
        `(tables, metadata)`: tables as keyword arguments of `MISSRecModel.set_catalogue` (`text_features` `[N, dt]`,
        `text_present` `[N]`, ...); metadata with `num_items` and, when saved, `base_signature` (a dict),
        `base_fingerprint`, `interest_settings` (the adapted model's interest-discovery config values),
        `scoring_settings` (its `SCORING_KEYS` values) and `interest_tables` (its interests: `interest_centroids`
        `[K + 1, d]`, `text_interest_ids` `[N]`, ...).
    """
    path = _resolve(path_or_repo, CATALOGUE_FILE, **hub_kwargs)
    if path is None:
        return None
    with safe_open(path, framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tables = {key: f.get_tensor(key) for key in f.keys()}
    if metadata.get("format") != CATALOGUE_FORMAT:
        raise ValueError(f"{path} is not a MISSRec catalogue (format {metadata.get('format')!r})")
    for key in ("base_signature", "interest_settings", "scoring_settings"):
        if key in metadata:
            metadata[key] = json.loads(metadata[key])
    tables = {k: v.bool() if k.endswith("_present") else v for k, v in tables.items()}
    interests = {k: tables.pop(k) for k in list(tables) if "interest" in k}
    if interests:
        metadata["interest_tables"] = interests
    return tables, metadata


# ---------------------------------------------------------------------------------------------------- adapters
def load_missrec_adapter(
    base: str | os.PathLike | nn.Module,
    adapter: str | os.PathLike,
    *,
    check_base_weights: bool = True,
    is_trainable: bool = False,
    **hub_kwargs,
) -> nn.Module:
    """Load a MISSRec LoRA adapter (folder or Hub id) onto its base model, ready to serve, in one call.

    1. `base` is loaded with `AutoModel.from_pretrained(base, trust_remote_code=True)` when it is a path or id;
    2. when the adapter carries `catalogue.safetensors`, the base must match the base the adapter was trained on
       (same config signature; same Transformer weights unless `check_base_weights=False`), else `ValueError`;
       a modality the adapter was fine-tuned with and the base lacks (text-only pre-training, text + image
       fine-tuning) is added to the base first, its adaptor coming from the adapter, and so are repeat offsets
       the adapter was fine-tuned with; then the adapter's catalogue and its interest and scoring settings
       replace the base's;
    3. the adapter is loaded with `PeftModel.from_pretrained`; the interests saved with the catalogue are put back
       (bit-exact, whatever the machine), or, for a catalogue without them, rediscovered from the adapted weights
       with the adapted model's interest settings.

    The adapter's `item_metadata.json`, when present, is kept as `model.missrec_item_metadata` for the pipeline.

    Returns:
        The `PeftModel` (in eval mode unless `is_trainable`).
    """
    if PeftModel is None:
        raise ImportError("loading an adapter needs peft: pip install peft")
    if isinstance(base, (str, os.PathLike)):
        base = AutoModel.from_pretrained(str(base), trust_remote_code=True, **hub_kwargs)
    if hasattr(base, "peft_config"):
        raise ValueError("base is already a PeftModel: pass the plain base model")
    if _resolve(adapter, "adapter_config.json", **hub_kwargs) is None:
        raise ValueError(f"{adapter} is not a PEFT adapter (it has no adapter_config.json)")
    saved, interests = load_catalogue(adapter, **hub_kwargs), None
    if saved is not None:
        tables, metadata = saved
        interests = metadata.get("interest_tables")
        _add_adapter_modalities(base, metadata.get("base_signature", {}))
        _check_adapter_base(base, metadata, adapter, check_base_weights)
        base.set_catalogue(**tables)
        base.config.update(metadata.get("interest_settings", {}))
        scoring = dict(metadata.get("scoring_settings", {}))
        if scoring.pop("repeat_bias", False) and getattr(base, "repeat_bias", None) is None:
            base.add_repeat_bias()  # before PEFT loads: the adapter carries the trained offsets
        if scoring.pop("learn_score_temperature", False) and getattr(base, "learned_temperature", None) is None:
            base.add_learned_temperature()  # likewise: the adapter carries the trained temperature
        if scoring.pop("learned_id_weight", False) and not base.config.learned_id_weight:
            base.add_learned_id_weight()  # likewise: the adapter carries the trained share (with item_fusion)
        base.config.update(scoring)
        if (
            metadata.get("base_signature", {}).get("id_mode") == "transductive"
            and base.config.id_mode != "transductive"
        ):
            if not hasattr(base, "add_item_id_embeddings"):
                raise ValueError(f"{adapter} is transductive but the base model is inductive")
            base.add_item_id_embeddings()
    try:
        model = PeftModel.from_pretrained(base, str(adapter), is_trainable=is_trainable, **hub_kwargs)
    except RuntimeError as error:  # shape mismatches from load_state_dict
        raise ValueError(f"the adapter {adapter} does not fit the base model: {error}") from error
    if interests is None:
        model.get_base_model().discover_interests()
    else:
        _restore_interests(model.get_base_model(), interests)
    model.missrec_item_metadata = load_item_metadata(adapter, **hub_kwargs)
    return model if is_trainable else model.eval()


def _add_adapter_modalities(base: nn.Module, signature: dict) -> None:
    """Add to `base` the modalities the adapter was fine-tuned with and the base lacks (a text-only base
    fine-tuned on text and images): their adaptors are replaced by the adapter's own weights when it loads."""
    adapted = {"both": ("text", "image")}.get(signature.get("modalities"), (signature.get("modalities"),))
    for modality in adapted:
        if modality in ("text", "image") and modality not in base.modality_names and hasattr(base, "add_modality"):
            base.add_modality(modality, signature[f"{modality}_feature_dim"])


def _restore_interests(model: nn.Module, interests: dict[str, torch.Tensor]) -> None:
    """Put the interests saved with an adapter's catalogue back into the MISSRec `model` (ids of items `1..N`)."""
    ids = {m: interests[f"{m}_interest_ids"] for m in model.modality_names}
    model.set_interest_tables(
        interests["interest_centroids"], {m: torch.cat([t.new_zeros(1), t]) for m, t in ids.items()}
    )


def _check_adapter_base(base: nn.Module, metadata: dict, adapter, check_weights: bool) -> None:
    expected = metadata.get("base_signature")
    if expected is not None:
        found = base_signature(base)
        wrong = [
            f"{k}: adapter {expected.get(k)!r} vs base {found[k]!r}"
            for k in SIGNATURE_KEYS
            if expected.get(k) != found[k]
        ]
        if wrong:
            raise ValueError(f"the adapter {adapter} was trained on another base model: " + "; ".join(wrong))
    if check_weights and "base_fingerprint" in metadata and metadata["base_fingerprint"] != base_fingerprint(base):
        raise ValueError(
            f"the adapter {adapter} was trained on a base model with other weights (Transformer fingerprint "
            f"{metadata['base_fingerprint'][:12]}... vs {base_fingerprint(base)[:12]}...): load the base it was "
            "trained on, or pass check_base_weights=False to load it anyway"
        )
