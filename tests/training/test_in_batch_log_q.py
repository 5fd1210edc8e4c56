"""The logQ correction of pre-training's in-batch loss (`in_batch_log_q`): the shares by hand, the corrected loss by
hand on a tiny batch, `train.py` pre-training with it; and the models `save_epochs` keeps along a pre-training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import pretraining, random_histories, run_train, tiny_model
from modeling_missrec.configuration import load_recipe
from modeling_missrec.pipelines.data.collator import SequenceCollator
from modeling_missrec.pipelines.data.loading import load_domain
from modeling_missrec.pipelines.data.negative_sampling import InBatchLogQ

from modeling_missrec import MISSRecModel

NUM_ITEMS = 30


def test_each_label_gets_the_log_of_its_share_of_the_training_targets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    domain = load_domain("demo", demo_num_users=80, demo_num_items=NUM_ITEMS)
    views = SequenceCollator(domain.sequences["train"], 10, item_drop_ratio=0.2, seed=1)
    targets = np.asarray(domain.sequences["train"]["target"])
    batch = InBatchLogQ(views)(np.arange(3, 19))
    labels = batch["labels"].numpy()
    expected = np.log([(targets == label).sum() / len(targets) for label in labels])
    np.testing.assert_allclose(batch["label_log_q"].numpy(), expected, rtol=1e-6)
    assert "augmented_item_seq" in batch  # the pre-training views are kept


def test_the_corrected_loss_by_hand():
    model = pretraining(tiny_model(NUM_ITEMS))
    items, lengths = random_histories(4, 6, NUM_ITEMS, seed=5)
    labels = torch.tensor([3, 7, 3, 11])  # rows 0 and 2 share a target: each is masked out of the other's row
    log_q = torch.log(torch.tensor([0.5, 0.25, 0.5, 0.25]))
    with torch.no_grad():
        plain = model(items, labels=labels, augmented_item_seq=items, lengths=lengths)
        out = model(items, labels=labels, augmented_item_seq=items, lengths=lengths, label_log_q=log_q)
    assert torch.equal(out.scores, plain.scores)  # the scores stay the model's
    losses = []
    for i in range(4):
        kept = [j for j in range(4) if j == i or labels[j] != labels[i]]
        logits = out.scores[i, kept] - log_q[kept]
        losses.append(-F.log_softmax(logits, 0)[kept.index(i)])
    assert float(out.seq_item_loss) == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5)
    assert float(out.seq_item_loss) != pytest.approx(float(plain.seq_item_loss), rel=1e-3)
    with pytest.raises(ValueError, match="label_log_q has shape"):
        model(items, labels=labels, augmented_item_seq=items, lengths=lengths, label_log_q=log_q[:3])


def test_train_py_pretrains_with_it(tmp_path):
    argv = ["--stage", "pretrain", "--domain", "[demo-1, demo-2]", "--num_users", "200", "--num_items", "150"]
    results = run_train([*argv, "--epochs", "2", "--in_batch_log_q", "true", "--output_dir", str(tmp_path)])
    assert results["recipe"]["in_batch_log_q"] is True
    assert all(np.isfinite(row["loss"]) for row in results["epochs"])
    with pytest.raises(ValueError, match="in_batch_log_q corrects pre-training"):
        load_recipe(None, ["--in_batch_log_q", "true"])


def test_save_epochs_keeps_the_bases_of_a_budget_curve(tmp_path, fresh_accelerate_state):
    """`save_epochs` saves the model as it is after those epochs, each a folder fine-tuning starts from."""
    argv = ["--stage", "pretrain", "--domain", "[demo-1, demo-2]", "--num_users", "200", "--num_items", "150"]
    run_train([*argv, "--epochs", "3", "--save_epochs", "[1, 3]", "--output_dir", str(tmp_path / "base")])
    assert sorted(p.name for p in (tmp_path / "base").glob("epoch-*")) == ["epoch-1", "epoch-3"]
    first = MISSRecModel.from_pretrained(tmp_path / "base" / "epoch-1")
    last = MISSRecModel.from_pretrained(tmp_path / "base" / "epoch-3")
    assert not torch.equal(first.position_embeddings.weight, last.position_embeddings.weight)
    tuned = run_train(["--pretrained", str(tmp_path / "base" / "epoch-1"), "--num_users", "200", "--num_items", "150",
                       "--epochs", "1", "--baselines", "[]", "--output_dir", str(tmp_path / "tuned")])  # fmt: skip
    assert tuned["recipe"]["pretrained"].endswith("epoch-1") and tuned["test"]["ndcg@10"] > 0
    with pytest.raises(ValueError, match="save_epochs"):
        load_recipe(None, ["--save_epochs", "[0]"])
