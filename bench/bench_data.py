"""Benchmark of the data path: building domains with the `datasets` builder, and the training loader vs a model step.

Run from the repository root: `python bench/bench_data.py [--quick] [--output PATH]`. It prints a markdown table
and writes every number, with the machine's description, to JSON (default `bench/results/bench_data.json`).

Cases:
- `scientific`: the real Amazon Scientific domain from `../shared/data/amazon-scientific-mm` (MISSRec files),
  fine-tuning batches (512 histories, `missrec-base`, transductive, full-catalogue cross-entropy).
- `synthetic`: the demo generator at 100k items x 2 x 512 features and about 1M interactions, pre-training
  batches (4096 histories with item drop 0.2 and word drop 0.2 against an alternative text view, `missrec-base`,
  inductive, in-batch contrastive loss). The demo domain has no second text view, so the benchmark passes a
  row-shuffled copy of the text table: the loader's work (one gather per view) is the same.

What is measured, each build in a fresh subprocess with an empty `datasets` cache:
1. Build: wall-clock seconds of `load_domain(...)` (generation or file parsing, Arrow writing, both tables), and
   the peak resident memory above the process's baseline after imports (`/proc/self/clear_refs` + `VmHWM`).
2. Feature read: seconds to get the `[N, d]` feature matrices out of the items table (`catalogue_features`).
3. Loader: best seconds per batch of `SequenceCollator` on random rows (`--repeats`, default 20).
4. Model step: best of 3 timed forward + backward + Adam steps of the model on a batch from that loader
   (interests discovered first with the paper's interest ratio, 0.5 fine-tuning / 0.02 pre-training; not timed).
Target: loader batches/second >= 5x model steps/second (the loader is never the bottleneck).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import best_time, machine_info, memory_status, reset_peak_memory
from modeling_missrec.configuration.presets import load_preset
from modeling_missrec.pipelines.data.collator import SequenceCollator, catalogue_features
from modeling_missrec.pipelines.data.loading import domain_statistics, load_domain

from modeling_missrec import MISSRecModel

REPO = Path(__file__).resolve().parents[1]
SCIENTIFIC = REPO.parent / "shared" / "data" / "amazon-scientific-mm"
TARGET_LOADER_RATIO = 5.0
STEP_REPEATS = 3
CASES = {
    "scientific": {"batch_size": 512, "id_mode": "transductive", "pretraining": False, "interest_ratio": 0.5},
    "synthetic": {"batch_size": 4096, "id_mode": "inductive", "pretraining": True, "interest_ratio": 0.02},
}
QUICK_SYNTHETIC = {"demo_num_items": 10_000, "demo_num_users": 8_000}
FULL_SYNTHETIC = {"demo_num_items": 100_000, "demo_num_users": 77_000}


def build(case: str, cache_dir: str, quick: bool):
    if case == "scientific":
        return load_domain("Scientific", data_dir=SCIENTIFIC, cache_dir=cache_dir)
    size = QUICK_SYNTHETIC if quick else FULL_SYNTHETIC
    return load_domain("demo", cache_dir=cache_dir, **size)


def build_worker(case: str, quick: bool) -> dict[str, object]:
    """Build a case in this (fresh) process; time and peak memory above the baseline after imports."""
    with tempfile.TemporaryDirectory() as cache_dir:
        exact_peak = reset_peak_memory()
        baseline = memory_status()["VmRSS"]
        start = time.perf_counter()
        domain = build(case, cache_dir, quick)
        seconds = time.perf_counter() - start
        peak = memory_status()["VmHWM"]
        stats = domain_statistics(domain)
    return {"build_seconds": seconds, "peak_mib": (peak - baseline) / 1024, "exact_peak": exact_peak, "stats": stats}


def run_build_worker(case: str, quick: bool) -> dict[str, object]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", case] + (["--quick"] if quick else [])
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.splitlines()[-1])


def loader_and_step(case: str, quick: bool, repeats: int) -> dict[str, object]:
    """Seconds per loader batch and per model training step for a case (see the module docstring)."""
    setup = CASES[case]
    with tempfile.TemporaryDirectory() as cache_dir:
        domain = build(case, cache_dir, quick)
        start = time.perf_counter()
        features = catalogue_features(domain.items)
        feature_seconds = time.perf_counter() - start
        config = load_preset(
            "missrec-base",
            id_mode=setup["id_mode"],
            interest_ratio=setup["interest_ratio"],
            text_feature_dim=features["text_features"].shape[1],
            image_feature_dim=features["image_features"].shape[1],
        )
        augment = {}
        if setup["pretraining"]:
            text = features["text_features"].numpy()
            alternative = text[np.random.default_rng(0).permutation(len(text))]
            augment = dict(item_drop_ratio=0.2, word_drop_ratio=0.2, text_features=text, alt_text_features=alternative)
        collator = SequenceCollator(domain.sequences["train"], config.max_seq_length, **augment)
        rng = np.random.default_rng(0)
        batch_rows = [rng.choice(len(collator), setup["batch_size"], replace=False) for _ in range(repeats + 1)]
        rows = iter(batch_rows * 2)
        loader_seconds = best_time(lambda: collator(next(rows)), repeats)

        torch.manual_seed(0)
        model = MISSRecModel(config)
        model.set_catalogue(**features)
        model.discover_interests()
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batch = collator(batch_rows[0])

        def step() -> None:
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        step_seconds = best_time(step, STEP_REPEATS)
    return {
        "batch_size": setup["batch_size"],
        "objective": "pre-training (in-batch)" if setup["pretraining"] else "fine-tuning (full catalogue)",
        "feature_read_seconds": feature_seconds,
        "loader_seconds_per_batch": loader_seconds,
        "step_seconds": step_seconds,
        "loader_to_step_ratio": step_seconds / loader_seconds,
    }


def markdown(results: dict[str, object]) -> str:
    info = results["machine"]
    lines = [
        f"Machine: {info['cpu_model']}, {info['torch_threads']} torch threads, torch {info['torch_version']}.",
        "",
        "| case | users | items | interactions | build s | build peak MiB | feature read ms | batch | "
        "loader ms/batch | model step ms | loader/step speed (>=5x) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case, result in results["cases"].items():
        stats, ratio = result["stats"], result["loader_to_step_ratio"]
        verdict = "PASS" if ratio >= TARGET_LOADER_RATIO else "MISS"
        lines.append(
            f"| {case} | {stats['users']:,} | {stats['items']:,} | {stats['interactions']:,} | "
            f"{result['build_seconds']:.2f} | {result['peak_mib']:.0f} | {1000 * result['feature_read_seconds']:.1f} | "
            f"{result['batch_size']} | {1000 * result['loader_seconds_per_batch']:.1f} | "
            f"{1000 * result['step_seconds']:.0f} | {ratio:.0f}x {verdict} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 10k-item synthetic domain, fewer repeats")
    parser.add_argument("--repeats", type=int, default=20, help="timed loader batches (model steps: 3)")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "bench_data.json"))
    parser.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(build_worker(args.worker, args.quick)))
        return
    repeats = 5 if args.quick else args.repeats
    cases = [case for case in CASES if case != "scientific" or SCIENTIFIC.is_dir()]
    results = {"machine": machine_info(), "quick": args.quick, "cases": {}}
    for case in cases:
        results["cases"][case] = {**run_build_worker(case, args.quick), **loader_and_step(case, args.quick, repeats)}
    print(markdown(results))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(f"\nWrote {output}")


if __name__ == "__main__":
    main()
