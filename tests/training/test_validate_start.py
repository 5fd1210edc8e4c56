"""Fine-tuning a pre-trained model validates it before training, and keeps it as it started when no epoch beats
it; a model from scratch does not (its start is random). Early stopping counts from the best trained epoch."""

from __future__ import annotations

import pytest
import torch
from modeling_missrec.configuration import parse_recipe_args
from modeling_missrec.pipelines.data.collator import catalogue_features
from modeling_missrec.pipelines.training import loop

TINY = ["--num_users", "60", "--num_items", "40", "--baselines", "[]", "--batch_size", "32", "--id_mode", "inductive"]


@pytest.fixture
def validation_scores(monkeypatch):
    """`scores.extend([...])`: what the next validations score, in order (the real metrics otherwise)."""
    real_evaluate, scores = loop.evaluate_ranking, []

    def scripted(*args, **kwargs):
        metrics = real_evaluate(*args, **kwargs)
        score = scores.pop(0)
        for protocol in metrics.values():
            protocol["ndcg@10"] = score
        return metrics

    monkeypatch.setattr(loop, "evaluate_ranking", scripted)
    return scores


def test_a_pre_trained_model_no_epoch_improves_is_kept_as_it_started(
    tmp_path, validation_scores, fresh_accelerate_state
):
    from accelerate import Accelerator

    scratch_args = parse_recipe_args([*TINY, "--output_dir", str(tmp_path / "base")])
    domain = loop.load_training_data(scratch_args)
    features = catalogue_features(domain.items)
    loop.build_missrec(scratch_args, features).save_pretrained(tmp_path / "base")
    words = [*TINY, "--epochs", "6", "--early_stopping_patience", "2", "--strategy", "full"]
    args = parse_recipe_args([*words, "--pretrained", str(tmp_path / "base"), "--output_dir", str(tmp_path / "ft")])

    # Training climbs, but never up to the start: it runs while it climbs, stops 2 epochs after its own best.
    validation_scores.extend([0.5, 0.1, 0.2, 0.3, 0.25, 0.2])
    model, _, histories = loop.fit_missrec(Accelerator(), args, domain, features)
    history = histories["inductive"]
    assert [row["epoch"] for row in history] == [0, 1, 2, 3, 4, 5]
    assert "loss" not in history[0] and history[0]["ndcg@10"] == pytest.approx(0.5)
    start = loop.build_missrec(args, features)  # the pre-trained weights on this catalogue
    kept = Accelerator().unwrap_model(model).missrec.state_dict()
    for name, weight in start.named_parameters():
        torch.testing.assert_close(kept[name], weight, msg=name)

    validation_scores.extend([0.4, 0.3, 0.2, 0.1])  # from scratch: no start row, the best is epoch 1
    _, _, histories = loop.fit_missrec(Accelerator(), args, domain, features, from_scratch=True)
    assert [row["epoch"] for row in histories["inductive"]] == [1, 2, 3]
