"""Training recipes: YAML + command-line overrides, typed values, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from modeling_missrec.pipelines.recipe import TrainingRecipe, default_recipe_path, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "configuration" / "recipes"


def test_default_recipe_is_the_demo_job_and_overrides_are_typed():
    assert default_recipe_path().name == "demo.yaml"
    assert load_recipe() == TrainingRecipe()  # the shipped demo recipe states the defaults
    recipe = load_recipe(None, ["--epochs", "3", "--learning_rate", "5e-4", "--data_dir=null", "--domain", "Office"])
    assert (recipe.epochs, recipe.learning_rate, recipe.data_dir, recipe.domain) == (3, 5e-4, None, "Office")


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    assert isinstance(load_recipe(path), TrainingRecipe)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"unknown recipe keys \['lr'\]; valid keys: \['domain'"):
        load_recipe(None, ["--lr", "0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nwarmup: 10\n")
    with pytest.raises(ValueError, match=r"unknown recipe keys \['warmup'\]"):
        load_recipe(bad)
    with pytest.raises(ValueError, match="--epochs needs a value"):
        load_recipe(None, ["--epochs"])
    with pytest.raises(ValueError, match="expected --key value"):
        load_recipe(None, ["epochs", "3"])
    with pytest.raises(ValueError, match="batch_size=0 must be an integer >= 1"):
        load_recipe(None, ["--batch_size", "0"])
    with pytest.raises(ValueError, match="id_mode='both'"):
        load_recipe(None, ["--id_mode", "both"])
    with pytest.raises(FileNotFoundError, match="recipes shipped with the package: \\['demo.yaml'"):
        load_recipe(tmp_path / "missing.yaml")
