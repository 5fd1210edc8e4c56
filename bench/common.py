"""Helpers shared by the benchmark scripts: machine description, best-of-n timing, peak resident memory."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from modeling_missrec.configuration import parse_recipe_args
from modeling_missrec.pipelines.training import run_training


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or `platform.processor()` where that file is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    """Versions, thread count and CPU of the machine a benchmark runs on."""
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1min_at_start": os.getloadavg()[0],
    }


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall-clock seconds of `repeats` calls of `fn`, after one untimed warm-up call."""
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def memory_status() -> dict[str, int]:
    """Current (`VmRSS`) and peak (`VmHWM`) resident memory of this process, in KiB."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def reset_peak_memory() -> bool:
    """Reset this process's peak-RSS counter to its current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def recipe_flags(values: dict) -> list[str]:
    """Recipe keys as `train.py` words: `{"epochs": 3, "config_overrides": {...}}` -> `["--epochs", "3",
    "--config_overrides", "{...}"]` (mappings and lists as JSON, which the recipe parser reads as YAML)."""
    words = []
    for key, value in values.items():
        words += [f"--{key}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return words


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """The mean of `values` and its standard error (NaN for one value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan"))


def plus_minus(value: tuple[float, float] | None, signed: bool = False, percent: bool = False) -> str:
    """`(mean, standard error)` as a table cell: `0.0840 ± 0.0008`, signed `+0.0010 ± 0.0003`, or as a percentage
    `+11.6% ± 1.2%`; the mean alone for one seed (no standard error), `—` for None."""
    if value is None:
        return "—"
    mean, error = value
    if error != error:
        return f"{100 * mean:+.1f}%" if percent else (f"{mean:+.4f}" if signed else f"{mean:.4f}")
    if percent:
        return f"{100 * mean:+.1f}% ± {100 * error:.1f}%"
    return f"{mean:+.4f} ± {error:.4f}" if signed else f"{mean:.4f} ± {error:.4f}"


def train_run(argv: list[str]) -> dict:
    """What `python train.py ARGV` runs, in this process: the run's results (the content of its `metrics.json`)."""
    return run_training(parse_recipe_args(argv))


# `train.py` words for a long run: the same command continues it from its latest checkpoint after a kill (or starts
# it, in a folder without checkpoints). Every 20 optimiser steps (and each epoch's end), because an epoch of the
# full-size base takes half an hour on this CPU and a session's end would lose half of one on average.
RESUMABLE = ("--checkpointing_steps", "20", "--resume_from_checkpoint", "latest-if-any")
