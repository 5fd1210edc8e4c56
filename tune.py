"""Search a recipe's settings with Optuna, selecting on validation NDCG@10; the test split is never read.

    pip install -e ".[tune]"
    python tune.py --config configuration/recipes/scientific.yaml --space configuration/search/scientific.yaml \\
        --n_trials 20 --baselines "[]"
    python tune.py --config configuration/recipes/scientific.yaml --trials my_trials.yaml   # fixed trials only

Each trial trains MISSRec as `train.py` does (same model builder, same `fit`) with the recipe changed by the
trial's settings, and scores the best validation NDCG@10 of its epochs (the mean over `--seeds`). The test
sequences are dropped from the domain before anything trains, so no trial, pruner or sampler can see them: read
the test split once, with `train.py`, for the settings chosen here. With one seed (and one id mode: not `auto`),
trials whose validation curve falls below the median of earlier trials at the same epoch are pruned (Optuna's
`MedianPruner`).

The search space is a YAML mapping of recipe keys (a `config_overrides.<attribute>` key sets one MISSRec config
attribute) to a distribution: `{float: [low, high], log: true}`, `{int: [low, high]}` or
`{categorical: [a, b, ...]}`. `--trials` is a YAML list of settings (the same keys) run first, as given, before
the sampler's own trials: the one-lever comparisons of an ablation. Every trial is written to
`<output_dir>/trials.json` as it finishes (settings, per-seed and mean validation NDCG@10, epochs, seconds; a
pruned trial is in the Optuna study only); a study with `--storage` (an Optuna database URL) can be resumed or
inspected with Optuna's tools. Any recipe key is overridden as in `train.py` (`--key value`), for every trial.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import yaml
from accelerate import Accelerator
from modeling_missrec.pipelines.collator import catalogue_features
from modeling_missrec.pipelines.loading import MultiModalDomain
from modeling_missrec.pipelines.recipe import TrainingRecipe, default_recipe_path, load_recipe

from train import fit_missrec, id_modes_to_try, load_training_data

try:
    import optuna
except ImportError:  # reported by main(), with the command that installs it
    optuna = None

OVERRIDE_PREFIX = "config_overrides."
# The recipe keys that decide the data a run trains and validates on (`train.load_training_data`).
DATA_KEYS = ("domain", "data_dir", "source", "text_encoder", "text_fields", "num_users", "num_items")
DATA_KEYS += ("max_train_examples", "max_eval_examples", "seed")


def apply_settings(args: TrainingRecipe, settings: dict) -> TrainingRecipe:
    """`args` with a trial's `settings` applied (`config_overrides.<name>` keys merged into `config_overrides`),
    validated as a recipe is."""
    values = dataclasses.asdict(args)
    overrides = dict(values.get("config_overrides") or {})
    for key, value in settings.items():
        if key.startswith(OVERRIDE_PREFIX):
            overrides[key.removeprefix(OVERRIDE_PREFIX)] = value
        elif key in values:
            values[key] = value
        else:
            raise ValueError(f"unknown setting {key!r}: use a recipe key or {OVERRIDE_PREFIX}<attribute>")
    return TrainingRecipe(**{**values, "config_overrides": overrides or None})


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


def best_validation_ndcg(args: TrainingRecipe, domain: MultiModalDomain, on_epoch_end=None) -> tuple[float, list[dict]]:
    """Train MISSRec on `domain` (train and validation splits only) under `args`; the best validation NDCG@10 of
    its epochs and the per-epoch history (with `id_mode: auto`, of the id mode kept)."""
    _, chosen, histories = fit_missrec(Accelerator(), args, domain, catalogue_features(domain.items), on_epoch_end)
    history = histories[chosen.id_mode]
    return max(row["ndcg@10"] for row in history), history


class TrialRunner:
    """Runs trials (a recipe changed by a trial's settings, trained on each of `seeds`) and logs each one to
    `log` as it finishes."""

    def __init__(self, args: TrainingRecipe, seeds: list[int], log: Path):
        self.args, self.seeds, self.log = args, seeds, log
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
        started, scores, epochs = time.perf_counter(), [], []
        for seed in self.seeds:
            args = apply_settings(self.args, {**settings, "seed": seed})
            # Under `id_mode: auto` a run trains two validation curves; the pruner compares one per trial.
            curve = on_epoch_end if len(id_modes_to_try(args)) == 1 else None
            score, history = best_validation_ndcg(args, self.domain(args), on_epoch_end=curve)
            scores.append(score)
            epochs.append(max(history, key=lambda row: row["ndcg@10"])["epoch"])
        value = statistics.fmean(scores)
        self.records.append(
            {
                "trial": name,
                "settings": settings,
                "seeds": self.seeds,
                "valid_ndcg@10": scores,
                "mean_valid_ndcg@10": value,
                "best_epochs": epochs,
                "seconds": time.perf_counter() - started,
            }
        )
        self.log.write_text(json.dumps(self.records, indent=2))
        return value

    def objective(self, space: dict):
        """The Optuna objective over `space`; with one seed it reports each epoch, so the pruner can stop it."""

        def objective(trial: optuna.Trial) -> float:
            def report(row: dict) -> None:
                trial.report(row["ndcg@10"], row["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {row['epoch']}: valid NDCG@10 {row['ndcg@10']:.4f}")

            return self.run(f"optuna-{trial.number}", suggest(trial, space), report if len(self.seeds) == 1 else None)

        return objective


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, TrainingRecipe]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(default_recipe_path()), help="YAML recipe the trials start from")
    parser.add_argument("--space", help="YAML search space (see above); without it only --trials run")
    parser.add_argument("--trials", help="YAML list of fixed settings, run first")
    parser.add_argument("--n_trials", type=int, default=0, help="trials of the sampler after the fixed ones")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds each trial trains (mean scored)")
    parser.add_argument("--study_name", default="missrec", help="Optuna study name")
    parser.add_argument("--storage", help="Optuna storage URL (e.g. sqlite:///runs/tune/study.db) to resume")
    parser.add_argument("--sampler_seed", type=int, default=0, help="seed of the TPE sampler")
    options, overrides = parser.parse_known_args(argv)
    args = load_recipe(options.config, overrides)
    if not options.space and not options.trials:
        parser.error("give --space (a search) and/or --trials (fixed settings)")
    return options, args


def markdown(records: list[dict]) -> str:
    """The trials as a markdown table, best mean validation NDCG@10 first."""
    lines = ["| trial | settings | valid NDCG@10 (mean) | per seed | best epochs |", "|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: -r["mean_valid_ndcg@10"]):
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "(the recipe)"
        per_seed = " / ".join(f"{s:.4f}" for s in r["valid_ndcg@10"])
        lines.append(f"| {r['trial']} | {settings} | {r['mean_valid_ndcg@10']:.4f} | {per_seed} | {r['best_epochs']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    options, args = parse_args(argv)
    if optuna is None:
        raise SystemExit('tune.py needs Optuna: pip install -e ".[tune]"')
    space = yaml.safe_load(Path(options.space).read_text()) if options.space else {}
    fixed = yaml.safe_load(Path(options.trials).read_text()) if options.trials else []
    if not isinstance(space, dict) or not isinstance(fixed, list):
        raise ValueError("--space is a mapping of keys to distributions, --trials a list of settings")
    for settings in fixed:  # fail before training, not at the trial
        apply_settings(args, settings or {})
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    runner = TrialRunner(args, options.seeds, output / "trials.json")
    for number, settings in enumerate(fixed):
        runner.run(f"fixed-{number}", settings or {})
    if options.n_trials:
        study = optuna.create_study(
            study_name=options.study_name,
            storage=options.storage,
            load_if_exists=options.storage is not None,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=options.sampler_seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=5),
        )
        study.optimize(runner.objective(space), n_trials=options.n_trials)
    print(markdown(runner.records))
    print(f"\ntrials written to {output / 'trials.json'}")
    return runner.records


if __name__ == "__main__":
    main()
