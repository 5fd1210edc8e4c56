"""Resumable training checkpoints: the Accelerate state plus where the run stood, written atomically.

A checkpoint of one trained model is a folder `<output_dir>/checkpoints/<model>/step-<global step>/` holding
what `Accelerator.save_state` writes (model weights with the catalogue and interest buffers, optimiser, data
sampler, the RNG states of every process), the best weights so far (`best_model.safetensors`) and
`progress.json` (epoch, batches done in it, best score, per-epoch history, the recipe settings, whether the
model finished). It is written to a hidden temporary folder and renamed when complete, so a run killed while
saving leaves the previous checkpoints intact; the newest `total_limit` are kept.

No kill loses a checkpoint. `progress.json` is written last and atomically, so a folder holding it is complete. A
folder saved again under the same step is first renamed aside (`.replaced-step-N`), and one pruned is renamed
(`.discarded-step-N`) before it is deleted, so no partial folder ever carries a checkpoint's name. What a kill
leaves in between, [`recover_interrupted_saves`] finishes before a run resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ...utils_missrec import write_atomically

PROGRESS_FILE = "progress.json"
BEST_WEIGHTS_FILE = "best_model.safetensors"
PREFIX = "step-"
TEMPORARY = ".tmp-"  # a save in progress (complete once it holds progress.json)
REPLACED = ".replaced-"  # a checkpoint being replaced by a new save of its step
DISCARDED = ".discarded-"  # a checkpoint being deleted


@dataclass
class TrainingProgress:
    """Where the training of one model stands.

    Attributes:
        model: the trained model's name (also its checkpoint folder).
        settings: the recipe settings of the run (`TrainingRecipe.training_settings`).
        epoch: completed epochs.
        step: batches completed in the epoch in progress.
        global_step: optimiser steps completed since the start (batches / gradient_accumulation_steps, each
            epoch's last partial cycle counting as one); checkpoints are named and taken by it.
        best: best validation NDCG@10 so far (-1 before the first evaluation).
        best_epoch: the epoch (0-based) of `best`; -1 for the model as it started (`fit`'s `validate_start`).
        loss_sum: sum of the batch losses of the epoch in progress.
        history: one dict of metrics per completed epoch (a pre-trained model's first: epoch 0, its validation
            before training).
        finished: training of this model ended (its best weights are loaded and final).
    """

    model: str
    settings: dict
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best: float = -1.0
    best_epoch: int = 0
    loss_sum: float = 0.0
    history: list[dict] = field(default_factory=list)
    finished: bool = False


def trained_epochs(history: list[dict]) -> list[dict]:
    """The rows of a training history (`TrainingProgress.history`, the `epochs` of `metrics.json`) that trained: a
    pre-trained model's history starts with its validation before training (epoch 0: no loss, no training time)."""
    return [row for row in history if row.get("epoch") != 0]


def checkpoint_root(output_dir: str | os.PathLike, model: str) -> Path:
    """The folder of `model`'s checkpoints inside a run's `output_dir`."""
    return Path(output_dir) / "checkpoints" / model


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """The complete checkpoints in `root`, oldest first (temporary folders of interrupted saves are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and _is_complete(p)]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def holds_checkpoints(output_dir: str | os.PathLike) -> bool:
    """Whether a run's `output_dir` holds a checkpoint of any model to resume from, counting a save a kill cut
    short after it was complete (which [`recover_interrupted_saves`] finishes). Reads only: safe on every process."""
    for root in sorted((Path(output_dir) / "checkpoints").glob("*")):
        if list_checkpoints(root):
            return True
        if any(map(_is_complete, root.glob(f"{TEMPORARY}*"))) or any(root.glob(f"{REPLACED}*")):
            return True
    return False


def _is_complete(folder: Path) -> bool:
    """Whether checkpoint `folder` (final or temporary) was written to the end: its `progress.json`, written last,
    is there."""
    return (folder / PROGRESS_FILE).is_file()


def read_progress(folder: str | os.PathLike) -> TrainingProgress:
    """The [`TrainingProgress`] saved in checkpoint `folder`."""
    return TrainingProgress(**json.loads((Path(folder) / PROGRESS_FILE).read_text()))


def check_settings(progress: TrainingProgress, settings: dict, folder: str | os.PathLike) -> None:
    """Refuse to resume from a checkpoint written under other recipe settings (`ValueError` naming them)."""
    keys = sorted(set(progress.settings) | set(settings))
    differ = [
        f"{k}: {progress.settings.get(k)!r} there, {settings.get(k)!r} now"
        for k in keys
        if progress.settings.get(k) != settings.get(k)
    ]
    if differ:
        raise ValueError(f"checkpoint {folder} comes from a run with other settings ({'; '.join(differ)})")


def save_checkpoint(
    accelerator: Accelerator,
    root: str | os.PathLike,
    progress: TrainingProgress,
    best_state: dict[str, torch.Tensor] | None,
    total_limit: int,
) -> Path:
    """Save the Accelerate state of every process plus `progress` and `best_state` as `root/step-<N>`.

    Every process must call it (each saves its own RNG state). Returns the checkpoint folder.
    """
    root = Path(root)
    final = root / f"{PREFIX}{progress.global_step:08d}"
    temporary = root / f"{TEMPORARY}{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if best_state is not None:
            save_file({k: v.contiguous() for k, v in best_state.items()}, str(temporary / BEST_WEIGHTS_FILE))
        progress_json = json.dumps(dataclasses.asdict(progress), indent=1).encode()
        write_atomically(temporary / PROGRESS_FILE, lambda file: file.write(progress_json))
        _install(temporary, final)
        for old in list_checkpoints(root)[:-total_limit]:
            _discard(old)
    accelerator.wait_for_everyone()
    return final


def _install(temporary: Path, final: Path) -> None:
    """Rename the complete save `temporary` to `final`; a checkpoint already there (the same step saved again, e.g.
    the end of training right after an epoch end) is renamed aside first and deleted last."""
    replaced = final.with_name(REPLACED + final.name)
    if final.exists():
        if replaced.exists():  # left by an earlier interrupted replace that no resume finished
            shutil.rmtree(replaced)
        final.rename(replaced)
    temporary.rename(final)
    shutil.rmtree(replaced, ignore_errors=True)


def _discard(folder: Path) -> None:
    """Delete a checkpoint folder, taking its name away first: a kill midway leaves no partial checkpoint."""
    doomed = folder.with_name(DISCARDED + folder.name)
    folder.rename(doomed)
    shutil.rmtree(doomed)


def recover_interrupted_saves(root: str | os.PathLike) -> list[str]:
    """Finish the saves a kill interrupted in the checkpoint folder `root`; call it on one process, before resuming.

    A complete temporary save (its `progress.json` written) becomes its checkpoint, replacing an older one of the
    same step; an incomplete one is deleted. A checkpoint renamed aside for a replacement that never happened gets
    its name back. Folders being discarded are deleted.

    Returns:
        One line per folder acted on, for the log (empty when nothing was interrupted).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    done = []
    for folder in sorted(root.iterdir()):
        name = folder.name
        if name.startswith(DISCARDED):
            shutil.rmtree(folder)
            done.append(f"deleted {name}, whose deletion was interrupted")
        elif name.startswith(TEMPORARY) and _is_complete(folder):
            _install(folder, root / name.removeprefix(TEMPORARY))
            done.append(f"completed the save of {name.removeprefix(TEMPORARY)}, interrupted before its rename")
        elif name.startswith(TEMPORARY):
            shutil.rmtree(folder)
            done.append(f"deleted {name}, a save interrupted before it was complete")
    for folder in sorted(root.glob(f"{REPLACED}*")):  # its replacement, if complete, was installed above
        final = root / folder.name.removeprefix(REPLACED)
        if final.exists():
            shutil.rmtree(folder)
        else:
            folder.rename(final)
            done.append(f"restored {final.name}, whose replacement was interrupted")
    return done


def saved_interest_table_shape(state: dict[str, torch.Tensor] | str | os.PathLike) -> tuple[int, ...] | None:
    """Shape of the interest-centroid buffer in a state dict or in a checkpoint folder (None if it has none)."""
    if isinstance(state, dict):
        return next((tuple(v.shape) for k, v in state.items() if k.endswith("interest_centroids")), None)
    with safe_open(str(Path(state) / "model.safetensors"), "pt") as f:
        key = next((k for k in f.keys() if k.endswith("interest_centroids")), None)
        return None if key is None else tuple(f.get_slice(key).get_shape())


def match_interest_table(model: torch.nn.Module | None, shape: tuple[int, ...] | None) -> None:
    """Size a MISSRec model's interest-centroid buffer `[K + 1, d]` to `shape`, so that saved weights load.

    The number of interests K comes from clustering and may change with the weights. Does nothing for other
    models (`model` None) or states without the buffer.
    """
    if model is None or shape is None:
        return
    model.set_interest_tables(model.interest_centroids.new_zeros(shape))


def load_best_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The best weights so far saved in checkpoint `folder` (a state dict), or None when it holds none."""
    path = Path(folder) / BEST_WEIGHTS_FILE
    return load_file(str(path)) if path.is_file() else None
