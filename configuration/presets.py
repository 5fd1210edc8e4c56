"""Named model presets shipped with the package (`configuration/models/*.json`)."""

from __future__ import annotations

import inspect
import json
from importlib import resources

from ..configuration_missrec import CATALOGUE_FIELDS, MISSRecConfig


def available_presets() -> list[str]:
    """Names of the shipped presets, e.g. `["missrec-base", "missrec-tiny"]`."""
    folder = resources.files("modeling_missrec.configuration") / "models"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_preset(name: str, **overrides) -> MISSRecConfig:
    """The config of preset `name` (`missrec-base` = the paper's hyper-parameters, `missrec-tuned` = the paper's
    model tuned on validation, `missrec-tiny` for tests and the demo), with keyword `overrides` applied and
    validated."""
    names = available_presets()
    if name not in names:
        raise ValueError(f"unknown preset {name!r}; available: {names}")
    text = (resources.files("modeling_missrec.configuration") / "models" / f"{name}.json").read_text()
    values = json.loads(text)
    values.pop("model_type", None)
    return MISSRecConfig(**{**values, **overrides})


def check_config_overrides(overrides: dict) -> None:
    """Raise a `ValueError` unless every key of `overrides` is a MISSRec config argument that describes the
    architecture or training: the catalogue's fields are set by the data a model holds, and `interest_ratio` is
    the recipe's own key (its default depends on the stage)."""
    arguments = set(inspect.signature(MISSRecConfig.__init__).parameters) - {"self", "kwargs"}
    settable = arguments - set(CATALOGUE_FIELDS) - {"interest_ratio"}
    wrong = sorted(set(overrides) - settable)
    if wrong:
        raise ValueError(
            f"config_overrides {wrong} cannot be set: the catalogue's fields come from the data, interest_ratio "
            f"is a recipe key of its own; the settable MISSRec config attributes are {sorted(settable)}"
        )
