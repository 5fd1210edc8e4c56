"""The learned score temperature (`config.learn_score_temperature`): it starts as the fixed one, its gradient
sharpens a softmax that ranks the targets first and flattens one that ranks them last, it stops at its bound, and
training, pre-training, serving, saving and adapters all read the one learned value."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import fine_tune_lora_adapter, pretraining, random_histories, rec, tiny_model

from modeling_missrec import MISSRecConfig, MISSRecModel
from modeling_missrec.layers_missrec import MISSRecScoreTemperature
from modeling_missrec.served_files_missrec import load_missrec_adapter

NUM_ITEMS = 30


def with_temperature(model: MISSRecModel, temperature: float) -> MISSRecModel:
    with torch.no_grad():
        model.learned_temperature.log_inverse.fill_(-math.log(temperature))
    return model


def test_off_by_default_and_a_fresh_one_scores_as_the_fixed_temperature():
    assert MISSRecConfig().learn_score_temperature is False and tiny_model(NUM_ITEMS).learned_temperature is None
    fixed = tiny_model(NUM_ITEMS, score_temperature=0.1)
    learned = tiny_model(NUM_ITEMS, score_temperature=0.1, learn_score_temperature=True)
    assert float(learned.score_temperature().detach()) == pytest.approx(0.1)
    items, lengths = random_histories(6, 8, NUM_ITEMS, seed=1)
    with torch.no_grad():
        assert torch.allclose(rec(fixed)(items, lengths).scores, rec(learned)(items, lengths).scores, atol=1e-5)
        with_temperature(learned, 0.05)  # half the temperature: twice the logits
        scores = rec(learned)(items, lengths).scores[:, 1:]
        assert torch.allclose(scores, 2 * rec(fixed)(items, lengths).scores[:, 1:], atol=1e-4)
    with pytest.raises(ValueError, match="learn_score_temperature"):
        MISSRecConfig(learn_score_temperature=1)


@pytest.mark.parametrize("targets, direction", [("best", -1), ("worst", +1)])
def test_the_gradient_sharpens_for_targets_ranked_first_and_flattens_for_targets_ranked_last(targets, direction):
    # With every target the top-scored item, a lower temperature (a higher log(1 / t)) lowers the cross-entropy;
    # with every target the bottom-scored item, a higher one does. Eval mode: the scores the labels came from.
    model = tiny_model(NUM_ITEMS, learn_score_temperature=True, score_temperature=0.5)
    items, lengths = random_histories(8, 6, NUM_ITEMS, seed=2)
    with torch.no_grad():
        scores = rec(model)(items, lengths).scores[:, 1:]
    labels = (scores.argmax(1) if targets == "best" else scores.argmin(1)) + 1
    rec(model)(items, lengths, labels=labels).loss.backward()
    assert direction * model.learned_temperature.log_inverse.grad > 0  # descent moves t the sign of the gradient


def test_held_at_its_bound():
    temperature = MISSRecScoreTemperature(MISSRecConfig(score_temperature=0.001))
    assert float(temperature().detach()) == pytest.approx(MISSRecScoreTemperature.MIN_TEMPERATURE)
    temperature().backward()
    assert temperature.log_inverse.grad == 0  # past the bound, training does not push it further


def test_pretraining_divides_both_contrastive_terms_by_it():
    model = tiny_model(NUM_ITEMS, learn_score_temperature=True).train()
    items, lengths = random_histories(8, 6, NUM_ITEMS, seed=3)
    out = pretraining(model)(items, labels=torch.arange(1, 9), augmented_item_seq=items, lengths=lengths)
    seq_seq = torch.autograd.grad(out.seq_seq_loss, model.learned_temperature.log_inverse, retain_graph=True)[0]
    seq_item = torch.autograd.grad(out.seq_item_loss, model.learned_temperature.log_inverse)[0]
    assert seq_seq != 0 and seq_item != 0


def test_serving_and_saving_use_the_learned_value(tmp_path):
    model = with_temperature(tiny_model(NUM_ITEMS, learn_score_temperature=True, repeat_bias=True), 0.03)
    with torch.no_grad():
        model.repeat_bias.weight.copy_(torch.linspace(-2, 1, 12))  # offsets: the scale matters to the ranking
    items, lengths = random_histories(6, 8, NUM_ITEMS, seed=4)
    with torch.no_grad():
        scores = rec(model)(items, lengths).scores[:, 1:]
    top = rec(model).recommend(items, lengths, top_k=NUM_ITEMS, exclude_history=False)
    assert torch.allclose(top.scores, scores.sort(1, descending=True).values, atol=1e-4)
    model.save_pretrained(tmp_path)
    loaded = MISSRecModel.from_pretrained(tmp_path)
    assert float(loaded.score_temperature().detach()) == pytest.approx(0.03)
    # A checkpoint with a fixed temperature, loaded with a learned one: it starts at the fixed value.
    tiny_model(NUM_ITEMS, score_temperature=0.2).save_pretrained(tmp_path / "fixed")
    switched = MISSRecModel.from_pretrained(tmp_path / "fixed", learn_score_temperature=True)
    assert float(switched.score_temperature().detach()) == pytest.approx(0.2)


def test_an_adapter_fine_tuned_with_it_brings_it_to_a_base_without(tmp_path):
    tiny_model(NUM_ITEMS).save_pretrained(tmp_path / "base")
    base = MISSRecModel.from_pretrained(tmp_path / "base", learn_score_temperature=True)  # the recipe's override
    adapted = fine_tune_lora_adapter(base, tmp_path / "adapter", NUM_ITEMS, 5e-2)
    trained = float(adapted.get_base_model().score_temperature().detach())
    assert trained != pytest.approx(0.07)  # it moved
    loaded = load_missrec_adapter(str(tmp_path / "base"), tmp_path / "adapter")
    assert float(loaded.get_base_model().score_temperature().detach()) == pytest.approx(trained)
    items, lengths = random_histories(6, 8, NUM_ITEMS, seed=9)
    with torch.no_grad():
        assert torch.allclose(rec(loaded)(items, lengths).scores, rec(adapted)(items, lengths).scores, atol=1e-6)
