"""Helpers shared by the benchmark scripts: machine description, best-of-n timing, peak resident memory."""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch


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
