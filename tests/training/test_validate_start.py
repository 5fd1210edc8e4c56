"""Fine-tuning a pre-trained model validates it before training, and keeps it as it started when no epoch beats
it; a model from scratch does not (its start is random)."""

from __future__ import annotations

import pytest
import torch
from modeling_missrec.configuration import parse_recipe_args
from modeling_missrec.pipelines.data.collator import catalogue_features
from modeling_missrec.pipelines.training import loop

TINY = ["--num_users", "60", "--num_items", "40", "--baselines", "[]", "--batch_size", "32", "--id_mode", "inductive"]


@pytest.fixture
def falling_validation(monkeypatch):
    """Every validation scores lower than the one before (the real metrics otherwise)."""
    real_evaluate, calls = loop.evaluate_ranking, []

    def falling(*args, **kwargs):
        metrics = real_evaluate(*args, **kwargs)
        calls.append(len(calls))
        for protocol in metrics.values():
            protocol["ndcg@10"] = 0.5 - 0.1 * calls[-1]
        return metrics

    monkeypatch.setattr(loop, "evaluate_ranking", falling)
    return calls


def test_a_pre_trained_model_no_epoch_improves_is_kept_as_it_started(
    tmp_path, falling_validation, fresh_accelerate_state
):
    from accelerate import Accelerator

    scratch_args = parse_recipe_args([*TINY, "--output_dir", str(tmp_path / "base")])
    domain = loop.load_training_data(scratch_args)
    features = catalogue_features(domain.items)
    loop.build_missrec(scratch_args, features).save_pretrained(tmp_path / "base")
    words = [*TINY, "--epochs", "5", "--early_stopping_patience", "2", "--strategy", "full"]
    args = parse_recipe_args([*words, "--pretrained", str(tmp_path / "base"), "--output_dir", str(tmp_path / "ft")])

    model, _, histories = loop.fit_missrec(Accelerator(), args, domain, features)
    history = histories["inductive"]
    assert [row["epoch"] for row in history] == [0, 1, 2]  # the start, then two epochs without a gain
    assert "loss" not in history[0] and history[0]["ndcg@10"] == pytest.approx(0.5)
    start = loop.build_missrec(args, features)  # the pre-trained weights on this catalogue
    kept = Accelerator().unwrap_model(model).missrec.state_dict()
    for name, weight in start.named_parameters():
        torch.testing.assert_close(kept[name], weight, msg=name)

    falling_validation.clear()
    _, _, histories = loop.fit_missrec(Accelerator(), args, domain, features, from_scratch=True)
    assert [row["epoch"] for row in histories["inductive"]] == [1, 2, 3]  # no start row: the best is epoch 1
