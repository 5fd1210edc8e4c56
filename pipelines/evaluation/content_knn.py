"""The content-kNN baseline: items ranked by the cosine similarity of their text features to the mean of the last
items of a history. It needs no training, so it is the bar a model recommending on a catalogue it never saw
(zero-shot) must clear."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.collator import SequenceCollator
from .full_ranking import RecommenderScores, evaluate_ranking

WINDOWS = (1, 2, 3, 5, 10, 20, 50)  # the history lengths `select_window` tries


class ContentKNNRecommender(nn.Module):
    """Scores item i for a history by `cos(mean of the last `window` items' unit features, features_i)`.

    Args:
        item_features: `[N, d]` the catalogue's text features (an all-zero row: an item without text, scored 0).
        window: how many of the most recent history items make the profile.

    Calling it with `item_seq` `[B, L]` (left-aligned, 0-padded) and `lengths` `[B]` returns
    [`RecommenderScores`] `[B, N + 1]` (column 0, the padding id, at -inf), so it runs through
    [`evaluate_ranking`] like a model.
    """

    def __init__(self, item_features: torch.Tensor, window: int = 5):
        super().__init__()
        if window < 1:
            raise ValueError(f"window={window} must be >= 1")
        unit = F.normalize(torch.as_tensor(item_features, dtype=torch.float32), dim=-1)
        self.register_buffer("unit_features", torch.cat([unit.new_zeros(1, unit.shape[1]), unit]))
        self.window = window

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor | None = None) -> RecommenderScores:
        if lengths is None:
            lengths = (item_seq > 0).sum(1)
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        recent = (positions >= (lengths - self.window)[:, None]) & (positions < lengths[:, None])
        profile = (self.unit_features[item_seq] * recent[..., None]).sum(1)  # [B, d]
        scores = F.normalize(profile, dim=-1) @ self.unit_features.T  # [B, N + 1]
        scores[:, 0] = float("-inf")
        return RecommenderScores(scores=scores)


def select_window(
    item_features: torch.Tensor,
    valid: SequenceCollator,
    protocol: str,
    windows: Sequence[int] = WINDOWS,
    **evaluation,
) -> tuple[ContentKNNRecommender, dict[int, float]]:
    """The content-kNN whose `window` has the best validation NDCG@10 under `protocol` (a tie keeps the shorter).

    Args:
        item_features: `[N, d]` the catalogue's text features.
        valid: the validation split.
        protocol: `"official"` or `"exclude_history"`.
        evaluation: passed to [`evaluate_ranking`] (`batch_size`, `accelerator`, ...).

    Returns:
        The chosen recommender and the validation NDCG@10 of each window tried.
    """
    scores = {}
    for window in windows:
        metrics = evaluate_ranking(
            ContentKNNRecommender(item_features, window), valid, protocols=(protocol,), **evaluation
        )
        scores[window] = metrics[protocol]["ndcg@10"]
    best = max(windows, key=lambda w: (scores[w], -w))
    return ContentKNNRecommender(item_features, best), scores
