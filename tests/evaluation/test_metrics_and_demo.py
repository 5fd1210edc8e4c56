"""Full-ranking metrics by hand, and the README's main job end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO
from modeling_missrec.pipelines.evaluation.metrics import ranking_metrics, target_ranks


def test_target_ranks_and_metrics_by_hand():
    scores = torch.tensor([[9.0, 0.1, 0.9, 0.5, 0.7], [9.0, 0.3, 0.2, 0.8, 0.1]])
    targets = torch.tensor([3, 1])
    ranks, ties = target_ranks(scores, targets)  # padding column 0 never counts
    assert ranks.tolist() == [2, 1] and ties.tolist() == [0, 0]
    # Excluding the history [2, 4] of row 0 lifts its target to the top.
    excluded = target_ranks(scores, targets, exclude=torch.tensor([[2, 4], [3, 0]]))
    assert [t.tolist() for t in excluded] == [[0, 0], [0, 0]]
    m = ranking_metrics(ranks, ks=(1, 2, 3))
    assert m["hr@1"] == 0 and m["hr@2"] == 0.5 and m["hr@3"] == 1
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(3)) / 2)
    assert m["mrr@3"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert m["mrr@2"] == pytest.approx(0.25)


def test_a_target_tied_with_other_items_gets_the_expected_metrics_of_a_random_order():
    """Row 0's target ties with two items after one higher: ranks 1, 2, 3 are equally likely. Row 1 ties with
    everything (a model that scores all items alike): ranks 0..4 equally likely."""
    scores = torch.tensor([[9.0, 0.9, 0.5, 0.5, 0.5, 0.1], [9.0, 0.2, 0.2, 0.2, 0.2, 0.2]])
    ranks, ties = target_ranks(scores, torch.tensor([3, 1]))
    assert ranks.tolist() == [1, 0] and ties.tolist() == [2, 4]
    m = ranking_metrics(ranks, ks=(2, 5), ties=ties)
    assert m["hr@2"] == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert m["hr@5"] == pytest.approx(1.0)
    ndcg = [1 / math.log2(r + 2) for r in range(5)]
    assert m["ndcg@2"] == pytest.approx((ndcg[1] / 3 + (ndcg[0] + ndcg[1]) / 5) / 2)
    assert m["ndcg@5"] == pytest.approx((sum(ndcg[1:4]) / 3 + sum(ndcg) / 5) / 2)
    assert m["mrr@5"] == pytest.approx(((1 / 2 + 1 / 3 + 1 / 4) / 3 + (1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 5) / 2)
    # without ties the best rank counts, as before
    assert ranking_metrics(ranks, ks=(2,))["hr@2"] == 1.0
    # padding and excluded items never tie with a target, even one scored -inf; a NaN target cannot be ranked
    scores = torch.tensor([[float("-inf"), 0.5, float("-inf"), float("-inf")], [0.0, 0.1, float("nan"), 0.3]])
    ranks, ties = target_ranks(scores, torch.tensor([2, 1]), exclude=torch.tensor([[3], [0]]))
    assert ranks.tolist() == [1, 1] and ties.tolist() == [0, 0]
    with pytest.raises(ValueError, match=r"the scores of the targets of rows \[1\] are NaN"):
        target_ranks(scores, torch.tensor([1, 2]))


@pytest.mark.slow
def test_main_job_trains_beats_popularity_and_saves_a_loadable_model(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--epochs", "3", "--num_users", "400", "--output_dir", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    assert all(f"| {name} |" in result.stdout for name in ("MISSRec", "SASRec", "Popularity"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["ndcg@10"] > 1.5 * metrics["popularity_test"]["ndcg@10"]
    assert len(metrics["epochs"]) == 3
    assert metrics["sasrec_test"]["ndcg@10"] > metrics["popularity_test"]["ndcg@10"]
    assert len(metrics["sasrec_epochs"]) == 3
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert logged[0]["config"]["epochs"] == 3
    assert [row["step"] for row in logged[1:] if "MISSRec/train_loss" in row] == [1, 2, 3]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Masking the history can only lift the target's rank.
    assert metrics["test_exclude_history"]["hr@10"] >= metrics["test"]["hr@10"]
    assert metrics["popularity_test_exclude_history"]["ndcg@10"] >= metrics["popularity_test"]["ndcg@10"]
    from transformers import AutoModel

    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert model.config.num_items == 600 and model.config.num_interests > 0


@pytest.mark.slow
def test_two_process_accelerate_launch_trains_with_ddp_and_beats_popularity(tmp_path):
    out = tmp_path / "ddp"
    config = REPO / "configuration" / "accelerate" / "cpu-2proc.yaml"  # the shipped config, as the README says
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "train.py"]
    cmd += ["--epochs", "3", "--num_users", "400", "--baselines", "[]", "--output_dir", str(out)]
    env = dict(os.environ, ACCELERATE_USE_CPU="true")
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("| MISSRec |") == 1  # printed by the main process only
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert metrics["test"]["ndcg@10"] > 1.5 * metrics["popularity_test"]["ndcg@10"]
    from transformers import AutoModel

    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert model.config.num_interests > 0 and model.interest_centroids.shape[0] == model.config.num_interests + 1
