"""`pretrained_learning_rate`: a pre-trained model fine-tunes at its own rate; models from scratch (a preset, the
`scratch` baseline) keep `learning_rate`."""

from __future__ import annotations

import pytest
from modeling_missrec.configuration import parse_recipe_args
from modeling_missrec.pipelines.data.collator import catalogue_features
from modeling_missrec.pipelines.training import loop

TINY = ["--num_users", "60", "--num_items", "40", "--baselines", "[]", "--batch_size", "32", "--id_mode", "inductive"]
TINY += ["--epochs", "1", "--learning_rate", "0.003"]


@pytest.fixture
def optimiser_rates(monkeypatch):
    """The learning rate of every optimiser `fit` builds, in order."""
    real_build, rates = loop.build_optimizer, []

    def recorded(model, args):
        optimiser = real_build(model, args)
        rates.append({group["lr"] for group in optimiser.param_groups})
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
    args = parse_recipe_args([*words, "--pretrained_learning_rate", "0.0002"])
    _, chosen, _ = loop.fit_missrec(Accelerator(), args, domain, features)
    assert chosen.learning_rate == pytest.approx(2e-4)  # the recipe the kept model trained under says so
    loop.fit_missrec(Accelerator(), args, domain, features, from_scratch=True)
    loop.fit_missrec(Accelerator(), parse_recipe_args(words), domain, features)  # unset: `learning_rate`
    assert optimiser_rates == [{3e-3}, {2e-4}, {3e-3}, {3e-3}]
