"""Training logs: an Accelerate tracker writing JSON lines, and the loss / validation curves as a PNG."""

from __future__ import annotations

import json
import os
from pathlib import Path

from accelerate.tracking import GeneralTracker, get_available_trackers

from .checkpointing import trained_epochs


class JSONLinesTracker(GeneralTracker):
    """An Accelerate tracker appending one JSON object per `log` call to `<logging_dir>/<run_name>.jsonl`.

    Pass it as `Accelerator(log_with=[JSONLinesTracker(run_name, logging_dir)])`; `accelerator.log(values, step)`
    then writes `{"step": step, **values}`. Only the main process writes. A fresh run starts the file with its
    configuration; a resumed run (`resume=True`) appends to it (a line `{"config": ..., "resumed": true}`), so the
    epochs logged before the interruption stay.
    """

    name = "jsonlines"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike, resume: bool = False):
        super().__init__()
        self.path = Path(logging_dir) / f"{run_name}.jsonl"
        self.resume = resume

    @property
    def tracker(self) -> Path:
        return self.path

    def store_init_configuration(self, values: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = {"config": values, **({"resumed": True} if self.resume else {})}
        with open(self.path, "a" if self.resume else "w") as f:
            f.write(json.dumps(line, default=str) + "\n")

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}, default=float) + "\n")


def run_trackers(report_to: list[str], output_dir: str | os.PathLike, resume: bool = False) -> list:
    """The `log_with` of the run's `Accelerator` for a recipe's `report_to`: `"jsonl"` is the
    [`JSONLinesTracker`] writing `output_dir/train_log.jsonl` (appending to it when the run `resume`s), `"all"`
    that and every installed Accelerate tracker, any other name that Accelerate tracker (an error naming what to
    install when it is not installed)."""
    available = {str(tracker) for tracker in get_available_trackers()}
    missing = [name for name in report_to if name not in ("jsonl", "all") and name not in available]
    if missing:
        raise ValueError(
            f"report_to names {missing}, which are not installed (installed: {sorted(available) or 'none'}): "
            f"pip install {' '.join(missing)}, or leave them out"
        )
    trackers = [name for name in report_to if name != "jsonl"]
    if "jsonl" in report_to or "all" in report_to:
        trackers.append(JSONLinesTracker("train_log", output_dir, resume=resume))
    return trackers


def scalar_config(values: dict) -> dict:
    """`values` with every value that is not a number, string or bool written as JSON text: the hyper-parameters
    TensorBoard (and most trackers) accept."""
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in values.items()}


def plot_curves(histories: dict[str, list[dict]], path: str | os.PathLike) -> Path:
    """Training loss and validation NDCG@10 per epoch, one line per model, saved as a PNG.

    Args:
        histories: `{model name: [{"epoch", "loss", "ndcg@10", ...}, ...]}` (the `epochs` lists of `metrics.json`).
        path: the PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, (loss_axis, ndcg_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for name, history in histories.items():
        trained = trained_epochs(history)  # (a pre-trained model's epoch 0 has no loss)
        loss_axis.plot([row["epoch"] for row in trained], [row["loss"] for row in trained], marker="o", label=name)
        ndcg_axis.plot([row["epoch"] for row in history], [row["ndcg@10"] for row in history], marker="o", label=name)
    loss_axis.set(title="training loss", xlabel="epoch")
    ndcg_axis.set(title="validation NDCG@10", xlabel="epoch")
    for axis in (loss_axis, ndcg_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
