"""Named model presets shipped with the package (`configuration/models/*.json`)."""

from __future__ import annotations

import json
from importlib import resources

from .configuration_missrec import MISSRecConfig


def available_presets() -> list[str]:
    """Names of the shipped presets, e.g. `["missrec-base", "missrec-tiny"]`."""
    folder = resources.files("modeling_missrec.configuration") / "models"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_preset(name: str, **overrides) -> MISSRecConfig:
    """The config of preset `name` (`missrec-base` = the paper's hyper-parameters, `missrec-tiny` for tests
    and the demo), with keyword `overrides` applied and validated."""
    names = available_presets()
    if name not in names:
        raise ValueError(f"unknown preset {name!r}; available: {names}")
    text = (resources.files("modeling_missrec.configuration") / "models" / f"{name}.json").read_text()
    values = json.loads(text)
    values.pop("model_type", None)
    return MISSRecConfig(**{**values, **overrides})
