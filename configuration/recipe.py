"""Training recipes: a YAML file of settings, any of which the command line overrides (`--key value`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import traceback
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from accelerate.utils import LoggerType

from .presets import available_presets

# The `transformers.get_scheduler` schedules that need nothing but the warm-up and total steps (not those that
# step on a metric or take extra arguments).
LR_SCHEDULES = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
)
BASELINES = ("sasrec", "scratch", "content-knn")
ZERO_SHOT = {("finetune", "full", "inductive"), ("finetune", "full", "auto")}  # (stage, strategy, id_mode) of epochs 0
RESUME_IF_ANY = "latest-if-any"  # resume_from_checkpoint: resume when output_dir holds checkpoints, else start afresh
SNAPSHOT_PREFIX = "epoch-"  # `save_epochs` writes the model after epoch N to `output_dir/epoch-<N>/`


def default_recipe_path() -> Path:
    """The recipe `train.py` runs without `--config` (the demo job), from the source tree or the installed package."""
    return Path(__file__).parent / "recipes" / "demo.yaml"


@dataclass
class TrainingRecipe:
    """What `train.py` runs.

    Attributes:
        stage: `"finetune"` (full-catalogue cross-entropy on one domain) or `"pretrain"` (the in-batch
            contrastive losses over a mix of domains, with the augmented views; no item ids).
        domain: `"demo"` (`"demo-<k>"`: the demo domain of seed k), an Amazon domain or the prefix of one's own
            MISSRec-format files; a list of them is mixed into one catalogue (pre-training).
        data_dir: folder of the domains' files (several domains can share it: files are prefixed by the domain
            name); a `{domain}` in it is replaced by each domain's name (`data/{domain}` for one folder a domain).
        source: where the files come from: `"missrec"` (the MISSRec/UniSRec pre-processed files), `"atomic"`
            (RecBole atomic files: `<D>.inter` + `<D>.item`, features extracted by the project), `"raw"` (raw
            Amazon 2018 reviews); `None`: `"missrec"` (`"demo"` for demo domains).
        text_encoder: the text features extracted for `atomic` and `raw` sources: `"sentence"` (the offline
            all-MiniLM-L6-v2, 384-d) or `"clip"` (CLIP's text tower); `None`: the source's default (`sentence` for
            atomic files, `clip` for raw Amazon data).
        text_fields: atomic files only: the `.item` columns that make an item's text (`None`: every text column).
        num_users, num_items: size of the demo domains.
        preset: a model preset of `configuration/models/` (a model trained from scratch).
        pretrained: instead of a preset, a folder (or Hub id) of a pre-trained MISSRec to fine-tune.
        pretrained_learning_rate: the learning rate a `pretrained` model fine-tunes with (`None`:
            `learning_rate`, which models from scratch, the `scratch` baseline included, train with). A rate chosen
            for random weights moves a pre-trained model away from what it knew in its first epoch. The repeat
            offsets (`repeat_bias`), a property of the target domain, keep `learning_rate`.
        config_overrides: MISSRec config attributes to set on the model (dropout, `score_temperature`, the
            interest settings, ...), as a mapping (`{hidden_dropout_prob: 0.3}` in YAML) or the `transformers`
            examples' string form (`--config_overrides hidden_dropout_prob=0.3,score_temperature=0.05`). They
            change the preset's config, or the config a `pretrained` model loads with (there, attributes that
            shape the weights fail to load); the catalogue's fields (`num_items`, `id_mode`, ...) are set by the
            data and cannot be overridden. SASRec is not affected.
        sasrec_config_overrides: SASRec config attributes for the `sasrec` baseline (e.g. its dropout, chosen on
            validation as MISSRec's settings are), in the same forms as `config_overrides`.
        sasrec_learning_rate: the `sasrec` baseline's learning rate (`None`: `learning_rate`).
        strategy: what trains: `"full"`, `"frozen"` (the paper's fine-tuning) or `"lora"` (a PEFT adapter, saved
            as the output); `frozen` and `lora` need `pretrained`.
        id_mode: `"inductive"`, `"transductive"` (a pre-trained inductive model gets a new item-id embedding), or
            `"auto"`: train both (twice the cost) and keep the one of the best validation NDCG@10; ids help where
            items have many interactions and say little in their text, and hurt on a sparse catalogue, which
            only validation tells apart on a new domain.
        interest_ratio: K = ceil(interest_ratio * 2N) interests; `None`: the paper's 0.02 for pre-training and
            0.5 for fine-tuning.
        item_drop_ratio, word_drop_ratio: pre-training augmentations (word drop needs `alt_text_features`).
        in_batch_log_q: pre-training: subtract each in-batch target's log share of the training targets from the
            sequence->item logits (the logQ correction; the paper: none). A batch's other targets are its
            negatives, drawn by popularity; uncorrected, popular items are pushed down, which full-catalogue
            ranking pays for.
        max_train_examples: train on a seeded random sample of this many training examples (of the mix, for
            several domains) instead of all of them (`None`: all). A bound on the cost of an epoch for large or
            dense domains; every model of the run (and the popularity counts) sees the same sample.
        train_user_fraction: train on the examples of a seeded random sample of this share of the training users
            (all of each sampled user's examples; `None`: every user), in (0, 1]: the few-shot arms of a transfer
            study. Validation and test keep their users. Applied before `max_train_examples`.
        max_eval_examples: validate and test on a seeded random sample of this many users of each split (`None`:
            all). Full ranking over a large mixed catalogue costs minutes a pass on a CPU; the sample bounds it.
        epochs, batch_size, learning_rate, seed: optimisation (AdamW; with `weight_decay` 0 it is the paper's Adam).
            `epochs: 0` with `pretrained` is zero-shot: the pre-trained model is evaluated and saved as it is, its
            interests discovered on this catalogue, nothing trained (inductive, strategy `full`).
        lr_scheduler_type: the learning-rate schedule over `epochs`, by its `transformers.get_scheduler` name:
            `"constant"` (the paper's), `"constant_with_warmup"`, `"linear"`, `"cosine"`, `"cosine_with_restarts"`,
            `"polynomial"` or `"inverse_sqrt"`; all but `"constant"` start with `warmup_ratio` of the optimiser
            steps of linear warm-up.
        warmup_ratio: the share of the optimiser steps spent warming up, in [0, 1) (the paper: 0).
        weight_decay: AdamW's decoupled weight decay of the weight matrices and embeddings (not of biases or
            LayerNorm gains), >= 0 (the paper: 0).
        max_grad_norm: clip the gradients' global norm to this before each optimiser step (`None`: no clipping, the
            paper's).
        loss: MISSRec's fine-tuning softmax: `"full"` (over the whole catalogue, the paper's) or `"sampled"` (over
            each batch's targets plus `num_negatives` sampled items, logQ-corrected; only those items are embedded
            and scored, which is what makes catalogues of millions of items trainable). SASRec keeps the full one.
        num_negatives: the negatives a batch of the sampled softmax draws (shared by its rows).
        negative_sampling: where they are drawn from: `"uniform"` over the catalogue or `"popularity"` (by how
            often each item is a training target).
        report_to: where the per-epoch losses and metrics go: `"jsonl"` (`output_dir/train_log.jsonl`, always
            available), any Accelerate tracker (`"tensorboard"`, `"wandb"`, `"mlflow"`, ...; it must be
            installed), or `"all"` (jsonl and every installed Accelerate tracker). Local trackers write under
            `output_dir`.
        eval_batch_size: histories per full-ranking batch in validation and test (larger batches only cost
            memory: each holds a `[batch, num_items]` score matrix).
        gradient_accumulation_steps: batches per optimiser step (Accelerate's gradient accumulation).
        early_stopping_patience: stop after this many epochs without a valid NDCG@10 gain (`None`: never).
        validation_protocol: the protocol of the validation NDCG@10 that early stopping, the kept weights,
            `id_mode: auto` and `tune.py` go by: `"official"` (the history's items are ranked too, as in the
            paper) or `"exclude_history"` (they are not, as the pipeline serves by default).
        metrics_at: the cut-offs K of HR@K, NDCG@K and MRR@K in validation and `metrics.json`; must include 10
            (early stopping) and 50 (the results table). The official MISSRec code prints each cut-off one rank
            deeper: add 11 and 51 to compare with its numbers.
        baselines: trained and evaluated beside MISSRec, drawn from `"sasrec"`, `"scratch"` (MISSRec from
            `preset` with the same fine-tuning budget, to measure what pre-training brings; needs `pretrained`)
            and `"content-knn"` (untrained: items by the cosine of their text features to the mean of the last
            items', the number of items chosen on validation). Popularity is always reported.
        output_dir: where the model and `metrics.json` go.
        overwrite_output_dir: a run that does not resume refuses an `output_dir` holding checkpoints unless this
            is set (they are then deleted).
        checkpointing_steps: save a resumable checkpoint every this many optimiser steps and at the end of every
            epoch (an integer; with gradient accumulation a step is `gradient_accumulation_steps` batches), at the
            end of every epoch only (`"epoch"`), or never (`None`). Checkpoints go to `output_dir/checkpoints/<model>/`.
        checkpoints_total_limit: how many checkpoints of each model are kept (the newest).
        save_epochs: save MISSRec as it is after each of these epochs (its weights and interests then, not the best
            ones) into `output_dir/epoch-<N>/`, a folder `pretrained` loads: the bases of a pre-training budget
            curve. `None`: none.
        resume_from_checkpoint: `"latest"` resumes from the newest checkpoints in `output_dir`, a folder resumes
            from that run's; each model resumes where it stopped (a finished one is not trained again).
            `"latest-if-any"` resumes as `"latest"` when `output_dir` holds checkpoints and otherwise starts afresh
            (as `overwrite_output_dir`): the same command starts a long run and, after a kill, continues it.
    """

    stage: str = "finetune"
    domain: str | list[str] = "demo"
    data_dir: str | None = None
    source: str | None = None
    text_encoder: str | None = None
    text_fields: list[str] | None = None
    num_users: int = 1000
    num_items: int = 600
    preset: str = "missrec-tiny"
    pretrained: str | None = None
    pretrained_learning_rate: float | None = None
    config_overrides: dict | None = None
    sasrec_config_overrides: dict | None = None
    sasrec_learning_rate: float | None = None
    strategy: str = "full"
    id_mode: str = "inductive"
    interest_ratio: float | None = None
    item_drop_ratio: float = 0.2
    word_drop_ratio: float = 0.0
    in_batch_log_q: bool = False
    max_train_examples: int | None = None
    train_user_fraction: float | None = None
    max_eval_examples: int | None = None
    epochs: int = 8
    batch_size: int = 256
    eval_batch_size: int = 512
    learning_rate: float = 1e-3
    lr_scheduler_type: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    loss: str = "full"
    num_negatives: int = 1024
    negative_sampling: str = "uniform"
    report_to: list[str] = field(default_factory=lambda: ["jsonl"])
    seed: int = 0
    gradient_accumulation_steps: int = 1
    early_stopping_patience: int | None = 10
    validation_protocol: str = "official"
    metrics_at: list[int] = field(default_factory=lambda: [10, 20, 50])
    baselines: list[str] = field(default_factory=lambda: ["sasrec"])
    output_dir: str = "runs/demo"
    overwrite_output_dir: bool = False
    checkpointing_steps: int | str | None = None
    checkpoints_total_limit: int = 2
    save_epochs: list[int] | None = None
    resume_from_checkpoint: str | None = None

    def __post_init__(self) -> None:
        # The overrides' string form (`a=1,b=0.5`) first: it is a mapping once parsed.
        self.config_overrides = parse_config_overrides(self.config_overrides)
        self.sasrec_config_overrides = parse_config_overrides(self.sasrec_config_overrides)
        for key, annotation in typing.get_type_hints(type(self)).items():
            setattr(self, key, typed_value(key, getattr(self, key), annotation))
        if self.stage not in ("finetune", "pretrain"):
            raise ValueError(f"stage={self.stage!r} is not one of ['finetune', 'pretrain']")
        domains = self.domains
        if not domains or not all(isinstance(d, str) and d for d in domains) or len(set(domains)) != len(domains):
            raise ValueError(f"domain={self.domain!r} must be a domain name or a list of distinct names")
        if self.source not in (None, "missrec", "atomic", "raw"):
            raise ValueError(f"source={self.source!r} is not one of ['missrec', 'atomic', 'raw'] or null")
        if self.text_encoder not in (None, "sentence", "clip"):
            raise ValueError(f"text_encoder={self.text_encoder!r} is not one of ['sentence', 'clip'] or null")
        if self.text_fields is not None and (
            not isinstance(self.text_fields, list) or not all(isinstance(f, str) and f for f in self.text_fields)
        ):
            raise ValueError(f"text_fields={self.text_fields!r} must be a list of .item column names or null")
        for key in ("sasrec_learning_rate", "pretrained_learning_rate"):
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                raise ValueError(f"{key}={getattr(self, key)!r} must be > 0 or null")
        if self.loss not in ("full", "sampled"):
            raise ValueError(f"loss={self.loss!r} is not one of ['full', 'sampled']")
        if self.in_batch_log_q and self.stage != "pretrain":
            raise ValueError("in_batch_log_q corrects pre-training's in-batch loss; fine-tuning: loss='sampled'")
        if self.loss == "sampled" and self.stage != "finetune":
            raise ValueError("loss='sampled' is fine-tuning's softmax; pre-training contrasts within the batch already")
        if self.negative_sampling not in ("uniform", "popularity"):
            raise ValueError(f"negative_sampling={self.negative_sampling!r} is not one of ['uniform', 'popularity']")
        if not isinstance(self.num_negatives, int) or self.num_negatives < 1:
            raise ValueError(f"num_negatives={self.num_negatives!r} must be an integer >= 1")
        if self.validation_protocol not in ("official", "exclude_history"):
            raise ValueError(
                f"validation_protocol={self.validation_protocol!r} is not one of ['official', 'exclude_history']"
            )
        if self.stage == "pretrain" and (self.strategy != "full" or self.id_mode != "inductive"):
            raise ValueError(
                "stage='pretrain' trains every parameter without item ids: strategy full, id_mode inductive"
            )
        if self.interest_ratio is not None and not 0 < self.interest_ratio <= 1:
            raise ValueError(f"interest_ratio={self.interest_ratio!r} must be in (0, 1] or null")
        for name in ("item_drop_ratio", "word_drop_ratio"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be in [0, 1)")
        if self.checkpointing_steps not in (None, "epoch") and not (
            isinstance(self.checkpointing_steps, int) and self.checkpointing_steps >= 1
        ):
            raise ValueError(
                f"checkpointing_steps={self.checkpointing_steps!r} must be an integer >= 1, 'epoch' or null"
            )
        if self.resume_from_checkpoint == RESUME_IF_ANY and self.checkpointing_steps is None:
            # it would never find a checkpoint, and so start over every time, replacing the finished run
            raise ValueError(f"resume_from_checkpoint={RESUME_IF_ANY} needs checkpointing_steps (an integer or epoch)")
        if self.save_epochs is not None and not (
            isinstance(self.save_epochs, list)
            and all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in self.save_epochs)
        ):
            raise ValueError(f"save_epochs={self.save_epochs!r} must be a list of epochs >= 1 or null")
        if not isinstance(self.checkpoints_total_limit, int) or self.checkpoints_total_limit < 1:
            raise ValueError(f"checkpoints_total_limit={self.checkpoints_total_limit!r} must be an integer >= 1")
        if self.id_mode not in ("inductive", "transductive", "auto"):
            raise ValueError(f"id_mode={self.id_mode!r} is not one of ['inductive', 'transductive', 'auto']")
        if self.early_stopping_patience is not None and (
            not isinstance(self.early_stopping_patience, int) or self.early_stopping_patience < 1
        ):
            raise ValueError(
                f"early_stopping_patience={self.early_stopping_patience!r} must be an integer >= 1 or null"
            )
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name}={value!r} must be an integer >= 1 or null")
        fraction = self.train_user_fraction
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, int | float)):
            raise ValueError(f"train_user_fraction={fraction!r} must be a number in (0, 1] or null")
        if fraction is not None and not 0 < fraction <= 1:
            raise ValueError(f"train_user_fraction={fraction!r} must be in (0, 1] or null")
        integers = ("batch_size", "eval_batch_size", "num_users", "num_items", "gradient_accumulation_steps")
        if not isinstance(self.epochs, int) or self.epochs < 0 or (self.epochs == 0 and self.pretrained is None):
            raise ValueError(f"epochs={self.epochs!r} must be an integer >= 1 (0: zero-shot, with pretrained)")
        if self.zero_shot and (self.stage, self.strategy, self.id_mode) not in ZERO_SHOT:
            raise ValueError(
                f"epochs=0 evaluates the pre-trained model as it is (zero-shot): stage finetune, strategy full and "
                f"id_mode inductive or auto, not {self.stage}, {self.strategy}, {self.id_mode}"
            )
        if self.zero_shot and {"sasrec", "scratch"} & set(self.baselines):
            raise ValueError(
                f"epochs=0 trains nothing, so baselines {self.baselines} would be untrained: use [content-knn]"
            )
        for name in integers:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be an integer >= 1")
        if self.strategy not in ("full", "frozen", "lora"):
            raise ValueError(f"strategy={self.strategy!r} is not one of ['full', 'frozen', 'lora']")
        if self.strategy != "full" and self.pretrained is None:
            raise ValueError(f"strategy={self.strategy!r} fine-tunes a pre-trained model: set pretrained")
        cutoffs = self.metrics_at
        if not isinstance(cutoffs, list) or not all(type(k) is int and k >= 1 for k in cutoffs):
            raise ValueError(f"metrics_at={cutoffs!r} must be a list of integers >= 1")
        if not {10, 50} <= set(cutoffs) or len(set(cutoffs)) != len(cutoffs):
            raise ValueError(f"metrics_at={cutoffs!r} must hold 10 (early stopping) and 50 (the table), each once")
        if not isinstance(self.baselines, list) or not set(self.baselines) <= set(BASELINES):
            raise ValueError(f"baselines={self.baselines!r} must be a list drawn from {list(BASELINES)}")
        if "scratch" in self.baselines and self.pretrained is None:
            raise ValueError("baseline 'scratch' compares a pre-trained model with one from scratch: set pretrained")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate!r} must be > 0")
        if self.lr_scheduler_type not in LR_SCHEDULES:
            raise ValueError(f"lr_scheduler_type={self.lr_scheduler_type!r} is not one of {list(LR_SCHEDULES)}")
        if not isinstance(self.warmup_ratio, (int, float)) or not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio!r} must be in [0, 1)")
        if self.warmup_ratio and self.lr_scheduler_type == "constant":
            raise ValueError("lr_scheduler_type='constant' has no warm-up: use 'constant_with_warmup'")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay!r} must be >= 0")
        if self.max_grad_norm is not None and not (
            isinstance(self.max_grad_norm, (int, float)) and self.max_grad_norm > 0
        ):
            raise ValueError(f"max_grad_norm={self.max_grad_norm!r} must be > 0 or null")
        trackers = ["jsonl", "all", *(t.value for t in LoggerType if t.value != "all")]
        report_to = [self.report_to] if isinstance(self.report_to, str) else self.report_to
        if not isinstance(report_to, list) or not report_to or not set(report_to) <= set(trackers):
            raise ValueError(f"report_to={self.report_to!r} must be a non-empty list drawn from {trackers}")
        self.report_to = report_to

    @property
    def domains(self) -> list[str]:
        """The domain names, as a list."""
        return [self.domain] if isinstance(self.domain, str) else list(self.domain)

    def missrec_learning_rate(self, from_scratch: bool = False) -> float:
        """The learning rate MISSRec trains with: `pretrained_learning_rate` for a `pretrained` model (when set),
        `learning_rate` for a model from a preset and for the `scratch` baseline (`from_scratch`)."""
        if self.pretrained is None or from_scratch or self.pretrained_learning_rate is None:
            return self.learning_rate
        return self.pretrained_learning_rate

    @property
    def zero_shot(self) -> bool:
        """Whether the run evaluates its pre-trained model as it is, nothing trained (`epochs: 0`)."""
        return self.epochs == 0

    @property
    def resume_run_dir(self) -> str | None:
        """The run folder `resume_from_checkpoint` points to (`"latest"`, `"latest-if-any"`: this `output_dir`), or
        None."""
        if self.resume_from_checkpoint in ("latest", RESUME_IF_ANY):
            return self.output_dir
        return self.resume_from_checkpoint

    @property
    def training_settings(self) -> dict:
        """The keys that decide what a run computes: a checkpoint resumes only under the same ones."""
        bookkeeping = {"output_dir", "overwrite_output_dir", "checkpointing_steps", "checkpoints_total_limit"}
        bookkeeping |= {"save_epochs"}
        bookkeeping |= {"resume_from_checkpoint", "early_stopping_patience", "metrics_at", "eval_batch_size"}
        # A schedule spans `epochs`; only under a constant rate can a resumed run change the number of epochs.
        bookkeeping |= {"report_to"} | ({"epochs"} if self.lr_scheduler_type == "constant" else set())
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in bookkeeping}

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def parse_config_overrides(overrides: dict | str | None) -> dict | None:
    """`config_overrides` as a mapping: a mapping is kept, `"a=1,b=0.5"` (the `transformers` examples' form) is
    split into `{"a": 1, "b": 0.5}` (values read as on the command line), `None` and `""` are `None`."""
    if overrides is None or overrides == "":
        return None
    if isinstance(overrides, str):
        pairs = [pair.partition("=") for pair in overrides.split(",")]
        if not all(key.strip() and sep for key, sep, _ in pairs):
            raise ValueError(f"config_overrides={overrides!r} must read name=value,name=value")
        overrides = {key.strip(): _parse_value(value.strip()) for key, _, value in pairs}
    if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
        raise ValueError(f"config_overrides={overrides!r} must be a mapping of config attributes to values")
    return dict(overrides)


def typed_value(key: str, value: Any, annotation: Any) -> Any:
    """`value` of recipe key `key` as its field's type `annotation`, or a `ValueError` naming the key, the value and
    the type. YAML and the command line give strings for what a user means as numbers or booleans (`1e-3` is a
    string to YAML, `"false"` a string in quotes), so a string that reads as the expected number or boolean is
    converted; a boolean is never a number (`epochs: true` is an error), and a single value for a list field is a
    one-item list."""
    if annotation is Any:
        return value
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    if options:
        if value is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return typed_value(key, value, option)
            except ValueError:
                continue
    elif typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (Any,)
        values = value if isinstance(value, list) else [value]
        return [typed_value(key, v, item) for v in values]
    elif annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
    elif annotation in (int, float):
        if isinstance(value, bool):
            pass  # a boolean is not a number
        elif isinstance(value, int) or (annotation is float and isinstance(value, float)):
            return annotation(value)
        elif isinstance(value, str):
            try:
                return annotation(value.strip())
            except ValueError:
                pass
    elif isinstance(annotation, type) and isinstance(value, annotation):
        return value
    expected = getattr(annotation, "__name__", None) or str(annotation)
    raise ValueError(f"recipe key {key}: {value!r} is not a valid {expected}")


def _parse_value(raw: str):
    """A command-line value: an int, a float (`1e-3` included), else YAML (`null`, `true`, a list, a string)."""
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return yaml.safe_load(raw)


def load_recipe(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainingRecipe:
    """Read a recipe and apply `--key value` overrides.

    Args:
        path: a YAML recipe (default: the demo recipe).
        overrides: command-line words, `["--epochs", "3", "--output_dir", "runs/x"]` (`--key=value` works too).

    Returns:
        A validated [`TrainingRecipe`]. Unknown keys, in the file or on the command line, raise a `ValueError`
        listing the valid ones.
    """
    path = Path(path) if path is not None else default_recipe_path()
    if not path.is_file():
        shipped = sorted(p.name for p in default_recipe_path().parent.glob("*.yaml"))
        raise FileNotFoundError(f"recipe {path} does not exist (recipes shipped with the package: {shipped})")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ValueError(f"{path}: {where}not valid YAML ({getattr(error, 'problem', None) or error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe is a mapping of keys to values")
    words = list(overrides or [])
    while words:
        word = words.pop(0)
        if not word.startswith("--"):
            raise ValueError(f"expected --key value on the command line, got {word!r}")
        key, _, raw = word[2:].partition("=")
        if not _:
            if not words:
                raise ValueError(f"--{key} needs a value")
            raw = words.pop(0)
        values[key] = _parse_value(raw)
    unknown = sorted(set(values) - set(TrainingRecipe.keys()))
    if unknown:
        raise ValueError(f"unknown recipe keys {unknown}; valid keys: {TrainingRecipe.keys()}")
    return TrainingRecipe(**values)


# What a user's input can get wrong (a data file, a folder, a recipe value, a diverging loss): reported in one line.
INPUT_ERRORS = (ValueError, OSError, FloatingPointError)
DEBUG_HELP = "show an error's full traceback (default: one line naming the file, line or key at fault)"


@contextmanager
def errors_in_one_line(program: str, argv: list[str] | None) -> Iterator[None]:
    """Turn an [`INPUT_ERRORS`] error into one line, `<program>: error: <message> (traceback: FILE; ...)`, and exit
    status 1, unless `--debug` is in `argv` (`None`: `sys.argv`), which keeps the traceback. Messages name the
    file and line (data), the folder (runs) or the key (recipes) at fault; the traceback goes to a file, so an
    error that is a bug, not bad input, can still be traced without a rerun."""
    try:
        yield
    except INPUT_ERRORS as error:
        if "--debug" in (sys.argv[1:] if argv is None else argv):
            raise
        with tempfile.NamedTemporaryFile("w", prefix=f"{program}-error-", suffix=".log", delete=False) as log:
            traceback.print_exc(file=log)
        raise SystemExit(f"{program}: error: {error} (traceback: {log.name}; --debug prints it)") from None


def parse_recipe_args(argv: list[str] | None = None, description: str | None = None) -> TrainingRecipe:
    """The recipe of a command line: `--config RECIPE.yaml` (default: the demo recipe) and `--key value`
    overrides of any recipe key; `--help` prints `description` and lists the keys and the model presets.
    A bad recipe or key exits with the parser's usage message."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Recipe keys (each overridable as --key value): {', '.join(TrainingRecipe.keys())}. "
        f"Model presets: {', '.join(available_presets())}.",
    )
    parser.add_argument("--config", default=None, help=f"YAML recipe (default: {default_recipe_path()})")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args, overrides = parser.parse_known_args(argv)
    try:
        return load_recipe(args.config, overrides)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
