"""The candidates of the sampled softmax (`loss: sampled`): a batch's own targets plus sampled negatives, with the
logQ correction each needs, so that fine-tuning on a catalogue of millions of items embeds and scores a few
thousand items a step instead of all of them; and the same correction for pre-training's in-batch negatives
(`in_batch_log_q`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .collator import SequenceCollator

NEGATIVE_SAMPLING = ("uniform", "popularity")


def target_counts(collator: SequenceCollator, num_items: int = 0) -> np.ndarray:
    """`[max(num_items, largest target) + 1]` float64: how often each item id is a training target of `collator`
    (index 0, the padding id, is never one)."""
    return np.bincount(collator.targets, minlength=num_items + 1).astype(np.float64)


class SampledCandidates:
    """Wraps a training [`SequenceCollator`]: every batch also gets `candidate_ids` `[C]` (sorted distinct: the
    batch's targets and `num_negatives` items drawn from the proposal) and `candidate_log_q` `[C]`, the log of
    each candidate's expected count in such a set: `B * p(c) + K * Q(c)`, where `p` is the share of training
    examples that target c (a batch's targets are a sample of them) and `Q` the proposal of the negatives
    (`uniform` over the catalogue, or `popularity`: the training targets' share, each item counted once more so
    that every item can be drawn). [`MISSRecForSequentialRecommendation`] subtracts it from the logits (Yi et
    al., RecSys 2019).

    Draws depend only on the seed, the epoch and the batch's rows, like the collator's augmentations, so a
    resumed run draws the same negatives.

    Args:
        collator: the training batches.
        num_items: catalogue size N.
        num_negatives: K, the negatives drawn per batch (shared by its rows).
        distribution: `"uniform"` or `"popularity"`.
        seed: seed of the draws.
    """

    def __init__(
        self,
        collator: SequenceCollator,
        num_items: int,
        num_negatives: int,
        distribution: str = "uniform",
        seed: int = 0,
    ):
        if distribution not in NEGATIVE_SAMPLING:
            raise ValueError(f"distribution={distribution!r} is not one of {list(NEGATIVE_SAMPLING)}")
        if num_negatives < 1:
            raise ValueError(f"num_negatives={num_negatives} must be >= 1")
        self.collator, self.num_items, self.num_negatives = collator, num_items, num_negatives
        self.distribution, self.seed = distribution, seed
        counts = target_counts(collator, num_items)[1:]
        self.target_share = counts / counts.sum()  # [N]: p
        if distribution == "uniform":
            self.proposal = np.full(num_items, 1.0 / num_items)  # [N]: Q
        else:
            self.proposal = (counts + 1) / (counts + 1).sum()
        self.cumulative = np.cumsum(self.proposal)

    def __len__(self) -> int:
        return len(self.collator)

    def set_epoch(self, epoch: int) -> None:
        self.collator.set_epoch(epoch)

    def draw(self, labels: np.ndarray, generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The candidates `[C]` (1-based ids, sorted distinct) of a batch with targets `labels` `[B]`, and their
        `[C]` log expected counts."""
        if self.distribution == "uniform":
            negatives = generator.integers(1, self.num_items + 1, size=self.num_negatives)
        else:
            draws = generator.random(self.num_negatives) * self.cumulative[-1]
            negatives = np.searchsorted(self.cumulative, draws, side="right").clip(max=self.num_items - 1) + 1
        candidates = np.unique(np.concatenate([labels, negatives]))
        expected = len(labels) * self.target_share[candidates - 1] + self.num_negatives * self.proposal[candidates - 1]
        return candidates, np.log(expected)

    def __call__(self, rows: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        rows = np.asarray(rows, dtype=np.int64)
        batch = self.collator(rows)
        # Another stream than the augmentations' (the trailing 1), identified by the batch's rows as they are.
        generator = np.random.default_rng(
            [self.seed, self.collator.epoch, int(rows[0]) if len(rows) else 0, len(rows), 1]
        )
        candidates, log_q = self.draw(batch["labels"].numpy(), generator)
        batch["candidate_ids"] = torch.from_numpy(candidates.astype(np.int64))
        batch["candidate_log_q"] = torch.from_numpy(log_q.astype(np.float32))
        return batch


class InBatchLogQ:
    """Wraps a pre-training [`SequenceCollator`]: every batch also gets `label_log_q` `[B]`, the log of each target's
    share of the training targets, which [`MISSRecForPreTraining`] subtracts from its in-batch logits (the logQ
    correction of Yi et al., RecSys 2019).

    Pre-training contrasts each history with the other targets of its batch, which are a sample of the training
    targets: an item is a negative as often as it is a target. Uncorrected, the loss pushes popular items down by
    that frequency, which the in-batch loss never pays for and a ranking over the whole catalogue does.
    """

    def __init__(self, collator: SequenceCollator):
        self.collator = collator
        counts = target_counts(collator)
        with np.errstate(divide="ignore"):  # items that are never a target are never in a batch either
            self.log_share = np.log(counts / counts.sum())

    def __len__(self) -> int:
        return len(self.collator)

    def set_epoch(self, epoch: int) -> None:
        self.collator.set_epoch(epoch)

    def __call__(self, rows: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        batch = self.collator(rows)
        batch["label_log_q"] = torch.from_numpy(self.log_share[batch["labels"].numpy()].astype(np.float32))
        return batch
