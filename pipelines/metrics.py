"""Full-ranking metrics (HR@K, NDCG@K, MRR@K) with one held-out target per history."""

from __future__ import annotations

import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each target among all items (number of items scored strictly higher).

    Args:
        scores: `[B, num_items + 1]`, column = item id (column 0 is padding and never counts).
        targets: `[B]` target item ids.
        exclude: optional `[B, L]` item ids not to rank (e.g. the history; 0 = padding). The target itself
            is never excluded.

    Returns:
        `[B]` long.
    """
    scores = scores.clone()
    scores[:, 0] = float("-inf")
    target_scores = scores.gather(1, targets[:, None])
    if exclude is not None:
        scores.scatter_(1, exclude, float("-inf"))
        scores.scatter_(1, targets[:, None], target_scores)
    return (scores > target_scores).sum(1)


def ranking_metrics(ranks: torch.Tensor, ks: tuple[int, ...] = (10, 20, 50)) -> dict[str, float]:
    """Mean HR@K, NDCG@K and MRR@K from 0-based target ranks `[B]`."""
    ranks = ranks.double()
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = hit.double().mean().item()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 2), 0.0).mean().item()
        out[f"mrr@{k}"] = torch.where(hit, 1.0 / (ranks + 1), 0.0).mean().item()
    return out
