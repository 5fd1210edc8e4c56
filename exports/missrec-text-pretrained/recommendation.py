"""The `"sequential-recommendation"` pipeline: top-k next items for user histories, from a MISSRec model.

```python
from transformers import pipeline

recommend = pipeline("sequential-recommendation", model="path/or/hub-id", trust_remote_code=True)
recommend(["B0001", "B0042", "B0007"], top_k=5)           # one history (source ids or item ids, most recent last)
recommend([[3, 17, 5], [8, 2]], top_k=5, return_text=True)  # a batch: one list of recommendations per history
```

This file is Hub remote code: `pipe.save_pretrained(folder)` copies it next to the model files, and it imports
nothing of the `modeling_missrec` package (only torch, numpy, safetensors, transformers and, optionally, peft), so
`pipeline(..., trust_remote_code=True)` works where the package is not installed.

It also defines the two files a served model folder may carry beside its weights:

- `item_metadata.json` ([`save_item_metadata`]): per catalogue item its source id (e.g. the ASIN), text and
  training popularity, so outputs name items and histories can be given as source ids;
- `catalogue.safetensors` ([`save_catalogue`]): the catalogue feature tables, for PEFT adapter folders (a
  MISSRec catalogue lives in base-model buffers, which an adapter does not carry), plus a signature and a weight
  fingerprint of the base model the adapter was trained on. [`load_missrec_adapter`] reads it.

Scoring is exact brute force, made fast by caching: the fused per-item embeddings of the whole catalogue are
computed once per model (and recomputed only when a parameter or buffer of the model changes), laid out as one
`[d, N * P]` matrix (`P` = columns per item), and each batch is scored with one matmul per chunk of items plus an
elementwise fusion and a running `topk`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import types
import warnings
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import cached_file

try:  # optional: only adapters need it
    from peft import PeftModel
except ImportError:  # pragma: no cover - peft is installed wherever adapters are used
    PeftModel = None

TASK = "sequential-recommendation"
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
# Scores of one chunk of items are at most this many floats (keeps the working set in cache, bounds memory).
_CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------------- files
def _write_atomically(path: Path, write) -> None:
    """Write `path` through a temporary file in the same folder, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


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

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False)

    _write_atomically(path, write)
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


def _unwrap(model: nn.Module) -> nn.Module:
    """The MISSRec model inside `model` (itself, or the base model of a `PeftModel`)."""
    return model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model


def base_signature(model: nn.Module) -> dict[str, Any]:
    """The config values an adapter's base model must share with the base it was trained on (plus `id_mode`)."""
    config = _unwrap(model).config
    return {key: getattr(config, key, None) for key in (*SIGNATURE_KEYS, "id_mode")}


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the base weights a LoRA adapter builds on (Transformer projections, position embedding).

    Names are canonical (PEFT's `.base_layer` removed, LoRA factors skipped), so a plain model and the same model
    wrapped by PEFT give the same fingerprint.
    """
    digest = hashlib.sha256()
    tensors = {}
    for name, parameter in _unwrap(model).named_parameters():
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
    interests = None
    if isinstance(catalogue, nn.Module):
        inner = _unwrap(catalogue)
        base = catalogue if base is None else base
        interests = {key: getattr(inner.config, key) for key in INTEREST_KEYS}
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
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    path = Path(folder) / CATALOGUE_FILE
    _write_atomically(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))
    return path


def load_catalogue(path_or_repo: str | os.PathLike, **hub_kwargs) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The tables and metadata of `catalogue.safetensors` in a folder or Hub repository, or None without one.

    Returns:
        `(tables, metadata)`: tables as keyword arguments of `MISSRecModel.set_catalogue` (`text_features` `[N, dt]`,
        `text_present` `[N]`, ...); metadata with `num_items` and, when saved, `base_signature` (a dict),
        `base_fingerprint`, `interest_settings` (the adapted model's interest-discovery config values) and
        `interest_tables` (its interests: `interest_centroids` `[K + 1, d]`, `text_interest_ids` `[N]`, ...).
    """
    path = _resolve(path_or_repo, CATALOGUE_FILE, **hub_kwargs)
    if path is None:
        return None
    with safe_open(path, framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tables = {key: f.get_tensor(key) for key in f.keys()}
    if metadata.get("format") != CATALOGUE_FORMAT:
        raise ValueError(f"{path} is not a MISSRec catalogue (format {metadata.get('format')!r})")
    for key in ("base_signature", "interest_settings"):
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
       fine-tuning) is added to the base first, its adaptor coming from the adapter; then the adapter's
       catalogue replaces the base's;
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
    centroids = interests["interest_centroids"]
    if centroids.ndim != 2 or centroids.shape[1] != model.config.hidden_size:
        raise ValueError(
            f"saved interest centroids {tuple(centroids.shape)} do not fit hidden_size {model.config.hidden_size}"
        )
    device = model.interest_centroids.device
    for m in model.modality_names:
        ids = interests[f"{m}_interest_ids"]
        if len(ids) != model.config.num_items or (len(ids) and int(ids.max()) >= len(centroids)):
            raise ValueError(
                f"saved {m} interest ids do not fit {model.config.num_items} items and {len(centroids) - 1} interests"
            )
        setattr(model, f"{m}_interest_ids", torch.cat([ids.new_zeros(1), ids]).to(device))
    model.interest_centroids = centroids.to(device=device, dtype=model.interest_centroids.dtype)
    model.config.num_interests = len(centroids) - 1


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


# ---------------------------------------------------------------------------------------------------- scoring
class ItemIndex:
    """Fused item embeddings laid out for exact brute-force top-k scoring.

    Columns: `P` per item, item-major, in a `[d, N * P]` matrix (the transposed layout keeps single-history
    scoring a memory-bound matrix-vector product over contiguous rows). What the columns are depends on the
    model's item fusion:

    - `static` (or one modality): one column, the mean of the item's present normalised modality embeddings
      (`+ 2/3 * mean + 1/3 * id` folded in, transductive), so scoring is exactly one matmul;
    - `dynamic_shared` / `dynamic_instance`: the text and image embeddings (an absent modality repeats the present
      one, so its fused score is the present one's, as the model's masked softmax gives) and, transductive, the id
      embedding. The fusion `s_i + (s_t - s_i) * sigmoid(w (s_t - s_i))` is the model's two-way softmax.

    Build it with [`from_model`] (a model's catalogue, cached by [`catalogue_index`]) or [`from_features`]
    (cold-start items). The matrix is filled chunk by chunk of items, so building it takes little memory beyond
    the matrix itself (2.4 GB for 1M items, d = 300, two columns per item).

    Args:
        modalities: the model's modality names; mode: its item fusion mode.
        weight: the fusion weight (`[1]`, `[N]` or None); temperature: the score temperature.
        num_items: N; hidden_size: d; has_id: whether the model has item-id embeddings (transductive).
    """

    def __init__(
        self,
        modalities: Sequence[str],
        mode: str,
        weight: torch.Tensor | None,
        temperature: float,
        *,
        num_items: int,
        hidden_size: int,
        has_id: bool,
        device: torch.device | str = "cpu",
    ):
        self.modalities = list(modalities)
        self.mode = "static" if len(modalities) == 1 else mode
        self.temperature = temperature
        self.num_items = num_items
        self.has_id = has_id and self.mode != "static"
        self.id_folded = has_id and self.mode == "static"
        self.columns_per_item = 1 if self.mode == "static" else 2 + int(self.has_id)
        self.matrix = torch.empty(hidden_size, num_items * self.columns_per_item, device=device)  # [d, N * P]
        self.weight = None if weight is None or self.mode == "static" else weight.detach().reshape(-1)

    def _fill(self, start: int, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> None:
        """Write the columns of items `start .. start + c - 1` (0-based rows) from their normalised embeddings
        (`{"text": [c, d], "image": [c, d], "id": [c, d]}`) and modality presence `[c, M]`."""
        modalities = self.modalities
        if self.mode == "static":
            counts = present.sum(1, keepdim=True).clamp_min(1).to(embeddings[modalities[0]].dtype)
            mean = sum(embeddings[m] * present[:, i : i + 1] for i, m in enumerate(modalities)) / counts
            columns = [(embeddings["id"] + 2 * mean) / 3 if self.id_folded else mean]
        else:
            text, image = embeddings["text"], embeddings["image"]
            # An absent modality repeats the present one: equal logits give it a zero-weight-equivalent share.
            text = torch.where(present[:, :1], text, image)
            image = torch.where(present[:, 1:2], image, text)
            columns = [text, image] + ([embeddings["id"]] if self.has_id else [])
        view = self.matrix.view(self.matrix.shape[0], self.num_items, self.columns_per_item)
        for j, column in enumerate(columns):
            view[:, start : start + len(column), j] = column.T

    @classmethod
    def _empty_for(cls, inner: nn.Module, weight: torch.Tensor | None, num_items: int, *, has_id: bool) -> ItemIndex:
        """An unfilled index of `num_items` items with the fusion settings of MISSRec model `inner`."""
        return cls(
            inner.modality_names,
            inner.item_fusion.mode,
            weight,
            inner.config.score_temperature,
            num_items=num_items,
            hidden_size=inner.config.hidden_size,
            has_id=has_id,
            device=inner.device,
        )

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: nn.Module, chunk_items: int = 65536) -> ItemIndex:
        """The index of a MISSRec model's catalogue (items `1..N`), built in chunks of items to bound memory."""
        inner = _unwrap(model)
        num_items = inner.config.num_items
        if num_items == 0:
            raise ValueError("the model has no item catalogue: call set_catalogue(...) first")
        fusion = inner.item_fusion
        weight = fusion.weight
        if weight is not None and fusion.mode == "dynamic_instance":
            weight = weight[1:]  # per item id; row 0 is padding
        index = cls._empty_for(inner, weight, num_items, has_id=getattr(inner, "item_id_embeddings", None) is not None)
        for start in range(1, num_items + 1, chunk_items):
            ids = torch.arange(start, min(num_items, start + chunk_items - 1) + 1, device=inner.device)
            embeddings = {key: value.float() for key, value in inner.embed_items(ids).items()}
            present = torch.stack([getattr(inner, f"{m}_present")[ids] for m in inner.modality_names], 1)
            index._fill(start - 1, embeddings, present)
        return index

    @classmethod
    @torch.no_grad()
    def from_features(cls, model: nn.Module, features: dict[str, torch.Tensor]) -> ItemIndex:
        """An index of items given as raw features (cold-start items, scored from their features alone).

        Args:
            features: `{"text": [n, dt], "image": [n, di]}` validated tables (all the model's modalities).
        """
        inner = _unwrap(model)
        embeddings, present = {}, []
        for m in inner.modality_names:
            table = features[m].to(inner.device, inner.dtype)
            mask = table.abs().sum(1) > 0
            adapted = getattr(inner, f"{m}_adaptor")(table) * mask[:, None]
            embeddings[m] = F.normalize(adapted, dim=-1).float()
            present.append(mask)
        fusion = inner.item_fusion
        weight = fusion.weight
        num = len(present[0])
        if weight is not None and fusion.mode == "dynamic_instance":
            weight = weight.new_zeros(num)  # new items' per-item weights start at zero
        index = cls._empty_for(inner, weight, num, has_id=False)  # cold-start items: inductive models only
        index._fill(0, embeddings, torch.stack(present, 1))
        return index

    def _fuse(
        self, logits: torch.Tensor, weight: torch.Tensor | None, scratch: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """`[B, C, P]` column logits -> `[B, C]` item logits (before the temperature), written into `scratch`.

        In place into preallocated buffers: at 1M items these elementwise passes are a third of the matmul's time,
        and fresh tensors would add allocation and page faults to every chunk.
        """
        if self.mode == "static":
            return logits[..., 0]
        shape = logits.shape[:2]
        difference, fused = (buffer[: shape.numel()].view(shape) for buffer in scratch)
        text, image = logits[..., 0], logits[..., 1]
        torch.sub(text, image, out=difference)
        if weight.numel() == 1:
            w = float(weight)
            if w == 0.0:  # an untrained gate: the softmax is 1/2 each
                torch.add(text, image, out=fused).mul_(0.5)
            else:  # d * sigmoid(w d) = silu(w d) / w: one fused op instead of three
                F.silu(torch.mul(difference, w, out=fused), inplace=True)
                torch.add(image, fused, alpha=1.0 / w, out=fused)
        else:
            torch.mul(difference, weight, out=fused).sigmoid_().mul_(difference).add_(image)
        if self.has_id:
            fused.mul_(2).add_(logits[..., 2]).div_(3)
        return fused

    @torch.no_grad()
    def top_k(
        self,
        sequence_embeddings: torch.Tensor,
        k: int,
        item_rows: torch.Tensor | None = None,
        excluded: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-`k` items of every history.

        Args:
            sequence_embeddings: `[B, d]`.
            k: how many to return per history (at most the number of candidates).
            item_rows: `[C]` long, rows of the index to rank (an allow-list), or None for all `N`.
            excluded: `(batch_rows [E], index_rows [E])` pairs that must not be returned (scored `-inf`).

        Returns:
            `(scores [B, k], index_rows [B, k])`, best first; scores are divided by the temperature, and excluded
            pairs that still fill the top-k (too few candidates) carry `-inf`.
        """
        sequence_embeddings = sequence_embeddings.float()
        batch, width = sequence_embeddings.shape[0], self.columns_per_item
        matrix, weight = self.matrix, self.weight
        if item_rows is not None:
            matrix = matrix.view(matrix.shape[0], self.num_items, width)[:, item_rows].flatten(1)
            if weight is not None and weight.numel() > 1:
                weight = weight[item_rows]
        num = matrix.shape[1] // width
        if excluded is not None and item_rows is not None:
            # Excluded index rows -> positions in the allow-list (rows outside it need no masking).
            position = torch.full((self.num_items,), -1, dtype=torch.long, device=item_rows.device)
            position[item_rows] = torch.arange(len(item_rows), device=item_rows.device)
            rows, local = excluded[0], position[excluded[1]]
            excluded = (rows[local >= 0], local[local >= 0])
        chunk = max(1, min(num, _CHUNK_ELEMENTS // max(1, batch * width)))
        buffer = sequence_embeddings.new_empty(batch * chunk * width)
        scratch = (sequence_embeddings.new_empty(batch * chunk), sequence_embeddings.new_empty(batch * chunk))
        values, indices = [], []
        for start in range(0, num, chunk):
            stop = min(num, start + chunk)
            out = buffer[: batch * (stop - start) * width].view(batch, (stop - start) * width)
            torch.matmul(sequence_embeddings, matrix[:, start * width : stop * width], out=out)
            chunk_weight = weight if weight is None or weight.numel() == 1 else weight[start:stop]
            scores = self._fuse(out.view(batch, stop - start, width), chunk_weight, scratch)
            if excluded is not None:
                # (`scores` lives in a reused buffer: writing into it is fine.)
                if stop - start == num:  # one chunk (a single request's whole catalogue): no range test
                    scores.index_put_(excluded, scores.new_tensor(float("-inf")))
                else:
                    inside = (excluded[1] >= start) & (excluded[1] < stop)
                    scores[excluded[0][inside], excluded[1][inside] - start] = float("-inf")
            top = scores.topk(min(k, stop - start), dim=1)
            values.append(top.values)
            indices.append(top.indices + start if start else top.indices)
        values, indices = (values[0], indices[0]) if len(values) == 1 else (torch.cat(values, 1), torch.cat(indices, 1))
        if values.shape[1] > k:
            best = values.topk(k, dim=1)
            values, indices = best.values, indices.gather(1, best.indices)
        if item_rows is not None:
            indices = item_rows[indices]
        return values / self.temperature, indices


# Per model: {name: (dependency key, cached value)}.
_SERVING_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# The adapted catalogue (history items are looked up in it) is kept only up to this size: beyond it, adapting a
# history's few items per request costs less than the memory (at 1M items it would be 2.4 GB).
_ADAPTED_CATALOGUE_BYTES = 64 << 20


def _dependency_key(tensors: list[torch.Tensor], modules: list[nn.Module], extra: tuple) -> tuple:
    """What a cached value computed from `tensors` and `modules` depends on: every tensor and module parameter
    (identity and in-place version, so optimizer steps count), the active / disabled state of PEFT wrappers (a
    `ModulesToSaveWrapper` or LoRA layer switches adapters without touching any tensor) and `extra`. The tensors
    themselves are kept in the key, so a replaced buffer cannot be mistaken for a new one that reuses its id. Cheap
    (a few dozen attribute reads): it runs on every request."""
    states = []
    for module in modules:
        # (`_parameters` of a leaf module: a third of the cost of `parameters()`, which walks the module tree.)
        if module._modules:
            tensors = tensors + list(module.parameters())
        else:
            tensors = tensors + [p for p in module._parameters.values() if p is not None]
        # A class lookup: `getattr` on a plain torch module would raise and catch an AttributeError (slow).
        if hasattr(type(module), "active_adapters"):
            states.append((tuple(module.active_adapters or ()), module.disable_adapters))
    return tuple((t, t._version) for t in tensors), extra, tuple(states)


def _item_side_key(model: nn.Module) -> tuple:
    """The catalogue buffers, the item-side modules (modality adaptors, item fusion, item-id embedding) and the
    catalogue size: what item embeddings depend on. Interest tables and the sequence side do not change them."""
    inner = _unwrap(model)
    tensors = []
    for m in inner.modality_names:
        tensors += [getattr(inner, f"{m}_features"), getattr(inner, f"{m}_present")]
    modules = [getattr(inner, f"{m}_adaptor") for m in inner.modality_names] + [inner.item_fusion]
    if getattr(inner, "item_id_embeddings", None) is not None:
        modules.append(inner.item_id_embeddings)
    return _dependency_key(tensors, modules, (inner.config.num_items,))


def _interest_side_key(model: nn.Module) -> tuple:
    """The centroids and the first encoder layer's q/k/v projections: what `interest_projections()` depends on."""
    inner = _unwrap(model)
    attention = inner.encoder[0].self_attention.block
    modules = [attention.q_proj, attention.k_proj, attention.v_proj]
    return _dependency_key([inner.interest_centroids], modules, (inner.config.num_interests,))


def _same_key(a: tuple, b: tuple) -> bool:
    if a[1:] != b[1:] or len(a[0]) != len(b[0]):
        return False
    return all(x is y and u == v for (x, u), (y, v) in zip(a[0], b[0]))


def _cached(model: nn.Module, name: str, key: tuple, build) -> Any:
    """`build()`, cached per model under `name` until `key` changes."""
    cache = _SERVING_CACHE.setdefault(model, {})
    entry = cache.get(name)
    if entry is not None and _same_key(entry[0], key):
        return entry[1]
    value = build()
    cache[name] = (key, value)
    return value


def catalogue_index(model: nn.Module) -> ItemIndex:
    """The cached [`ItemIndex`] of `model`'s catalogue, rebuilt when what item embeddings depend on has changed
    (training steps of the item side, `set_catalogue`, `extend_catalogue`, another active adapter)."""
    return _cached_index(model, _item_side_key(model))


def _cached_index(model: nn.Module, item_key: tuple) -> ItemIndex:
    return _cached(model, "index", item_key, lambda: ItemIndex.from_model(model))


@torch.no_grad()
def serving_state(model: nn.Module) -> tuple[ItemIndex, dict[str, Any]]:
    """What every request of `model` reuses, cached and rebuilt when what it depends on changes (checked once per
    call): the [`catalogue_index`] and keyword arguments of `embed_sequences` that spare each request the work
    that depends only on the weights: `interest_projections` (the first encoder layer's projections of the
    interest centroids) and, for catalogues up to 64 MB of adapted embeddings, `catalogue` (the adapted catalogue
    the histories are looked up in).

    Returns:
        `(index, embed_kwargs)`.
    """
    inner = _unwrap(model)
    item_key = _item_side_key(model)
    index = _cached_index(model, item_key)
    projections = _cached(model, "interests", _interest_side_key(model), inner.interest_projections)
    adapted = _cached(model, "adapted", item_key, lambda: _small_adapted_catalogue(inner))
    return index, {"interest_projections": projections} | ({} if adapted is None else {"catalogue": adapted})


def _small_adapted_catalogue(inner: nn.Module) -> dict[str, torch.Tensor] | None:
    size = (inner.config.num_items + 1) * inner.config.hidden_size * len(inner.modality_names) * inner.dtype.itemsize
    return inner.adapted_catalogue() if size <= _ADAPTED_CATALOGUE_BYTES else None


# ---------------------------------------------------------------------------------------------------- pipeline
class _HistoryBatch(list):
    """A batch of raw histories handed to `preprocess` as one unit (the pipeline scores a batch at once)."""


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, str, np.integer)) or (
        isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0
    )


def _is_single_history(inputs: Any) -> bool:
    """One history (a flat list/tuple of ids, a 1-D tensor/array, a bare id) vs a batch of histories."""
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        if inputs.ndim not in (0, 1, 2):
            raise ValueError(f"histories must be 1-D (one) or 2-D (a batch), got shape {tuple(inputs.shape)}")
        return inputs.ndim < 2
    if _is_scalar(inputs):
        return True
    if not isinstance(inputs, (list, tuple)):
        raise ValueError(
            f"inputs must be a history (a list of item ids or source ids, most recent last) or a list of histories, "
            f"got {type(inputs).__name__}"
        )
    if all(_is_scalar(x) for x in inputs):
        return True  # includes the empty history []
    if all(isinstance(x, (list, tuple, torch.Tensor, np.ndarray)) for x in inputs):
        return False
    raise ValueError("inputs mix item ids and lists: pass one history (a flat list) or a list of histories")


class SequentialRecommendationPipeline(Pipeline):
    """Recommends the next items of user histories with a MISSRec model (exact full-catalogue ranking).

    Inputs: one history or a list of histories, each a list of catalogue item ids (`1..N`) or source ids (with
    `item_metadata.json`), most recent last (a 2-D tensor is a padded batch, 0 = padding).

    Call parameters:
        top_k (`int`, default 10): recommendations per history (1 to the number of candidates).
        exclude_history (`bool`, default True): never recommend an item of the history itself.
        candidates (list of ids or source ids): rank only these catalogue items.
        cold_start_items (`dict`): items that are not in the catalogue, given as raw features
            (`text_features` `[n, dt]`, `image_features` `[n, di]` for the modalities the model reads; optional
            `source_ids`, `texts`). They are candidates beside the catalogue, scored from their features alone
            (inductive models only), with ids `N + 1 .. N + n` in the output.
        return_text (`bool`, default False): add each item's `text` (from `item_metadata.json`).
        on_unknown (`"error"` or `"skip"`, default `"error"`): unknown ids raise a `ValueError` naming them, or are
            dropped with a warning.
        fallback (`None` or `"popular"`): an empty history raises a `ValueError`, or gets the most popular items
            (`item_metadata.json` popularity; `score` is then the popularity count).
        batch_size (`int`, default 256): histories scored together.

    Construction: `pipeline("sequential-recommendation", model=..., trust_remote_code=True)`, optionally with
    `adapter=` (a LoRA adapter folder or Hub id, loaded by [`load_missrec_adapter`]) and `item_metadata=` (a dict
    or folder; default: the model's or adapter's `item_metadata.json`).

    Returns:
        Per history a list of `{"item_id": int, "source_id": str | None, "score": float, "text"?: str | None}`,
        best first.
    """

    _load_tokenizer = False
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, model: nn.Module, *args, adapter: str | None = None, item_metadata: Any = None, **kwargs):
        if adapter is not None:
            model = load_missrec_adapter(model, adapter)
        super().__init__(model, *args, **kwargs)
        self.model.eval()
        inner = _unwrap(self.model)
        if not hasattr(inner, "embed_sequences") or not hasattr(inner, "item_fusion"):
            raise ValueError(f"{type(inner).__name__} is not a MISSRec model: this pipeline serves MISSRecModel")
        if item_metadata is None:
            item_metadata = getattr(self.model, "missrec_item_metadata", None)
        if item_metadata is None and inner.name_or_path:
            try:  # the folder or Hub repository the model came from, when it still exists
                item_metadata = load_item_metadata(inner.name_or_path)
            except FileNotFoundError:
                item_metadata = None
        elif isinstance(item_metadata, (str, os.PathLike)):
            item_metadata = load_item_metadata(item_metadata)
        self.item_metadata = item_metadata
        self._source_index: tuple[Any, int, dict[str, int]] | None = None  # (metadata, num_items, index)

    def get_inference_context(self):
        """`torch.inference_mode`: it skips the autograd bookkeeping `no_grad` still does (about 8% of a
        single request's time); the pipeline never needs the gradients or the version counters."""
        return torch.inference_mode

    # ------------------------------------------------------------------ metadata
    @property
    def num_items(self) -> int:
        return _unwrap(self.model).config.num_items

    def _metadata(self, key: str) -> list | None:
        """A metadata column, when the metadata exists and describes this catalogue."""
        metadata = self.item_metadata
        if metadata is None:
            return None
        if metadata["num_items"] != self.num_items:
            raise ValueError(
                f"the item metadata describes {metadata['num_items']} items but the catalogue has {self.num_items}"
            )
        return metadata.get(key)

    def _source_ids(self) -> dict[str, int]:
        """Source id -> item id, rebuilt when the metadata or the catalogue size changes (the model does not check
        the ids the pipeline gives it again)."""
        if self._source_index is not None:
            metadata, num_items, index = self._source_index
            if metadata is self.item_metadata and num_items == self.num_items:
                return index
        source_ids = self._metadata("source_ids")  # (raises when the metadata does not describe the catalogue)
        if source_ids is None:
            raise ValueError(
                "histories are given as source ids but the model has no item metadata "
                f"({ITEM_METADATA_FILE}): give item ids, or pass item_metadata="
            )
        index = {s: i + 1 for i, s in enumerate(source_ids)}
        self._source_index = (self.item_metadata, self.num_items, index)
        return index

    # ------------------------------------------------------------------ parameters
    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        exclude_history: bool | None = None,
        candidates: Sequence[int | str] | None = None,
        cold_start_items: Mapping[str, Any] | None = None,
        return_text: bool | None = None,
        on_unknown: str | None = None,
        fallback: str | None = None,
        **unknown,
    ):
        if unknown:
            raise TypeError(f"unknown parameters {sorted(unknown)} for the {TASK} pipeline")
        preprocess, forward, postprocess = {}, {}, {}
        if on_unknown is not None:
            if on_unknown not in ("error", "skip"):
                raise ValueError(f"on_unknown={on_unknown!r} must be 'error' or 'skip'")
            preprocess["on_unknown"] = on_unknown
        if fallback is not None:
            if fallback != "popular":
                raise ValueError(f"fallback={fallback!r} must be None or 'popular'")
            preprocess["fallback"] = fallback
        if candidates is not None:
            preprocess["candidates"] = candidates
        if cold_start_items is not None:
            preprocess["cold_start_items"] = cold_start_items
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
                raise ValueError(f"top_k={top_k!r} must be a positive integer")
            forward["top_k"] = int(top_k)
        if exclude_history is not None:
            forward["exclude_history"] = bool(exclude_history)
        if return_text is not None:
            postprocess["return_text"] = bool(return_text)
        return preprocess, forward, postprocess

    def __call__(self, inputs: Any, *args, **kwargs) -> list[dict] | list[list[dict]]:
        """Recommendations for one history (a list of dicts) or a batch (a list of such lists); see the class."""
        if isinstance(inputs, types.GeneratorType):
            return super().__call__(inputs, *args, **kwargs)  # streamed: one history at a time
        batch_size = kwargs.pop("batch_size", None) or self._batch_size or 256
        single = _is_single_history(inputs)
        histories = [inputs] if single else list(inputs)
        preprocess, forward, postprocess = self._sanitize_parameters(**kwargs)
        preprocess = {**self._preprocess_params, **preprocess}
        forward = {**self._forward_params, **forward}
        postprocess = {**self._postprocess_params, **postprocess}
        outputs = []
        for start in range(0, len(histories), batch_size):
            batch = _HistoryBatch(histories[start : start + batch_size])
            outputs.extend(self.run_single(batch, preprocess, forward, postprocess))
        return outputs[0] if single else outputs

    # ------------------------------------------------------------------ steps
    def _to_ids(self, values: Sequence, on_unknown: str, what: str) -> list[int]:
        """Item ids of a list of item ids / source ids; unknown ones raise or are skipped with a warning."""
        ids, unknown, num_items = [], [], self.num_items
        for value in values:
            if isinstance(value, (torch.Tensor, np.ndarray)):
                value = value.item()
            if isinstance(value, str):
                item = self._source_ids().get(value)
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                item = int(value) if 1 <= value <= num_items else None
            else:
                raise ValueError(f"{what} entries must be item ids (int) or source ids (str), got {value!r}")
            (unknown.append(value) if item is None else ids.append(item))
        if unknown:
            message = (
                f"{what} has {len(unknown)} unknown item(s) {unknown[:5]} (item ids are 1..{self.num_items}; "
                "source ids come from the model's item metadata)"
            )
            if on_unknown == "error":
                raise ValueError(message + "; pass on_unknown='skip' to drop them")
            warnings.warn(message + "; dropped", UserWarning, stacklevel=4)
        return ids

    def _cold_start(self, items: Mapping[str, Any]) -> dict[str, Any]:
        inner = _unwrap(self.model)
        if inner.config.id_mode != "inductive":
            raise ValueError(
                "cold_start_items are scored from their features alone, which needs an inductive model "
                f"(this one has id_mode={inner.config.id_mode!r})"
            )
        known = {f"{m}_features" for m in ("text", "image")} | {"source_ids", "texts"}
        extra = set(items) - known
        if extra:
            raise ValueError(f"cold_start_items has unknown keys {sorted(extra)}; expected some of {sorted(known)}")
        features, rows = {}, None
        for m in inner.modality_names:
            if items.get(f"{m}_features") is None:
                raise ValueError(f"cold_start_items needs {m}_features (config.modalities={inner.config.modalities!r})")
            table = torch.as_tensor(np.asarray(items[f"{m}_features"], dtype=np.float32))
            width = inner.config.feature_dim(m)
            if table.ndim != 2 or table.shape[1] != width:
                raise ValueError(f"cold_start_items {m}_features has shape {tuple(table.shape)}; expected [n, {width}]")
            bad = (~torch.isfinite(table)).any(1).nonzero().flatten()
            if bad.numel():
                raise ValueError(f"cold_start_items {m}_features has NaN or Inf in rows {bad[:5].tolist()}")
            if rows is not None and len(table) != rows:
                raise ValueError(f"cold_start_items tables have {rows} and {len(table)} rows")
            rows, features[m] = len(table), table
        empty = (torch.stack([t.abs().sum(1) for t in features.values()]).sum(0) == 0).nonzero().flatten()
        if empty.numel():
            raise ValueError(f"cold_start_items rows {empty[:5].tolist()} have no features (all zeros)")
        source_ids = items.get("source_ids")
        if source_ids is not None:
            source_ids = [str(s) for s in source_ids]
            clash = [s for s in source_ids if self.item_metadata is not None and s in self._source_ids()]
            if len(source_ids) != rows or clash:
                raise ValueError(
                    f"cold_start_items source_ids must be {rows} ids not in the catalogue"
                    + (f"; known: {clash[:5]}" if clash else "")
                )
        texts = items.get("texts")
        if texts is not None and len(texts) != rows:
            raise ValueError(f"cold_start_items texts has {len(texts)} entries; expected {rows}")
        return {"features": features, "source_ids": source_ids, "texts": texts, "num": rows}

    def preprocess(
        self,
        inputs: Any,
        on_unknown: str = "error",
        fallback: str | None = None,
        candidates: Sequence[int | str] | None = None,
        cold_start_items: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        histories = inputs if isinstance(inputs, _HistoryBatch) else [inputs]
        rows = []
        for history in histories:
            if isinstance(history, (torch.Tensor, np.ndarray)):
                history = [x for x in np.asarray(history).reshape(-1).tolist() if x != 0]  # 0 = padding
            elif _is_scalar(history):
                history = [history]
            rows.append(self._to_ids(history, on_unknown, "history"))
        empty_rows = [i for i, r in enumerate(rows) if not r]
        if empty_rows and fallback != "popular":
            raise ValueError(
                f"histories {empty_rows[:5]} are empty (no known item): give at least one item, or pass "
                "fallback='popular' to get the most popular items for them"
            )
        # Built in Python and converted once: a tensor op per row costs more than the whole row's padding.
        longest = max(1, max(len(r) for r in rows))
        item_seq = torch.tensor([r + [0] * (longest - len(r)) for r in rows], dtype=torch.long)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        empty = None  # [B] bool where a history is empty, or None when none is
        if empty_rows:
            empty = torch.zeros(len(rows), dtype=torch.bool)
            empty[empty_rows] = True
        allowed = None
        if candidates is not None:
            allowed = torch.tensor(sorted(set(self._to_ids(candidates, on_unknown, "candidates"))), dtype=torch.long)
        cold = None if cold_start_items is None else self._cold_start(cold_start_items)
        if allowed is not None and len(allowed) == 0 and cold is None:
            raise ValueError("candidates holds no known item: nothing to rank")
        return {
            "item_seq": item_seq,
            "lengths": lengths,
            "empty": empty,
            "candidates": allowed,
            "cold": cold,
            "batched": isinstance(inputs, _HistoryBatch),
        }

    def _forward(self, model_inputs: dict[str, Any], top_k: int = 10, exclude_history: bool = True) -> dict[str, Any]:
        item_seq, lengths, empty = model_inputs["item_seq"], model_inputs["lengths"], model_inputs["empty"]
        allowed, cold = model_inputs["candidates"], model_inputs["cold"]
        num_candidates = (self.num_items if allowed is None else len(allowed)) + (0 if cold is None else cold["num"])
        if top_k > num_candidates:
            raise ValueError(f"top_k={top_k} is larger than the {num_candidates} candidate items")
        if empty is None:
            scores, ids = self._rank(item_seq, lengths, allowed, cold, top_k, exclude_history)
        else:
            batch = len(item_seq)
            scores = torch.full((batch, top_k), float("-inf"), device=item_seq.device)
            ids = torch.zeros(batch, top_k, dtype=torch.long, device=item_seq.device)
            active = ~empty
            if active.any():
                ranked = self._rank(item_seq[active], lengths[active], allowed, cold, top_k, exclude_history)
                scores[active], ids[active] = ranked
            values, found = self._popular(top_k, None if allowed is None else allowed.cpu(), cold)
            scores[empty], ids[empty] = values.to(scores.device), found.to(ids.device)
        return {"scores": scores, "item_ids": ids, "cold": cold, "batched": model_inputs["batched"]}

    def _rank(
        self,
        item_seq: torch.Tensor,
        lengths: torch.Tensor,
        allowed: torch.Tensor | None,
        cold: dict[str, Any] | None,
        top_k: int,
        exclude_history: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-`top_k` `(scores [b, top_k], item ids [b, top_k])` of non-empty histories `[b, L]` among the
        catalogue (or its allow-list `allowed`) and the cold-start items."""
        inner = _unwrap(self.model)
        index, tables = serving_state(self.model)
        # `preprocess` built the histories from known ids, with their lengths: the model need not check them again.
        seq = inner.embed_sequences(item_seq.to(inner.device), lengths.to(inner.device), check_inputs=False, **tables)
        excluded = None
        if exclude_history:
            rows, cols = (item_seq != 0).nonzero(as_tuple=True)
            excluded = (rows, item_seq[rows, cols] - 1)
        parts = []
        if allowed is None or len(allowed):
            k = min(top_k, self.num_items if allowed is None else len(allowed))
            values, rows_found = index.top_k(seq, k, None if allowed is None else allowed - 1, excluded)
            parts.append((values, rows_found + 1))
        if cold is not None:
            cold_index = ItemIndex.from_features(self.model, cold["features"])
            values, rows_found = cold_index.top_k(seq, min(top_k, cold["num"]))
            parts.append((values, rows_found + 1 + self.num_items))
        if len(parts) == 1:
            return parts[0]
        values, found = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
        best = values.topk(top_k, dim=1)
        return best.values, found.gather(1, best.indices)

    def _popular(
        self, top_k: int, allowed: torch.Tensor | None, cold: dict | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        popularity = self._metadata("popularity")
        if popularity is None:
            raise ValueError(
                f"fallback='popular' needs item popularity in {ITEM_METADATA_FILE} "
                "(save_item_metadata(..., popularity=...))"
            )
        counts = torch.tensor(popularity, dtype=torch.float64)
        ids = torch.arange(1, self.num_items + 1) if allowed is None else allowed
        counts = counts[ids - 1]
        if cold is not None:  # new items have no interactions yet
            counts = torch.cat([counts, counts.new_zeros(cold["num"])])
            ids = torch.cat([ids, torch.arange(self.num_items + 1, self.num_items + cold["num"] + 1)])
        best = counts.topk(top_k)
        return best.values.float(), ids[best.indices]

    def postprocess(
        self, model_outputs: dict[str, Any], return_text: bool = False
    ) -> list[list[dict[str, Any]]] | list[dict[str, Any]]:
        source_ids = self._metadata("source_ids")
        texts = self._metadata("texts") if return_text else None
        cold, num_items = model_outputs["cold"], self.num_items
        results = []
        for scores, ids in zip(model_outputs["scores"].tolist(), model_outputs["item_ids"].tolist()):
            row = []
            for score, item in zip(scores, ids):
                if score == float("-inf"):
                    continue  # excluded history items when too few candidates remain
                entry = {"item_id": item, "source_id": None, "score": score}
                if item <= num_items:
                    entry["source_id"] = None if source_ids is None else source_ids[item - 1]
                    if return_text:
                        entry["text"] = None if texts is None else texts[item - 1]
                else:
                    j = item - num_items - 1
                    entry["source_id"] = None if cold["source_ids"] is None else cold["source_ids"][j]
                    if return_text:
                        entry["text"] = None if cold["texts"] is None else cold["texts"][j]
                row.append(entry)
            results.append(row)
        return results if model_outputs["batched"] else results[0]


def _register() -> None:
    """Register the task once per process (the package and a remote-code copy of this file may both load)."""
    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=SequentialRecommendationPipeline, pt_model=AutoModel)
    else:  # `save_pretrained` reads `_registered_impl` to write `custom_pipelines`: this class needs it too
        SequentialRecommendationPipeline._registered_impl = {
            TASK: {"impl": SequentialRecommendationPipeline, "pt": (AutoModel,)}
        }


_register()
