"""The shared full-ranking evaluation loop: protocols by hand, batch-size invariance, Accelerate, popularity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from modeling_missrec.pipelines.data.collator import SequenceCollator
from modeling_missrec.pipelines.data.loading import load_domain
from modeling_missrec.pipelines.evaluation.full_ranking import (
    PopularityRecommender,
    RecommenderScores,
    evaluate_ranking,
)
from torch import nn


class FixedScores(nn.Module):
    """Scores item i as `table[i]` for every history (a hand-checkable model)."""

    def __init__(self, table: list[float]):
        super().__init__()
        self.register_buffer("table", torch.tensor(table))

    def forward(self, item_seq, lengths=None):
        return RecommenderScores(scores=self.table.expand(len(item_seq), -1))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return load_domain("demo", cache_dir=tmp_path_factory.mktemp("cache"), demo_num_items=60, demo_num_users=50)


@pytest.mark.parametrize("max_seq_length", [50, 3])  # 3: the model reads less than the history; all is excluded
def test_both_protocols_by_hand(demo, max_seq_length):
    test = demo.sequences["test"].select(range(3))
    assert max(len(h) for h in test["history"]) > 3
    collator = SequenceCollator(test, max_seq_length)
    histories, targets = test["history"], test["target"]
    # Item i scores 100 - i: item 1 is the best, so a target's official rank is target - 1.
    model = FixedScores([0.0] + [100.0 - i for i in range(1, 61)])
    metrics = evaluate_ranking(model, collator, batch_size=2, ks=(5, 60), protocols=("official", "exclude_history"))
    ranks = np.array([t - 1 for t in targets])
    excluded = np.array([sum(1 for i in set(h) if i < t) for h, t in zip(histories, targets)])
    for protocol, expected in (("official", ranks), ("exclude_history", ranks - excluded)):
        got = metrics[protocol]
        assert got["hr@60"] == 1.0
        assert got["hr@5"] == pytest.approx(np.mean(expected < 5))
        assert got["ndcg@60"] == pytest.approx(np.mean(1 / np.log2(expected + 2)))
        assert got["mrr@60"] == pytest.approx(np.mean(1 / (expected + 1)))
    assert metrics["exclude_history"]["mrr@60"] >= metrics["official"]["mrr@60"]


def test_model_metrics_do_not_depend_on_the_batch_size_and_accelerate_gives_the_same(demo, fresh_accelerate_state):
    from accelerate import Accelerator

    from modeling_missrec import SASRecConfig, SASRecModel

    torch.manual_seed(0)
    model = SASRecModel(SASRecConfig(num_items=60, hidden_size=16, num_attention_heads=2, intermediate_size=16))
    collator = SequenceCollator(demo.sequences["test"], 50)
    reference = evaluate_ranking(model, collator, batch_size=7)["official"]
    assert evaluate_ranking(model, collator, batch_size=50)["official"] == pytest.approx(reference)
    accelerated = evaluate_ranking(model, collator, batch_size=16, accelerator=Accelerator(cpu=True))
    assert accelerated["official"] == pytest.approx(reference)


def test_popularity_recommender_ranks_by_training_counts(demo):
    train, test = demo.sequences["train"], demo.sequences["test"]
    popularity = PopularityRecommender(np.array(train["target"]), demo.num_items)
    counts = np.bincount(train["target"], minlength=61).astype(float)
    scores = popularity(torch.zeros(2, 3, dtype=torch.long)).scores
    assert scores.shape == (2, 61) and torch.equal(scores[1], torch.from_numpy(counts))
    metrics = evaluate_ranking(popularity, SequenceCollator(test, 50), ks=tuple(range(1, 61)))["official"]
    # Items with the same count tie: the target is equally likely at each of their ranks.
    higher = np.array([(counts[1:] > counts[t]).sum() for t in test["target"]])
    tied = np.array([(counts[1:] == counts[t]).sum() for t in test["target"]])  # the target included
    for k in range(1, 61):
        expected = (np.minimum(higher + tied, k) - np.minimum(higher, k)) / tied
        assert metrics[f"hr@{k}"] == pytest.approx(expected.mean()), k
    with pytest.raises(ValueError, match="beyond the 5 catalogue items"):
        PopularityRecommender(np.array([1, 9]), 5)


def test_bad_arguments(demo):
    collator = SequenceCollator(demo.sequences["test"], 50)
    model = FixedScores([0.0] * 61)
    with pytest.raises(ValueError, match="subset of"):
        evaluate_ranking(model, collator, protocols=("masked",))
    with pytest.raises(ValueError, match="must be >= 1"):
        evaluate_ranking(model, collator, ks=(0,))
    with pytest.raises(ValueError, match="empty"):
        evaluate_ranking(model, SequenceCollator(demo.sequences["test"].select([]), 50))
