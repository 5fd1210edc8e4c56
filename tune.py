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
`<output_dir>/trials.json` as it finishes (settings, per-seed and mean validation NDCG@10, epochs, seconds, each
seed's validation curve; a pruned trial is in the Optuna study only); a study with `--storage` (an Optuna database
URL) can be resumed or inspected with Optuna's tools. Any recipe key is overridden as in `train.py` (`--key value`),
for every trial.

Long trials (hours each on a CPU) survive a kill: with `--checkpointing_steps 20 --resume_from_checkpoint
latest-if-any`, each trial's seeds checkpoint into `<output_dir>/trials/<trial>-<hash of what it trains>/seed<N>/`,
and the same command again skips the fixed trials `trials.json` records (the same settings, recipe and model) and
continues the fixed trial that was running from its checkpoint (a sampled trial starts over, under a new number).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from modeling_missrec.configuration import (
    DEBUG_HELP,
    TrainingRecipe,
    default_recipe_path,
    errors_in_one_line,
    load_recipe,
)
from modeling_missrec.pipelines.training import tuning


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
    parser.add_argument(
        "--model",
        choices=tuning.MODELS,
        default="missrec",
        help="what the trials train: MISSRec or the SASRec baseline",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    options, overrides = parser.parse_known_args(argv)
    args = load_recipe(options.config, overrides)
    if not options.space and not options.trials:
        parser.error("give --space (a search) and/or --trials (fixed settings)")
    return options, args


def main(argv: list[str] | None = None) -> list[dict]:
    with errors_in_one_line("tune.py", argv):
        return run(argv)


def run(argv: list[str] | None) -> list[dict]:
    """Parse the command line, run the trials, print their table."""
    options, args = parse_args(argv)
    if tuning.optuna is None:
        raise SystemExit('tune.py needs Optuna: pip install -e ".[tune]"')
    space = yaml.safe_load(Path(options.space).read_text()) if options.space else {}
    fixed = yaml.safe_load(Path(options.trials).read_text()) if options.trials else []
    if not isinstance(space, dict) or not isinstance(fixed, list):
        raise ValueError("--space is a mapping of keys to distributions, --trials a list of settings")
    records = tuning.run_study(
        args,
        options.seeds,
        fixed,
        space,
        n_trials=options.n_trials,
        study_name=options.study_name,
        storage=options.storage,
        sampler_seed=options.sampler_seed,
        model=options.model,
    )
    print(tuning.markdown(records))
    print(f"\ntrials written to {Path(args.output_dir) / 'trials.json'}")
    return records


if __name__ == "__main__":
    main()
