"""SASRec's training step and evaluation pass on a real domain's histories, against another revision's SASRec.

A training batch of a sparse domain (Amazon Beauty: 8.4 items per history on average, 50 at most) is mostly
padding when laid out `[B, L]`; this measures what the model's layout costs on the real length distribution. Both
models get the same weights and the same batches (the domain's training histories, `--batch_size` each, seeded
shuffle) and run alternately, `--repeats` rounds, so machine noise falls on both alike. The other revision's model
is its `modeling_missrec/` flat modules (the Hub remote code, which import only each other) read from git.

    python bench/bench_sasrec.py --domain Beauty --against ff7a7e8
    python bench/bench_sasrec.py --domain Beauty --data_dir ../shared/data/text-domains/Beauty --steps 20

Prints a table (ms per training step: forward, backward and AdamW; ms per evaluation batch: full-catalogue scores)
and writes `bench/results/bench_sasrec_<domain>.json`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
TEXT_DOMAINS = REPO.parent / "shared" / "data" / "text-domains"


def model_class_at(revision: str, into: Path) -> type:
    """`SASRecModel` as `revision` wrote it: its flat `modeling_missrec/*.py` copied into a package of `into`."""
    package = into / ("sasrec_at_" + re.sub(r"\W", "_", revision))  # `v1.0`, `HEAD~2`: a module name
    package.mkdir()
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", revision, "modeling_missrec/"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    for name in names:
        if name.endswith(".py") and not name.endswith("__init__.py"):
            source = subprocess.run(["git", "show", f"{revision}:{name}"], cwd=REPO, check=True, capture_output=True)
            (package / Path(name).name).write_bytes(source.stdout)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(into))
    return importlib.import_module(f"{package.name}.modeling_sasrec").SASRecModel


def training_batches(domain: str, data_dir: Path, batch_size: int, steps: int, seed: int) -> tuple[list, int]:
    """`steps` training batches `(item_seq [B, L], lengths [B], labels [B])` of the domain (a seeded shuffle of its
    training histories, read as `train.py` reads them), and its number of items."""
    from modeling_missrec.pipelines.data import SequenceCollator, load_domain

    loaded = load_domain(domain, data_dir=data_dir, source="atomic", text_encoder="sentence")
    collate = SequenceCollator(loaded.sequences["train"], 50)
    order = np.random.default_rng(seed).permutation(len(loaded.sequences["train"]))
    batches = []
    for step in range(steps):
        batch = collate(order[step * batch_size : (step + 1) * batch_size].tolist())
        batches.append((batch["item_seq"], batch["lengths"], batch["labels"]))
    return batches, loaded.num_items


def time_model(model: torch.nn.Module, batches: list) -> tuple[float, float]:
    """Mean seconds of a training step and of an evaluation batch over `batches` (one pass each)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    started = time.perf_counter()
    for item_seq, lengths, labels in batches:
        loss = model(item_seq, lengths, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train = (time.perf_counter() - started) / len(batches)
    model.eval()
    started = time.perf_counter()
    with torch.no_grad():
        for item_seq, lengths, _ in batches:
            model(item_seq, lengths)
    return train, (time.perf_counter() - started) / len(batches)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="Beauty", help="a real text domain (RecBole atomic files)")
    parser.add_argument("--data_dir", type=Path, default=None, help="its folder (default: the shared text domains)")
    parser.add_argument("--against", default=None, help="a git revision whose SASRec runs beside this tree's")
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="batches per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (each model once per round, alternating)")
    parser.add_argument("--output", type=Path, default=None, help="default: bench/results/bench_sasrec_<domain>.json")
    args = parser.parse_args(argv)
    from modeling_missrec import SASRecConfig, SASRecModel

    batches, num_items = training_batches(
        args.domain, args.data_dir or TEXT_DOMAINS / args.domain, args.batch_size, args.steps, seed=0
    )
    torch.manual_seed(0)
    models = {"this tree": SASRecModel(SASRecConfig(num_items=num_items, max_seq_length=50))}
    with tempfile.TemporaryDirectory() as folder:
        if args.against:
            other = model_class_at(args.against, Path(folder))(models["this tree"].config)
            other.load_state_dict(models["this tree"].state_dict())
            models[args.against] = other
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
        for _ in range(args.repeats):
            for name, model in models.items():
                times[name].append(time_model(model, batches))
    lengths = torch.cat([lengths for _, lengths, _ in batches]).float()
    result = {
        "domain": args.domain, "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
        "mean_history_length": lengths.mean().item(), "threads": torch.get_num_threads(),
        "models": {
            name: {
                "train_step_ms": 1000 * statistics.median(t for t, _ in runs),
                "eval_batch_ms": 1000 * statistics.median(e for _, e in runs),
            }
            for name, runs in times.items()
        },
    }  # fmt: skip
    print(f"SASRec on {args.domain} (mean history {result['mean_history_length']:.1f} items, batch {args.batch_size},")
    print(f"median of {args.repeats} rounds of {args.steps} batches, {result['threads']} threads)\n")
    print("| model | ms / training step | ms / evaluation batch |")
    print("|---|---|---|")
    for name, row in result["models"].items():
        print(f"| {name} | {row['train_step_ms']:.0f} | {row['eval_batch_ms']:.0f} |")
    if args.against:
        ours, theirs = result["models"]["this tree"], result["models"][args.against]
        result["ratio"] = {key: ours[key] / theirs[key] for key in ours}
        print(f"| ratio this tree / {args.against} | {result['ratio']['train_step_ms']:.2f} | "
              f"{result['ratio']['eval_batch_ms']:.2f} |")  # fmt: skip
    output = args.output or RESULTS / f"bench_sasrec_{args.domain}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
