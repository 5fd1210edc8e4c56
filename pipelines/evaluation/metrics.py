"""Full-ranking metrics (HR@K, NDCG@K, MRR@K) with one held-out target per history."""

from __future__ import annotations

import torch

from ...scoring_missrec import history_mask


def target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each target stands among all items: how many score strictly higher, and how many others tie with it.

    Args:
        scores: `[B, num_items + 1]`, column = item id (column 0 is padding and never counts).
        targets: `[B]` target item ids.
        exclude: optional `[B, L]` item ids not to rank (e.g. the history; 0 = padding). The target itself
            is never excluded.

    Returns:
        `(higher, tied)`, each `[B]` long: the target's best 0-based rank, and the number of other items with
        exactly its score (items a model cannot tell apart, such as two items with the same features).
    """
    target_scores = scores.gather(1, targets[:, None])
    if torch.isnan(target_scores).any():
        rows = torch.isnan(target_scores[:, 0]).nonzero().flatten().tolist()
        raise ValueError(f"the scores of the targets of rows {rows[:5]} are NaN: they cannot be ranked")
    if exclude is None:
        candidates = torch.ones_like(scores, dtype=torch.bool)
    else:  # the rule serving and the training softmax follow too
        candidates = ~history_mask(exclude, scores.shape[1], keep=targets)
    candidates[:, 0] = False
    higher = ((scores > target_scores) & candidates).sum(1)
    return higher, ((scores == target_scores) & candidates).sum(1) - 1


def ranking_metrics(
    ranks: torch.Tensor, ks: tuple[int, ...] = (10, 20, 50), ties: torch.Tensor | None = None
) -> dict[str, float]:
    """Mean HR@K, NDCG@K and MRR@K of targets at 0-based `ranks` `[B]`.

    With `ties` `[B]` (from [`target_ranks`]), a target that ties with other items is placed at random among
    them: its metrics are their expectation over ranks `ranks .. ranks + ties`, each equally likely. Counting
    it ahead of its ties instead would reward a model for scoring items alike.
    """
    ranks = ranks.long()
    orders = torch.ones_like(ranks) if ties is None else ties.long() + 1  # equally likely ranks per target
    out = {}
    for k in ks:
        position = torch.arange(k, dtype=torch.float64, device=ranks.device)
        gains = {
            "hr": torch.ones_like(position),
            "ndcg": 1.0 / torch.log2(position + 2),
            "mrr": 1.0 / (position + 1),
        }
        first, stop = ranks.clamp(max=k), (ranks + orders).clamp(max=k)
        for name, gain in gains.items():
            total = torch.cat([gain.new_zeros(1), gain.cumsum(0)])  # gain summed over ranks 0 .. r - 1
            out[f"{name}@{k}"] = ((total[stop] - total[first]) / orders).mean().item()
    return out
