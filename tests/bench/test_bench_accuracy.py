"""bench/accuracy_case.py's tables: means, standard errors and paired differences against hand-computed values."""

from __future__ import annotations

import importlib
import math

import pytest
from helpers import REPO
from modeling_missrec.pipelines.training import loop


@pytest.fixture
def case(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    return importlib.import_module("accuracy_case")


def record(domain, mode, variant, seed, valid, test, sasrec=None):
    out = {"domain": domain, "mode": mode, "variant": variant, "seed": seed}
    out["missrec"] = {"valid_ndcg@10": valid, "test": {"ndcg@10": test, "hr@10": 2 * test}}
    if sasrec is not None:
        out["sasrec"] = {"valid_ndcg@10": sasrec, "test": {"ndcg@10": sasrec, "hr@10": 2 * sasrec}}
    return out


def test_mean_and_standard_error(case):
    mean, error = case.mean_and_error([1.0, 2.0, 3.0])
    assert mean == 2.0 and error == pytest.approx(1 / math.sqrt(3))
    assert math.isnan(case.mean_and_error([1.0])[1])


def test_accuracy_table_pairs_missrec_with_sasrec_per_seed_and_checks_the_target(case):
    runs = [
        record("Scientific", "transductive", "tuned", 0, 0.10, 0.0950, sasrec=0.0800),
        record("Scientific", "transductive", "tuned", 1, 0.10, 0.0930, sasrec=0.0600),
        record("Beauty", "transductive", "tuned", 0, 0.05, 0.0300, sasrec=0.0300),
    ]
    table = case.accuracy_markdown({"runs": runs}).splitlines()
    scientific = next(line for line in table if line.startswith("| Scientific"))
    assert "0.0940 ± 0.0010" in scientific  # mean and SE of 0.0950, 0.0930
    gains = [0.0950 / 0.08 - 1, 0.0930 / 0.06 - 1]  # paired per seed
    mean, error = case.mean_and_error(gains)
    assert f"{100 * mean:+.1f}% ± {100 * error:.1f}%" in scientific
    assert "pass" in scientific  # 0.0940 >= 0.0838 * 1.1 = 0.0922
    beauty = next(line for line in table if line.startswith("| Beauty"))
    assert "| +0.0% |" in beauty and "MISS" in beauty  # one seed, level with SASRec: not +10%


def test_ablation_rows_are_paired_against_the_row_above_and_the_paper(case, monkeypatch):
    levers = (("paper", {}), ("+ a", {"weight_decay": 0.1}), ("+ b", {"learning_rate": 0.002}))
    monkeypatch.setattr(case, "LEVERS", levers)
    tests = {"lever0": (0.080, 0.082), "lever1": (0.086, 0.085), "tuned": (0.087, 0.089)}
    runs = [
        record("Scientific", "transductive", variant, seed, valid=values[seed] + 0.01, test=values[seed])
        for variant, values in tests.items()
        for seed in (0, 1)
    ]
    rows = [line for line in case.ablation_markdown({"runs": runs}).splitlines() if line.startswith("| transductive")]
    assert len(rows) == 3 and rows[0].endswith("| — | — | — |")
    # lever1 vs lever0: differences 0.006 and 0.003 (valid and test alike here): mean 0.0045, SE 0.0015
    assert rows[1].count("+0.0045 ± 0.0015") == 3
    # tuned vs lever1: 0.001, 0.004 -> 0.0025 ± 0.0015; vs paper: 0.007, 0.007 -> 0.0070 ± 0.0000
    assert rows[2].endswith("| +0.0025 ± 0.0015 | +0.0025 ± 0.0015 | +0.0070 ± 0.0000 |")
    assert case.merged_levers(2) == {"weight_decay": 0.1, "learning_rate": 0.002}


def test_accuracy_table_shows_both_models_with_the_history_excluded(case):
    runs = [record("Yelp", "transductive", "tuned", s, 0.05, 0.03, sasrec=0.02) for s in (0, 1)]
    for run, (ours, theirs) in zip(runs, ((0.040, 0.030), (0.044, 0.034))):
        run["missrec"]["test_exclude_history"] = {"ndcg@10": ours}
        run["sasrec"]["test_exclude_history"] = {"ndcg@10": theirs}
    yelp = next(line for line in case.accuracy_markdown({"runs": runs}).splitlines() if line.startswith("| Yelp"))
    assert yelp.endswith("| 0.0420 / 0.0320 |")
    del runs[1]["sasrec"]["test_exclude_history"]  # a record from before the column: left out of the mean
    yelp = next(line for line in case.accuracy_markdown({"runs": runs}).splitlines() if line.startswith("| Yelp"))
    assert yelp.endswith("| 0.0420 / 0.0300 |")


def test_auto_rows_take_the_mode_of_the_better_validation_per_seed(case, monkeypatch):
    assert case.ID_MODES == loop.ID_MODES  # the order the tie rule follows
    runs = [
        record("Yelp", "transductive", "tuned", 0, valid=0.010, test=0.015, sasrec=0.020),
        record("Yelp", "inductive", "tuned", 0, valid=0.020, test=0.022),
        record("Yelp", "transductive", "tuned", 1, valid=0.030, test=0.030, sasrec=0.020),
        record("Yelp", "inductive", "tuned", 1, valid=0.030, test=0.010),  # a tie keeps transductive
        record("Yelp", "transductive", "tuned", 2, valid=0.030, test=0.030, sasrec=0.020),  # no inductive run
    ]
    auto = case.id_mode_auto_runs(runs)
    assert [(r["seed"], r["chosen_mode"], r["missrec"]["test"]["ndcg@10"]) for r in auto] == [
        (0, "inductive", 0.022),
        (1, "transductive", 0.030),
    ]
    assert all("sasrec" not in r for r in auto)
    rows = [line for line in case.accuracy_markdown({"runs": runs}).splitlines() if line.startswith("| Yelp")]
    assert [row.split(" | ")[1] for row in rows] == [
        "transductive",
        "inductive",
        "auto: transductive 1/2, inductive 1/2",
    ]
    gains = [0.022 / 0.020 - 1, 0.030 / 0.020 - 1]  # each seed's chosen run against that seed's SASRec
    mean, error = case.mean_and_error(gains)
    assert "| 0.0260 ± 0.0040 |" in rows[2] and f"{100 * mean:+.1f}% ± {100 * error:.1f}%" in rows[2]
