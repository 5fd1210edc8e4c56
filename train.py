#!/usr/bin/env python
"""Train MISSRec from scratch on the project's demo data and compare it with popularity.

    python train.py --output_dir runs/demo

The data come from the project's `datasets` builder (`load_domain("demo")`, or a real domain with
`--domain Scientific --data_dir FOLDER` for MISSRec-format files). Single process for now: the Accelerate
launcher, pre-training, PEFT fine-tuning and resumable checkpoints are still to come (issue 5). Each epoch
re-discovers interests first, then trains with the full-catalogue cross-entropy; the best validation
NDCG@10 model is saved with `save_pretrained` (a remote-code folder) and evaluated on the test split.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
from modeling_missrec.pipelines.collator import SequenceCollator, catalogue_features
from modeling_missrec.pipelines.loading import load_domain
from modeling_missrec.pipelines.metrics import ranking_metrics, target_ranks
from tqdm.auto import tqdm

from modeling_missrec import MISSRecModel
from modeling_missrec.presets import available_presets, load_preset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="missrec-tiny", choices=available_presets())
    parser.add_argument("--id_mode", default="inductive", choices=["inductive", "transductive"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--domain", default="demo", help="'demo' or an Amazon domain, e.g. Scientific")
    parser.add_argument("--data_dir", default=None, help="folder of the domain's MISSRec-format files")
    parser.add_argument("--num_users", type=int, default=1000, help="demo data: number of users")
    parser.add_argument("--num_items", type=int, default=600, help="demo data: number of items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="runs/demo")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.learning_rate <= 0:
        parser.error("--epochs and --batch_size must be >= 1 and --learning_rate > 0")
    return args


@torch.no_grad()
def evaluate(model: MISSRecModel, collator: SequenceCollator, batch_size: int) -> dict:
    """Full-ranking HR/NDCG/MRR@{10,20,50} of `model` (history items are ranked too, as the official code)."""
    model.eval()
    ranks = []
    for start in range(0, len(collator), batch_size):
        batch = collator(np.arange(start, min(start + batch_size, len(collator))))
        scores = model(batch["item_seq"], batch["lengths"]).scores
        ranks.append(target_ranks(scores, batch["labels"]))
    return ranking_metrics(torch.cat(ranks))


def popularity_metrics(train_targets: np.ndarray, targets: np.ndarray, num_items: int) -> dict:
    """The same metrics for the most-popular-items baseline (popularity = training target counts)."""
    counts = torch.bincount(torch.from_numpy(train_targets.astype(np.int64)), minlength=num_items + 1).double()
    scores = counts.expand(len(targets), -1)
    return ranking_metrics(target_ranks(scores, torch.from_numpy(targets.astype(np.int64))))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    demo = {"demo_num_items": args.num_items, "demo_num_users": args.num_users, "demo_seed": args.seed}
    domain = load_domain(args.domain, data_dir=args.data_dir, **(demo if args.domain == "demo" else {}))
    features = catalogue_features(domain.items)
    config = load_preset(
        args.preset,
        id_mode=args.id_mode,
        text_feature_dim=features["text_features"].shape[1],
        image_feature_dim=features["image_features"].shape[1],
    )
    model = MISSRecModel(config)
    model.set_catalogue(**features)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)

    loaders = {split: SequenceCollator(domain.sequences[split], config.max_seq_length) for split in domain.sequences}
    generator = np.random.default_rng(args.seed)
    best, best_state, history = -1.0, None, []
    for epoch in range(args.epochs):
        started = time.perf_counter()
        model.discover_interests()
        model.train()
        order = generator.permutation(len(loaders["train"]))
        total = 0.0
        steps = math.ceil(len(order) / args.batch_size)
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
        for step in bar:
            loss = model(**loaders["train"](order[step * args.batch_size : (step + 1) * args.batch_size])).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        valid = evaluate(model, loaders["validation"], args.batch_size)
        history.append({"epoch": epoch + 1, "loss": total / steps, "seconds": time.perf_counter() - started, **valid})
        print(f"epoch {epoch + 1}: loss {total / steps:.4f}  valid ndcg@10 {valid['ndcg@10']:.4f}")
        if valid["ndcg@10"] > best:
            best = valid["ndcg@10"]
            best_state = {k: v.clone() for k, v in model.state_dict().items()}

    model.load_state_dict(best_state)
    test = evaluate(model, loaders["test"], args.batch_size)
    popularity = popularity_metrics(loaders["train"].targets, loaders["test"].targets, domain.num_items)
    os.makedirs(args.output_dir, exist_ok=True)
    model.save_pretrained(args.output_dir)
    results = {"test": test, "popularity_test": popularity, "epochs": history}
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2)

    print("\n| model | HR@10 | NDCG@10 | HR@50 | NDCG@50 |\n|---|---|---|---|---|")
    for name, m in (("MISSRec", test), ("Popularity", popularity)):
        print(f"| {name} | {m['hr@10']:.4f} | {m['ndcg@10']:.4f} | {m['hr@50']:.4f} | {m['ndcg@50']:.4f} |")
    print(f"\nmodel saved to {args.output_dir}")
    return results


if __name__ == "__main__":
    main()
