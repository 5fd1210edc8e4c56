"""The training loop of `train.py` (and of `tune.py`'s trials): MISSRec, its baselines, their evaluation and
what a run saves.

`run_training(recipe)` is what `python train.py` and `accelerate launch train.py` run: it loads the recipe's
data (`load_training_data`: one domain, or several mixed into one catalogue), builds MISSRec from a preset or a
pre-trained folder (`build_missrec`), prepares it with the recipe's fine-tuning strategy, trains it in each id mode
`id_mode: auto` asks for (`fit_missrec`, keeping the better on validation), trains SASRec and MISSRec from scratch
under the same budget when asked, evaluates every model on the test split under both protocols and saves the
model (or the LoRA adapter with its catalogue), `metrics.json` and the curves. `fit` is the loop of one model:
interests re-discovered before every epoch, early stopping on validation NDCG@10, best weights kept, resumable
checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from datasets import Dataset
from peft import PeftModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from ... import (
    MISSRecConfig,
    MISSRecForPreTraining,
    MISSRecForSequentialRecommendation,
    MISSRecModel,
    SASRecConfig,
    SASRecModel,
    save_catalogue,
    save_item_metadata,
    unwrap_missrec,
)
from ...configuration import TrainingRecipe, check_config_overrides, load_preset
from ...configuration.recipe import RESUME_IF_ANY, SNAPSHOT_PREFIX
from ..data import (
    SPLITS,
    MultiModalDomain,
    SequenceCollator,
    catalogue_features,
    catalogue_modalities,
    feature_matrix,
    load_domain,
    mix_domains,
)
from ..data.negative_sampling import InBatchLogQ, SampledCandidates
from ..evaluation import PopularityRecommender, evaluate_ranking
from ..evaluation.content_knn import select_window
from .checkpointing import (
    TrainingProgress,
    check_settings,
    checkpoint_root,
    holds_checkpoints,
    list_checkpoints,
    load_best_weights,
    match_interest_table,
    read_progress,
    recover_interrupted_saves,
    save_checkpoint,
    saved_interest_table_shape,
    trained_epochs,
)
from .finetuning import apply_finetuning_strategy, match_catalogue_modalities
from .interest_discovery import discover_interests_on_every_rank
from .output_lock import launcher_rank, locked_output_dir
from .tracking import plot_curves, run_trackers, scalar_config

PRETRAINING_INTEREST_RATIO, FINETUNING_INTEREST_RATIO = 0.02, 0.5  # the paper's
ID_MODES = ("transductive", "inductive")  # what `id_mode: auto` trains, in this order


def save_trained(head: MISSRecForPreTraining | MISSRecForSequentialRecommendation, folder: str | Path) -> None:
    """Save a trained MISSRec head: the head's folder (any MISSRec Auto class loads it), or for a PEFT model its
    adapter folder, carrying its domain's catalogue."""
    if isinstance(head.missrec, PeftModel):
        head.missrec.save_pretrained(folder)
        save_catalogue(folder, head.missrec)
    else:
        head.save_pretrained(folder)


def folder_megabytes(folder: str) -> float:
    """Size of the weight files (`*.safetensors`) in `folder`, in MB."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors")) / 1e6


def training_head(
    args: TrainingRecipe, missrec: torch.nn.Module
) -> MISSRecForPreTraining | MISSRecForSequentialRecommendation:
    """The head that trains `missrec` (a base, or a PEFT model of one) with the recipe's stage objective."""
    head = MISSRecForPreTraining if args.stage == "pretrain" else MISSRecForSequentialRecommendation
    return head.from_base(missrec)


def ranking_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """What `evaluate_ranking` scores for the prepared `model`: a pre-training head is evaluated as the
    recommendation head on the same base (full-catalogue scores); any other model as itself."""
    unwrapped = accelerator.unwrap_model(model)
    if isinstance(unwrapped, MISSRecForPreTraining):
        return MISSRecForSequentialRecommendation.from_base(unwrapped.missrec)
    return model


def load_training_data(args: TrainingRecipe) -> MultiModalDomain:
    """The recipe's domain, or its domains mixed into one catalogue. Demo domains take the recipe's size."""
    domains = []
    for name in args.domains:
        if name == "demo" or name.startswith("demo-"):
            options = {"demo_num_items": args.num_items, "demo_num_users": args.num_users}
            if name == "demo":
                options["demo_seed"] = args.seed
        else:
            options = {"source": args.source, "text_encoder": args.text_encoder, "text_fields": args.text_fields}
        data_dir = None if args.data_dir is None else args.data_dir.replace("{domain}", name)
        domains.append(load_domain(name, data_dir=data_dir, **options))
    domain = domains[0] if len(domains) == 1 else mix_domains(domains)
    train = domain.sequences["train"]
    if len(train) == 0:
        raise ValueError(f"domain {domain.name!r} has an empty training split: nothing to train on")
    if args.train_user_fraction is not None:
        domain.sequences["train"] = training_user_sample(domain, args.train_user_fraction, args.seed)
    caps = {"train": args.max_train_examples, "validation": args.max_eval_examples, "test": args.max_eval_examples}
    for split, cap in caps.items():
        rows = domain.sequences[split]
        if cap is not None and len(rows) > cap:
            sample = np.random.default_rng([args.seed, SPLITS.index(split)]).choice(len(rows), cap, replace=False)
            domain.sequences[split] = rows.select(np.sort(sample))
            domain.build[f"{split}_examples"] = {"sampled": cap, "of": len(rows)}
    return domain


def training_user_sample(domain: MultiModalDomain, fraction: float, seed: int) -> Dataset:
    """The training examples of a seeded random `fraction` of the training users (at least one user), every
    example of each; the sample is recorded in `domain.build["train_users"]`."""
    train = domain.sequences["train"]
    users = np.unique(np.asarray(train["user"]))
    count = max(1, math.ceil(fraction * len(users)))
    kept = np.random.default_rng([seed, len(SPLITS)]).choice(users, count, replace=False)  # its own stream
    domain.build["train_users"] = {"sampled": count, "of": len(users), "fraction": fraction}
    return train.select(np.flatnonzero(np.isin(np.asarray(train["user"]), kept)))


def pretrained_config(args: TrainingRecipe) -> MISSRecConfig:
    """The config of the recipe's `pretrained` model (a folder or a Hub id), or an error that says what to do."""
    try:
        return MISSRecConfig.from_pretrained(args.pretrained)
    except OSError as error:
        raise OSError(
            f"pretrained={args.pretrained!r} is neither a MISSRec folder here nor a reachable Hub model "
            f"(for the demo, run the pre-training recipe first: configuration/recipes/demo-pretrain.yaml): {error}"
        ) from error


def build_missrec(args: TrainingRecipe, features: dict[str, torch.Tensor], from_scratch: bool = False) -> MISSRecModel:
    """MISSRec from the recipe's preset (or, unless `from_scratch`, its pre-trained folder) on the catalogue, with
    the recipe's `config_overrides` set on its config.

    A model from a preset reads the modalities the catalogue has, at their widths. A pre-trained model whose
    modalities differ from the catalogue's is fitted to it by `match_catalogue_modalities` (a new adaptor for
    a modality it lacks, with a warning; zero-shot, with `epochs` 0, that modality is left out instead).
    Item-id embeddings it creates (transductive mode) start as `config.item_id_init` says; ids a pre-trained
    model learned on this catalogue are kept.
    """
    dims = {f"{name.removesuffix('_features')}_feature_dim": table.shape[1] for name, table in features.items()}
    overrides = args.config_overrides or {}
    check_config_overrides(overrides)
    added: list[str] = []
    if args.pretrained is None or from_scratch:
        modalities = catalogue_modalities(features)
        config = load_preset(args.preset, id_mode=args.id_mode, modalities=modalities, **dims, **overrides)
        model = MISSRecModel(config)
    else:
        # Rebuilt rather than set attribute by attribute, so that the overrides meet the config's checks.
        config = MISSRecConfig(**{**pretrained_config(args).to_dict(), **overrides})
        model = MISSRecModel.from_pretrained(args.pretrained, config=config)
        # Zero-shot (nothing trained): a modality the model never learned is left out, not given a random adaptor.
        read_before = model.modality_names
        features = match_catalogue_modalities(model, features, add_missing=not args.zero_shot)
        added = [m for m in model.modality_names if m not in read_before]
        if model.config.id_mode == "transductive" and args.id_mode == "inductive":
            raise ValueError(f"pre-trained model {args.pretrained} is transductive; it cannot fine-tune inductively")
    default_ratio = PRETRAINING_INTEREST_RATIO if args.stage == "pretrain" else FINETUNING_INTEREST_RATIO
    model.config.interest_ratio = args.interest_ratio or default_ratio
    learned_ids = None if args.pretrained is None or from_scratch else model.item_id_embeddings
    model.set_catalogue(**features)  # (a new catalogue size gives fresh ids)
    for m in added:  # a modality the pre-trained model lacked starts out agreeing with the ones it learned
        try:
            model.align_adaptor(m)
        except ValueError as error:  # (the modality and ridge are valid: too few items have both modalities)
            warnings.warn(f"{error}; its adaptor keeps its random initialisation", stacklevel=2)
    if args.id_mode == "transductive" and model.item_id_embeddings is None:
        model.add_item_id_embeddings()
    fresh_ids = model.item_id_embeddings is not None and model.item_id_embeddings is not learned_ids
    if fresh_ids and model.config.item_id_init == "content":
        model.init_item_ids_from_content()
    return model


def missrec_to_train(
    args: TrainingRecipe, features: dict[str, torch.Tensor], from_scratch: bool = False
) -> MISSRecForPreTraining | MISSRecForSequentialRecommendation:
    """The MISSRec that `args` trains, in its stage's head: seeded, built on the catalogue `features` (`[N, d]`
    per modality) and prepared by the recipe's fine-tuning strategy; with `from_scratch`, from the preset, every
    parameter trained (the `scratch` baseline). Used by `run_training` and `tuning`."""
    set_seed(args.seed)
    strategy = "full" if from_scratch else args.strategy
    return training_head(args, apply_finetuning_strategy(build_missrec(args, features, from_scratch), strategy))


def build_sasrec(args: TrainingRecipe, num_items: int, max_seq_length: int) -> tuple[SASRecModel, TrainingRecipe]:
    """The `sasrec` baseline of a recipe, seeded: RecBole's SASRec with `sasrec_config_overrides` on its config,
    and the recipe it trains under (`sasrec_learning_rate`, when set, as its learning rate)."""
    set_seed(args.seed)
    overrides = args.sasrec_config_overrides or {}
    for key in ("num_items", "max_seq_length"):
        if key in overrides:
            raise ValueError(f"sasrec_config_overrides: {key} is set by the data and the MISSRec model")
    config = SASRecConfig(num_items=num_items, max_seq_length=max_seq_length, **overrides)
    learning_rate = args.learning_rate if args.sasrec_learning_rate is None else args.sasrec_learning_rate
    return SASRecModel(config), dataclasses.replace(args, learning_rate=learning_rate)


def fit_sasrec(
    logger: Accelerator,
    args: TrainingRecipe,
    domain: MultiModalDomain,
    max_seq_length: int,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> tuple[torch.nn.Module, list[dict]]:
    """Train the recipe's `sasrec` baseline ([`build_sasrec`]) with `fit` on `domain`'s train and validation
    splits (next-item cross-entropy, no augmentation), reading `max_seq_length` items as MISSRec does.

    Returns:
        The kept (prepared) model and its per-epoch history.
    """
    sasrec, sasrec_args = build_sasrec(args, domain.num_items, max_seq_length)
    train, valid = (SequenceCollator(domain.sequences[split], max_seq_length) for split in ("train", "validation"))
    model, _, history = fit(logger, "SASRec", sasrec, train, valid, sasrec_args, on_epoch_end)
    return model, history


def id_modes_to_try(args: TrainingRecipe, from_scratch: bool = False) -> tuple[str, ...]:
    """The id modes a run trains MISSRec in: the recipe's, or for `id_mode: auto` both (transductive first), except
    that a transductive pre-trained model only fine-tunes transductively and a zero-shot run (`epochs: 0`) is
    inductive."""
    if args.id_mode != "auto":
        return (args.id_mode,)
    if args.zero_shot:  # zero-shot: ids that were never trained on this catalogue would score noise
        return ("inductive",)
    if args.pretrained is not None and not from_scratch and pretrained_config(args).id_mode == "transductive":
        return ("transductive",)
    return ID_MODES


def fit_missrec(
    logger: Accelerator,
    args: TrainingRecipe,
    domain: MultiModalDomain,
    features: dict[str, torch.Tensor],
    on_epoch_end: Callable[[dict], None] | None = None,
    from_scratch: bool = False,
) -> tuple[torch.nn.Module, TrainingRecipe, dict[str, list[dict]]]:
    """Train MISSRec (`missrec_to_train`, then `fit` on `domain`'s train and validation splits) in each id mode of
    `id_modes_to_try(args)` and keep the one of the best validation NDCG@10 (a tie keeps the first). Each mode's
    model is seeded, batched and trained exactly as a run with that `id_mode` alone, so `id_mode: auto` selects
    between those two runs on validation only. `features` are the catalogue's (`[N, d]` per modality);
    `from_scratch` trains the `scratch` baseline (named "MISSRec-scratch") under the same selection. A pre-trained
    model trains at the recipe's `pretrained_learning_rate` when set (`TrainingRecipe.missrec_learning_rate`), but
    its repeat offsets, a property of the target domain, at `learning_rate`.

    Returns:
        The kept (prepared) model, the recipe it trained under (its id mode and learning rate), and the per-epoch
        history of each mode trained.
    """
    modes = id_modes_to_try(args, from_scratch)
    if args.id_mode == "auto" and len(modes) == 1:
        why = "a zero-shot run is" if args.zero_shot else f"{args.pretrained} is"
        logger.print(f"id_mode auto: {why} {modes[0]}, so only {modes[0]} is evaluated or trained")
    kept, histories = None, {}
    learning_rate = args.missrec_learning_rate(from_scratch)
    for mode in modes:
        mode_args = dataclasses.replace(args, id_mode=mode, learning_rate=learning_rate)
        name = "MISSRec-scratch" if from_scratch else "MISSRec"
        name = name if len(modes) == 1 else f"{name}-{mode}"  # each mode checkpoints on its own
        model = missrec_to_train(mode_args, features, from_scratch)
        length = model.config.max_seq_length
        valid = SequenceCollator(domain.sequences["validation"], length)
        if args.zero_shot:
            model, histories[mode] = evaluate_zero_shot(name, model, valid, mode_args)
        else:
            augmented = bool(model.config.seq_seq_loss_weight)
            collator = training_collator(mode_args, domain, length, augmented_views=augmented)
            pretrained = args.pretrained is not None and not from_scratch
            fit_args = (logger, name, model, collator, valid, mode_args, on_epoch_end)
            # The repeat offsets say how often users of this domain take an item again: nothing a pre-trained
            # model knew, so they learn at the rate of new weights (a pre-trained base has none; they start at 0).
            offsets_rate = args.learning_rate if pretrained and learning_rate != args.learning_rate else None
            model, _, histories[mode] = fit(*fit_args, validate_start=pretrained, offsets_learning_rate=offsets_rate)
        score = max(row["ndcg@10"] for row in histories[mode])
        if kept is None or score > kept[0]:
            kept = (score, model, mode_args)
    best_score, model, chosen = kept
    if len(modes) > 1:
        logger.print(f"id_mode auto: {chosen.id_mode} (best validation NDCG@10 {best_score:.4f})")
    return model, chosen, histories


def evaluate_zero_shot(
    name: str, model: torch.nn.Module, valid: SequenceCollator, args: TrainingRecipe
) -> tuple[torch.nn.Module, list[dict]]:
    """`epochs: 0`: the pre-trained model as it is on this catalogue, nothing trained. Its interests are discovered on
    the catalogue's features (as every epoch of a training run does) and it is scored on the validation split.

    Returns:
        The prepared model and its history: one row, epoch 0, with the validation metrics.
    """
    accelerator = Accelerator()
    model = accelerator.prepare(model)
    model.eval()
    discover_interests_on_every_rank(model)
    protocol = args.validation_protocol
    evaluation = {"batch_size": args.eval_batch_size, "ks": args.metrics_at, "accelerator": accelerator}
    metrics = evaluate_ranking(ranking_model(accelerator, model), valid, protocols=(protocol,), **evaluation)[protocol]
    accelerator.print(f"{name} zero-shot (nothing trained): valid ndcg@10 {metrics['ndcg@10']:.4f}")
    return model, [{"epoch": 0, **metrics}]


def training_collator(
    args: TrainingRecipe, domain: MultiModalDomain, max_seq_length: int, augmented_views: bool = True
) -> SequenceCollator | SampledCandidates | InBatchLogQ:
    """Training batches; with the augmented views of pre-training for `stage: pretrain` unless not
    `augmented_views` (a model without the sequence->sequence term reads none), the logQ correction of its in-batch
    loss for `in_batch_log_q`, and with the candidates of the sampled softmax for `loss: sampled`."""
    if args.stage == "finetune":
        batches = SequenceCollator(domain.sequences["train"], max_seq_length)
        if args.loss == "full":
            return batches
        return SampledCandidates(batches, domain.num_items, args.num_negatives, args.negative_sampling, args.seed)
    text = {}
    if augmented_views and args.word_drop_ratio > 0:
        text = {name: feature_matrix(domain.items, name) for name in ("text_features", "alt_text_features")}
    views = SequenceCollator(
        domain.sequences["train"],
        max_seq_length,
        item_drop_ratio=args.item_drop_ratio if augmented_views else 0.0,
        word_drop_ratio=args.word_drop_ratio if augmented_views else 0.0,
        seed=args.seed,
        **text,
    )
    return InBatchLogQ(views) if args.in_batch_log_q else views


def build_optimizer(
    model: torch.nn.Module, args: TrainingRecipe, offsets_learning_rate: float | None = None
) -> torch.optim.AdamW:
    """AdamW over the trained parameters at `args.learning_rate`; weight decay on the weight matrices and embeddings
    only (biases and LayerNorm gains are not pulled towards zero, as in `transformers.Trainer`).
    `offsets_learning_rate`: the rate of a MISSRec model's repeat offsets instead (`config.repeat_bias`)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    repeat_bias = None if offsets_learning_rate is None else unwrap_missrec(model).repeat_bias
    offsets = set() if repeat_bias is None else {id(p) for p in repeat_bias.parameters()}
    rest = [p for p in trained if id(p) not in offsets]
    groups = [
        {"params": [p for p in rest if p.ndim >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0},
        {"params": [p for p in trained if id(p) in offsets], "weight_decay": 0.0, "lr": offsets_learning_rate},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=args.learning_rate)


def checkpoint_to_resume(args: TrainingRecipe, name: str) -> Path | None:
    """The newest checkpoint of model `name` in the run `args.resume_from_checkpoint` points to, if any."""
    if args.resume_from_checkpoint is None:
        return None
    found = list_checkpoints(checkpoint_root(args.resume_run_dir, name))
    return found[-1] if found else None


def fit(
    logger: Accelerator,
    name: str,
    model: torch.nn.Module,
    collator: SequenceCollator,
    valid: SequenceCollator,
    args: TrainingRecipe,
    on_epoch_end: Callable[[dict], None] | None = None,
    validate_start: bool = False,
    offsets_learning_rate: float | None = None,
) -> tuple[torch.nn.Module, Accelerator, list[dict]]:
    """Train `model` with AdamW for `args.epochs`, keeping the weights of the best validation NDCG@10.

    The learning rate follows `args.lr_scheduler_type` (warm-up, decay) over the `args.epochs` epochs; gradients
    are clipped to `args.max_grad_norm` when it is set.

    Stops early after `args.early_stopping_patience` epochs without a gain, and at once on a non-finite loss.
    MISSRec models re-discover their interests before every epoch. Each model gets an `Accelerator` of its own
    (its checkpoints then hold only its state); `logger` is the run's Accelerator, which holds the trackers.
    With `args.checkpointing_steps`, checkpoints go to `output_dir/checkpoints/<name>/`, and a run resuming
    (`args.resume_from_checkpoint`) continues from the newest one: same batches, same random draws.
    `on_epoch_end` is called with each epoch's history row (loss, validation metrics); an exception it raises
    stops the training (`tune.py` prunes a trial so). With `validate_start` (a pre-trained model), the model as it
    starts is validated first and is a candidate too (history row `epoch` 0, no loss): fine-tuning on few users can
    make a pre-trained model worse, and then the run keeps it as it was. Early stopping counts from the best
    trained epoch either way, so a pre-trained model trains as long as one from scratch would.
    `offsets_learning_rate`: MISSRec's repeat offsets train at this rate instead of `args.learning_rate`.

    Returns:
        The prepared (possibly DDP-wrapped) model with the best weights loaded, its Accelerator, and the
        per-epoch history.
    """
    accelerator = Accelerator(
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
    )
    optimizer = build_optimizer(model, args, offsets_learning_rate)
    # The loader's own generator: a new epoch iterator draws its worker seed from it, not from the global RNG
    # that dropout uses, so a run resumed mid-epoch makes the same dropout draws as an uninterrupted one.
    loader = DataLoader(
        range(len(collator)),
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(args.seed),
    )
    # The schedule counts the optimiser steps of one process; Accelerate's scheduler wrapper advances it by the
    # number of processes a step, as each step then covers that many batches.
    total_steps = args.epochs * math.ceil(len(loader) / args.gradient_accumulation_steps)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=math.ceil(args.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    missrec = None if isinstance(unwrapped, SASRecModel) else unwrap_missrec(unwrapped)  # SASRec has no interests
    scorer = ranking_model(accelerator, model)
    settings = {**args.training_settings, "num_processes": accelerator.num_processes}
    progress, best_state = TrainingProgress(name, settings), None
    resume = checkpoint_to_resume(args, name)
    if resume is not None:
        progress = read_progress(resume)
        check_settings(progress, settings, resume)
        match_interest_table(missrec, saved_interest_table_shape(resume))
        accelerator.load_state(str(resume))
        best_state = load_best_weights(resume)
        accelerator.print(f"{name}: resumed from {resume} (epoch {progress.epoch + 1}, batch {progress.step})")
    evaluation = {"batch_size": args.eval_batch_size, "ks": args.metrics_at, "accelerator": accelerator}

    def validate() -> dict[str, float]:
        protocol = args.validation_protocol
        return evaluate_ranking(scorer, valid, protocols=(protocol,), **evaluation)[protocol]

    if validate_start and resume is None:
        if missrec is not None:
            discover_interests_on_every_rank(model)
        started = time.perf_counter()
        metrics = validate()
        progress.history.append({"epoch": 0, "eval_seconds": time.perf_counter() - started, **metrics})
        logger.log({f"{name}/valid_{k}": v for k, v in metrics.items()}, step=0)
        accelerator.print(f"{name} before training: valid ndcg@10 {metrics['ndcg@10']:.4f}")
        progress.best, progress.best_epoch = metrics["ndcg@10"], -1
        best_state = {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}
    root = checkpoint_root(args.output_dir, name)
    save = {"accelerator": accelerator, "root": root, "total_limit": args.checkpoints_total_limit}
    every = args.checkpointing_steps if isinstance(args.checkpointing_steps, int) else None
    while not progress.finished and progress.epoch < args.epochs:
        epoch, started = progress.epoch, time.perf_counter()
        if missrec is not None and progress.step == 0:  # mid-epoch, the checkpoint holds this epoch's interests
            discover_interests_on_every_rank(model)
        model.train()
        train_loader.set_epoch(epoch)
        collator.set_epoch(epoch)
        batches = accelerator.skip_first_batches(train_loader, progress.step) if progress.step else train_loader
        description = f"{name} epoch {epoch + 1}/{args.epochs}"
        bar = tqdm(batches, desc=description, leave=False, disable=not accelerator.is_main_process)
        for batch in bar:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"{name}: loss is {loss.item()} at epoch {epoch + 1}, step {progress.step} (batch of "
                        f"histories {batch['item_seq'][:2].tolist()}..., labels {batch['labels'][:8].tolist()}...); "
                        "lower learning_rate or check the features for extreme values"
                    )
                accelerator.backward(loss)
                if args.max_grad_norm is not None and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            progress.step += 1
            progress.loss_sum += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            # Steps are optimiser steps: a checkpoint inside an accumulation cycle would lose its gradients.
            if accelerator.sync_gradients:
                progress.global_step += 1
                if every and progress.global_step % every == 0:
                    save_checkpoint(progress=progress, best_state=best_state, **save)
        trained = time.perf_counter()
        metrics = validate()
        loss = progress.loss_sum / progress.step
        seconds = {"train_seconds": trained - started, "eval_seconds": time.perf_counter() - trained}
        learning_rate = scheduler.get_last_lr()[0]
        row = {"epoch": epoch + 1, "loss": loss, "learning_rate": learning_rate, **seconds, **metrics}
        if missrec is not None and missrec.learned_temperature is not None:
            row["score_temperature"] = float(missrec.score_temperature().detach())
        progress.history.append(row)
        logged = {f"{name}/train_loss": loss, f"{name}/learning_rate": learning_rate}
        if "score_temperature" in row:
            logged[f"{name}/score_temperature"] = row["score_temperature"]
        logger.log({**logged, **{f"{name}/valid_{k}": v for k, v in metrics.items()}}, step=epoch + 1)
        learned = f"  score temperature {row['score_temperature']:.4f}" if "score_temperature" in row else ""
        accelerator.print(f"{name} epoch {epoch + 1}: loss {loss:.4f}  valid ndcg@10 {metrics['ndcg@10']:.4f}{learned}")
        if missrec is not None and epoch + 1 in (args.save_epochs or ()) and accelerator.is_main_process:
            suffix = "" if name == "MISSRec" else f"-{name}"
            save_trained(unwrapped, Path(args.output_dir) / f"{SNAPSHOT_PREFIX}{epoch + 1}{suffix}")
        if on_epoch_end is not None:
            on_epoch_end(progress.history[-1])
        progress.epoch, progress.step, progress.loss_sum = epoch + 1, 0, 0.0
        if metrics["ndcg@10"] > progress.best:  # the gathered metrics are the same on every rank
            progress.best, progress.best_epoch = metrics["ndcg@10"], epoch
            best_state = {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}
        # Patience counts from the best trained epoch: a validated start is a candidate, not a deadline.
        best_trained = max(trained_epochs(progress.history), key=lambda row: row["ndcg@10"])["epoch"]
        if args.early_stopping_patience and epoch + 1 - best_trained >= args.early_stopping_patience:
            accelerator.print(f"{name}: no valid NDCG@10 gain for {args.early_stopping_patience} epochs, stopping")
            progress.finished = True
        if args.checkpointing_steps is not None and not progress.finished:
            save_checkpoint(progress=progress, best_state=best_state, **save)
    if best_state is not None:
        match_interest_table(missrec, saved_interest_table_shape(best_state))
        unwrapped.load_state_dict(best_state)
    # No interest discovery here: the kept state holds, in its buffers, the interests its validation score was
    # measured with, so the model saved and tested is the one selected.
    if args.checkpointing_steps is not None and not (resume is not None and progress.finished):
        progress.finished = True
        save_checkpoint(progress=progress, best_state=None, **save)
    return model, accelerator, progress.history


def resolved_resume(args: TrainingRecipe) -> TrainingRecipe:
    """`resume_from_checkpoint: latest-if-any` made definite: `latest` when `output_dir` holds checkpoints, else a
    fresh run, which may replace what a start killed before its first checkpoint left there. Each process decides
    alone, before any writes: they read the same `output_dir` (one file system, as resuming assumes anyway)."""
    if args.resume_from_checkpoint != RESUME_IF_ANY:
        return args
    if holds_checkpoints(args.output_dir):
        return dataclasses.replace(args, resume_from_checkpoint="latest")
    return dataclasses.replace(args, resume_from_checkpoint=None, overwrite_output_dir=True)


def prepare_output_dir(accelerator: Accelerator, args: TrainingRecipe) -> None:
    """Refuse to mix a fresh run's checkpoints with an earlier run's, unless asked to overwrite them."""
    checkpoints = Path(args.output_dir) / "checkpoints"
    if args.resume_from_checkpoint is not None:
        checkpoints = Path(args.resume_run_dir) / "checkpoints"
        if accelerator.is_main_process:
            for model in sorted(checkpoints.glob("*")):
                for line in recover_interrupted_saves(model):
                    accelerator.print(f"{model}: {line}")
        accelerator.wait_for_everyone()
        if not any(list_checkpoints(p) for p in checkpoints.glob("*")):
            raise FileNotFoundError(f"resume_from_checkpoint: no checkpoint in {checkpoints}")
    elif checkpoints.is_dir() and any(checkpoints.iterdir()):
        if not args.overwrite_output_dir:
            raise FileExistsError(
                f"{args.output_dir} holds checkpoints of an earlier run: continue it with --resume_from_checkpoint "
                "latest, start over with --overwrite_output_dir true, or choose another --output_dir"
            )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(checkpoints)
        accelerator.wait_for_everyone()


def print_results(accelerator: Accelerator, rows: dict[str, dict]) -> None:
    accelerator.print("\n| model | HR@10 | NDCG@10 | HR@50 | NDCG@50 |\n|---|---|---|---|---|")
    for name, m in rows.items():
        accelerator.print(f"| {name} | {m['hr@10']:.4f} | {m['ndcg@10']:.4f} | {m['hr@50']:.4f} | {m['ndcg@50']:.4f} |")


def run_training(args: TrainingRecipe) -> dict:
    """Run a recipe as `train.py` does: train MISSRec and the baselines, print the results table, and save the
    model, `metrics.json`, the training log and the curves under `args.output_dir`, which the run holds locked
    (a second run into it is refused while this one lives).

    Returns:
        The results written to `metrics.json`.
    """
    folders = {os.path.realpath(f) for f in (args.output_dir, args.resume_run_dir) if f is not None}
    with contextlib.ExitStack() as held:  # resuming finishes the other run's interrupted saves: hold it too
        for folder in sorted(folders):
            held.enter_context(locked_output_dir(folder, holder=launcher_rank() == 0))
        args = resolved_resume(args)
        trackers = run_trackers(args.report_to, args.output_dir, resume=args.resume_from_checkpoint is not None)
        accelerator = Accelerator(log_with=trackers, project_dir=args.output_dir)
        prepare_output_dir(accelerator, args)
        accelerator.init_trackers("missrec", config=scalar_config(dataclasses.asdict(args)))
        with accelerator.main_process_first():  # the main process builds the datasets cache, the others reuse it
            domain = load_training_data(args)
        results, table = train_and_evaluate(accelerator, args, domain)
        # The DDP models of train_and_evaluate are gone; their reducers must be freed while every rank is still
        # here: a gloo process group destroyed after its peer exited can wait forever.
        gc.collect()
        accelerator.wait_for_everyone()
        accelerator.end_training()
    print_results(accelerator, table)
    size = f"{results['saved_megabytes']:.2f} MB" if "saved_megabytes" in results else "saved"
    if "pretrained_megabytes" in results:
        size += f"; the pre-trained base: {results['pretrained_megabytes']:.2f} MB"
    accelerator.print(f"\nmodel saved to {args.output_dir} ({size})")
    return results


def train_and_evaluate(
    accelerator: Accelerator, args: TrainingRecipe, domain: MultiModalDomain
) -> tuple[dict, dict[str, dict]]:
    """Train MISSRec and the baselines, evaluate them on the test split, save the model, metrics and curves.

    Returns:
        The results written to `metrics.json`, and the test metrics (official protocol) of each model by name.
    """
    features = catalogue_features(domain.items)
    results = {"recipe": dataclasses.asdict(args), "domain": domain.name, "num_processes": accelerator.num_processes}
    results["build"] = domain.build
    model, chosen, histories = fit_missrec(accelerator, args, domain, features)
    results["id_mode"], results["epochs"] = chosen.id_mode, histories[chosen.id_mode]
    if len(histories) > 1:
        results["id_mode_epochs"] = histories
    max_seq_length = unwrap_missrec(accelerator.unwrap_model(model)).config.max_seq_length
    loaders = {split: SequenceCollator(domain.sequences[split], max_seq_length) for split in ("validation", "test")}
    label = "MISSRec" if args.pretrained is None else f"MISSRec (pre-trained, {args.strategy})"
    label = "MISSRec (pre-trained, zero-shot)" if args.zero_shot else label
    scorers = {label: ("", ranking_model(accelerator, model))}
    if "scratch" in args.baselines:
        scratch, scratch_args, histories = fit_missrec(accelerator, args, domain, features, from_scratch=True)
        results["scratch_id_mode"], results["scratch_epochs"] = scratch_args.id_mode, histories[scratch_args.id_mode]
        scorers["MISSRec from scratch"] = ("scratch_", ranking_model(accelerator, scratch))
    if "sasrec" in args.baselines:
        sasrec, results["sasrec_epochs"] = fit_sasrec(accelerator, args, domain, max_seq_length)
        scorers["SASRec"] = ("sasrec_", sasrec)
    if "content-knn" in args.baselines:
        if "text_features" not in features:
            raise ValueError("baseline 'content-knn' ranks items by their text features, and the domain has none")
        evaluation = {"batch_size": args.eval_batch_size, "accelerator": accelerator}
        knn, windows = select_window(
            features["text_features"], loaders["validation"], args.validation_protocol, **evaluation
        )
        results["content_knn_window"], results["content_knn_valid_ndcg@10"] = knn.window, windows
        scorers[f"Content-kNN (last {knn.window})"] = ("content_knn_", knn)
    train_targets = SequenceCollator(domain.sequences["train"], max_seq_length).targets
    popularity = PopularityRecommender(train_targets, domain.num_items)
    scorers["Popularity"] = ("popularity_", popularity)

    both = {
        "batch_size": args.eval_batch_size,
        "ks": args.metrics_at,
        "protocols": ("official", "exclude_history"),
        "accelerator": accelerator,
    }
    for prefix, scorer in scorers.values():
        metrics = evaluate_ranking(scorer, loaders["test"], **both)
        results[f"{prefix}test"], results[f"{prefix}test_exclude_history"] = (
            metrics["official"],
            metrics["exclude_history"],
        )
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        save_trained(accelerator.unwrap_model(model), args.output_dir)
        items = domain.items.select_columns(["source_id", "text"]).to_dict()
        save_item_metadata(args.output_dir, items["source_id"], items["text"], popularity=popularity.counts[1:].long())
        results["saved_megabytes"] = folder_megabytes(args.output_dir)
        if args.pretrained is not None and os.path.isdir(args.pretrained):
            results["pretrained_megabytes"] = folder_megabytes(args.pretrained)
        with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
            json.dump(results, f, indent=2)
        histories = {
            name: results[key]
            for name, key in (("MISSRec", "epochs"), ("MISSRec-scratch", "scratch_epochs"), ("SASRec", "sasrec_epochs"))
            if key in results
        }
        if not args.zero_shot:  # a zero-shot run has no training curve
            plot_curves(histories, os.path.join(args.output_dir, "curves.png"))
    return results, {name: results[f"{prefix}test"] for name, (prefix, _) in scorers.items()}
