"""One run per output folder: a second run into a held `output_dir` is refused, a dead run's lock is not."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from helpers import held_by_another_run, run_train
from modeling_missrec.pipelines.training.output_lock import LOCK_FILE, OutputDirInUseError, locked_output_dir

TINY_RUN = ["--num_users", "60", "--num_items", "40", "--epochs", "1", "--baselines", "[]"]


def test_a_second_run_into_a_held_output_dir_is_refused_naming_the_owner(tmp_path):
    with held_by_another_run(tmp_path) as pid:
        with pytest.raises(OutputDirInUseError, match=rf"in use by another run \(process {pid} on "):
            run_train([*TINY_RUN, "--output_dir", str(tmp_path)])
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]  # the refused run wrote nothing


def test_the_lock_of_a_dead_run_is_replaced_and_a_finished_run_releases_its_own(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = {"host": socket.gethostname(), "pid": int(dead.stdout), "started": "an hour ago"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(owner))
    results = run_train([*TINY_RUN, "--output_dir", str(tmp_path)])
    assert "ndcg@10" in results["test"] and "removing the stale lock of a run that is gone" in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()

    with pytest.raises(KeyError), locked_output_dir(tmp_path):  # released on an error too
        raise KeyError("boom")
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_from_another_host_or_an_unreadable_one(tmp_path):
    elsewhere = {"host": "another-machine", "pid": 1, "started": "now"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(elsewhere))
    with pytest.raises(OutputDirInUseError, match="process 1 on another-machine.*delete .*missrec-run.lock"):
        with locked_output_dir(tmp_path):
            pass
    assert json.loads((tmp_path / LOCK_FILE).read_text()) == elsewhere  # never removed but by hand
    lock = tmp_path / LOCK_FILE
    lock.write_text("")  # a lock being written, as a file system without hard links shows it for an instant
    with pytest.raises(OutputDirInUseError):
        with locked_output_dir(tmp_path):
            pass
    os.utime(lock, (time.time() - 60, time.time() - 60))  # still empty a minute on: debris of a killed run
    with locked_output_dir(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == socket.gethostname()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_naming_this_very_process_or_no_owner_is_stale(tmp_path):
    """A restarted container reuses pids: a lock naming this process's own pid cannot be a live run's."""
    lock = tmp_path / LOCK_FILE
    for debris in (json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "before"}), "1"):
        lock.write_text(debris)
        os.utime(lock, (time.time() - 60, time.time() - 60))
        with locked_output_dir(tmp_path):
            assert json.loads(lock.read_text())["started"] != "before"
        assert not lock.exists()


def test_resuming_from_another_runs_folder_holds_that_folder_too(tmp_path):
    """Resuming finishes the other run's interrupted saves, so that folder must not be a live run's."""
    with held_by_another_run(tmp_path / "first") as pid:
        resume = ["--resume_from_checkpoint", str(tmp_path / "first")]
        with pytest.raises(OutputDirInUseError, match=rf"first is in use by another run \(process {pid} "):
            run_train([*TINY_RUN, "--output_dir", str(tmp_path / "second"), *resume])
