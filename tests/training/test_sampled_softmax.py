"""The sampled softmax (`loss: sampled`): the loss by hand, its equality with the full softmax when every item is a
candidate, the candidates a batch draws, and a run that trains with it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import random_histories, run_train, tiny_config
from modeling_missrec.configuration import load_recipe
from modeling_missrec.pipelines.data.collator import SequenceCollator
from modeling_missrec.pipelines.data.loading import load_domain
from modeling_missrec.pipelines.data.negative_sampling import SampledCandidates

from modeling_missrec import MISSRecForSequentialRecommendation
from modeling_missrec.layers_missrec import catalogue_cross_entropy, sampled_cross_entropy

NUM_ITEMS = 30


def test_the_logq_correction_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    targets = torch.tensor([2, 0])
    log_q = torch.log(torch.tensor([1.0, 2.0, 4.0]))  # the third candidate is proposed four times as often
    # row 0: corrected logits 1, 2 - ln 2, 3 - ln 4; row 1: 0.5, -ln 2, -1 - ln 4
    row0 = -(3 - math.log(4)) + math.log(math.exp(1) + math.exp(2 - math.log(2)) + math.exp(3 - math.log(4)))
    row1 = -0.5 + math.log(math.exp(0.5) + math.exp(-math.log(2)) + math.exp(-1 - math.log(4)))
    assert sampled_cross_entropy(logits, targets, log_q).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    excluded = torch.tensor([[True, False, False], [False, False, True]])  # row 1's third is its history
    row1_excluded = -0.5 + math.log(math.exp(0.5) + math.exp(-math.log(2)))
    loss = sampled_cross_entropy(logits, targets, log_q, excluded=excluded).item()
    row0_excluded = -(3 - math.log(4)) + math.log(math.exp(2 - math.log(2)) + math.exp(3 - math.log(4)))
    assert loss == pytest.approx((row0_excluded + row1_excluded) / 2, rel=1e-6)


def test_with_every_item_a_candidate_the_sampled_loss_is_the_full_one():
    scores = torch.randn(4, NUM_ITEMS + 1, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 1, 30, 7])
    constant = torch.full((NUM_ITEMS,), math.log(5.0))  # a constant correction changes nothing
    full = catalogue_cross_entropy(scores, labels, label_smoothing=0.1)
    sampled = sampled_cross_entropy(scores[:, 1:], labels - 1, constant, label_smoothing=0.1)
    torch.testing.assert_close(sampled, full)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"repeat_bias": True}, {"repeat_bias": True, "exclude_history_in_loss": True}, {"id_mode": "transductive"}],
)
def test_the_model_with_the_whole_catalogue_as_candidates_has_the_full_loss(overrides):
    torch.manual_seed(0)
    model = MISSRecForSequentialRecommendation(tiny_config(num_items=NUM_ITEMS, **overrides)).eval()
    generator = torch.Generator().manual_seed(1)
    model.missrec.set_catalogue(
        text_features=torch.randn(NUM_ITEMS, 16, generator=generator),
        image_features=torch.randn(NUM_ITEMS, 16, generator=generator),
    )
    model.missrec.discover_interests()
    items, lengths = random_histories(8, 6, NUM_ITEMS)
    labels = torch.randint(1, NUM_ITEMS + 1, (8,), generator=generator)
    full = model(item_seq=items, lengths=lengths, labels=labels)
    everything = torch.arange(1, NUM_ITEMS + 1)
    sampled = model(
        item_seq=items, lengths=lengths, labels=labels, candidate_ids=everything, candidate_log_q=torch.zeros(NUM_ITEMS)
    )
    torch.testing.assert_close(sampled.scores, full.scores[:, 1:])
    torch.testing.assert_close(sampled.loss, full.loss)
    some = torch.tensor([2, 5, 9])
    with pytest.raises(ValueError, match="candidate_ids must hold every label; missing"):
        model(item_seq=items, lengths=lengths, labels=labels, candidate_ids=some, candidate_log_q=torch.zeros(3))
    with pytest.raises(ValueError, match="sorted distinct item ids in 1..30"):
        model(item_seq=items, labels=labels, candidate_ids=torch.tensor([5, 2]), candidate_log_q=torch.zeros(2))


def test_a_batch_draws_its_targets_and_negatives_with_their_expected_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    domain = load_domain("demo", demo_num_users=80, demo_num_items=NUM_ITEMS)
    batches = SequenceCollator(domain.sequences["train"], 10)
    targets = np.asarray(domain.sequences["train"]["target"])
    share = np.bincount(targets, minlength=NUM_ITEMS + 1)[1:] / len(targets)
    for distribution in ("uniform", "popularity"):
        sampler = SampledCandidates(batches, NUM_ITEMS, num_negatives=7, distribution=distribution, seed=3)
        proposal = np.full(NUM_ITEMS, 1 / NUM_ITEMS) if distribution == "uniform" else None
        if proposal is None:
            counts = np.bincount(targets, minlength=NUM_ITEMS + 1)[1:] + 1
            proposal = counts / counts.sum()
        batch = sampler(np.arange(5, 21))
        candidates, log_q = batch["candidate_ids"].numpy(), batch["candidate_log_q"].numpy()
        assert (np.diff(candidates) > 0).all() and set(batch["labels"].tolist()) <= set(candidates.tolist())
        assert len(candidates) <= 16 + 7
        expected = 16 * share[candidates - 1] + 7 * proposal[candidates - 1]
        np.testing.assert_allclose(log_q, np.log(expected), rtol=1e-5)
        again = sampler(np.arange(5, 21))  # the same rows in the same epoch draw the same negatives
        assert torch.equal(again["candidate_ids"], batch["candidate_ids"])
        batches_of = {epoch: [] for epoch in (0, 1)}
        for epoch, drawn in batches_of.items():  # another epoch, other negatives
            sampler.set_epoch(epoch)
            drawn.extend(sampler(np.arange(start, start + 4))["candidate_ids"].tolist() for start in range(0, 40, 4))
        assert batches_of[0] != batches_of[1]


def test_train_py_fine_tunes_with_the_sampled_softmax(tmp_path):
    small = ["--num_users", "300", "--num_items", "200", "--epochs", "3", "--baselines", "[]"]
    results = run_train([*small, "--loss", "sampled", "--num_negatives", "40", "--output_dir", str(tmp_path)])
    assert results["recipe"]["loss"] == "sampled"
    assert results["test"]["ndcg@10"] > 1.5 * results["popularity_test"]["ndcg@10"]
    with pytest.raises(ValueError, match="loss='sampled' is fine-tuning's softmax"):
        load_recipe(None, ["--stage", "pretrain", "--domain", "[demo-1, demo-2]", "--loss", "sampled"])
