"""Excluding the history: one rule (`history_items` / `history_mask`) for serving, evaluation and the training
softmax ("train as you serve", `exclude_history_in_loss`), checked by hand on tiny batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import random_histories, rec, tiny_model

from modeling_missrec import SASRecConfig, SASRecModel
from modeling_missrec.layers_missrec import catalogue_cross_entropy
from modeling_missrec.scoring_missrec import history_items, history_mask

ITEM_SEQ = torch.tensor([[1, 2, 3], [4, 4, 0]])
LABELS = torch.tensor([2, 5])  # row 0's target is in its history; row 1's is not


def test_history_items_and_mask_by_hand():
    rows, items = history_items(ITEM_SEQ)
    assert rows.tolist() == [0, 0, 0, 1, 1] and items.tolist() == [1, 2, 3, 4, 4]
    mask = history_mask(ITEM_SEQ, 6, keep=LABELS)
    assert mask.tolist() == [
        [False, True, False, True, False, False],  # item 2 is the target: kept
        [False, False, False, False, True, False],  # padding (column 0) is never "history"
    ]


def test_loss_without_history_leaves_excluded_items_no_mass_and_keeps_the_target():
    scores = torch.randn(2, 6, generator=torch.Generator().manual_seed(0)).requires_grad_()
    excluded = history_mask(ITEM_SEQ, 6, keep=LABELS)
    loss = catalogue_cross_entropy(scores, LABELS, excluded=excluded)
    # By hand: each row's softmax over the items that are not excluded (column 0 never is a class).
    classes = [[2, 4, 5], [1, 2, 3, 5]]
    by_hand = [torch.logsumexp(scores[r, c], 0) - scores[r, LABELS[r]] for r, c in enumerate(classes)]
    torch.testing.assert_close(loss, torch.stack(by_hand).mean())
    (grad,) = torch.autograd.grad(loss, scores)
    assert (grad[excluded] == 0).all() and (grad[:, 0] == 0).all()  # no probability mass, no gradient
    assert (grad[torch.arange(2), LABELS] < 0).all()  # each target, in its history or not, keeps its own class
    # The paper's loss: every item competes.
    torch.testing.assert_close(catalogue_cross_entropy(scores, LABELS), F.cross_entropy(scores[:, 1:], LABELS - 1))


def test_label_smoothing_spreads_only_over_the_remaining_classes():
    scores = torch.randn(2, 6, generator=torch.Generator().manual_seed(1))
    excluded = history_mask(ITEM_SEQ, 6, keep=LABELS)
    eps = 0.2
    classes = [[2, 4, 5], [1, 2, 3, 5]]
    rows = []
    for r, c in enumerate(classes):
        log_p = scores[r, c].log_softmax(0)
        target = c.index(int(LABELS[r]))
        rows.append(-(1 - eps) * log_p[target] - eps * log_p.mean())
    torch.testing.assert_close(catalogue_cross_entropy(scores, LABELS, eps, excluded), torch.stack(rows).mean())
    nothing = torch.zeros_like(excluded)
    torch.testing.assert_close(
        catalogue_cross_entropy(scores, LABELS, eps, nothing),
        F.cross_entropy(scores[:, 1:], LABELS - 1, label_smoothing=eps),
    )


@pytest.mark.parametrize("kind", ["missrec", "sasrec"])
def test_models_train_as_they_serve_when_asked(kind):
    items, lengths = random_histories(8, 6, 40, seed=3)
    labels = items[:, 0].clone()  # every target is in its own history
    labels[labels == 0] = 1
    if kind == "missrec":
        paper, served = rec(tiny_model(40)), rec(tiny_model(40, exclude_history_in_loss=True))
        extra = served.config.diversity_loss_weight
    else:
        torch.manual_seed(0)
        paper = SASRecModel(SASRecConfig(num_items=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
        torch.manual_seed(0)
        served = SASRecModel(
            SASRecConfig(
                num_items=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, exclude_history_in_loss=True
            )
        )
        extra = 0.0
    out = served(item_seq=items, lengths=lengths, labels=labels)
    expected = catalogue_cross_entropy(out.scores, labels, excluded=history_mask(items, out.scores.shape[1], labels))
    if kind == "missrec":
        expected = expected + extra * out.diversity_loss
    torch.testing.assert_close(out.loss, expected)
    assert not torch.isclose(out.loss, paper(item_seq=items, lengths=lengths, labels=labels).loss)
    with pytest.raises(ValueError, match="exclude_history_in_loss"):
        SASRecConfig(exclude_history_in_loss="yes")


def test_repeat_offsets_still_learn_on_the_whole_softmax_when_the_history_is_left_out():
    """With `exclude_history_in_loss` and `repeat_bias`, the model trains on the history-excluded softmax without
    the offsets, and the offsets alone train on the paper's softmax over the detached scores: what the official
    protocol (history ranked too) needs of them."""
    model = rec(tiny_model(40, exclude_history_in_loss=True, repeat_bias=True))
    items, lengths = random_histories(6, 6, 40, seed=5)
    labels = torch.arange(1, 7)
    with torch.no_grad():
        model.base.repeat_bias.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    out = model(item_seq=items, lengths=lengths, labels=labels)
    raw = model.base.score_items(out.sequence_embeddings)
    offsets = model.base.repeat_bias(items, lengths)
    from modeling_missrec.scoring_missrec import add_history_offsets

    served = catalogue_cross_entropy(raw, labels, excluded=history_mask(items, raw.shape[1], labels))
    whole = catalogue_cross_entropy(add_history_offsets(raw.detach(), offsets), labels)
    torch.testing.assert_close(out.loss, served + whole + model.config.diversity_loss_weight * out.diversity_loss)
    adaptor = model.base.text_adaptor.weight
    grad_adaptor, grad_offsets = torch.autograd.grad(
        out.loss, [adaptor, model.base.repeat_bias.weight], retain_graph=True
    )
    expected = torch.autograd.grad(served + model.config.diversity_loss_weight * out.diversity_loss, adaptor)[0]
    torch.testing.assert_close(grad_adaptor, expected)  # the whole-softmax term reaches only the offsets
    assert grad_offsets.abs().sum() > 0
