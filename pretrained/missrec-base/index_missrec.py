"""The item index a MISSRec model serves from: an explicit object, exact or approximate, that a user builds, holds,
saves and rebuilds.

```python
index = model.build_item_index("approximate")          # or "exact" (the default)
model.recommend(histories, index=index)                 # without index=, every call scores exactly from the weights
index.save_pretrained("served/")                        # beside the model; MISSRecItemIndex.from_pretrained(...)
pipeline("sequential-recommendation", model=folder, index="approximate")   # the pipeline builds and holds one
```

An index is a snapshot: the catalogue's fused item embeddings ([`ItemIndex`]) and the sequence side's weight-only
tables (the interest centroids' projections, a small catalogue's adapted embeddings), as they were when it was built.
After the weights or the catalogue change, build it again (`pipe.rebuild_index()`); an index used with a model it
does not describe (catalogue size, hidden size, modalities, id mode, item fusion, interests) is refused, naming both.

The approximate index answers in two stages, as MISSRec's dynamic fusion needs (a fused score is not one inner
product): an HNSW graph per column of the index (text, image and, transductive, id; static fusion has one fused
column) proposes each history's nearest items by inner product, and the exact scoring rules (`scoring_missrec`:
fusion, the id join, repeat offsets, exclusions) rank the union of those candidates. HNSW rather than IVF-PQ: it
needs no training pass over the catalogue, keeps exact vectors (the re-scoring needs no second copy to be
accurate), and its recall holds at a few hundred candidates where product quantisation would need re-ranking from
the exact table anyway. A request the graphs cannot honour falls back to exact scoring, with one log line: a
candidate allow-list, or exclusions that leave fewer than `top_k` of the proposed items.

faiss is an optional dependency (`pip install "missrec-hf[approximate]"`), imported only by the approximate index.
This file is Hub remote code: it imports only the file beside it, torch, numpy, safetensors, transformers and
(optionally) faiss.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import logging

from .scoring_missrec import ItemIndex

logger = logging.get_logger(__name__)

INDEX_KINDS = ("exact", "approximate")
INDEX_FILE = "item_index.safetensors"
INDEX_FORMAT = "missrec-item-index"
TABLE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
FAISS_MISSING = (
    'the approximate item index needs faiss: pip install "missrec-hf[approximate]" (or: pip install faiss-cpu)'
)
# The adapted catalogue (history items are looked up in it) is kept only up to this size: beyond it, adapting a
# history's few items per request costs less than the memory (at 1M items it would be 2.4 GB).
_ADAPTED_CATALOGUE_BYTES = 64 << 20


def search_breadth(num_items: int) -> int:
    """The default candidates per column and HNSW search breadth for a catalogue of `num_items` items: 64 up to
    100k items, doubling per half decade beyond (256 at 1M). HNSW needs a wider search for the same recall as the
    catalogue grows; at these two points (clustered synthetic catalogues) recall@10 was 1.000 and 0.970 at
    p50 3.4 and 7.7 ms, and 256 cost 7.4 ms at 100k items for no recall gained."""
    return 8 * round(8 * max(1.0, num_items / 1e5) ** 0.6)


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError(FAISS_MISSING) from None
    return faiss


def index_signature(model: nn.Module) -> dict[str, Any]:
    """What an index must agree on with the MISSRec model (`MISSRecModel`) it serves: a dict of plain values."""
    config = model.config
    return {
        "num_items": config.num_items,
        "hidden_size": config.hidden_size,
        "modalities": list(model.modality_names),
        "id_mode": config.id_mode,
        "item_fusion": model.item_fusion.mode,
        "num_interests": config.num_interests,
    }


def _describe(signature: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in signature.items())


# ---------------------------------------------------------------------------------------------------- candidates
class HNSWCandidates:
    """Candidate generation for the approximate index: one faiss HNSW graph (inner product) per column of an
    [`ItemIndex`], over that column's `[N, d]` item vectors.

    Args:
        graphs: the faiss indexes, one per column; ef_search: the search breadth (higher: better recall, slower);
        candidates: items proposed per column and history (at least `top_k` plus the history's length is asked).
    """

    def __init__(self, graphs: list, *, ef_search: int, candidates: int):
        self.graphs = graphs
        self.ef_search = ef_search
        self.candidates = candidates
        for graph in graphs:
            graph.hnsw.efSearch = ef_search

    @classmethod
    def build(
        cls,
        exact: ItemIndex,
        *,
        hnsw_m: int = 32,
        ef_construction: int = 40,
        ef_search: int | None = None,
        candidates: int | None = None,
        show_progress: bool = False,
    ) -> HNSWCandidates:
        """Graphs over the columns of `exact`. Their vectors stay float32 whatever the table's precision: faiss's
        float16 graphs (`IndexHNSWSQ`) took 5x as long to build here (252 s against 46 s at 100k items)."""
        faiss = _import_faiss()
        width, num, dim = exact.columns_per_item, exact.num_items, exact.matrix.shape[0]
        ef_search = ef_search or search_breadth(num)
        candidates = candidates or search_breadth(num)
        view = exact.matrix.view(dim, num, width)
        graphs = []
        for column in range(width):
            graph = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = ef_construction
            graph.verbose = show_progress
            graph.add(np.ascontiguousarray(view[:, :, column].T.float().cpu().numpy()))
            graphs.append(graph)
        return cls(graphs, ef_search=ef_search, candidates=candidates)

    def search(self, sequence_embeddings: torch.Tensor, count: int) -> torch.Tensor:
        """`[B, P * count]` long index rows proposed for each history `[B, d]` (-1 where a graph found fewer)."""
        queries = np.ascontiguousarray(sequence_embeddings.detach().float().cpu().numpy())
        found = [graph.search(queries, count)[1] for graph in self.graphs]
        return torch.from_numpy(np.concatenate(found, axis=1)).to(sequence_embeddings.device)

    def to_arrays(self) -> dict[str, torch.Tensor]:
        faiss = _import_faiss()
        return {f"graph.{j}": torch.from_numpy(faiss.serialize_index(g)) for j, g in enumerate(self.graphs)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, torch.Tensor], *, ef_search: int, candidates: int) -> HNSWCandidates:
        faiss = _import_faiss()
        graphs = [faiss.deserialize_index(arrays[f"graph.{j}"].numpy()) for j in range(len(arrays))]
        return cls(graphs, ef_search=ef_search, candidates=candidates)


# ---------------------------------------------------------------------------------------------------- the index
class MISSRecItemIndex:
    """What serving a MISSRec model's catalogue reuses across requests, built once from the model.

    Args:
        signature: [`index_signature`] of the model it was built from.
        exact: the [`ItemIndex`] of the catalogue (exact brute-force scoring).
        tables: keyword arguments of `embed_sequences` that depend only on the weights (`interest_projections`,
            and `catalogue` for catalogues up to 64 MB of adapted embeddings).
        candidates: [`HNSWCandidates`] for an approximate index, None for an exact one.
    """

    def __init__(
        self,
        signature: dict[str, Any],
        exact: ItemIndex,
        tables: dict[str, Any],
        candidates: HNSWCandidates | None = None,
    ):
        self.signature = signature
        self.exact = exact
        self.tables = tables
        self.candidates = candidates

    @property
    def kind(self) -> str:
        return "exact" if self.candidates is None else "approximate"

    def __repr__(self) -> str:
        return f"MISSRecItemIndex(kind={self.kind!r}, {_describe(self.signature)}, dtype={self.exact.matrix.dtype})"

    # ------------------------------------------------------------------ building
    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: nn.Module,
        kind: str = "exact",
        *,
        table_dtype: torch.dtype | str = torch.float32,
        hnsw_m: int = 32,
        ef_construction: int = 40,
        ef_search: int | None = None,
        candidates: int | None = None,
        show_progress: bool = False,
    ) -> MISSRecItemIndex:
        """The index of a `MISSRecModel`'s catalogue and weights as they are now.

        Args:
            kind: `"exact"` (brute force) or `"approximate"` (HNSW candidates, exact re-scoring; needs faiss).
            table_dtype: `torch.float32` or `torch.float16` (or their names): the exact item table's precision.
                Float16 halves its memory; scores are still computed in float32, so on a CPU without half-precision
                arithmetic the widening makes a full scan slower (see docs/results.md, "Serving").
            hnsw_m, ef_construction, ef_search: the HNSW graphs' links per node, build breadth and search breadth;
            candidates: items each graph proposes per history (approximate only). `ef_search` and `candidates`
                default to [`search_breadth`] of the catalogue size (64 at 100k items, 256 at 1M).
        """
        if kind not in INDEX_KINDS:
            raise ValueError(f"kind={kind!r} must be one of {list(INDEX_KINDS)}")
        table_dtype = _table_dtype(table_dtype)
        exact = ItemIndex.from_model(model, dtype=table_dtype)
        tables: dict[str, Any] = {"interest_projections": model.interest_projections()}
        size = (model.config.num_items + 1) * model.config.hidden_size * len(model.modality_names)
        if size * model.dtype.itemsize <= _ADAPTED_CATALOGUE_BYTES:
            tables["catalogue"] = model.adapted_catalogue()
        graphs = None
        if kind == "approximate":
            graphs = HNSWCandidates.build(
                exact,
                hnsw_m=hnsw_m,
                ef_construction=ef_construction,
                ef_search=ef_search,
                candidates=candidates,
                show_progress=show_progress,
            )
        return cls(index_signature(model), exact, tables, graphs)

    def check(self, model: nn.Module) -> None:
        """Raise a `ValueError` naming both sides when this index does not describe `model`'s catalogue."""
        signature = index_signature(model)
        if signature != self.signature:
            differs = [key for key in signature if signature[key] != self.signature.get(key)]
            raise ValueError(
                f"this item index was built for another model or catalogue ({', '.join(differs)} differ): the index "
                f"has {_describe(self.signature)}; the model has {_describe(signature)}. Build it again from the "
                "model (model.build_item_index(...), or pipe.rebuild_index())"
            )

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def top_k(
        self,
        sequence_embeddings: torch.Tensor,
        k: int,
        item_rows: torch.Tensor | None = None,
        excluded: tuple[torch.Tensor, torch.Tensor] | None = None,
        offsets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-`k` index rows of every history, as [`ItemIndex.top_k`] (same arguments and returns); the
        approximate index ranks its candidates (and, with `offsets`, the history's items) exactly."""
        if self.candidates is None:
            return self.exact.top_k(sequence_embeddings, k, item_rows, excluded, offsets)
        if item_rows is not None:
            logger.warning_once(
                "the approximate item index cannot restrict its search to a candidate list: requests with "
                "candidates are scored exactly over those candidates"
            )
            return self.exact.top_k(sequence_embeddings, k, item_rows, excluded, offsets)
        longest = 0 if excluded is None or not len(excluded[0]) else int(excluded[0].bincount().max())
        found = self.candidates.search(sequence_embeddings, max(self.candidates.candidates, k + longest))
        rows = [found[found >= 0]] + ([offsets[1]] if offsets is not None else [])
        union = torch.cat(rows).unique()
        if len(union) >= k:
            scores, top = self.exact.top_k(sequence_embeddings, k, union, excluded, offsets)
            if bool(torch.isfinite(scores[:, -1]).all()):
                return scores, top
        logger.warning_once(
            "the approximate item index proposed fewer than top_k items outside a history: such requests are "
            "scored exactly (ask for more candidates: build_item_index(..., candidates=N))"
        )
        return self.exact.top_k(sequence_embeddings, k, item_rows, excluded, offsets)

    # ------------------------------------------------------------------ files
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the index to `folder/item_index.safetensors` (one file: tables, fusion settings, graphs)."""
        exact = self.exact
        tensors = {"matrix": exact.matrix.contiguous()}
        if exact.weight is not None:
            tensors["fusion_weight"] = exact.weight.contiguous()
        if exact.id_share is not None:
            tensors["id_share"] = exact.id_share.reshape(-1).contiguous()
        for j, table in enumerate(self.tables["interest_projections"]):
            tensors[f"interest_projections.{j}"] = table.contiguous()
        for modality, table in self.tables.get("catalogue", {}).items():
            tensors[f"catalogue.{modality}"] = table.contiguous()
        settings: dict[str, Any] = {
            "kind": self.kind,
            "signature": self.signature,
            "modalities": exact.modalities,
            "mode": exact.mode,
            "temperature": exact.temperature,
            "has_id": exact.has_id or exact.id_folded,
        }
        if self.candidates is not None:
            settings |= {"ef_search": self.candidates.ef_search, "candidates": self.candidates.candidates}
            tensors |= self.candidates.to_arrays()
        path = Path(folder) / INDEX_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"format": INDEX_FORMAT, "version": "1", "settings": json.dumps(settings)}
        save_file({key: value.detach().cpu() for key, value in tensors.items()}, str(path), metadata=metadata)
        return path

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, model: nn.Module | None = None) -> MISSRecItemIndex:
        """An index saved by [`save_pretrained`]; with `model`, checked against it ([`check`])."""
        path = Path(folder) / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no {INDEX_FILE} (MISSRecItemIndex.save_pretrained writes it)")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
        if metadata.get("format") != INDEX_FORMAT:
            raise ValueError(f"{path} is not a MISSRec item index (format {metadata.get('format')!r})")
        settings = json.loads(metadata["settings"])
        tensors = load_file(str(path))
        signature = settings["signature"]
        exact = ItemIndex(
            settings["modalities"],
            settings["mode"],
            tensors.get("fusion_weight"),
            settings["temperature"],
            num_items=signature["num_items"],
            hidden_size=signature["hidden_size"],
            has_id=settings["has_id"],
            id_share=tensors.get("id_share"),
            matrix=tensors["matrix"],
        )
        tables: dict[str, Any] = {"interest_projections": tuple(tensors[f"interest_projections.{j}"] for j in range(3))}
        catalogue = {key.split(".", 1)[1]: value for key, value in tensors.items() if key.startswith("catalogue.")}
        if catalogue:
            tables["catalogue"] = catalogue
        graphs = None
        if settings["kind"] == "approximate":
            arrays = {key: value for key, value in tensors.items() if key.startswith("graph.")}
            graphs = HNSWCandidates.from_arrays(
                arrays, ef_search=settings["ef_search"], candidates=settings["candidates"]
            )
        index = cls(signature, exact, tables, graphs)
        if model is not None:
            index.check(model)
            index.to(model.device)
        return index

    def to(self, device: torch.device | str) -> MISSRecItemIndex:
        """Move the tables to `device` (the graphs stay on the CPU, where faiss searches); returns self."""
        self.exact.to(device)
        self.tables["interest_projections"] = tuple(t.to(device) for t in self.tables["interest_projections"])
        if "catalogue" in self.tables:
            self.tables["catalogue"] = {m: t.to(device) for m, t in self.tables["catalogue"].items()}
        return self


def _table_dtype(value: torch.dtype | str) -> torch.dtype:
    if isinstance(value, str):
        if value not in TABLE_DTYPES:
            raise ValueError(f"table_dtype={value!r} must be one of {list(TABLE_DTYPES)}")
        return TABLE_DTYPES[value]
    if value not in TABLE_DTYPES.values():
        raise ValueError(f"table_dtype={value} must be torch.float32 or torch.float16")
    return value
