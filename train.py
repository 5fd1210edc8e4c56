#!/usr/bin/env python
"""Train MISSRec from scratch on the project's demo data and compare it with popularity.

    python train.py                                           # the demo recipe
    python train.py --config configuration/recipes/scientific.yaml --epochs 10

It runs unchanged as `python train.py` and as `accelerate launch train.py` (several processes: DDP, the
interests discovered on the main process and broadcast, evaluation sharded with `gather_for_metrics`).
Settings come from a YAML recipe (`configuration/recipes/`); any key is overridden with `--key value`. The
data come from the project's `datasets` builder (`load_domain("demo")`, or a real domain with
`--domain Scientific --data_dir FOLDER` for MISSRec-format files). Each epoch re-discovers interests first,
then trains with the full-catalogue cross-entropy; the best validation NDCG@10 model is saved with
`save_pretrained` (a remote-code folder) and evaluated on the test split. Still to come (issue 5): the
pre-training stage, PEFT fine-tuning runs, resumable checkpoints. SASRec (RecBole defaults) and popularity
are trained and evaluated in the same harness and printed beside MISSRec (`--baselines []` skips SASRec).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import broadcast, broadcast_object_list, set_seed
from modeling_missrec.pipelines.collator import SequenceCollator, catalogue_features
from modeling_missrec.pipelines.evaluation import PopularityRecommender, evaluate_ranking
from modeling_missrec.pipelines.finetuning import apply_finetuning_strategy
from modeling_missrec.pipelines.loading import load_domain
from modeling_missrec.pipelines.recipe import TrainingRecipe, default_recipe_path, load_recipe
from modeling_missrec.pipelines.tracking import JSONLinesTracker, plot_curves
from peft import PeftModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modeling_missrec import MISSRecModel, SASRecConfig, SASRecModel
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


def folder_megabytes(folder: str) -> float:
    """Size of the weight files (`*.safetensors`) in `folder`, in MB."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors")) / 1e6


def missrec_of(model: torch.nn.Module) -> MISSRecModel | None:
    """The `MISSRecModel` inside `model` (itself, or the base of a PEFT model), or None for other models."""
    model = model.get_base_model() if isinstance(model, PeftModel) else model
    return model if isinstance(model, MISSRecModel) else None


def discover_interests_once(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Interest discovery on the main process only; the interest tables are then broadcast to every rank.

    The catalogue and interest tables are buffers that DDP does not synchronise (`broadcast_buffers=False`),
    so the other ranks receive them here, sized by the K the main process found.
    """
    model = missrec_of(accelerator.unwrap_model(model))
    if accelerator.is_main_process:
        model.discover_interests()
    if accelerator.num_processes == 1:
        return
    (num_interests,) = broadcast_object_list([model.config.num_interests])
    if not accelerator.is_main_process:
        model.config.num_interests = num_interests
        model.interest_centroids = model.interest_centroids.new_zeros(num_interests + 1, model.config.hidden_size)
    for name in [f"{m}_interest_ids" for m in model.modality_names] + ["interest_centroids"]:
        setattr(model, name, broadcast(getattr(model, name).contiguous(), from_process=0))


def fit(accelerator: Accelerator, model: torch.nn.Module, collator: SequenceCollator, valid: SequenceCollator, args):
    """Train `model` with Adam for `args.epochs`, keeping the weights of the best validation NDCG@10.

    Stops early after `args.early_stopping_patience` epochs without a gain, and at once on a non-finite loss.

    MISSRec models re-discover their interests before every epoch. Returns the prepared (possibly DDP-wrapped)
    model, with the best weights loaded, and the per-epoch history.
    """
    accelerator.gradient_accumulation_steps = args.gradient_accumulation_steps
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate)
    train_loader = DataLoader(
        range(len(collator)),
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    unwrapped = accelerator.unwrap_model(model)
    is_missrec = missrec_of(unwrapped) is not None
    name = "MISSRec" if is_missrec else type(unwrapped).__name__.removesuffix("Model")
    best, best_epoch, best_state, history = -1.0, 0, None, []
    for epoch in range(args.epochs):
        started = time.perf_counter()
        if is_missrec:
            discover_interests_once(accelerator, model)
        model.train()
        total = 0.0
        description = f"{name} epoch {epoch + 1}/{args.epochs}"
        bar = tqdm(train_loader, desc=description, leave=False, disable=not accelerator.is_main_process)
        for step, batch in enumerate(bar):
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"{name}: loss is {loss.item()} at epoch {epoch + 1}, step {step} (batch of histories "
                        f"{batch['item_seq'][:2].tolist()}..., labels {batch['labels'][:8].tolist()}...); "
                        "lower learning_rate or check the features for extreme values"
                    )
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        metrics = evaluate_ranking(model, valid, batch_size=args.batch_size, accelerator=accelerator)["official"]
        loss = total / len(train_loader)
        history.append({"epoch": epoch + 1, "loss": loss, "seconds": time.perf_counter() - started, **metrics})
        accelerator.log(
            {f"{name}/train_loss": loss, **{f"{name}/valid_{k}": v for k, v in metrics.items()}}, step=epoch + 1
        )
        accelerator.print(f"{name} epoch {epoch + 1}: loss {loss:.4f}  valid ndcg@10 {metrics['ndcg@10']:.4f}")
        if metrics["ndcg@10"] > best:  # the gathered metrics are the same on every rank
            best, best_epoch = metrics["ndcg@10"], epoch
            best_state = {k: v.clone() for k, v in unwrapped.state_dict().items()}
        elif args.early_stopping_patience and epoch - best_epoch >= args.early_stopping_patience:
            accelerator.print(f"{name}: no valid NDCG@10 gain for {args.early_stopping_patience} epochs, stopping")
            break
    unwrapped.load_state_dict(best_state)
    if is_missrec:  # interests from the kept weights: a reloaded model (or adapter) rediscovers the same ones
        discover_interests_once(accelerator, model)
    return model, history


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator = Accelerator(
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        log_with=[JSONLinesTracker("train_log", args.output_dir)],
    )
    accelerator.init_trackers("missrec", config=dataclasses.asdict(args))
    set_seed(args.seed)
    demo = {"demo_num_items": args.num_items, "demo_num_users": args.num_users, "demo_seed": args.seed}
    with accelerator.main_process_first():  # the main process builds the datasets cache, the others reuse it
        domain = load_domain(args.domain, data_dir=args.data_dir, **(demo if args.domain == "demo" else {}))
    features = catalogue_features(domain.items)
    dims = {
        "text_feature_dim": features["text_features"].shape[1],
        "image_feature_dim": features["image_features"].shape[1],
    }
    if args.pretrained is None:
        model = MISSRecModel(load_preset(args.preset, id_mode=args.id_mode, **dims))
    else:
        model = MISSRecModel.from_pretrained(args.pretrained)
        found = {key: getattr(model.config, key) for key in dims}
        if found != dims or model.config.id_mode != args.id_mode:
            raise ValueError(
                f"pre-trained model {args.pretrained} has feature dims {found} and id_mode "
                f"{model.config.id_mode!r}; the data and recipe need {dims} and id_mode {args.id_mode!r}"
            )
    config = model.config
    model.set_catalogue(**features)
    model = apply_finetuning_strategy(model, args.strategy)
    loaders = {split: SequenceCollator(domain.sequences[split], config.max_seq_length) for split in domain.sequences}
    results = {"recipe": dataclasses.asdict(args), "num_processes": accelerator.num_processes}
    model, results["epochs"] = fit(accelerator, model, loaders["train"], loaders["validation"], args)
    scorers = {"MISSRec": ("", model)}
    if "sasrec" in args.baselines:
        set_seed(args.seed)
        sasrec = SASRecModel(SASRecConfig(num_items=domain.num_items, max_seq_length=config.max_seq_length))
        sasrec, results["sasrec_epochs"] = fit(accelerator, sasrec, loaders["train"], loaders["validation"], args)
        scorers["SASRec"] = ("sasrec_", sasrec)
    scorers["Popularity"] = ("popularity_", PopularityRecommender(loaders["train"].targets, domain.num_items))

    both = {"batch_size": args.batch_size, "protocols": ("official", "exclude_history"), "accelerator": accelerator}
    for prefix, scorer in scorers.values():
        metrics = evaluate_ranking(scorer, loaders["test"], **both)
        results[f"{prefix}test"], results[f"{prefix}test_exclude_history"] = (
            metrics["official"],
            metrics["exclude_history"],
        )
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        accelerator.unwrap_model(model).save_pretrained(args.output_dir)  # a PEFT adapter folder for "lora"
        results["saved_megabytes"] = folder_megabytes(args.output_dir)
        if args.pretrained is not None and os.path.isdir(args.pretrained):
            results["pretrained_megabytes"] = folder_megabytes(args.pretrained)
        with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
            json.dump(results, f, indent=2)
        histories = {"MISSRec": results["epochs"]} | (
            {"SASRec": results["sasrec_epochs"]} if "sasrec_epochs" in results else {}
        )
        plot_curves(histories, os.path.join(args.output_dir, "curves.png"))
    accelerator.end_training()

    accelerator.print("\n| model | HR@10 | NDCG@10 | HR@50 | NDCG@50 |\n|---|---|---|---|---|")
    for name, (prefix, _) in scorers.items():
        m = results[f"{prefix}test"]
        accelerator.print(f"| {name} | {m['hr@10']:.4f} | {m['ndcg@10']:.4f} | {m['hr@50']:.4f} | {m['ndcg@50']:.4f} |")
    accelerator.print(f"\nmodel saved to {args.output_dir}")
    return results


if __name__ == "__main__":
    main()
