#!/usr/bin/env python
"""Train MISSRec from scratch on the project's demo data and compare it with popularity.

    python train.py                                           # the demo recipe
    python train.py --config configuration/recipes/scientific.yaml --epochs 10

Settings come from a YAML recipe (`configuration/recipes/`); any key is overridden with `--key value`. The
data come from the project's `datasets` builder (`load_domain("demo")`, or a real domain with
`--domain Scientific --data_dir FOLDER` for MISSRec-format files). Single process for now: the Accelerate
launcher, pre-training, PEFT fine-tuning and resumable checkpoints are still to come (issue 5). Each epoch
re-discovers interests first, then trains with the full-catalogue cross-entropy; the best validation
NDCG@10 model is saved with `save_pretrained` (a remote-code folder) and evaluated on the test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time

import numpy as np
import torch
from modeling_missrec.pipelines.collator import SequenceCollator, catalogue_features
from modeling_missrec.pipelines.evaluation import PopularityRecommender, evaluate_ranking
from modeling_missrec.pipelines.loading import load_domain
from modeling_missrec.pipelines.recipe import TrainingRecipe, default_recipe_path, load_recipe
from tqdm.auto import tqdm

from modeling_missrec import MISSRecModel
from modeling_missrec.presets import available_presets, load_preset


def parse_args(argv: list[str] | None = None) -> TrainingRecipe:
    """`--config RECIPE.yaml` (default: the demo recipe) and `--key value` overrides of any recipe key."""
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Recipe keys (each overridable as --key value): {', '.join(TrainingRecipe.keys())}. "
        f"Model presets: {', '.join(available_presets())}.",
    )
    parser.add_argument("--config", default=None, help=f"YAML recipe (default: {default_recipe_path()})")
    args, overrides = parser.parse_known_args(argv)
    try:
        return load_recipe(args.config, overrides)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))


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
        valid = evaluate_ranking(model, loaders["validation"], batch_size=args.batch_size)["official"]
        history.append({"epoch": epoch + 1, "loss": total / steps, "seconds": time.perf_counter() - started, **valid})
        print(f"epoch {epoch + 1}: loss {total / steps:.4f}  valid ndcg@10 {valid['ndcg@10']:.4f}")
        if valid["ndcg@10"] > best:
            best = valid["ndcg@10"]
            best_state = {k: v.clone() for k, v in model.state_dict().items()}

    model.load_state_dict(best_state)
    both = {"batch_size": args.batch_size, "protocols": ("official", "exclude_history")}
    test_all = evaluate_ranking(model, loaders["test"], **both)
    popularity_all = evaluate_ranking(
        PopularityRecommender(loaders["train"].targets, domain.num_items), loaders["test"], **both
    )
    test, popularity = test_all["official"], popularity_all["official"]
    os.makedirs(args.output_dir, exist_ok=True)
    model.save_pretrained(args.output_dir)
    results = {
        "test": test,
        "popularity_test": popularity,
        "test_exclude_history": test_all["exclude_history"],
        "popularity_test_exclude_history": popularity_all["exclude_history"],
        "epochs": history,
        "recipe": dataclasses.asdict(args),
    }
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2)

    print("\n| model | HR@10 | NDCG@10 | HR@50 | NDCG@50 |\n|---|---|---|---|---|")
    for name, m in (("MISSRec", test), ("Popularity", popularity)):
        print(f"| {name} | {m['hr@10']:.4f} | {m['ndcg@10']:.4f} | {m['hr@50']:.4f} | {m['ndcg@50']:.4f} |")
    print(f"\nmodel saved to {args.output_dir}")
    return results


if __name__ == "__main__":
    main()
