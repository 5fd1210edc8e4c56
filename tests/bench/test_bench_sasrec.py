"""bench/bench_sasrec.py: SASRec from this tree beside another revision's, on a domain's atomic files."""

from __future__ import annotations

import importlib
import json

import numpy as np
from helpers import REPO


def test_the_bench_times_both_revisions_on_the_same_batches(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    bench = importlib.import_module("bench_sasrec")
    rng = np.random.default_rng(0)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(20):
        history = rng.choice(30, size=int(rng.integers(4, 15)), replace=False)
        lines += [f"u{user}\ti{item}\t{t}" for t, item in enumerate(history)]
    (tmp_path / "Shop.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\ttitle:token_seq"] + [f"i{k}\tproduct {k}" for k in range(30)]
    (tmp_path / "Shop.item").write_text("\n".join(items) + "\n")
    output = tmp_path / "result.json"
    argv = ["--domain", "Shop", "--data_dir", str(tmp_path), "--batch_size", "16", "--steps", "2", "--repeats", "2"]
    result = bench.main([*argv, "--against", "HEAD~0", "--output", str(output)])  # (not a module name)
    assert json.loads(output.read_text()) == result
    assert set(result["models"]) == {"this tree", "HEAD~0"}
    for row in result["models"].values():
        assert row["train_step_ms"] > 0 and row["eval_batch_ms"] > 0
    ours, theirs = result["models"]["this tree"], result["models"]["HEAD~0"]
    assert result["ratio"]["train_step_ms"] == ours["train_step_ms"] / theirs["train_step_ms"]
    assert 1 < result["mean_history_length"] <= 15
