"""Benchmark of fine-tuning on large catalogues: the full softmax against the sampled one (`loss: sampled`), at
100k and 1M items and the same interactions.

Run from the repository root: `python bench/bench_large_catalogue.py [--items 100000 1000000] [--examples 20480]
[--full_steps_at_1m 3] [--output PATH]`. It prints a markdown table and writes every number, with the machine's
description, to JSON (default `bench/results/bench_large_catalogue.json`).

Each cell runs in a fresh subprocess (its peak resident memory, `VmHWM`, is its own, reset once the data are
built, so it is training's: the model, catalogue and data resident, plus what the steps add): a
`MISSRecForSequentialRecommendation` (`missrec-tuned` settings, inductive, text only, 256-d features) on a
synthetic catalogue of N items (seeded Gaussian features), trained with AdamW on `--examples` synthetic
next-item examples (histories of 5 to 20 items, batch 512, so the same interactions at every N), exactly as
`train.py`'s loop feeds it (`SampledCandidates` draws each batch's 1024 uniform negatives). Interest discovery
is left out (`interest_method: none`): with the fine-tuning ratio 0.5 it would cluster N interests, itself
infeasible at 1M items (see docs/results.md); it is not what the loss changes. The full softmax at 1M items runs
`--full_steps_at_1m` steps only (minutes each on a CPU); its epoch time is that per-step time times the epoch's
steps, marked as extrapolated.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

from common import machine_info, memory_status

BATCH = 512
FEATURE_DIM = 256
NEGATIVES = 1024


def reset_peak_memory() -> bool:
    """Reset this process's peak resident memory (`VmHWM`) to its current size; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def train_cell(num_items: int, loss: str, examples: int, max_steps: int | None) -> dict:
    """Worker: one epoch (or `max_steps` steps) of fine-tuning; its seconds and this process's peak memory."""
    import numpy as np
    import torch
    from datasets import Dataset
    from modeling_missrec.configuration import load_preset
    from modeling_missrec.pipelines.data.collator import SequenceCollator
    from modeling_missrec.pipelines.data.negative_sampling import SampledCandidates
    from torch.utils.data import DataLoader

    from modeling_missrec import MISSRecForSequentialRecommendation

    torch.manual_seed(0)
    generator = np.random.default_rng(0)
    lengths = generator.integers(5, 21, size=examples)
    histories = [generator.integers(1, num_items + 1, size=n).tolist() for n in lengths]
    targets = generator.integers(1, num_items + 1, size=examples)
    sequences = Dataset.from_dict({"history": histories, "target": targets})
    config = load_preset(
        "missrec-tuned",
        num_items=num_items,
        id_mode="inductive",
        modalities="text",
        text_feature_dim=FEATURE_DIM,
        interest_method="none",
    )
    model = MISSRecForSequentialRecommendation(config)
    features = torch.from_numpy(generator.standard_normal((num_items, FEATURE_DIM), dtype=np.float32))
    model.missrec.set_catalogue(text_features=features)
    model.missrec.discover_interests()  # clusters nothing (interest_method none)
    del features
    batches = SequenceCollator(sequences, model.config.max_seq_length)
    if loss == "sampled":
        batches = SampledCandidates(batches, num_items, NEGATIVES)
    loader = DataLoader(range(len(batches)), batch_size=BATCH, shuffle=True, collate_fn=batches)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    gc.collect()
    resident = memory_status()["VmRSS"]  # the model, its catalogue and the data
    reset = reset_peak_memory()  # the peak of building the synthetic data is not training's
    started, steps = time.perf_counter(), 0
    for batch in loader:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
        if max_steps is not None and steps == max_steps:
            break
    seconds = time.perf_counter() - started
    epoch_steps = len(loader)
    return {
        "num_items": num_items,
        "loss": loss,
        "steps_run": steps,
        "epoch_steps": epoch_steps,
        "seconds_per_step": seconds / steps,
        "epoch_seconds": seconds / steps * epoch_steps,
        "extrapolated": steps < epoch_steps,
        "peak_gib": memory_status()["VmHWM"] / 2**20,
        "resident_gib_before_training": resident / 2**20,
        "peak_reset": reset,
    }


def markdown(cells: list[dict]) -> str:
    lines = [
        "| items | loss | s / step | s / epoch | steps run | peak GiB in training (resident before it) |",
        "|---|---|---|---|---|---|",
    ]
    for c in cells:
        epoch = f"{c['epoch_seconds']:.0f}" + (" (extrapolated)" if c["extrapolated"] else "")
        lines.append(
            f"| {c['num_items']:,} | {c['loss']} | {c['seconds_per_step']:.2f} | {epoch} | "
            f"{c['steps_run']} / {c['epoch_steps']} | {c['peak_gib']:.2f} ({c['resident_gib_before_training']:.2f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--examples", type=int, default=20_480, help="training examples (the same at every size)")
    parser.add_argument("--full_steps_at_1m", type=int, default=3, help="steps the full softmax runs at >= 1M items")
    parser.add_argument("--output", default="bench/results/bench_large_catalogue.json")
    parser.add_argument("--worker", nargs=3, metavar=("ITEMS", "LOSS", "MAX_STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        items, loss, max_steps = args.worker
        print(json.dumps(train_cell(int(items), loss, args.examples, int(max_steps) or None)))
        return
    cells = []
    for items in args.items:
        for loss in ("sampled", "full"):
            max_steps = args.full_steps_at_1m if loss == "full" and items >= 1_000_000 else 0
            command = [sys.executable, __file__, "--examples", str(args.examples), "--worker", str(items), loss]
            done = subprocess.run([*command, str(max_steps)], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"the cell {items} items, {loss} failed")
            cells.append(json.loads(done.stdout.splitlines()[-1]))
            print(markdown(cells[-1:]).splitlines()[-1], flush=True)
    table = markdown(cells)
    print("\n" + table)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"machine": machine_info(), "examples": args.examples, "cells": cells}, indent=2))


if __name__ == "__main__":
    main()
