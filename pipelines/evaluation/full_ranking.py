"""The full-ranking evaluation loop shared by `train.py`, the benchmarks and the tests.

Every history is scored against the whole catalogue and the held-out target's rank gives HR@K, NDCG@K and
MRR@K. A target that ties with other items is placed at random among them: the metrics are their expectation.
Two protocols: `"official"` (RecBole / the MISSRec code: only the padding item is masked, items already in the
history are ranked too) and `"exclude_history"` (no item of the whole history can be recommended again, except
the target itself; the whole history, not only the `max_seq_length` items the model reads, as the
`sequential-recommendation` pipeline excludes). Under Accelerate the rows are sharded across processes and the
ranks gathered with `gather_for_metrics`, which drops the padding duplicates of the last batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.utils import ModelOutput

from ..data.collator import SequenceCollator
from .metrics import ranking_metrics, target_ranks

PROTOCOLS = ("official", "exclude_history")


@dataclass
class RecommenderScores(ModelOutput):
    """Scores of every catalogue item: `scores` `[B, num_items + 1]` (column = item id, 0 = padding)."""

    scores: torch.FloatTensor | None = None


class PopularityRecommender(nn.Module):
    """Scores every item by how often it is a training target (the most-popular baseline).

    Args:
        train_targets: `[R]` target item ids of the training examples.
        num_items: catalogue size N.

    Calling it with `item_seq` `[B, L]` returns [`RecommenderScores`] `[B, N + 1]` (the same for every
    history), so it runs through [`evaluate_ranking`] like a model.
    """

    def __init__(self, train_targets: np.ndarray | torch.Tensor, num_items: int):
        super().__init__()
        counts = torch.bincount(torch.tensor(np.asarray(train_targets), dtype=torch.long), minlength=num_items + 1)
        if len(counts) > num_items + 1:
            raise ValueError(f"training targets go up to {len(counts) - 1}, beyond the {num_items} catalogue items")
        self.register_buffer("counts", counts.double())

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor | None = None) -> RecommenderScores:
        return RecommenderScores(scores=self.counts.to(item_seq.device).expand(len(item_seq), -1))


@torch.no_grad()
def evaluate_ranking(
    model: nn.Module,
    collator: SequenceCollator,
    *,
    batch_size: int = 512,
    ks: Sequence[int] = (10, 20, 50),
    protocols: Sequence[str] = ("official",),
    accelerator=None,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Full-ranking metrics of `model` on every row of `collator`'s split.

    Args:
        model: called as `model(item_seq=..., lengths=...)`, returning an object with `scores`
            `[B, num_items + 1]` (column = item id; MISSRec, SASRec, [`PopularityRecommender`]).
        collator: a [`SequenceCollator`] over the split to evaluate (no augmentation is used).
        batch_size: histories per forward pass (per process under Accelerate).
        ks: cut-offs of HR@K, NDCG@K and MRR@K.
        protocols: any of `"official"` and `"exclude_history"` (see the module docstring).
        accelerator: an `accelerate.Accelerator` to shard the rows and gather the ranks, or `None`.
        progress: show a progress bar (on the main process only).

    Returns:
        `{protocol: {"hr@10": ..., "ndcg@10": ..., "mrr@10": ..., ...}}`.
    """
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise ValueError(f"protocols {list(protocols)} must be a non-empty subset of {list(PROTOCOLS)}")
    if batch_size < 1 or not ks or min(ks) < 1:
        raise ValueError(f"batch_size={batch_size} and ks={list(ks)} must be >= 1")
    if len(collator) == 0:
        raise ValueError("the split to evaluate is empty")

    def collate(rows: list[int]) -> dict[str, torch.Tensor]:
        batch = collator(rows)
        if "exclude_history" in protocols:
            batch["history_items"] = torch.from_numpy(collator.pad(np.asarray(rows), whole_history=True)[0])
        return batch

    loader = DataLoader(range(len(collator)), batch_size=batch_size, shuffle=False, collate_fn=collate)
    main_process = True
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
        main_process = accelerator.is_main_process
    was_training = model.training
    model.eval()
    ranks = {protocol: [] for protocol in protocols}
    # MISSRec does its weight-only work (adapted catalogue, centroid projections) once per pass, not per batch.
    inner = model if accelerator is None else accelerator.unwrap_model(model)
    reuse = getattr(inner, "reusing_weight_tables", None)
    with reuse() if reuse is not None else contextlib.nullcontext():
        for batch in tqdm(loader, desc="evaluating", disable=not (progress and main_process), leave=False):
            item_seq, targets = batch["item_seq"], batch["labels"]
            scores = model(item_seq=item_seq, lengths=batch["lengths"]).scores
            for protocol in protocols:
                exclude = batch["history_items"].to(scores.device) if protocol == "exclude_history" else None
                batch_ranks = torch.stack(target_ranks(scores, targets.to(scores.device), exclude=exclude), 1)
                if accelerator is not None:
                    batch_ranks = accelerator.gather_for_metrics(batch_ranks)
                ranks[protocol].append(batch_ranks.cpu())  # [B, 2]: items scored higher, items tied
    model.train(was_training)
    out = {}
    for protocol, values in ranks.items():
        higher, tied = torch.cat(values).unbind(1)
        out[protocol] = ranking_metrics(higher, tuple(ks), ties=tied)
    return out
