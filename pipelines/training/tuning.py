"""Trials of `tune.py`: a recipe changed by a trial's settings, trained as `train.py` trains it and scored by the
best validation NDCG@10 of its epochs (the mean over seeds), with the test split dropped before anything trains.

`run_study` runs fixed trials first, then an Optuna study over a search space; `TrialRunner` trains and logs the
trials; `apply_settings` and `suggest` turn a trial's settings into a recipe. See `tune.py` for the command line
and the search-space format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from pathlib import Path

from accelerate import Accelerator

from ...configuration import TrainingRecipe, load_preset
from ..data import MultiModalDomain, catalogue_features
from .checkpointing import recover_interrupted_saves
from .loop import fit_missrec, fit_sasrec, id_modes_to_try, load_training_data
from .output_lock import locked_output_dir

try:
    import optuna
except ImportError:  # reported by run_study, with the command that installs it
    optuna = None

OVERRIDE_PREFIX = "config_overrides."
# Recipe keys holding config attributes: a setting `<key>.<attribute>` sets one of them.
OVERRIDE_KEYS = ("config_overrides", "sasrec_config_overrides")
MODELS = ("missrec", "sasrec")
FIXED_PREFIX = "fixed-"  # the name of `--trials` entry N: `fixed-<N>`
RESUME_KEYS = ("checkpointing_steps", "resume_from_checkpoint")  # how a trial is saved, not what it trains
# What a trial's record keeps of each epoch (per seed): its validation curve, and the temperature when it is learned.
CURVE_KEYS = ("epoch", "loss", "ndcg@10", "score_temperature")
# The recipe keys that decide the data a run trains and validates on (`train.load_training_data`).
DATA_KEYS = ("domain", "data_dir", "source", "text_encoder", "text_fields", "num_users", "num_items")
DATA_KEYS += ("max_train_examples", "train_user_fraction", "max_eval_examples", "seed")


def apply_settings(args: TrainingRecipe, settings: dict) -> TrainingRecipe:
    """`args` with a trial's `settings` applied (`config_overrides.<name>` keys merged into `config_overrides`,
    `sasrec_config_overrides.<name>` into `sasrec_config_overrides`), validated as a recipe is."""
    values = dataclasses.asdict(args)
    overrides = {field: dict(values.get(field) or {}) for field in OVERRIDE_KEYS}
    for key, value in settings.items():
        field, _, attribute = key.partition(".")
        if attribute and field in overrides:
            overrides[field][attribute] = value
        elif key in values:
            values[key] = value
        else:
            raise ValueError(f"unknown setting {key!r}: use a recipe key or {OVERRIDE_PREFIX}<attribute>")
    return TrainingRecipe(**{**values, **{field: found or None for field, found in overrides.items()}})


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """The trial's value of every key of the search `space` (see the module docstring for its format)."""
    settings = {}
    for key, spec in space.items():
        if not isinstance(spec, dict) or len(set(spec) & {"float", "int", "categorical"}) != 1:
            raise ValueError(f"search space {key!r}: expected one of float/int/categorical, got {spec!r}")
        if "categorical" in spec:
            settings[key] = trial.suggest_categorical(key, spec["categorical"])
        elif "float" in spec:
            low, high = spec["float"]
            settings[key] = trial.suggest_float(key, float(low), float(high), log=spec.get("log", False))
        else:
            low, high = spec["int"]
            settings[key] = trial.suggest_int(key, int(low), int(high), log=spec.get("log", False))
    return settings


def best_validation_ndcg(
    args: TrainingRecipe, domain: MultiModalDomain, on_epoch_end=None, model: str = "missrec"
) -> tuple[float, list[dict]]:
    """Train `model` (MISSRec, or the recipe's `sasrec` baseline) on `domain` (train and validation splits only)
    under `args`; the best validation NDCG@10 of its epochs and the per-epoch history (with `id_mode: auto`, of
    the id mode kept)."""
    if model == "sasrec":
        length = load_preset(args.preset).max_seq_length  # SASRec reads as many items as MISSRec
        _, history = fit_sasrec(Accelerator(), args, domain, length, on_epoch_end)
        return max(row["ndcg@10"] for row in history), history
    _, chosen, histories = fit_missrec(Accelerator(), args, domain, catalogue_features(domain.items), on_epoch_end)
    history = histories[chosen.id_mode]
    return max(row["ndcg@10"] for row in history), history


class TrialRunner:
    """Runs trials (a recipe changed by a trial's settings, trained on each of `seeds`) and logs each one to
    `log` as it finishes."""

    def __init__(self, args: TrainingRecipe, seeds: list[int], log: Path, model: str = "missrec"):
        if model not in MODELS:
            raise ValueError(f"model={model!r} is not one of {list(MODELS)}")
        self.args, self.seeds, self.log, self.model = args, seeds, log, model
        self.records: list[dict] = json.loads(log.read_text()) if log.is_file() else []
        self.domains: dict[tuple, MultiModalDomain] = {}

    def domain(self, args: TrainingRecipe) -> MultiModalDomain:
        """The data `args` train on, without the test split (loaded once per distinct data settings: a trial may
        change the data, and the seed draws the samples of `max_*_examples` and the demo domain)."""
        key = tuple(json.dumps(getattr(args, name)) for name in DATA_KEYS)
        if key not in self.domains:
            domain = load_training_data(args)
            del domain.sequences["test"]  # selection must not see it
            self.domains = {key: domain}  # one held at a time
        return self.domains[key]

    def run(self, name: str, settings: dict, on_epoch_end=None) -> float:
        """Mean best validation NDCG@10 of `settings` over the seeds."""
        started, scores, epochs, curves = time.perf_counter(), [], [], []
        fingerprint = self.fingerprint(settings)
        for seed in self.seeds:
            args = apply_settings(self.args, {**settings, "seed": seed})
            if args.checkpointing_steps is not None:
                args = self.checkpointed(args, f"{name}-{fingerprint}", seed)
            # Under `id_mode: auto` a run trains two validation curves; the pruner compares one per trial.
            curve = on_epoch_end if self.model == "sasrec" or len(id_modes_to_try(args)) == 1 else None
            score, history = best_validation_ndcg(args, self.domain(args), on_epoch_end=curve, model=self.model)
            scores.append(score)
            epochs.append(max(history, key=lambda row: row["ndcg@10"])["epoch"])
            curves.append([{key: row[key] for key in CURVE_KEYS if key in row} for row in history])
        value = statistics.fmean(scores)
        self.records.append(
            {
                "trial": name,
                "settings": settings,
                "fingerprint": fingerprint,
                "seeds": self.seeds,
                "valid_ndcg@10": scores,
                "mean_valid_ndcg@10": value,
                "best_epochs": epochs,
                "seconds": time.perf_counter() - started,
                "curves": curves,
            }
        )
        self.log.write_text(json.dumps(self.records, indent=2))
        return value

    def fingerprint(self, settings: dict) -> str:
        """What a trial trains, as a short hash: the model and the recipe with the trial's settings (its seed,
        output folder and checkpoint keys aside). A record or checkpoint of other settings, recipe or model under
        the same trial name is not the same trial."""
        values = dataclasses.asdict(apply_settings(self.args, settings))
        for key in ("seed", "output_dir", "overwrite_output_dir", *RESUME_KEYS):
            values.pop(key, None)
        text = json.dumps({"model": self.model, "recipe": values}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def checkpointed(self, args: TrainingRecipe, trial: str, seed: int) -> TrainingRecipe:
        """`args` checkpointing into the trial's own `trials/<trial>/seed<N>/` folder beside the log (`trial`: its
        name and [`fingerprint`]), so that with `resume_from_checkpoint: latest-if-any` a killed trial continues
        there (a finished seed's checkpoint returns its history at once), and saves a kill interrupted are finished
        first."""
        folder = self.log.parent / "trials" / trial / f"seed{seed}"
        for model in sorted((folder / "checkpoints").glob("*")):
            recover_interrupted_saves(model)
        return dataclasses.replace(args, output_dir=str(folder))

    def is_recorded(self, name: str, settings: dict) -> bool:
        """Whether the log holds trial `name` as these settings, recipe and model train it, on these seeds (a rerun
        of the study skips it)."""
        fingerprint = self.fingerprint(settings)
        return any(
            r["trial"] == name and r.get("fingerprint") == fingerprint and r["seeds"] == self.seeds
            for r in self.records
        )

    def objective(self, space: dict):
        """The Optuna objective over `space`; with one seed it reports each epoch, so the pruner can stop it."""

        def objective(trial: optuna.Trial) -> float:
            def report(row: dict) -> None:
                trial.report(row["ndcg@10"], row["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {row['epoch']}: valid NDCG@10 {row['ndcg@10']:.4f}")

            return self.run(f"optuna-{trial.number}", suggest(trial, space), report if len(self.seeds) == 1 else None)

        return objective


def markdown(records: list[dict]) -> str:
    """The trials as a markdown table, best mean validation NDCG@10 first."""
    lines = ["| trial | settings | valid NDCG@10 (mean) | per seed | best epochs |", "|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: -r["mean_valid_ndcg@10"]):
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "(the recipe)"
        per_seed = " / ".join(f"{s:.4f}" for s in r["valid_ndcg@10"])
        lines.append(f"| {r['trial']} | {settings} | {r['mean_valid_ndcg@10']:.4f} | {per_seed} | {r['best_epochs']} |")
    return "\n".join(lines)


def run_study(
    args: TrainingRecipe,
    seeds: list[int],
    fixed: list[dict],
    space: dict,
    n_trials: int = 0,
    study_name: str = "missrec",
    storage: str | None = None,
    sampler_seed: int = 0,
    model: str = "missrec",
) -> list[dict]:
    """Run the `fixed` trials (settings as given), then `n_trials` of an Optuna TPE study over the search `space`
    (pruned by the median rule when one seed and one id mode train), each on `seeds`, training `model` (MISSRec,
    or the recipe's `sasrec` baseline: its settings are `sasrec_config_overrides.<attribute>` and
    `sasrec_learning_rate`); every trial is logged to `<args.output_dir>/trials.json` as it finishes.

    Returns:
        The records of the trials run (earlier records of the same `trials.json` first).
    """
    if optuna is None:
        raise ImportError('tuning needs Optuna: pip install -e ".[tune]"')
    for settings in fixed:  # fail before training, not at the trial
        apply_settings(args, settings or {})
    output = Path(args.output_dir)
    with locked_output_dir(output):  # two studies into one trials.json would interleave their records
        runner = TrialRunner(args, seeds, output / "trials.json", model)
        for number, settings in enumerate(fixed):
            if not runner.is_recorded(f"{FIXED_PREFIX}{number}", settings or {}):
                runner.run(f"{FIXED_PREFIX}{number}", settings or {})
        if n_trials:
            study = optuna.create_study(
                study_name=study_name,
                storage=storage,
                load_if_exists=storage is not None,
                direction="maximize",
                sampler=optuna.samplers.TPESampler(seed=sampler_seed),
                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=5),
            )
            study.optimize(runner.objective(space), n_trials=n_trials)
    return runner.records
