"""Training recipes: a YAML file of settings, any of which the command line overrides (`--key value`)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml


def default_recipe_path() -> Path:
    """The recipe `train.py` runs without `--config` (the demo job), from the source tree or the installed package."""
    from ..configuration import __file__ as configuration_init

    return Path(configuration_init).parent / "recipes" / "demo.yaml"


@dataclass
class TrainingRecipe:
    """What `train.py` runs.

    Attributes:
        domain: `"demo"`, an Amazon domain or the prefix of one's own MISSRec-format files.
        data_dir: folder of the domain's MISSRec-format files.
        num_users, num_items: size of the demo domain.
        preset: a model preset of `configuration/models/` (a model trained from scratch).
        pretrained: instead of a preset, a folder (or Hub id) of a pre-trained MISSRec to fine-tune.
        strategy: what trains: `"full"`, `"frozen"` (the paper's fine-tuning) or `"lora"` (a PEFT adapter, saved
            as the output); `frozen` and `lora` need `pretrained`.
        id_mode: `"inductive"` or `"transductive"`.
        epochs, batch_size, learning_rate, seed: optimisation (Adam).
        gradient_accumulation_steps: batches per optimiser step (Accelerate's gradient accumulation).
        early_stopping_patience: stop after this many epochs without a valid NDCG@10 gain (`None`: never).
        baselines: trained and evaluated beside MISSRec: `["sasrec"]` or `[]` (popularity is always reported).
        output_dir: where the model and `metrics.json` go.
    """

    domain: str = "demo"
    data_dir: str | None = None
    num_users: int = 1000
    num_items: int = 600
    preset: str = "missrec-tiny"
    pretrained: str | None = None
    strategy: str = "full"
    id_mode: str = "inductive"
    epochs: int = 8
    batch_size: int = 256
    learning_rate: float = 1e-3
    seed: int = 0
    gradient_accumulation_steps: int = 1
    early_stopping_patience: int | None = 10
    baselines: list[str] = field(default_factory=lambda: ["sasrec"])
    output_dir: str = "runs/demo"

    def __post_init__(self) -> None:
        if self.id_mode not in ("inductive", "transductive"):
            raise ValueError(f"id_mode={self.id_mode!r} is not one of ['inductive', 'transductive']")
        if self.early_stopping_patience is not None and (
            not isinstance(self.early_stopping_patience, int) or self.early_stopping_patience < 1
        ):
            raise ValueError(
                f"early_stopping_patience={self.early_stopping_patience!r} must be an integer >= 1 or null"
            )
        for name in ("epochs", "batch_size", "num_users", "num_items", "gradient_accumulation_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be an integer >= 1")
        if self.strategy not in ("full", "frozen", "lora"):
            raise ValueError(f"strategy={self.strategy!r} is not one of ['full', 'frozen', 'lora']")
        if self.strategy != "full" and self.pretrained is None:
            raise ValueError(f"strategy={self.strategy!r} fine-tunes a pre-trained model: set pretrained")
        if not isinstance(self.baselines, list) or not set(self.baselines) <= {"sasrec"}:
            raise ValueError(f"baselines={self.baselines!r} must be a list drawn from ['sasrec']")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate!r} must be > 0")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def _parse_value(raw: str):
    """A command-line value: an int, a float (`1e-3` included), else YAML (`null`, `true`, a list, a string)."""
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return yaml.safe_load(raw)


def load_recipe(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainingRecipe:
    """Read a recipe and apply `--key value` overrides.

    Args:
        path: a YAML recipe (default: the demo recipe).
        overrides: command-line words, `["--epochs", "3", "--output_dir", "runs/x"]` (`--key=value` works too).

    Returns:
        A validated [`TrainingRecipe`]. Unknown keys, in the file or on the command line, raise a `ValueError`
        listing the valid ones.
    """
    path = Path(path) if path is not None else default_recipe_path()
    if not path.is_file():
        shipped = sorted(p.name for p in default_recipe_path().parent.glob("*.yaml"))
        raise FileNotFoundError(f"recipe {path} does not exist (recipes shipped with the package: {shipped})")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe is a mapping of keys to values")
    words = list(overrides or [])
    while words:
        word = words.pop(0)
        if not word.startswith("--"):
            raise ValueError(f"expected --key value on the command line, got {word!r}")
        key, _, raw = word[2:].partition("=")
        if not _:
            if not words:
                raise ValueError(f"--{key} needs a value")
            raw = words.pop(0)
        values[key] = _parse_value(raw)
    unknown = sorted(set(values) - set(TrainingRecipe.keys()))
    if unknown:
        raise ValueError(f"unknown recipe keys {unknown}; valid keys: {TrainingRecipe.keys()}")
    return TrainingRecipe(**values)
