"""Benchmark of interest discovery: our torch `kmeans` against sklearn, and vectorised interest tokens.

Run from the repository root: `python bench/bench_interest.py [--quick] [--output PATH]`. It prints a markdown
table and writes every number, with the machine's description, to a JSON file
(default `bench/results/bench_interest.json`).

What is measured, all in one run and at torch's default thread count:

1. Matmul bound: the best of several timed float32 `[4096, 300] x [300, 4000]` matmuls, in GFLOP/s. This is
   the dense speed this machine reaches in the operation that dominates k-means.
2. Clustering: for each case (N vectors, d = 300, K clusters) our `kmeans` with its defaults (k-means++,
   `max_iter=30`, `tol=1e-4`, `seed=0`) and `sklearn.cluster.MiniBatchKMeans(n_clusters=K, batch_size=2048,
   max_iter=5, n_init=1, random_state=0)` on the same float32 data: a seeded mixture with planted structure
   (K centres drawn from N(0, 1) and scaled by 3, every point a random centre plus N(0, 1) noise, numpy
   `default_rng(0)`).

   * Time: best wall-clock time of `--repeats` fits (default 3; a tiny warm-up fit runs first, so library
     loading is not counted). Best-of-n keeps other tenants of a shared machine out of the ratio.
   * Peak memory: each method runs in its own fresh subprocess (this script with the hidden `--worker`
     argument), which builds the data, then resets the kernel's peak-RSS counter (`/proc/self/clear_refs`),
     reads the baseline RSS, fits, and reads the peak RSS (`VmHWM`); the figure is peak - baseline in MiB.
     Where the counter cannot be reset, the peak also covers data creation, which is done in place to keep
     that peak at the baseline; the JSON records which was used.
   * Inertia: the sum of squared distances of the points to their nearest centroid, computed the same way for
     both methods (`assign_to_nearest` on the same float32 data, summed in float64).
   * Achieved FLOP/s of our kmeans: the arithmetic of the algorithm it runs, divided by our total time and
     reported as a fraction of the matmul bound. That arithmetic is the distance matmuls of greedy k-means++
     seeding, `2 * (K - 1) * trials * S * d` (each seed's `trials` candidates against the `S` sampled vectors;
     `S` and `trials` from `seeding_sample_size` / `seeding_trials`), plus those of plain Lloyd,
     `2 * N * K * d * (n_iter + 1)` (`n_iter` iterations plus the final assignment). It counts neither the
     rows our seeding computes and then rejects nor the rows our Lloyd bounds skip. The Lloyd term alone over
     the same time is reported too ("Lloyd only"; it was this benchmark's measure before the seeding term was
     counted).

   Targets: our inertia <= sklearn's, sklearn time / our time >= 2, achieved FLOP/s >= 50% of the matmul bound.
3. Interest tokens: `interest_tokens` on a `[4096, 100]` id matrix (a batch of 4096 sequences of 50 items in 2
   modalities, ids in 1..2000, each row of random length 1..50 with 0 padding in both modality halves) against
   a reference that calls `torch.unique` once per row and pads with `pad_sequence`. The outputs must be equal;
   the speed-up (best reference time / best vectorised time) has a target of >= 20.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
import torch
from common import best_time, memory_status, reset_peak_memory
from common import machine_info as common_machine_info
from sklearn.cluster import MiniBatchKMeans
from torch.nn.utils.rnn import pad_sequence

from modeling_missrec import interest_missrec
from modeling_missrec.interest_missrec import (
    assign_to_nearest,
    interest_tokens,
    kmeans,
    seeding_sample_size,
    seeding_trials,
)

DIM = 300
CENTRE_SCALE = 3.0
DATA_SEED = 0
SKLEARN_BATCH_SIZE = 2048
SKLEARN_MAX_ITER = 5
TARGET_SPEEDUP = 2.0
TARGET_MATMUL_FRACTION = 0.5
TARGET_TOKEN_SPEEDUP = 20.0
TOKEN_BATCH, TOKEN_LENGTH, TOKEN_MODALITIES, TOKEN_VOCAB = 4096, 50, 2, 2000
METHODS = ("ours", "sklearn")


def machine_info() -> dict[str, object]:
    """The machine's description (see `common.machine_info`) plus sklearn's version and the library's hash."""
    return {**common_machine_info(), "sklearn_version": sklearn.__version__, "library_sha256": library_sha256()}


def library_sha256() -> str:
    """SHA-256 of the `interest_missrec.py` source, to tell whether every process ran the same library code."""
    return hashlib.sha256(Path(interest_missrec.__file__).read_bytes()).hexdigest()


def matmul_gflops(repeats: int) -> float:
    """Best dense float32 `[4096, 300] x [300, 4000]` matmul speed on this machine, in GFLOP/s."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4096, DIM, generator=generator)
    b = torch.randn(DIM, 4000, generator=generator)
    out = torch.empty(4096, 4000)
    seconds = best_time(lambda: torch.mm(a, b, out=out), repeats)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / seconds / 1e9


def make_data(n: int, num_centres: int) -> np.ndarray:
    """`[n, DIM]` float32 mixture: random centres (N(0, 1) * CENTRE_SCALE) plus N(0, 1) noise, built in place."""
    rng = np.random.default_rng(DATA_SEED)
    centres = rng.standard_normal((num_centres, DIM), dtype=np.float32) * np.float32(CENTRE_SCALE)
    members = rng.integers(num_centres, size=n)
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    step = 16384
    for start in range(0, n, step):
        x[start : start + step] += centres[members[start : start + step]]
    return x


def fit(method: str, x: np.ndarray, num_clusters: int) -> tuple[torch.Tensor, int]:
    """Cluster `x` with `method` ("ours" or "sklearn"): the `[K, DIM]` centroids and the iterations run."""
    if method == "ours":
        result = kmeans(torch.from_numpy(x), num_clusters)
        return result.centroids, result.n_iter
    model = MiniBatchKMeans(
        n_clusters=num_clusters,
        batch_size=SKLEARN_BATCH_SIZE,
        max_iter=SKLEARN_MAX_ITER,
        n_init=1,
        random_state=0,
    ).fit(x)
    return torch.from_numpy(model.cluster_centers_.astype(np.float32)), int(model.n_steps_)


def worker(method: str, n: int, num_clusters: int, repeats: int) -> dict[str, object]:
    """Fit `method` on the benchmark data in this (fresh) process: best time of `repeats` fits (both methods
    are seeded, so every fit gives the same result), peak memory of the first fit, inertia, iterations."""
    source = library_sha256()
    fit(method, make_data(256, 8), 8)  # warm-up: loads BLAS / OpenMP / threadpool state outside the timing
    x = make_data(n, num_clusters)
    peak_reset = reset_peak_memory()
    baseline = memory_status()["VmRSS"]
    start = time.perf_counter()
    centroids, n_iter = fit(method, x, num_clusters)
    seconds = time.perf_counter() - start
    peak = memory_status()["VmHWM"]
    for _ in range(repeats - 1):
        start = time.perf_counter()
        fit(method, x, num_clusters)
        seconds = min(seconds, time.perf_counter() - start)
    _, sq_dist = assign_to_nearest(torch.from_numpy(x), centroids)
    return {
        "seconds": seconds,
        "peak_mib": (peak - baseline) / 1024,
        "peak_reset": peak_reset,
        "inertia": float(sq_dist.double().sum()),
        "n_iter": n_iter,
        "library_sha256": source,
    }


def run_worker(method: str, n: int, num_clusters: int, repeats: int) -> dict[str, object]:
    """Run [`worker`] in a fresh subprocess of this script and return its JSON result."""
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, "--worker", method, "--n", str(n), "--k", str(num_clusters)]
    command += ["--repeats", str(repeats)]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.splitlines()[-1])


def clustering_case(n: int, num_clusters: int, gflops: float, repeats: int) -> dict[str, object]:
    """Both methods on one (N, K) case, with the ratios and targets derived from them."""
    ours, ref = (run_worker(method, n, num_clusters, repeats) for method in METHODS)
    sample_size = seeding_sample_size(n, num_clusters)
    seeding_flops = 2 * (num_clusters - 1) * seeding_trials(sample_size, num_clusters) * sample_size * DIM
    lloyd_flops = 2 * n * num_clusters * DIM * (ours["n_iter"] + 1)
    achieved_gflops = (seeding_flops + lloyd_flops) / ours["seconds"] / 1e9
    case = {
        "n": n,
        "k": num_clusters,
        "d": DIM,
        "ours": ours,
        "sklearn": ref,
        "speedup": ref["seconds"] / ours["seconds"],
        "inertia_ratio": ours["inertia"] / ref["inertia"],
        "seeding_gflop": seeding_flops / 1e9,
        "lloyd_gflop": lloyd_flops / 1e9,
        "ours_gflops": achieved_gflops,
        "matmul_fraction": achieved_gflops / gflops,
        "lloyd_only_matmul_fraction": lloyd_flops / ours["seconds"] / 1e9 / gflops,
    }
    case["pass"] = {
        "inertia": case["inertia_ratio"] <= 1.0,
        "speedup": case["speedup"] >= TARGET_SPEEDUP,
        "matmul_fraction": case["matmul_fraction"] >= TARGET_MATMUL_FRACTION,
    }
    return case


def token_ids(batch: int) -> torch.Tensor:
    """`[batch, TOKEN_MODALITIES * TOKEN_LENGTH]` interest ids in 1..TOKEN_VOCAB, 0 past each row's length."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, TOKEN_VOCAB + 1, (batch, TOKEN_MODALITIES, TOKEN_LENGTH), generator=generator)
    lengths = torch.randint(1, TOKEN_LENGTH + 1, (batch, 1, 1), generator=generator)
    ids.masked_fill_(torch.arange(TOKEN_LENGTH) >= lengths, 0)
    return ids.reshape(batch, TOKEN_MODALITIES * TOKEN_LENGTH)


def reference_tokens(interest_ids: torch.Tensor) -> torch.Tensor:
    """Row-by-row reference of `interest_tokens`: one `torch.unique` per row, padded with `pad_sequence`."""
    rows = [torch.unique(row[row != 0]) for row in interest_ids]
    return pad_sequence(rows, batch_first=True, padding_value=0)


def token_case(batch: int, repeats: int) -> dict[str, object]:
    """Time `interest_tokens` against the row-loop reference, after checking the two agree."""
    ids = token_ids(batch)
    if not torch.equal(interest_tokens(ids), reference_tokens(ids)):
        raise AssertionError("interest_tokens differs from the torch.unique reference")
    ours = best_time(lambda: interest_tokens(ids), repeats)
    ref = best_time(lambda: reference_tokens(ids), max(1, repeats // 10))
    return {
        "shape": list(ids.shape),
        "vocab": TOKEN_VOCAB,
        "ours_seconds": ours,
        "reference_seconds": ref,
        "speedup": ref / ours,
        "pass": ref / ours >= TARGET_TOKEN_SPEEDUP,
    }


def verdict(passed: bool) -> str:
    """PASS or MISS."""
    return "PASS" if passed else "MISS"


def markdown(results: dict[str, object]) -> str:
    """The results as markdown tables."""
    gflops = results["matmul_gflops"]
    info = results["machine"]
    lines = [
        f"Machine: {info['cpu_model']}, {info['torch_threads']} torch threads, torch {info['torch_version']}, "
        f"sklearn {info['sklearn_version']}. Matmul bound: {gflops:.1f} GFLOP/s. 1-min load average: "
        f"{info['load_average_1min_at_start']:.2f} at start, {results['load_average_1min_at_end']:.2f} at end "
        "(other processes on the cores slow the threaded ops).",
    ]
    if not results["library_unchanged"]:
        lines.append("**WARNING: interest_missrec.py changed during the run; the numbers mix library versions.**")
    lines += [
        "",
        "| N | K | ours s | sklearn s | sklearn/ours (>=2x) | ours MiB | sklearn MiB | ours inertia "
        "| sklearn inertia | ours/sklearn (<=1) | n_iter | seeding + Lloyd GFLOP | ours GFLOP/s "
        "| of matmul (>=50%) | Lloyd only |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---|---:|",
    ]
    for case in results["clustering"]:
        ours, ref, ok = case["ours"], case["sklearn"], case["pass"]
        lines.append(
            f"| {case['n']} | {case['k']} | {ours['seconds']:.2f} | {ref['seconds']:.2f} "
            f"| {case['speedup']:.2f}x {verdict(ok['speedup'])} | {ours['peak_mib']:.0f} | {ref['peak_mib']:.0f} "
            f"| {ours['inertia']:.4e} | {ref['inertia']:.4e} | {case['inertia_ratio']:.4f} {verdict(ok['inertia'])} "
            f"| {ours['n_iter']} | {case['seeding_gflop']:.1f} + {case['lloyd_gflop']:.1f} "
            f"| {case['ours_gflops']:.1f} | {case['matmul_fraction']:.0%} {verdict(ok['matmul_fraction'])} "
            f"| {case['lloyd_only_matmul_fraction']:.0%} |"
        )
    tokens = results["interest_tokens"]
    lines += [
        "",
        "| interest ids | interest_tokens ms | unique-per-row ms | speed-up (>=20x) |",
        "|---|---:|---:|---|",
        f"| {tokens['shape'][0]} x {tokens['shape'][1]} | {tokens['ours_seconds'] * 1e3:.2f} "
        f"| {tokens['reference_seconds'] * 1e3:.1f} | {tokens['speedup']:.0f}x {verdict(tokens['pass'])} |",
    ]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    """Command-line options (the `--worker` ones are internal)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small run (N = 10k only) to check the script works")
    parser.add_argument("--output", type=Path, default=Path("bench/results/bench_interest.json"), help="JSON path")
    parser.add_argument("--repeats", type=int, default=3, help="fits per method and case; the best time counts")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    """Run the benchmark (or, with `--worker`, one fit) and report it."""
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.k, args.repeats)))
        return
    sizes = [10_000] if args.quick else [10_000, 50_000, 200_000]
    cases = [(n, math.ceil(0.02 * n)) for n in sizes]
    if not args.quick:
        cases.append((10_000, 5_000))
    gflops = matmul_gflops(repeats=5 if args.quick else 20)
    results: dict[str, object] = {"machine": machine_info(), "quick": args.quick, "matmul_gflops": gflops}
    results["clustering"] = [clustering_case(n, k, gflops, 1 if args.quick else args.repeats) for n, k in cases]
    results["interest_tokens"] = token_case(TOKEN_BATCH, repeats=10 if args.quick else 50)
    results["load_average_1min_at_end"] = os.getloadavg()[0]
    hashes = {library_sha256()} | {case[m]["library_sha256"] for case in results["clustering"] for m in METHODS}
    results["library_unchanged"] = hashes == {results["machine"]["library_sha256"]}
    print(markdown(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nWrote {args.output}")


if __name__ == "__main__":
    main()
