"""One run per output folder: a second run into a held `output_dir` is refused, a dead run's lock is not."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO, run_train
from modeling_missrec.pipelines.training.output_lock import LOCK_FILE, OutputDirInUseError, locked_output_dir

TINY_RUN = ["--num_users", "60", "--num_items", "40", "--epochs", "1", "--baselines", "[]"]

HOLD = textwrap.dedent(
    """
    import sys, time
    from modeling_missrec.pipelines.training.output_lock import locked_output_dir
    with locked_output_dir(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
    """
)


def test_a_second_run_into_a_held_output_dir_is_refused_naming_the_owner(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, tmp_path], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirInUseError, match=rf"in use by another run \(process {holder.pid} on "):
            run_train([*TINY_RUN, "--output_dir", str(tmp_path)])
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()


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
    (tmp_path / LOCK_FILE).write_text("")  # a lock is never seen empty while held: this one is debris
    with locked_output_dir(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == socket.gethostname()
    assert not (tmp_path / LOCK_FILE).exists()
