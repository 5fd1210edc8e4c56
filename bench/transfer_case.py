"""The `real-transfer` case of `bench_train.py`: does pre-training on real domains help fine-tuning on others?

1. Pre-training: `configuration/recipes/pretrain-text-domains.yaml` (Beauty + Games + Yelp, MiniLM text, the
   recipe's losses and CPU bound; its records were made with the paper's losses, before the recipe changed), once,
   into `bench/results/runs/pretrain-text-domains/` (reused when there).
2. Targets, neither in the pre-training mix:
   - `Scientific`: the shared Amazon Scientific folder with its text re-encoded by the same sentence encoder from
     `Scientific.text` and its CLIP image features as given (text + image: the text-only model gets an image
     adaptor, freshly initialised);
   - `MovieLens100K`: the shared atomic files (text only), trained on a seeded sample of its training examples
     (`TARGETS[...]["max_train_examples"]`), since its 97k long-history examples make a full epoch cost minutes.
3. Per target, id mode (inductive, transductive) and seed: MISSRec from scratch (`missrec-base`) and the pre-trained
   model fine-tuned `frozen`, `lora` and `full`, all under one budget (`BUDGET`: the same epoch cap and early-stopping
   patience, Adam 1e-3, batch 512), each a `train.py` run (`common.train_run`) into
   `runs/real-transfer/<target>/<variant>-<mode>-seed<N>/`. A run whose folder holds `bench_run.json` is not
   trained again (the case resumes where it stopped).
4. Test metrics (official protocol) per run, and on the test users whose target is a cold item (at most
   `COLD_MAX_TRAIN_TARGETS` occurrences as a training target), from the saved model.

Summary rows: mean over seeds with the standard error, and the paired difference to scratch (mean of the per-seed
differences, with its standard error).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import mean_and_error, plus_minus, recipe_flags, train_run
from modeling_missrec.pipelines.training.checkpointing import trained_epochs

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RECIPES = REPO / "configuration" / "recipes"
RUNS = REPO / "bench" / "results" / "runs"
PRETRAIN_RECIPE = RECIPES / "pretrain-text-domains.yaml"
PRETRAINED = RUNS / "pretrain-text-domains"
REENCODED_SCIENTIFIC = REPO / "bench" / "results" / "data" / "scientific-minilm"
TARGETS = {
    "Scientific": {"domain": "Scientific", "data_dir": str(REENCODED_SCIENTIFIC)},
    "MovieLens100K": {
        "domain": "MovieLens100K",
        "data_dir": str(SHARED / "text-domains" / "MovieLens100K"),
        "source": "atomic",
        "max_train_examples": 5000,
    },
}
VARIANTS = ("scratch", "frozen", "lora", "full")
ID_MODES = ("inductive", "transductive")
BUDGET = {"epochs": 8, "early_stopping_patience": 3, "batch_size": 512, "learning_rate": 0.001}
COLD_MAX_TRAIN_TARGETS = 4
METRICS = ("hr@10", "ndcg@10", "ndcg@50")


def run_folder(target: str, variant: str, mode: str, seed: int) -> Path:
    return RUNS / "real-transfer" / target / f"{variant}-{mode}-seed{seed}"


def run_arguments(target: str, variant: str, mode: str, seed: int, pretrained: Path) -> list[str]:
    """The `train.py` arguments of one run (the fine-tuning recipe of Scientific, the target's data, the budget)."""
    argv = ["--config", str(RECIPES / "scientific-paper.yaml"), *recipe_flags(TARGETS[target]), *recipe_flags(BUDGET)]
    argv += ["--id_mode", mode, "--seed", str(seed), "--baselines", "[]"]
    argv += ["--output_dir", str(run_folder(target, variant, mode, seed))]
    if variant != "scratch":
        argv += ["--pretrained", str(pretrained), "--strategy", variant]
    return argv


def ensure_inputs(pretrained: Path) -> dict:
    """Pre-train (unless `pretrained` holds a model) and write the re-encoded Scientific folder (unless there)."""
    from modeling_missrec.pipelines.data.text_reencoding import reencode_text_features

    report = {}
    if not (pretrained / "config.json").is_file():
        started = time.perf_counter()
        train_run(["--config", str(PRETRAIN_RECIPE), "--output_dir", str(pretrained), "--overwrite_output_dir=true"])
        report["pretraining_wall_seconds"] = time.perf_counter() - started
    metrics = json.loads((pretrained / "metrics.json").read_text())
    report["pretraining"] = {
        "recipe": metrics["recipe"],
        "build": metrics.get("build"),
        "epochs": metrics["epochs"],
        "test": metrics["test"],
        "popularity_test": metrics["popularity_test"],
    }
    if not (REENCODED_SCIENTIFIC / "Scientific.feature_widths.json").is_file():  # written last; older copies lack it
        reencode_text_features(SHARED / "amazon-scientific-mm", "Scientific", REENCODED_SCIENTIFIC)
    return report


def cold_rows(domain, max_train_targets: int) -> np.ndarray:
    """Test rows whose target occurs at most `max_train_targets` times as a training target."""
    counts = np.bincount(np.asarray(domain.sequences["train"]["target"]), minlength=domain.num_items + 1)
    return np.flatnonzero(counts[np.asarray(domain.sequences["test"]["target"])] <= max_train_targets)


def cold_metrics(argv: list[str], adapter: bool, pretrained: Path, protocols: tuple[str, ...] = ("official",)) -> dict:
    """Test metrics (`METRICS`, per protocol) of the model a run saved, on its cold-target test users: `{"users": n,
    protocol: {...}}` (users only when there are none). `adapter`: the run saved a LoRA adapter on `pretrained`."""
    from modeling_missrec.configuration import parse_recipe_args
    from modeling_missrec.pipelines.data import SequenceCollator
    from modeling_missrec.pipelines.evaluation import evaluate_ranking
    from modeling_missrec.pipelines.training import load_training_data

    from modeling_missrec import MISSRecForSequentialRecommendation, load_missrec_adapter

    args = parse_recipe_args(argv)
    domain = load_training_data(args)
    rows = cold_rows(domain, COLD_MAX_TRAIN_TARGETS)
    if len(rows) == 0:  # every test target is seen often enough in this training sample
        return {"users": 0}
    if adapter:
        model = MISSRecForSequentialRecommendation.from_base(load_missrec_adapter(str(pretrained), args.output_dir))
    else:
        model = MISSRecForSequentialRecommendation.from_pretrained(args.output_dir)
    test = SequenceCollator(domain.sequences["test"].select(rows), model.config.max_seq_length)
    metrics = evaluate_ranking(model.eval(), test, batch_size=512, protocols=protocols)
    return {"users": len(rows), **{p: {k: metrics[p][k] for k in METRICS} for p in protocols}}


def run_real_transfer(seeds: list[int], pretrained: Path = PRETRAINED) -> dict:
    """Worker: every run of the case (resuming from finished ones), then its summary."""
    started = time.perf_counter()
    out = ensure_inputs(pretrained)
    runs = []
    for target in TARGETS:
        for mode in ID_MODES:
            for variant in VARIANTS:
                for seed in seeds:
                    argv = run_arguments(target, variant, mode, seed, pretrained)
                    folder = run_folder(target, variant, mode, seed)
                    result_file = folder / "bench_run.json"
                    if not result_file.is_file():
                        print(f"real-transfer: {target} {mode} {variant} seed {seed}", file=sys.stderr, flush=True)
                        metrics = train_run(argv)
                        epochs = trained_epochs(metrics["epochs"])
                        cold = cold_metrics(argv, variant == "lora", pretrained)
                        record = {
                            "target": target, "mode": mode, "variant": variant, "seed": seed,
                            "test": {k: metrics["test"][k] for k in METRICS},
                            "popularity_test": {k: metrics["popularity_test"][k] for k in METRICS},
                            "cold_test": {"users": cold["users"], **cold.get("official", {})},
                            "best_epoch": max(metrics["epochs"], key=lambda e: e["ndcg@10"])["epoch"],
                            "epochs_run": len(epochs),
                            "train_seconds": statistics.median(e["train_seconds"] for e in epochs),
                        }  # fmt: skip
                        result_file.write_text(json.dumps(record, indent=2))
                    runs.append(json.loads(result_file.read_text()))
    return out | {"case": "real-transfer", "wall_seconds": time.perf_counter() - started, "runs": runs,
                  "summary": summarise(runs), "budget": BUDGET, "targets": TARGETS}  # fmt: skip


def summarise(runs: list[dict]) -> list[dict]:
    """Per target, mode and variant: mean ± standard error over seeds, and the paired difference to scratch."""
    by_key = {}
    for run in runs:
        by_key.setdefault((run["target"], run["mode"], run["variant"]), {})[run["seed"]] = run
    rows = []
    for (target, mode, variant), per_seed in by_key.items():
        scratch = by_key.get((target, mode, "scratch"), {})
        seeds = sorted(per_seed)
        row = {"target": target, "mode": mode, "variant": variant, "seeds": seeds}
        for split in ("test", "cold_test"):
            for metric in METRICS:
                row[f"{split}/{metric}"] = mean_and_error([per_seed[s][split][metric] for s in seeds])
        paired = [s for s in seeds if s in scratch]
        if variant != "scratch" and paired:
            for split in ("test", "cold_test"):
                differences = [per_seed[s][split]["ndcg@10"] - scratch[s][split]["ndcg@10"] for s in paired]
                row[f"{split}/ndcg@10 vs scratch"] = mean_and_error(differences)
        row["cold_users"] = per_seed[seeds[0]]["cold_test"]["users"]
        row["popularity/ndcg@10"] = statistics.mean(per_seed[s]["popularity_test"]["ndcg@10"] for s in seeds)
        row["best_epoch"] = statistics.mean(per_seed[s]["best_epoch"] for s in seeds)
        row["train_seconds"] = statistics.median(per_seed[s]["train_seconds"] for s in seeds)
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    """The transfer table: one row per target, id mode and variant."""
    lines = [
        "| target | id mode | model | test NDCG@10 | test HR@10 | Δ NDCG@10 vs scratch (paired) | cold-target "
        "NDCG@10 | Δ cold vs scratch | best epoch | s / epoch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"scratch": "from scratch", "frozen": "pre-trained, frozen", "lora": "pre-trained, lora"}
    names["full"] = "pre-trained, full"
    summary = summarise(result["runs"])  # from the runs, so `--report` renders an earlier JSON with this code
    for row in summary:
        lines.append(
            f"| {row['target']} | {row['mode']} | {names[row['variant']]} | {plus_minus(row['test/ndcg@10'])} | "
            f"{plus_minus(row['test/hr@10'])} | {plus_minus(row.get('test/ndcg@10 vs scratch'), True)} | "
            f"{plus_minus(row['cold_test/ndcg@10'])} | {plus_minus(row.get('cold_test/ndcg@10 vs scratch'), True)} | "
            f"{row['best_epoch']:.1f} | {row['train_seconds']:.1f} |"
        )
    populars = {row["target"]: (row["popularity/ndcg@10"], row["cold_users"]) for row in summary}
    notes = [
        f"{t}: popularity test NDCG@10 {p:.4f} (mean over the seeds' training samples); {n} cold-target test users "
        f"(target seen at most {COLD_MAX_TRAIN_TARGETS} times as a training target, in the first seed's sample)"
        for t, (p, n) in populars.items()
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes)
