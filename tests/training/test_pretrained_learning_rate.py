"""`pretrained_learning_rate`: a pre-trained model fine-tunes at its own rate, its repeat offsets excepted; models
from scratch (a preset, the `scratch` baseline) keep `learning_rate`."""

from __future__ import annotations

import pytest
from modeling_missrec.configuration import parse_recipe_args
from modeling_missrec.pipelines.data.collator import catalogue_features
from modeling_missrec.pipelines.training import loop

TINY = ["--num_users", "60", "--num_items", "40", "--baselines", "[]", "--batch_size", "32", "--id_mode", "inductive"]
TINY += ["--epochs", "1", "--learning_rate", "0.003"]


@pytest.fixture
def optimiser_rates(monkeypatch):
    """The learning rates of every optimiser `fit` builds, in order, each with the names of its parameters."""
    real_build, rates = loop.build_optimizer, []

    def recorded(model, args, offsets_learning_rate=None):
        optimiser = real_build(model, args, offsets_learning_rate)
        names = {id(p): name for name, p in model.named_parameters()}
        built = {}
        for group in optimiser.param_groups:
            built.setdefault(group["lr"], []).extend(names[id(p)] for p in group["params"])
        rates.append(built)
        return optimiser

    monkeypatch.setattr(loop, "build_optimizer", recorded)
    return rates


def test_a_pretrained_model_trains_at_its_rate_and_scratch_models_at_the_recipes(
    tmp_path, optimiser_rates, fresh_accelerate_state
):
    from accelerate import Accelerator

    preset_args = parse_recipe_args([*TINY, "--pretrained_learning_rate", "0.0002", "--output_dir", str(tmp_path)])
    domain = loop.load_training_data(preset_args)
    features = catalogue_features(domain.items)
    loop.fit_missrec(Accelerator(), preset_args, domain, features)  # no `pretrained`: the key is not read
    loop.build_missrec(preset_args, features).save_pretrained(tmp_path / "base")

    words = [*TINY, "--pretrained", str(tmp_path / "base"), "--output_dir", str(tmp_path / "ft")]
    words += ["--config_overrides", "repeat_bias=true"]  # the base has no repeat offsets: fine-tuning adds them
    args = parse_recipe_args([*words, "--pretrained_learning_rate", "0.0002"])
    _, chosen, _ = loop.fit_missrec(Accelerator(), args, domain, features)
    assert chosen.learning_rate == pytest.approx(2e-4)  # the recipe the kept model trained under says so
    loop.fit_missrec(Accelerator(), args, domain, features, from_scratch=True)
    loop.fit_missrec(Accelerator(), parse_recipe_args(words), domain, features)  # unset: `learning_rate`
    assert [sorted(built) for built in optimiser_rates] == [[3e-3], [2e-4, 3e-3], [3e-3], [3e-3]]
    assert optimiser_rates[1][3e-3] == ["missrec.repeat_bias.weight"]  # the offsets alone keep `learning_rate`
    assert any("repeat_bias" in name for name in optimiser_rates[2][3e-3])  # scratch: everything at its rate


def test_under_lora_the_trained_copy_of_the_offsets_alone_gets_their_rate():
    from helpers import rec, tiny_model
    from modeling_missrec.configuration import load_recipe
    from modeling_missrec.pipelines.training.finetuning import apply_finetuning_strategy

    head = rec(apply_finetuning_strategy(tiny_model(repeat_bias=True), "lora"))
    args = load_recipe(None, ["--learning_rate", "0.0002"])
    names = {id(p): name for name, p in head.named_parameters()}
    groups = {}
    for group in loop.build_optimizer(head, args, 3e-3).param_groups:
        groups.setdefault(group["lr"], []).extend(names[id(p)] for p in group["params"])
    assert groups[3e-3] == ["missrec.base_model.model.repeat_bias.modules_to_save.default.weight"]
    assert any("lora_A" in name for name in groups[2e-4]) and not any("repeat_bias" in n for n in groups[2e-4])
    trained = [name for name, p in head.named_parameters() if p.requires_grad]
    assert sorted(groups[2e-4] + groups[3e-3]) == sorted(trained)
    assert [g["lr"] for g in loop.build_optimizer(head, args).param_groups] == [2e-4, 2e-4]  # no rate given
