"""The `transfer-profile` case of `bench_train.py` (issue 34): where does a pre-trained base pay, zero-shot, with a
few users or with all of them, and would more pre-training change that?

1. The base: `configuration/recipes/pretrain-text-domains.yaml` on all the data of every real text domain but the
   held-out one (`BASE_DOMAINS`), once, into `bench/results/runs/transfer-profile/base/` (reused when there).
   Scientific is not in the mix either. Its sanity bar: the base on each of its own domains, nothing trained
   (ranked within that domain's catalogue, on every test user, as the full-data text-domain case evaluates),
   against that case's models trained from scratch on the domain alone (`id_mode: auto`;
   `accuracy_case.FULL_DATA_RUNS`) and the sampled text-domain table's (`accuracy_case.RUNS`); its records go to
   `RUNS/sanity/<domain>/zero-shot/zero-shot-seed0/`.
2. Targets (`TARGETS`): Scientific, with its text re-encoded by the same sentence encoder and its CLIP images as
   given (`scientific.yaml`; fine-tuning trains an image adaptor for them, zero-shot leaves them out), and
   MovieLens100K (`text-domain.yaml`), each with its shipped recipe: the tuned settings, so that pre-trained and
   scratch models differ only in the pre-training.
3. Per target:
   - zero-shot: the base on the target's catalogue, nothing trained (`epochs: 0`), beside popularity and the
     content-kNN baseline (one run: nothing in it depends on a seed);
   - per share of the training users (`FRACTIONS`, a seeded user sample: the same users for every arm of a seed)
     and seed: MISSRec from scratch and the base fine-tuned with `lora` and `full`, under the same budget
     (`EPOCHS`: smaller samples get more, cheaper epochs; `PATIENCE` epochs without a validation gain stop a run).
     Below 100% every arm is inductive (a few users teach item ids little); at 100% the target recipe's
     `id_mode: auto` picks (with `--id_mode_from_first_seed`, on the first seed: later seeds train each 100% cell
     in the mode picked for it there, alone, at half the cost).
   The runs go cheapest first (`run_plan`): the 100% cells, one seed at a time, come last.
   Each run is a `train.py` run (`common.train_run`) into `RUNS/<target>/<fraction>/<arm>-seed<N>/`; its numbers go
   to `bench_run.json` there (committed), and a run whose file exists is not trained again unless the case now plans
   it with other training settings (`training_settings`: a changed epoch cap or rate retrains it). After each run it
   records, the case writes the shipped base's card (`SHIPPED_BASE`) again with the table of the records so far
   (`refresh_shipped_card`): commit the record and the card together.
   - the budget curve: the base as it was after `BUDGET_EPOCHS` of its `BASE_EPOCHS` (`save_epochs`) fine-tuned
     with `lora` on `BUDGET_FRACTION` of the users, against that share's scratch runs: would more pre-training
     change the answer?
4. Test metrics under both protocols (the official one, and the history excluded as the pipeline serves), and on
   the cold-target test users (target at most `transfer_case.COLD_MAX_TRAIN_TARGETS` times a training target in the
   run's sample).

The table: mean ± standard error over seeds, and each pre-trained arm's gain over scratch paired per seed, with
the issue's targets (zero-shot ≥ 1.2 × content-kNN; ≤ 5% of the users: ≥ +20% over scratch; 100%: no loss).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from accuracy_case import FULL_DATA_RUNS, PROTOCOL_KEYS, TEXT_DOMAINS, TUNED, id_mode_auto_runs
from accuracy_case import RUNS as SAMPLED_RUNS
from common import RESUMABLE, mean_and_error, plus_minus, train_run
from modeling_missrec.configuration.recipe import SNAPSHOT_PREFIX
from modeling_missrec.pipelines.training.checkpointing import trained_epochs
from transfer_case import METRICS, RECIPES, REENCODED_SCIENTIFIC, SHARED, cold_metrics

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "bench" / "results" / "runs" / "transfer-profile"
BASE_RECIPE = RECIPES / "pretrain-text-domains.yaml"
BASE_DOMAINS = ("Beauty", "Games", "Yelp", "LastFM")  # MovieLens100K held out
SHIPPED_BASE_ID = "pretrained/missrec-base"  # the base exported into the repository, as its card loads it
SHIPPED_BASE = REPO / SHIPPED_BASE_ID
TARGETS = {
    "Scientific": ["--config", str(RECIPES / "scientific.yaml"), "--data_dir", str(REENCODED_SCIENTIFIC)],
    "MovieLens100K": [
        "--config", str(RECIPES / "text-domain.yaml"), "--domain", "MovieLens100K",
        "--data_dir", str(SHARED / "text-domains" / "MovieLens100K"),
    ],
}  # fmt: skip
# The sanity bar's runs: each base domain with the text-domain recipe, as the full-data text-domain case runs it.
SANITY = {
    domain: [
        "--config",
        str(RECIPES / "text-domain.yaml"),
        "--domain",
        domain,
        "--data_dir",
        str(TEXT_DOMAINS / domain),
    ]
    for domain in BASE_DOMAINS
}
# The base's budget: every training example of `BASE_DOMAINS` (~710k; the recipe alone samples 200k), this many
# epochs (validation on the recipe's 10,000-user sample keeps the best), and the models after `BUDGET_EPOCHS` kept
# for the budget curve (fine-tuned with `lora` on `BUDGET_FRACTION` of the users).
BASE_EPOCHS, BUDGET_EPOCHS, BUDGET_FRACTION = 10, (1, 3, 10), 0.05
FRACTIONS = (0.01, 0.05, 0.25, 1.0)
ARMS = ("scratch", "lora", "full")
EPOCHS = {0.01: 40, 0.05: 30, 0.25: 20, 1.0: 30}  # 100%: the target recipes' own 30, fair to scratch
PATIENCE = 5
# Below 100% of the users, each arm's learning rate as chosen on the target's validation (seed 0, 5% of the users,
# 1e-3 / 3e-4 / 1e-4: `bench/results/levers/<target>-<arm>-learning-rate-trials.json`): "scratch" sets
# `learning_rate`, "pretrained" `pretrained_learning_rate` (lora and full alike). A target or kind not named keeps
# its recipe's (MovieLens100K's pre-trained arms chose `text-domain.yaml`'s 1e-3).
FEW_SHOT_LEARNING_RATES = {"Scientific": {"scratch": 3e-4, "pretrained": 3e-4}, "MovieLens100K": {"scratch": 3e-4}}
FEW_SHOT_GAIN, ZERO_SHOT_RATIO = 0.20, 1.2
ARMS_ORDER = {"zero-shot": 0, **{arm: i + 1 for i, arm in enumerate(ARMS)}}


def arm_order(arm: str) -> tuple[int, int]:
    """Table order: zero-shot, the arms, then the budget curve's by pre-training epochs."""
    strategy, _, budget = arm.partition("@")
    return ARMS_ORDER[strategy], int(budget.removeprefix(SNAPSHOT_PREFIX) or 0)


def run_arguments(
    target_words: list[str],
    fraction: float | None,
    arm: str,
    seed: int,
    base: Path,
    folder: Path,
    epochs: dict,
    id_mode: str | None = None,
    learning_rates: dict[str, float] | None = None,
) -> list[str]:
    """The `train.py` words of one run: `fraction` None is the zero-shot run (with its baselines). `id_mode`, at
    100%: train in that mode alone instead of the recipe's `auto`. `learning_rates`, below 100%: the target's
    `FEW_SHOT_LEARNING_RATES`."""
    argv = [*target_words, "--seed", str(seed), "--output_dir", str(folder), "--overwrite_output_dir=true"]
    if fraction is None:
        return [*argv, "--pretrained", str(base), "--epochs", "0", "--id_mode", "inductive", "--strategy", "full",
                "--baselines", "[content-knn]"]  # fmt: skip
    argv += ["--train_user_fraction", str(fraction), "--epochs", str(epochs[fraction])]
    argv += ["--early_stopping_patience", str(PATIENCE), "--baselines", "[]"]
    if fraction < 1 or id_mode is not None:
        argv += ["--id_mode", id_mode or "inductive"]
    if arm != "scratch":  # `lora@epoch-3`: lora on the base as it was after 3 epochs
        strategy, _, budget = arm.partition("@")
        argv += ["--pretrained", str(base / budget if budget else base), "--strategy", strategy]
    kind, key = ("scratch", "--learning_rate") if arm == "scratch" else ("pretrained", "--pretrained_learning_rate")
    if fraction < 1 and kind in (learning_rates or {}):
        argv += [key, str(learning_rates[kind])]
    return argv


# `train.py` words that say where a run's files are, not how it trains: a checkout elsewhere keeps its records.
LOCATION_WORDS = ("--config", "--data_dir", "--output_dir", "--pretrained")


def training_settings(argv: list[str]) -> dict[str, str]:
    """The `--key value` (or `--key=value`) words of a `train.py` argv that say how the run trains: all but
    `LOCATION_WORDS`. A record whose settings differ from the ones the case now plans is out of date."""
    settings, words = {}, iter(argv)
    for word in words:
        key, equals, value = word.partition("=")
        settings[key] = value if equals else next(words, "")
    return {key: value for key, value in settings.items() if key not in LOCATION_WORDS}


def current_record(folder: Path, argv: list[str]) -> dict | None:
    """The record in `folder` if it was trained with the training settings of `argv`, else None."""
    record_file = folder / "bench_run.json"
    if not record_file.is_file():
        return None
    record = json.loads(record_file.read_text())
    return record if training_settings(record.get("argv", [])) == training_settings(argv) else None


def record_of(results: dict, prefix: str = "") -> dict:
    """Both protocols' test metrics of one model of a run (`prefix`: the baseline's key prefix in metrics.json)."""
    return {p: {k: results[f"{prefix}{key}"][k] for k in METRICS} for p, key in PROTOCOL_KEYS.items()}


def run_folder(root: Path, target: str, fraction: float | None, arm: str, seed: int) -> Path:
    """Where one run of the case trains and keeps its record (`fraction` None: the zero-shot run)."""
    return root / target / ("zero-shot" if fraction is None else f"{fraction:g}") / f"{arm}-seed{seed}"


def planned_run(
    target: str,
    fraction: float | None,
    arm: str,
    seed: int,
    base: Path,
    root: Path,
    words: list[str],
    epochs: dict,
    mode_of: dict | None = None,
) -> tuple[Path, list[str]]:
    """Where one run of the case goes and its `train.py` words (see [`one_run`])."""
    folder = run_folder(root, target, fraction, arm, seed)
    id_mode = None if mode_of is None else mode_of["chosen_id_mode"]
    rates = FEW_SHOT_LEARNING_RATES.get(target)
    return folder, run_arguments(words, fraction, arm, seed, base, folder, epochs, id_mode, rates)


def one_run(
    target: str,
    fraction: float | None,
    arm: str,
    seed: int,
    base: Path,
    root: Path,
    words: list[str],
    epochs: dict,
    mode_of: dict | None = None,
) -> dict:
    """The record of one run (`epochs`: the cap per share of users), trained unless recorded with the same training
    settings. `mode_of`, at 100%: the first seed's record of the same cell, whose chosen id mode this run then trains
    in alone."""
    folder, argv = planned_run(target, fraction, arm, seed, base, root, words, epochs, mode_of)
    recorded = current_record(folder, argv)
    if recorded is not None:
        return recorded
    if (folder / "bench_run.json").is_file():
        print(f"transfer-profile: {folder} was recorded with other settings; training it again", file=sys.stderr)
    print(f"transfer-profile: {target} {fraction or 'zero-shot'} {arm} seed {seed}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    results = train_run(argv)
    record = {"target": target, "fraction": fraction, "arm": arm, "seed": seed, "argv": argv}
    record |= {"wall_seconds": time.perf_counter() - started, "id_mode": results["recipe"]["id_mode"]}
    record["chosen_id_mode"] = results["id_mode"]  # what `auto` picked (the recipe's mode otherwise)
    if mode_of is not None:
        record["id_mode_chosen_on_seed"] = mode_of["seed"]
    record |= {"missrec": record_of(results), "popularity": record_of(results, "popularity_")}
    record["cold"] = cold_metrics(argv, arm == "lora", base, tuple(PROTOCOL_KEYS))
    record["build"] = {key: results["build"][key] for key in ("train_users",) if key in results["build"]}
    if "epochs" in results and fraction is not None:
        record["best_epoch"] = max(results["epochs"], key=lambda e: e["ndcg@10"])["epoch"]
        record["epochs_run"] = len(trained_epochs(results["epochs"]))
    if "content_knn_test" in results:
        record["content_knn"] = record_of(results, "content_knn_")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_run.json").write_text(json.dumps(record, indent=2))
    return record


def ensure_base(base: Path, words: list[str], shipped: Path | None = SHIPPED_BASE) -> Path:
    """The base the case fine-tunes: its pre-training run `base` (`train.py` `words`; a pre-training killed with its
    session continues where it stopped), or, when that run never started here and `shipped` holds the base as the
    repository ships it (`hub_cards.export base` of that run), the shipped one: the pre-training is not run again
    for a checkout that lost the run's folder. Only the run's folder has the budget curve's snapshots."""
    started = (base / "checkpoints").is_dir() or (base / "config.json").is_file()
    if not started and shipped is not None and (shipped / "config.json").is_file():
        return shipped
    if not (base / "config.json").is_file():
        train_run([*words, "--output_dir", str(base), *RESUMABLE])
    return base


def refresh_shipped_card(shipped: Path | None, root: Path = RUNS, model_id: str = SHIPPED_BASE_ID) -> None:
    """Put the table of the runs recorded under `root` so far on the `shipped` base's card, so that a new record
    and the card it changes land together (the card's other parts and the weights stay as exported)."""
    from modeling_missrec.hub_cards.export import write_base_card

    if shipped is not None and (shipped / "config.json").is_file():
        write_base_card(shipped, markdown(recorded_transfer_profile(root, shipped)), model_id=model_id)


def base_record(base: Path) -> dict:
    """What the base's pre-training run recorded: its recipe, data and epochs."""
    metrics = json.loads((base / "metrics.json").read_text())
    return {"recipe": metrics["recipe"], "build": metrics.get("build"), "epochs": metrics["epochs"]}


def run_transfer_profile(
    seeds: list[int],
    targets: dict[str, list[str]] | None = None,
    fractions: tuple[float, ...] = FRACTIONS,
    root: Path = RUNS,
    base_words: list[str] | None = None,
    epochs: dict[float, int] | None = None,
    budget_epochs: tuple[int, ...] = BUDGET_EPOCHS,
    budget_fraction: float = BUDGET_FRACTION,
    sanity: dict[str, list[str]] | None = None,
    id_mode_from_first_seed: bool = False,
    shipped: Path | None = SHIPPED_BASE,
) -> dict:
    """Worker: the base, then every run of the case (resuming from recorded ones). `targets` maps a name to its
    `train.py` words (default `TARGETS`), `base_words` are the base's (default: `BASE_RECIPE` on `BASE_DOMAINS` for
    `BASE_EPOCHS`, keeping the models after `BUDGET_EPOCHS`), `epochs` the epoch cap per share of users (default
    `EPOCHS`); the budget curve fine-tunes the base after each of `budget_epochs` on `budget_fraction` of the users
    (a share of `fractions`, whose scratch runs it is compared with); `sanity` maps each base domain to its
    `train.py` words for the sanity bar (default `SANITY`). With `id_mode_from_first_seed`, the 100% cells of the
    seeds after the first train only in the id mode `auto` picked for the same cell on the first seed. `shipped`: the
    exported base that stands in for a pre-training run this checkout never started ([`ensure_base`])."""
    from modeling_missrec.pipelines.data.text_reencoding import reencode_text_features

    started = time.perf_counter()
    targets = TARGETS if targets is None else targets
    base = root / "base"
    if base_words is None:
        base_words = ["--config", str(BASE_RECIPE), "--domain", json.dumps(list(BASE_DOMAINS))]
        base_words += ["--max_train_examples", "null", "--epochs", str(BASE_EPOCHS)]
        base_words += ["--save_epochs", json.dumps(list(BUDGET_EPOCHS))]
    base = ensure_base(base, base_words, shipped)
    report = {"base": base_record(base)}
    sanity = SANITY if sanity is None else sanity
    report["sanity"] = [
        one_run(domain, None, "zero-shot", 0, base, root / "sanity", words, {}) | scratch_references(domain)
        for domain, words in sanity.items()
    ]
    if "Scientific" in targets and not (REENCODED_SCIENTIFIC / "Scientific.feature_widths.json").is_file():
        reencode_text_features(SHARED / "amazon-scientific-mm", "Scientific", REENCODED_SCIENTIFIC)
    epochs = EPOCHS if epochs is None else epochs
    plan = run_plan(list(targets), fractions, seeds, budget_epochs, budget_fraction)
    runs: list[dict] = []
    for target, fraction, arm, seed in plan:
        mode_of = None  # at 100% with `id_mode_from_first_seed`, a later seed trains in what `auto` chose on the first
        if id_mode_from_first_seed and fraction is not None and fraction >= 1 and seed != seeds[0]:
            cell = (target, fraction, arm, seeds[0])
            mode_of = next(r for r in runs if (r["target"], r["fraction"], r["arm"], r["seed"]) == cell)
            mode_of = mode_of if mode_of.get("id_mode") == "auto" and "chosen_id_mode" in mode_of else None
        planned = (target, fraction, arm, seed, base, root, targets[target], epochs, mode_of)
        recorded = current_record(*planned_run(*planned)) is not None
        budget = arm.partition("@")[2]
        if budget and not (base / budget).is_dir() and not recorded:
            print(f"transfer-profile: {arm} skipped: {base} has no snapshot {budget}", file=sys.stderr, flush=True)
            continue
        runs.append(one_run(*planned))
        if not recorded:
            refresh_shipped_card(shipped, root)
    return report | {"case": "transfer-profile", "wall_seconds": time.perf_counter() - started, "runs": runs}


def run_plan(
    targets: list[str],
    fractions: tuple[float, ...],
    seeds: list[int],
    budget_epochs: tuple[int, ...],
    budget_fraction: float,
) -> list[tuple[str, float | None, str, int]]:
    """(target, fraction, arm, seed) of every run, cheapest first, so that a case stopped by its session has filled
    whole rows of the table: each target's zero-shot run, the shares below 100% (smallest first), the budget curve,
    then the 100% cells one seed at a time (each costs about as much as every smaller share together: read whatever
    seeds are recorded)."""
    plan = [(target, None, "zero-shot", 0) for target in targets]
    for fraction in sorted(f for f in fractions if f < 1):
        plan += [(target, fraction, arm, seed) for target in targets for seed in seeds for arm in ARMS]
    budget = [f"lora@{SNAPSHOT_PREFIX}{epochs}" for epochs in budget_epochs]  # beside that share's scratch runs
    plan += [(target, budget_fraction, arm, seed) for target in targets for seed in seeds for arm in budget]
    full = [fraction for fraction in fractions if fraction >= 1]
    plan += [(target, f, arm, seed) for seed in seeds for f in full for target in targets for arm in ARMS]
    return plan


def recorded_transfer_profile(root: Path = RUNS, shipped: Path | None = SHIPPED_BASE) -> dict:
    """The case's result from the runs recorded under `root` so far, nothing trained (`--recorded`): the base's
    record once its pre-training has ended (from its run's folder, else from the `shipped` export), the sanity
    bar's runs and every target's runs."""
    report = {"case": "transfer-profile", "wall_seconds": 0.0}
    for base in (root / "base", shipped):
        if base is not None and (base / "metrics.json").is_file():
            report["base"] = base_record(base)
            break
    sanity = [json.loads(f.read_text()) for f in sorted(root.glob("sanity/*/zero-shot/*/bench_run.json"))]
    sanity.sort(key=lambda run: (BASE_DOMAINS + (run["target"],)).index(run["target"]))  # the order the case runs
    report["sanity"] = [run | scratch_references(run["target"]) for run in sanity]
    return report | {"runs": [json.loads(f.read_text()) for f in sorted(root.glob("*/*/*/bench_run.json"))]}


def summarise(runs: list[dict]) -> list[dict]:
    """Per target, share of users and arm: mean ± standard error over seeds per protocol (all users and cold
    targets), and the pre-trained arms' relative gain over scratch, paired per seed."""
    groups: dict[tuple, dict[int, dict]] = {}
    for run in runs:
        groups.setdefault((run["target"], run["fraction"], run["arm"]), {})[run["seed"]] = run
    rows = []
    for (target, fraction, arm), per_seed in groups.items():
        seeds = sorted(per_seed)
        row = {"target": target, "fraction": fraction, "arm": arm, "seeds": seeds}
        row["id_modes"] = sorted({shown_id_mode(per_seed[s]) for s in seeds})
        scratch = groups.get((target, fraction, "scratch"), {})
        paired = [s for s in seeds if s in scratch]
        for protocol in PROTOCOL_KEYS:
            ours = [per_seed[s]["missrec"][protocol]["ndcg@10"] for s in seeds]
            row[protocol] = mean_and_error(ours)
            cold = [per_seed[s]["cold"][protocol]["ndcg@10"] for s in seeds if per_seed[s]["cold"]["users"]]
            row[f"cold {protocol}"] = mean_and_error(cold) if cold else None
            row[f"popularity {protocol}"] = per_seed[seeds[0]]["popularity"][protocol]["ndcg@10"]
            if "content_knn" in per_seed[seeds[0]]:
                row[f"content-knn {protocol}"] = per_seed[seeds[0]]["content_knn"][protocol]["ndcg@10"]
            if arm not in ("scratch", "zero-shot") and paired:
                gains = [
                    per_seed[s]["missrec"][protocol]["ndcg@10"] / scratch[s]["missrec"][protocol]["ndcg@10"] - 1
                    for s in paired
                ]
                row[f"gain {protocol}"] = mean_and_error(gains)
        row["cold_users"] = per_seed[seeds[0]]["cold"]["users"]
        rows.append(row)
    return sorted(
        rows, key=lambda r: (r["target"], -1 if r["fraction"] is None else r["fraction"], arm_order(r["arm"]))
    )


def shown_id_mode(run: dict) -> str:
    """The id mode a run trained in, as the table names it: `auto: X` where `auto` picked X, on this seed or, for a
    later seed trained in X alone, on the first (`X (seed N's)`)."""
    chosen = run.get("chosen_id_mode", run["id_mode"])
    if "id_mode_chosen_on_seed" in run:
        return f"auto: {chosen} (seed {run['id_mode_chosen_on_seed']}'s)"
    return f"auto: {chosen}" if run["id_mode"] == "auto" else chosen


def verdict(row: dict, protocol: str) -> str:
    """The issue's target for a row under `protocol`, with pass / MISS ('' where no target applies)."""
    if row["arm"] == "zero-shot":
        knn = row.get(f"content-knn {protocol}")
        if knn is None:
            return ""
        ratio = row[protocol][0] / knn if knn else float("inf")
        return f"{ratio:.2f} × content-kNN (≥ {ZERO_SHOT_RATIO}): {'pass' if ratio >= ZERO_SHOT_RATIO else 'MISS'}"
    gain = row.get(f"gain {protocol}")
    if gain is None:
        return ""
    if row["fraction"] <= 0.05:
        return f"≥ +{100 * FEW_SHOT_GAIN:.0f}%: {'pass' if gain[0] >= FEW_SHOT_GAIN else 'MISS'}"
    if row["fraction"] == 1:
        return f"≥ scratch: {'pass' if gain[0] >= 0 else 'MISS'}"
    return ""


def markdown(result: dict) -> str:
    """The transfer profile: one row per target, share of users and arm; both protocols, the users' first."""
    lines = [
        "| target | users | model | id mode | seeds | history excluded: NDCG@10 | vs scratch (paired) | target | "
        "cold targets | official: NDCG@10 | vs scratch (paired) | target | cold targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = summarise(result["runs"])
    for row in rows:
        users = "zero-shot" if row["fraction"] is None else f"{100 * row['fraction']:g}%"
        cells = []
        for protocol in ("exclude_history", "official"):
            cells += [plus_minus(row[protocol]), plus_minus(row.get(f"gain {protocol}"), percent=True)]
            cells += [verdict(row, protocol), plus_minus(row[f"cold {protocol}"])]
        lines.append(
            f"| {row['target']} | {users} | {row['arm']} | {'/'.join(row['id_modes'])} | {len(row['seeds'])} | "
            + " | ".join(cells)
            + " |"
        )
    notes = []
    for row in rows:
        if row["arm"] == "zero-shot":
            knn = {p: row.get(f"content-knn {p}") for p in PROTOCOL_KEYS}
            notes.append(
                f"{row['target']}: popularity {row['popularity exclude_history']:.4f} / "
                f"{row['popularity official']:.4f}, content-kNN {knn['exclude_history'] or 0:.4f} / "
                f"{knn['official'] or 0:.4f} (history excluded / official); {row['cold_users']} cold-target test users"
            )
    table = "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes)
    if result.get("sanity"):
        table += "\n\nThe base on its own domains, nothing trained (the sanity bar):\n\n" + sanity_markdown(
            result["sanity"]
        )
    return table


def scratch_reference(domain: str, root: Path = FULL_DATA_RUNS) -> dict[str, tuple[float, float]]:
    """Per protocol, the test NDCG@10 (mean, standard error over seeds) of MISSRec trained from scratch on `domain`
    alone with the shipped recipe, as the full-data text-domain case recorded it, in the id mode `auto` picks; {}
    before it has run."""
    records = [json.loads(f.read_text()) for f in sorted(root.glob(f"{domain}/*/{TUNED}/seed*/bench_run.json"))]
    auto = id_mode_auto_runs(records)
    if not auto:
        return {}
    return {p: mean_and_error([run["missrec"][key]["ndcg@10"] for run in auto]) for p, key in PROTOCOL_KEYS.items()}


def scratch_references(domain: str) -> dict[str, dict[str, tuple[float, float]]]:
    """The sanity bar's two references on `domain` ([`scratch_reference`]): `scratch`, the full-data text-domain
    case's models, and `sampled_scratch`, the sampled text-domain table's (10,000 training examples, 3,000 test
    users: the table the bar was first stated against)."""
    return {"scratch": scratch_reference(domain), "sampled_scratch": scratch_reference(domain, SAMPLED_RUNS)}


def sanity_markdown(sanity: list[dict]) -> str:
    """The sanity bar: per base domain and protocol (the history excluded first), the base's test NDCG@10 with
    nothing trained beside the single-domain scratch models' of the full-data case (each run's `scratch`) and of
    the sampled table (`sampled_scratch`; [`scratch_references`]), and whether it reaches each."""
    references = "from scratch, full data | base / scratch | from scratch, 10k sample | base / sampled"
    lines = [
        f"| domain | history excluded: base | {references} | official: base | {references} |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in sanity:
        cells = []
        for protocol in PROTOCOL_KEYS:
            ours = run["missrec"][protocol]["ndcg@10"]
            cells.append(f"{ours:.4f}")
            for reference in ("scratch", "sampled_scratch"):
                theirs = run.get(reference, {}).get(protocol)
                ratio = "—" if not theirs else f"{ours / theirs[0]:.2f} ({'pass' if ours >= theirs[0] else 'MISS'})"
                cells += [plus_minus(theirs), ratio]
        lines.append(f"| {run['target']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
