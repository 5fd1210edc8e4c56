"""The learned repeat offsets (`config.repeat_bias`): the offsets by hand, the same scores in training, evaluation
and serving, learned from the targets, saved, and trained by every fine-tuning strategy."""

from __future__ import annotations

import pytest
import torch
from helpers import fine_tune_lora_adapter, random_histories, rec, tiny_config, tiny_model

from modeling_missrec import MISSRecConfig, MISSRecModel
from modeling_missrec.layers_missrec import MISSRecRepeatBias
from modeling_missrec.scoring_missrec import add_history_offsets
from modeling_missrec.served_files_missrec import load_missrec_adapter

NUM_ITEMS = 30


def with_offsets(model: MISSRecModel, values: list[float]) -> MISSRecModel:
    with torch.no_grad():
        model.repeat_bias.weight.copy_(torch.tensor(values))
    return model


def test_offsets_by_hand_most_recent_occurrence_and_old_items():
    bias = MISSRecRepeatBias(tiny_config(max_seq_length=3))
    with torch.no_grad():
        bias.weight.copy_(torch.tensor([-1.0, -2.0, -3.0]))
    # Row 0: item 5 twice (its most recent occurrence is 2 back), item 9 last; row 1: 4 items, the oldest is
    # beyond the 3 offsets and takes the last one.
    item_seq = torch.tensor([[5, 7, 5, 9, 0], [1, 2, 3, 4, 0]])
    rows, ids, offsets = bias(item_seq)
    got = {(int(r), int(i)): float(o) for r, i, o in zip(rows, ids, offsets.detach())}
    assert got == {(0, 7): -3.0, (0, 5): -2.0, (0, 9): -1.0, (1, 1): -3.0, (1, 2): -3.0, (1, 3): -2.0, (1, 4): -1.0}
    scores = add_history_offsets(torch.zeros(2, 11), (rows, ids, offsets))
    assert scores[0, 5] == -2.0 and scores[0, 6] == 0.0 and scores.sum() == sum(got.values())


def test_the_offsets_add_to_the_paper_scores_and_serving_ranks_the_same():
    plain = tiny_model(NUM_ITEMS)
    model = with_offsets(tiny_model(NUM_ITEMS, repeat_bias=True), torch.linspace(-3, 1, 12).tolist())
    assert torch.equal(plain.position_embeddings.weight, model.position_embeddings.weight)  # same seed, same init
    items, lengths = random_histories(6, 10, NUM_ITEMS, seed=1)
    with torch.no_grad():
        base_scores, scores = rec(plain)(items, lengths).scores, rec(model)(items, lengths).scores
    rows, ids, offsets = model.repeat_bias(items, lengths)
    expected = base_scores.clone()
    expected[rows, ids] += offsets
    assert torch.allclose(scores, expected, atol=1e-5)
    assert not torch.allclose(scores, base_scores)
    # Serving (the cached index) ranks what the forward scores rank, over the whole catalogue or an allow-list.
    top = rec(model).recommend(items, lengths, top_k=NUM_ITEMS, exclude_history=False)
    assert torch.allclose(top.scores, scores[:, 1:].sort(1, descending=True).values, atol=1e-4)
    candidates = torch.tensor([2, 3, 5, 8, 13, 21])
    some = rec(model).recommend(items, lengths, top_k=6, exclude_history=False, candidates=candidates)
    assert torch.allclose(some.scores, scores[:, candidates].sort(1, descending=True).values, atol=1e-4)
    # Excluding the history leaves the offsets nothing to act on.
    assert torch.equal(
        rec(model).recommend(items, lengths, top_k=5).item_ids, rec(plain).recommend(items, lengths, top_k=5).item_ids
    )


def test_offsets_are_learned_from_targets_that_never_repeat():
    model = tiny_model(NUM_ITEMS, repeat_bias=True).train()
    items, lengths = random_histories(32, 8, NUM_ITEMS, seed=2)
    labels = torch.tensor([next(i for i in range(1, NUM_ITEMS + 1) if i not in row.tolist()) for row in items])
    rec(model)(items, lengths, labels=labels).loss.backward()
    grad = model.repeat_bias.weight.grad
    assert (grad[:8] > 0).all()  # every offset a history reaches is pushed down (gradient descent)
    assert (grad[8:] == 0).all()  # positions no history reaches stay


def test_saved_with_the_model_and_off_by_default(tmp_path):
    assert MISSRecConfig().repeat_bias is False and tiny_model(NUM_ITEMS).repeat_bias is None
    model = with_offsets(tiny_model(NUM_ITEMS, repeat_bias=True), [-float(i) for i in range(12)])
    model.save_pretrained(tmp_path)
    loaded = MISSRecModel.from_pretrained(tmp_path)
    assert loaded.config.repeat_bias and torch.equal(loaded.repeat_bias.weight, model.repeat_bias.weight)
    # A checkpoint saved without them, loaded with them switched on: they start at 0.
    tiny_model(NUM_ITEMS).save_pretrained(tmp_path / "plain")
    switched = MISSRecModel.from_pretrained(tmp_path / "plain", repeat_bias=True)
    assert switched.repeat_bias.weight.abs().sum() == 0
    with pytest.raises(ValueError, match="repeat_bias"):
        MISSRecConfig(repeat_bias="yes")


def test_an_adapter_fine_tuned_with_offsets_brings_them_to_a_base_without(tmp_path):
    tiny_model(NUM_ITEMS).save_pretrained(tmp_path / "base")
    base = MISSRecModel.from_pretrained(tmp_path / "base", repeat_bias=True, score_temperature=0.2)  # the overrides
    adapted = fine_tune_lora_adapter(base, tmp_path / "adapter", NUM_ITEMS, 5e-2)
    loaded = load_missrec_adapter(str(tmp_path / "base"), tmp_path / "adapter")
    inner = loaded.get_base_model()
    assert inner.config.repeat_bias and inner.config.score_temperature == 0.2
    assert inner.repeat_bias.weight.abs().sum() > 0  # the trained offsets, not fresh zeros
    items, lengths = random_histories(6, 8, NUM_ITEMS, seed=9)
    with torch.no_grad():
        assert torch.allclose(rec(loaded)(items, lengths).scores, rec(adapted)(items, lengths).scores, atol=1e-6)
