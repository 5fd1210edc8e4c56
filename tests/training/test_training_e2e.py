"""End to end, as a user runs it: `accelerate launch train.py` on two CPU processes, pre-training then a LoRA
adapter on an unseen domain, the adapter reloaded elsewhere; and a run killed mid-epoch, then resumed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, rec
from modeling_missrec.pipelines.data.collator import SequenceCollator
from modeling_missrec.pipelines.data.loading import load_domain
from modeling_missrec.pipelines.evaluation.full_ranking import evaluate_ranking
from modeling_missrec.pipelines.training.checkpointing import checkpoint_root, list_checkpoints, read_progress

from modeling_missrec.served_files_missrec import load_missrec_adapter

RECIPES = REPO / "configuration" / "recipes"
TWO_CPU_PROCESSES = REPO / "configuration" / "accelerate" / "cpu-2proc.yaml"
FINETUNE_DOMAIN = {"num_users": 200, "num_items": 300}  # the unseen domain `demo`, small: pre-training shows
RUN_LIMIT_S = 600  # a hung launch fails the test instead of blocking the suite


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_env(tmp_path: Path) -> dict[str, str]:
    """Offline, with its own `HF_HOME` (datasets cache) and Accelerate's CPU switch for the multi-process launch."""
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), ACCELERATE_USE_CPU="true")


def launch_two_processes(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(TWO_CPU_PROCESSES),
        "--main_process_port", str(free_port()), "train.py", *args,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def flags(values: dict) -> list[str]:
    return [part for key, value in values.items() for part in (f"--{key}", str(value))]


@pytest.fixture(scope="module")
def pretrain_then_lora(tmp_path_factory) -> dict:
    """Pre-train on demo-1 + demo-2, then fine-tune a LoRA adapter on `demo` beside MISSRec from scratch, both
    with `accelerate launch` on two CPU processes."""
    tmp = tmp_path_factory.mktemp("pretrain_then_lora")
    env = run_env(tmp)
    pretrained, adapter = tmp / "pretrain", tmp / "finetune"
    pretrain = {"output_dir": pretrained, "num_users": 500, "num_items": 300, "epochs": 3, "batch_size": 256}
    launch_two_processes(["--config", str(RECIPES / "demo-pretrain.yaml"), *flags(pretrain)], env)
    finetune = {"pretrained": pretrained, "output_dir": adapter, "epochs": 1, "baselines": "[scratch]"}
    log = launch_two_processes(
        ["--config", str(RECIPES / "demo-finetune.yaml"), *flags(finetune), *flags(FINETUNE_DOMAIN)], env
    )
    metrics = json.loads((adapter / "metrics.json").read_text())
    return {"pretrained": pretrained, "adapter": adapter, "metrics": metrics, "log": log.stdout, "tmp": tmp}


def test_two_process_pretraining_then_lora_beats_scratch_and_popularity(pretrain_then_lora):
    metrics = pretrain_then_lora["metrics"]
    assert metrics["num_processes"] == 2 and metrics["recipe"]["strategy"] == "lora"
    lora, scratch, popularity = (metrics[k]["ndcg@10"] for k in ("test", "scratch_test", "popularity_test"))
    assert lora > popularity and lora > scratch, (lora, scratch, popularity)
    assert "| MISSRec (pre-trained, lora) |" in pretrain_then_lora["log"]  # the results table is printed once
    assert pretrain_then_lora["log"].count("| Popularity |") == 1
    # the shared artefact is a small PEFT adapter, not a copy of the base
    assert (pretrain_then_lora["adapter"] / "adapter_config.json").is_file()
    assert metrics["saved_megabytes"] < metrics["pretrained_megabytes"]


def test_the_adapter_reloads_in_another_process_and_reproduces_the_test_metrics(pretrain_then_lora):
    model = load_missrec_adapter(pretrain_then_lora["pretrained"], pretrain_then_lora["adapter"])
    domain = load_domain(
        "demo",
        cache_dir=pretrain_then_lora["tmp"] / "reload_cache",
        demo_seed=0,
        demo_num_users=FINETUNE_DOMAIN["num_users"],
        demo_num_items=FINETUNE_DOMAIN["num_items"],
    )
    test = SequenceCollator(domain.sequences["test"], model.config.max_seq_length)
    with torch.no_grad():
        metrics = evaluate_ranking(rec(model), test, protocols=("official", "exclude_history"))
    saved = pretrain_then_lora["metrics"]
    for key in ("hr@10", "ndcg@10", "ndcg@50", "mrr@20"):
        assert metrics["official"][key] == pytest.approx(saved["test"][key], abs=1e-4)
        assert metrics["exclude_history"][key] == pytest.approx(saved["test_exclude_history"][key], abs=1e-4)


# Runs train.py (argv after the folder name), SIGKILLing it the moment the checkpoint folder named argv[1] loses
# that name (deleted or renamed aside): the heart of a save that replaces a step saved before.
KILL_WHEN_GONE = """
import os, pathlib, runpy, shutil, signal, sys
watched = sys.argv.pop(1)
rename, rmtree = pathlib.Path.rename, shutil.rmtree

def die_if_gone(path):
    if pathlib.Path(path).name == watched and not pathlib.Path(path).exists():
        os.kill(os.getpid(), signal.SIGKILL)

def renaming(self, target):
    moved = rename(self, target)
    die_if_gone(self)
    return moved

def removing(path, *args, **kwargs):
    rmtree(path, *args, **kwargs)
    die_if_gone(path)

pathlib.Path.rename, shutil.rmtree = renaming, removing
sys.argv = sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def test_a_killed_run_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    """Killed mid-epoch, and killed inside the save that replaces its only checkpoint (the end of epoch 1 saves
    step 12 again, right after the step save of batch 12)."""
    env = run_env(tmp_path)
    small = {"num_users": 300, "num_items": 100, "epochs": 3, "baselines": "[]", "checkpointing_steps": 3}
    small["checkpoints_total_limit"] = 2  # 12 batches per epoch: checkpoints at batches 3, 6, 9, 12 of each epoch

    def command(output_dir: Path, *extra: str, **changed) -> list[str]:
        return [sys.executable, "train.py", *flags({**small, **changed, "output_dir": output_dir}), *extra]

    def assert_resumes_as_uninterrupted(killed: Path, **changed) -> None:
        subprocess.run(
            command(killed, "--resume_from_checkpoint", "latest", **changed),
            cwd=REPO, env=env, check=True, capture_output=True, timeout=RUN_LIMIT_S,
        )  # fmt: skip
        resumed, expected = (json.loads((d / "metrics.json").read_text()) for d in (killed, uninterrupted))
        losses = [e["loss"] for e in resumed["epochs"]]
        assert losses == pytest.approx([e["loss"] for e in expected["epochs"]], abs=1e-4)
        for key, value in expected["test"].items():
            assert resumed["test"][key] == pytest.approx(value, abs=1e-4), key

    uninterrupted = tmp_path / "uninterrupted"
    subprocess.run(command(uninterrupted), cwd=REPO, env=env, check=True, capture_output=True, timeout=RUN_LIMIT_S)

    killed = tmp_path / "killed"
    run = subprocess.Popen(command(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = checkpoint_root(killed, "MISSRec")
    deadline = time.monotonic() + RUN_LIMIT_S
    while not (checkpoints / "step-00000015").is_dir():  # epoch 2, batch 3
        assert run.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    latest = read_progress(list_checkpoints(checkpoints)[-1])
    assert latest.epoch == 1 and latest.step > 0, "the kill should land mid-epoch"
    assert not (killed / "metrics.json").exists()
    assert_resumes_as_uninterrupted(killed)

    in_replace = tmp_path / "killed-in-replace"
    launcher = [sys.executable, "-c", KILL_WHEN_GONE, "step-00000012"]
    run = subprocess.run(
        [*launcher, *command(in_replace, checkpoints_total_limit=1)[1:]], cwd=REPO, env=env, capture_output=True,
        timeout=RUN_LIMIT_S,
    )  # fmt: skip
    assert run.returncode == -9, run.stderr[-2000:]  # killed inside the replace, its only checkpoint renamed away
    assert not list_checkpoints(checkpoint_root(in_replace, "MISSRec"))
    assert_resumes_as_uninterrupted(in_replace, checkpoints_total_limit=1)
