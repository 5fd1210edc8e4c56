"""The corpus of broken inputs: each entry writes one small broken input (a data folder, a recipe, a run folder, a
serving call) and names the message it must produce.

Folders and recipes go through `train.py`'s own `main`, which reports an input error as one line,
`train.py: error: <message> (traceback: FILE; --debug prints it)`, and exits with status 1 (2 for a recipe, from the
argument parser); serving calls go to the `sequential-recommendation` pipeline and raise `ValueError`.
"""

from __future__ import annotations

import dataclasses
import re
import runpy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, held_by_another_run, tiny_model
from modeling_missrec.pipelines.data.demo_data import make_demo_domain
from modeling_missrec.pipelines.data.missrec_files import write_missrec_folder
from transformers import pipeline

import modeling_missrec  # noqa: F401  (registers the task)

TRAIN_MAIN = runpy.run_path(str(REPO / "train.py"))["main"]
NUM_ITEMS = 40


def _shop(folder: Path) -> Path:
    """A valid MISSRec folder of domain `Shop`: 40 items, text 16 and image 24 wide, its widths recorded."""
    data = make_demo_domain(num_users=60, num_items=NUM_ITEMS, seed=0, text_dim=16, image_dim=24)
    return write_missrec_folder(dataclasses.replace(data, name="Shop"), folder)


def _edit_line(path: Path, lineno: int, edit: Callable[[bytes], bytes]) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = edit(lines[lineno - 1])
    path.write_bytes(b"\n".join(lines))


def empty_train(f: Path) -> None:
    path = f / "Shop.train.inter"
    path.write_text(path.read_text().splitlines()[0] + "\n")


def duplicated_test_user(f: Path) -> None:
    path = f / "Shop.test.inter"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines, lines[3]]))  # line 4's user again, as line 62


def latin1_text(f: Path) -> None:
    _edit_line(f / "Shop.text", 4, lambda line: line[:5] + b"\xe9" + line[5:])


def features_cut_by_whole_rows(f: Path) -> None:
    path = f / "Shop.feat3CLS"
    path.write_bytes(path.read_bytes()[: -NUM_ITEMS * 8 * 4])  # 24 -> 16 floats per item


def features_cut_without_record(f: Path) -> None:
    (f / "Shop.feature_widths.json").unlink()


def nan_feature(f: Path) -> None:
    features = np.fromfile(f / "Shop.feat1CLS", dtype="<f4")
    features[16 * 5 + 2] = np.nan
    features.tofile(f / "Shop.feat1CLS")


def missing_split(f: Path) -> None:
    (f / "Shop.valid.inter").unlink()


def short_line(f: Path) -> None:
    _edit_line(f / "Shop.valid.inter", 3, lambda line: line.split(b"\t")[0])


def unknown_item(f: Path) -> None:
    _edit_line(f / "Shop.test.inter", 2, lambda line: line.rsplit(b"\t", 1)[0] + b"\t99")


def float_ids(f: Path) -> None:
    _edit_line(f / "Shop.train.inter", 2, lambda line: line.replace(b"\t", b".0\t", 1))


FOLDERS = {
    "empty train split": (empty_train, r"Shop\.train\.inter: no rows after the header"),
    "test user twice": (duplicated_test_user, r"Shop\.test\.inter:62: user '.+' already has a test row \(line 4\)"),
    "not UTF-8": (latin1_text, r"Shop\.text:4: byte 0xe9 at column 6 is not UTF-8"),
    "features cut": (
        features_cut_by_whole_rows,
        r"Shop\.feat3CLS: 2560 bytes is not a whole number of float32 rows of width 24",
    ),
    "uncommon width": (features_cut_without_record, r"Shop\.feat1CLS: .* is 16 floats per item, a width no common"),
    "NaN feature": (nan_feature, r"Shop\.feat1CLS: row 5 \(item index 5\) holds NaN or Inf"),
    "missing split": (missing_split, r"Shop\.valid\.inter"),
    "short line": (short_line, r"Shop\.valid\.inter:3: expected 3 tab-separated columns, got 1"),
    "unknown item": (unknown_item, r"Shop\.test\.inter:2: item index 99 is not in item2index \(0\.\.39\)"),
    "float user id": (float_ids, r"Shop\.train\.inter:2: user '0\.0' is not made of integer indices"),
}


def run_train_main(argv: list[str], capsys) -> tuple[int, str]:
    """`python train.py ARGV` in this process: (exit status, stderr)."""
    with pytest.raises(SystemExit) as exited:
        TRAIN_MAIN(argv)
    code = exited.value.code
    return (code, capsys.readouterr().err) if isinstance(code, int) else (1, str(code))


@pytest.mark.parametrize("name", FOLDERS)
def test_a_broken_data_folder_is_one_line_naming_the_file_and_line(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    break_folder, message = FOLDERS[name]
    folder = _shop(tmp_path / "Shop")
    break_folder(folder)
    argv = ["--data_dir", str(folder), "--domain", "Shop", "--epochs", "1", "--output_dir", str(tmp_path / "out")]
    status, err = run_train_main(argv, capsys)
    assert status == 1 and err.startswith("train.py: error: ") and "Traceback" not in err
    assert "\n" not in err.strip() and (log := re.search(r" \(traceback: (\S+); --debug prints it\)$", err)), err
    assert "Traceback (most recent call last)" in Path(log.group(1)).read_text()
    Path(log.group(1)).unlink()
    assert re.search(message, err), err
    with pytest.raises((ValueError, OSError), match=message):  # --debug: the exception itself
        TRAIN_MAIN([*argv, "--debug"])


RECIPES = {
    "YAML syntax": ("epochs: [1\n", r"bad\.yaml: line 2, column 1: not valid YAML"),
    "wrong type": ("learning_rate: fast\n", r"recipe key learning_rate: 'fast' is not a valid float"),
    "bool for int": ("epochs: true\n", r"recipe key epochs: True is not a valid int"),
    "unknown key": ("epoch: 3\n", r"unknown recipe keys \['epoch'\]"),
    "unknown preset": ("preset: missrec-huge\n", r"missrec-huge"),
}


@pytest.mark.parametrize("name", RECIPES)
def test_a_broken_recipe_names_the_file_or_key(name, tmp_path, capsys):
    text, message = RECIPES[name]
    (tmp_path / "bad.yaml").write_text(text)
    status, err = run_train_main(["--config", str(tmp_path / "bad.yaml"), "--output_dir", str(tmp_path)], capsys)
    assert status in (1, 2) and "Traceback" not in err and re.search(message, err), err


def test_run_folders_held_or_holding_checkpoints(tmp_path, capsys):
    tiny = ["--num_users", "60", "--num_items", "40", "--epochs", "1", "--baselines", "[]"]
    (tmp_path / "old" / "checkpoints" / "MISSRec" / "step-00000003").mkdir(parents=True)
    status, err = run_train_main(
        [*tiny, "--output_dir", str(tmp_path / "old"), "--overwrite_output_dir", "false"], capsys
    )
    assert status == 1 and "holds checkpoints of an earlier run" in err, err  # a quoted "false" is False
    assert (tmp_path / "old" / "checkpoints" / "MISSRec" / "step-00000003").is_dir()

    with held_by_another_run(tmp_path / "held") as pid:
        status, err = run_train_main([*tiny, "--output_dir", str(tmp_path / "held")], capsys)
        assert status == 1 and f"is in use by another run (process {pid} on " in err, err


@pytest.fixture(scope="module")
def recommend():
    return pipeline("sequential-recommendation", model=tiny_model(NUM_ITEMS))


SERVING = {
    "batch_size -1": (([[1, 2]],), {"batch_size": -1}, r"batch_size=-1 must be an integer >= 1"),
    "float ids": (([1.0, 2.0],), {}, r"history entries must be item ids \(int\) or source ids \(str\), got 1\.0"),
    "unknown id": (([1, 99],), {}, r"unknown item\(s\) \[99\] \(item ids are 1\.\.40"),
    "bare candidates": (([1, 2],), {"candidates": "B0001"}, r"candidates='B0001' must be a list of item ids"),
    "top_k 0": (([1, 2],), {"top_k": 0}, r"top_k"),
    "duplicate cold-start ids": (
        ([1, 2],),
        {"cold_start_items": {"text_features": np.ones((2, 16)), "source_ids": ["new", "new"]}},
        r"cold_start_items source_ids must be unique; repeated: \['new'\]",
    ),
    "huge cold-start features": (
        ([1, 2],),
        {"cold_start_items": {"text_features": np.full((1, 16), 3e38), "image_features": np.ones((1, 16))}},
        r"not finite",
    ),
}


@pytest.mark.parametrize("name", SERVING)
def test_a_broken_serving_call_says_what_is_wrong(name, recommend):
    args, kwargs, message = SERVING[name]
    with pytest.raises(ValueError, match=message):
        recommend(*args, **kwargs)


def test_the_corpus_is_documented():
    """The messages docs/own-data.md's table promises are the corpus's."""
    table = (REPO / "docs" / "own-data.md").read_text()
    for message in ("no rows after the header", "already has a test row", "is not UTF-8", "a width no common"):
        assert message in table, message
