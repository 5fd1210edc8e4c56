"""Checkpoint saves a kill cannot break: killed at every rename and delete of a save that replaces a checkpoint
and prunes another, the folder always resumes from its newest step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from helpers import REPO
from modeling_missrec.pipelines.training.checkpointing import (
    list_checkpoints,
    read_progress,
    recover_interrupted_saves,
)

KILLER = Path(__file__).with_name("kill_during_save.py")


def test_a_save_killed_at_any_step_loses_no_checkpoint_and_resumes(tmp_path):
    run = subprocess.run([sys.executable, KILLER, tmp_path], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    points = json.loads(run.stdout.splitlines()[-1])
    wheres = [p["where"] for p in points]
    # the replace of an existing step folder and the pruning are among the steps killed
    assert {"before rename step-00000002", "inside rmtree .replaced-step-00000002"} <= set(wheres), wheres
    assert sum(p["killed"] for p in points) >= 8 and not points[-1]["killed"]
    written = wheres.index("before replace progress.json")  # the new save is complete once this ran

    accelerator = Accelerator(cpu=True)
    linear = torch.nn.Linear(4, 4)
    accelerator.prepare(linear, torch.optim.AdamW(linear.parameters()))  # what load_state loads into
    for point in points:
        root = tmp_path / f"point-{point['point']}"
        recover_interrupted_saves(root)
        found = list_checkpoints(root)
        assert found and found[-1].name == "step-00000002", (point, sorted(p.name for p in root.iterdir()))
        assert all(p.name.startswith("step-") for p in root.iterdir()), point  # nothing half-done is left
        epoch = read_progress(found[-1]).epoch
        assert epoch == (9 if point["point"] > written else 2), point  # a complete save is never thrown away
        for folder in found:
            accelerator.load_state(str(folder))  # every checkpoint left is whole
        assert recover_interrupted_saves(root) == []
