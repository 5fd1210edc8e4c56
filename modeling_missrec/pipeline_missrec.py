"""The `"sequential-recommendation"` pipeline: top-k next items for user histories, from a MISSRec model.

```python
from transformers import pipeline

recommend = pipeline("sequential-recommendation", model="path/or/hub-id")  # + trust_remote_code=True without
recommend(["B0001", "B0042", "B0007"], top_k=5)           # one history (source ids or item ids, most recent last)
recommend([[3, 17, 5], [8, 2]], top_k=5, return_text=True)  # a batch: one list of recommendations per history
```

A thin `Pipeline` over [`MISSRecForSequentialRecommendation.recommend`]: it turns source ids into item ids,
pads the batch, names the recommended items (`item_metadata.json`, see `served_files_missrec`) and answers empty
histories with the most popular items when asked; the ranking itself (exclusion, candidates, cold-start items) is
the model's.

This file is Hub remote code: `pipe.save_pretrained(folder)` copies it (with `served_files_missrec.py` and
`utils_missrec.py`) next to the model files; like every remote-code file it imports only the files beside it and
torch, numpy, safetensors, transformers and, optionally, peft and faiss (the approximate index), so
`pipeline(..., trust_remote_code=True)` works where the package is not installed.
"""

from __future__ import annotations

import os
import sys
import types
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .index_missrec import INDEX_KINDS, MISSRecItemIndex
from .served_files_missrec import ITEM_METADATA_FILE, load_item_metadata, load_missrec_adapter
from .utils_missrec import unwrap_missrec

TASK = "sequential-recommendation"


def _recommender(model: nn.Module) -> nn.Module:
    """`model` as a `MISSRecForSequentialRecommendation`: itself, or that head around it (a `MISSRecModel` or a
    `PeftModel` of one), taken from the module that defines the model's class (the package's, or a Hub folder's
    remote code)."""
    if hasattr(model, "recommend"):
        return model
    try:
        base = unwrap_missrec(model)
    except ValueError as error:
        raise ValueError(f"{error}: this pipeline serves MISSRec models") from None
    head = getattr(sys.modules[type(base).__module__], "MISSRecForSequentialRecommendation", None)
    if head is None:
        raise ValueError(f"{type(base).__name__} is not a MISSRec model: this pipeline serves MISSRec models")
    return head.from_base(model)


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
    odd = next(
        (x for x in inputs if not _is_scalar(x) and not isinstance(x, (list, tuple, torch.Tensor, np.ndarray))), None
    )
    if odd is not None:  # e.g. 3.0: ids are never floats
        raise ValueError(
            f"history entries must be item ids (int) or source ids (str), got {odd!r} ({type(odd).__name__})"
        )
    raise ValueError("inputs mix item ids and lists: pass one history (a flat list) or a list of histories")


class SequentialRecommendationPipeline(Pipeline):
    """Recommends the next items of user histories with a MISSRec model (full-catalogue ranking, exact by default).

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
    `adapter=` (a LoRA adapter folder or Hub id, loaded by [`load_missrec_adapter`]), `item_metadata=` (a dict
    or folder; default: the model's or adapter's `item_metadata.json`) and `index=`: `"exact"` (default),
    `"approximate"` (needs faiss), a folder holding a saved index (`item_index.safetensors`, e.g. the exported
    model's own) or a built [`MISSRecItemIndex`], with `index_options=` (a dict for
    `build_item_index`: `table_dtype`, `candidates`, ...). The pipeline builds the index once and serves from it:
    after changing the model's weights or catalogue, call `pipe.rebuild_index()`.

    Returns:
        Per history a list of `{"item_id": int, "source_id": str | None, "score": float, "text"?: str | None}`,
        best first.
    """

    _load_tokenizer = False
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(
        self,
        model: nn.Module,
        *args,
        adapter: str | None = None,
        item_metadata: Any = None,
        index: str | os.PathLike | MISSRecItemIndex = "exact",
        index_options: Mapping[str, Any] | None = None,
        **kwargs,
    ):
        if adapter is not None:
            model = load_missrec_adapter(model, adapter)
        super().__init__(model, *args, **kwargs)
        self.model.eval()
        self.recommender = _recommender(self.model)  # the model as a MISSRecForSequentialRecommendation
        if isinstance(index, MISSRecItemIndex):
            index.check(self.recommender.base)
            self.index, self.index_options = index, {"kind": index.kind}
        elif index in INDEX_KINDS:
            self.index_options = {"kind": index, **(index_options or {})}
            self.rebuild_index()
        elif isinstance(index, (str, os.PathLike)) and os.path.isdir(index):  # a folder with a saved index
            self.index = MISSRecItemIndex.from_pretrained(index, self.recommender.base)
            self.index_options = {"kind": self.index.kind}
        else:
            raise ValueError(
                f"index={index!r} must be one of {list(INDEX_KINDS)}, a folder holding a saved index, or a "
                "MISSRecItemIndex"
            )
        inner = unwrap_missrec(self.model)
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

    def rebuild_index(self) -> MISSRecItemIndex:
        """Build the item index again from the model as it is now (after training, a new catalogue, another
        adapter or any weight edit), with the kind and options the pipeline was built with."""
        options = dict(self.index_options)
        self.index = self.recommender.build_item_index(options.pop("kind"), **options)
        return self.index

    def get_inference_context(self):
        """`torch.inference_mode`: it skips the autograd bookkeeping `no_grad` still does (about 8% of a
        single request's time); the pipeline never needs the gradients or the version counters."""
        return torch.inference_mode

    # ------------------------------------------------------------------ metadata
    @property
    def num_items(self) -> int:
        return unwrap_missrec(self.model).config.num_items

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
        batch_size = kwargs.pop("batch_size", None)
        if batch_size is None:
            batch_size = self._batch_size or 256
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1 (histories scored together)")
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
        """The cold-start items' features (for `recommend(new_items=...)`, which validates them) and names."""
        known = {f"{m}_features" for m in ("text", "image")} | {"source_ids", "texts"}
        extra = set(items) - known
        if extra:
            raise ValueError(f"cold_start_items has unknown keys {sorted(extra)}; expected some of {sorted(known)}")
        features = {
            f"{m}_features": np.asarray(items[f"{m}_features"], dtype=np.float32)
            for m in ("text", "image")
            if items.get(f"{m}_features") is not None
        }
        rows = {len(table) for table in features.values()}
        if len(rows) != 1:
            raise ValueError(f"cold_start_items needs feature tables with the same number of rows, got {sorted(rows)}")
        (rows,) = rows
        source_ids = items.get("source_ids")
        if source_ids is not None:
            source_ids = [str(s) for s in source_ids]
            repeated = sorted(s for s, n in Counter(source_ids).items() if n > 1)
            if repeated:
                raise ValueError(f"cold_start_items source_ids must be unique; repeated: {repeated[:5]}")
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
            if isinstance(candidates, (str, bytes)) or _is_scalar(candidates):
                raise ValueError(f"candidates={candidates!r} must be a list of item ids or source ids, not one value")
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
        rank = {"top_k": top_k, "exclude_history": exclude_history, "candidates": allowed, "check_inputs": False}
        rank["index"] = self.index
        rank["new_items"] = None if cold is None else cold["features"]
        if empty is None:
            # `preprocess` built the histories from known ids, with their lengths: the model need not check them.
            ranked = self.recommender.recommend(item_seq, lengths, **rank)
            scores, ids = ranked.scores, ranked.item_ids
        else:
            batch = len(item_seq)
            scores = torch.full((batch, top_k), float("-inf"), device=item_seq.device)
            ids = torch.zeros(batch, top_k, dtype=torch.long, device=item_seq.device)
            active = ~empty
            if active.any():
                ranked = self.recommender.recommend(item_seq[active], lengths[active], **rank)
                scores[active], ids[active] = ranked.scores.to(scores.device), ranked.item_ids.to(ids.device)
            values, found = self._popular(top_k, None if allowed is None else allowed.cpu(), cold)
            scores[empty], ids[empty] = values.to(scores.device), found.to(ids.device)
        return {"scores": scores.cpu(), "item_ids": ids.cpu(), "cold": cold, "batched": model_inputs["batched"]}

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
