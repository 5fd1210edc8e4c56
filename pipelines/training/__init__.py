"""Training MISSRec and its baselines: the loop `train.py` and `tune.py` run (`loop`, `tuning`), what a
fine-tuning strategy trains and the LoRA adapter (`finetuning`), resumable checkpoints (`checkpointing`),
interest discovery as a training step and a `transformers` `Trainer` callback (`interest_discovery`), and the
training logs and curves (`tracking`)."""

from .checkpointing import (
    TrainingProgress,
    list_checkpoints,
    load_best_weights,
    recover_interrupted_saves,
    save_checkpoint,
)
from .finetuning import STRATEGIES, apply_finetuning_strategy, match_catalogue_modalities
from .interest_discovery import InterestDiscoveryCallback, discover_interests_on_every_rank
from .loop import (
    build_missrec,
    build_optimizer,
    fit,
    fit_missrec,
    fit_sasrec,
    id_modes_to_try,
    load_training_data,
    missrec_to_train,
    run_training,
    train_and_evaluate,
    training_collator,
    training_head,
)
from .tracking import JSONLinesTracker, plot_curves, run_trackers

__all__ = [
    "STRATEGIES",
    "InterestDiscoveryCallback",
    "JSONLinesTracker",
    "TrainingProgress",
    "apply_finetuning_strategy",
    "build_missrec",
    "build_optimizer",
    "discover_interests_on_every_rank",
    "fit",
    "fit_missrec",
    "fit_sasrec",
    "id_modes_to_try",
    "list_checkpoints",
    "load_best_weights",
    "load_training_data",
    "match_catalogue_modalities",
    "missrec_to_train",
    "plot_curves",
    "run_trackers",
    "run_training",
    "recover_interrupted_saves",
    "save_checkpoint",
    "train_and_evaluate",
    "training_collator",
    "training_head",
]
