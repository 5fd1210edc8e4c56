"""bench/transfer_profile_case.py: the whole case on small demo data (base, zero-shot, shares of users, arms,
records, resumption) and its table's paired gains and targets against hand-computed values."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import REPO, import_bench_module
from modeling_missrec.hub_cards.export import export_base


@pytest.fixture
def case(monkeypatch):
    return import_bench_module(monkeypatch, "transfer_profile_case")


def test_the_case_on_demo_data_records_every_run_and_resumes(case, tmp_path, monkeypatch, fresh_accelerate_state):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    size = ["--num_users", "150", "--num_items", "80"]
    base = ["--config", str(REPO / "configuration" / "recipes" / "demo-pretrain.yaml"), *size, "--epochs", "2"]
    base += ["--save_epochs", "[1]"]
    targets = {"demo": ["--domain", "demo", *size, "--batch_size", "64"]}
    run = {"targets": targets, "fractions": (0.5, 1.0), "root": tmp_path, "base_words": base, "shipped": None}
    run |= {"budget_epochs": (1,), "budget_fraction": 0.5, "sanity": {"demo": targets["demo"]}}
    result = case.run_transfer_profile([0], **run, epochs={0.5: 1, 1.0: 1})
    arms = {(r["fraction"], r["arm"]) for r in result["runs"]}
    assert arms == {(None, "zero-shot"), (0.5, "lora@epoch-1")} | {
        (f, a) for f in (0.5, 1.0) for a in ("scratch", "lora", "full")
    }
    budget = next(r for r in result["runs"] if r["arm"] == "lora@epoch-1")
    assert budget["argv"][budget["argv"].index("--pretrained") + 1] == str(tmp_path / "base" / "epoch-1")
    half = next(r for r in result["runs"] if r["fraction"] == 0.5 and r["arm"] == "lora")
    assert half["build"]["train_users"]["fraction"] == 0.5 and half["id_mode"] == "inductive"
    assert half["epochs_run"] == 1 and half["best_epoch"] in (0, 1)  # epoch 0: the base as it started, validated
    zero = next(r for r in result["runs"] if r["arm"] == "zero-shot")
    assert set(zero["content_knn"]) == set(zero["missrec"]) == {"official", "exclude_history"}
    assert zero["cold"]["users"] == 0 or "ndcg@10" in zero["cold"]["exclude_history"]
    (sanity,) = result["sanity"]  # the base on a domain of its own, nothing trained
    words = sanity["argv"]
    assert (
        words[words.index("--pretrained") + 1] == str(tmp_path / "base") and words[words.index("--epochs") + 1] == "0"
    )
    assert sanity["target"] == "demo" and set(sanity["missrec"]) == set(case.PROTOCOL_KEYS) and sanity["scratch"] == {}
    table = case.markdown(result)
    assert "the sanity bar" in table and "| demo | " in table.split("the sanity bar")[1]
    assert table.splitlines()[0].index("history excluded") < table.splitlines()[0].index("official")
    assert "| demo | 50% | lora |" in table and "| demo | 50% | lora@epoch-1 |" in table and "content-kNN" in table
    # A second call trains nothing: every run is read from its record.
    records = sorted(tmp_path.glob("demo/*/*/bench_run.json")) + sorted(tmp_path.glob("sanity/*/*/*/bench_run.json"))
    assert len(records) == len(result["runs"]) + 1
    stamps = [p.stat().st_mtime_ns for p in records]
    again = case.run_transfer_profile([0], **run, epochs={0.5: 1, 1.0: 1})
    assert [p.stat().st_mtime_ns for p in records] == stamps and again["runs"] == result["runs"]

    # `--recorded` rebuilds the same table from the records, and the exported base's card carries it as it is.
    recorded = case.recorded_transfer_profile(tmp_path, shipped=None)
    assert case.markdown(recorded) == table and recorded["base"]["epochs"] == result["base"]["epochs"]
    (tmp_path / "table").write_text(table)
    base = export_base(tmp_path / "base", tmp_path / "exported", transfer_results=tmp_path / "table")
    assert table in (base / "README.md").read_text()

    # A run recorded after the export puts the new table on the shipped base's card by itself.
    shipped = export_base(tmp_path / "base", tmp_path / "shipped")
    shutil.rmtree(case.run_folder(tmp_path, "demo", 0.5, "lora", 0))
    case.run_transfer_profile([0], **(run | {"shipped": shipped}), epochs={0.5: 1, 1.0: 1})
    card = (shipped / "README.md").read_text()
    assert case.markdown(case.recorded_transfer_profile(tmp_path, shipped)) in card and "| demo | 50% | lora |" in card


def test_the_plan_runs_cheap_cells_first_and_the_full_data_cells_seed_by_seed(case):
    plan = case.run_plan(["A", "B"], (1.0, 0.05, 0.01), [0, 1], (1, 3), 0.05)
    arms = case.ARMS
    assert plan[:2] == [("A", None, "zero-shot", 0), ("B", None, "zero-shot", 0)]
    fractions = [fraction for _, fraction, _, _ in plan[2:]]
    assert fractions == sorted(fractions)  # 1%, 5%, the budget curve at 5%, then 100%
    full = [(target, arm, seed) for target, fraction, arm, seed in plan if fraction == 1.0]
    assert full == [(t, a, s) for s in (0, 1) for t in ("A", "B") for a in arms]  # seed 0 of both targets first
    budget = [(target, arm, seed) for target, _, arm, seed in plan if "@" in arm]
    assert budget == [(t, f"lora@epoch-{e}", s) for t in ("A", "B") for s in (0, 1) for e in (1, 3)]
    expected = 2 + 2 * 2 * 2 * len(arms) + len(budget) + len(full)
    assert len(plan) == len(set(plan)) == expected


def record(fraction, arm, seed, excluded, official, id_mode="inductive"):
    metrics = {p: {"ndcg@10": v} for p, v in (("exclude_history", excluded), ("official", official))}
    cold = {"users": 3, **metrics}
    out = {"target": "T", "fraction": fraction, "arm": arm, "seed": seed, "id_mode": id_mode}
    return out | {"missrec": metrics, "popularity": metrics, "cold": cold}


def test_gains_are_paired_per_seed_and_checked_against_the_targets(case):
    runs = [record(0.05, "scratch", 0, 0.10, 0.20), record(0.05, "scratch", 1, 0.20, 0.20)]
    runs += [record(0.05, "lora", 0, 0.13, 0.22), record(0.05, "lora", 1, 0.24, 0.26)]
    runs += [record(1.0, "scratch", 0, 0.30, 0.30), record(1.0, "full", 0, 0.29, 0.33)]
    zero = record(None, "zero-shot", 0, 0.05, 0.06) | {"content_knn": {"exclude_history": {"ndcg@10": 0.04},
                                                                      "official": {"ndcg@10": 0.06}}}  # fmt: skip
    rows = {(r["fraction"], r["arm"]): r for r in case.summarise([*runs, zero])}
    lora = rows[(0.05, "lora")]
    assert lora["gain exclude_history"][0] == pytest.approx((0.3 + 0.2) / 2)  # +30% and +20%, paired
    assert lora["gain official"][0] == pytest.approx((0.1 + 0.3) / 2)
    assert case.verdict(lora, "exclude_history") == "≥ +20%: pass"
    assert case.verdict(rows[(1.0, "full")], "exclude_history") == "≥ scratch: MISS"
    assert case.verdict(rows[(1.0, "full")], "official") == "≥ scratch: pass"
    assert case.verdict(rows[(None, "zero-shot")], "exclude_history") == "1.25 × content-kNN (≥ 1.2): pass"
    assert case.verdict(rows[(None, "zero-shot")], "official") == "1.00 × content-kNN (≥ 1.2): MISS"
    assert [(r["fraction"], r["arm"]) for r in case.summarise([*runs, zero])][:2] == [(None, "zero-shot"),
                                                                                       (0.05, "scratch")]  # fmt: skip
    json.dumps(case.summarise(runs))  # the rows go into the bench's JSON


def test_the_sanity_bar_holds_the_base_to_the_scratch_models_auto_picks(case, tmp_path):
    """Scratch: per seed, the id mode of the better validation (seed 0 inductive, seed 1 transductive), both
    protocols' test NDCG@10 averaged over those; the base passes where it reaches the mean."""
    picks = {(0, "transductive"): (0.10, 0.020, 0.030), (0, "inductive"): (0.20, 0.040, 0.050)}
    picks |= {(1, "transductive"): (0.30, 0.060, 0.070), (1, "inductive"): (0.10, 0.999, 0.999)}
    for (seed, mode), (valid, excluded, official) in picks.items():
        folder = tmp_path / "Beauty" / mode / "tuned" / f"seed{seed}"
        folder.mkdir(parents=True)
        missrec = {"valid_ndcg@10": valid, "test": {"ndcg@10": official}, "test_exclude_history": {"ndcg@10": excluded}}
        record = {"domain": "Beauty", "mode": mode, "variant": "tuned", "seed": seed, "missrec": missrec}
        (folder / "bench_run.json").write_text(json.dumps(record))
    reference = case.scratch_reference("Beauty", tmp_path)
    assert reference["exclude_history"][0] == pytest.approx(0.05) and reference["official"][0] == pytest.approx(0.06)
    base = {"target": "Beauty", "missrec": {"exclude_history": {"ndcg@10": 0.055}, "official": {"ndcg@10": 0.03}}}
    base["scratch"] = json.loads(json.dumps(reference))  # as the bench's report holds it
    sampled = {"exclude_history": (0.06, 0.002), "official": (0.02, 0.001)}  # the sampled table's
    row = case.sanity_markdown([base | {"sampled_scratch": sampled}]).splitlines()[2]
    assert row == (
        "| Beauty | 0.0550 | 0.0500 ± 0.0100 | 1.10 (pass) | 0.0600 ± 0.0020 | 0.92 (MISS) "
        "| 0.0300 | 0.0600 ± 0.0100 | 0.50 (MISS) | 0.0200 ± 0.0010 | 1.50 (pass) |"
    )
    assert case.scratch_reference("Games", tmp_path) == {}
    games = case.sanity_markdown([base | {"target": "Games", "scratch": {}}]).splitlines()[2]
    assert games.startswith("| Games | 0.0550 | — | — | — | — | 0.0300 |")
    (tmp_path / "Beauty" / "inductive" / "other").mkdir()  # another variant's run of seed 1 is not the recipe's
    (tmp_path / "Beauty" / "inductive" / "tuned" / "seed1").rename(
        tmp_path / "Beauty" / "inductive" / "other" / "seed1"
    )
    assert case.scratch_reference("Beauty", tmp_path)["official"][0] == pytest.approx(0.05)  # tuned runs alone


def test_recorded_sanity_rows_keep_the_order_of_the_base_domains(case, tmp_path):
    for domain in ("Yelp", "Beauty", "LastFM"):
        folder = tmp_path / "sanity" / domain / "zero-shot" / "zero-shot-seed0"
        folder.mkdir(parents=True)
        (folder / "bench_run.json").write_text(json.dumps({"target": domain}))
    recorded = case.recorded_transfer_profile(tmp_path, shipped=None)
    assert (
        [run["target"] for run in recorded["sanity"]]
        == ["Beauty", "Yelp", "LastFM"]
        == [d for d in case.BASE_DOMAINS if d in ("Yelp", "Beauty", "LastFM")]
    )
    assert recorded["runs"] == [] and "base" not in recorded  # nothing trained, no base yet


def fake_results(case, recipe_mode: str, chosen_mode: str) -> dict:
    """What `train_run` returns for a run in `recipe_mode` that kept `chosen_mode`, every metric 0.1."""
    metrics = {k: 0.1 for k in case.METRICS}
    results = {"recipe": {"id_mode": recipe_mode}, "id_mode": chosen_mode, "build": {}}
    keys = ("test", "test_exclude_history", "popularity_test", "popularity_test_exclude_history")
    return results | {key: metrics for key in keys}


def stub_training(case, monkeypatch, train_run) -> None:
    """The case with `train_run` in place of training, and no base, base record or cold-target metrics to read."""
    monkeypatch.setattr(case, "train_run", train_run)
    monkeypatch.setattr(case, "ensure_base", lambda base, words, shipped: base)
    monkeypatch.setattr(case, "base_record", lambda base: {})
    monkeypatch.setattr(case, "cold_metrics", lambda *args: {"users": 0})


def test_later_seeds_train_the_full_data_cells_in_the_mode_auto_picked_on_the_first(case, monkeypatch, tmp_path):
    """`id_mode_from_first_seed`: at 100%, seed 0 runs the recipe's `auto`; seed 1 trains each cell (target, arm)
    in the mode auto picked for it on seed 0, alone, and the record and the table say so. Shares below 100% keep
    their inductive runs on every seed."""
    picks = {"scratch": "transductive", "lora": "inductive", "full": "transductive"}
    trained = []

    def train_run(argv):
        word = lambda key: argv[argv.index(key) + 1] if key in argv else None  # noqa: E731
        mode, pretrained = word("--id_mode") or "auto", word("--pretrained")
        arm = "scratch" if pretrained is None else word("--strategy")
        trained.append((word("--train_user_fraction"), arm, word("--seed"), mode))
        results = fake_results(case, mode, picks[arm] if mode == "auto" else mode)
        return results | {"epochs": [{"epoch": 1, "ndcg@10": 0.1}]}

    stub_training(case, monkeypatch, train_run)
    run = {"targets": {"T": ["--domain", "demo"]}, "fractions": (0.5, 1.0), "root": tmp_path, "sanity": {}}
    run |= {"budget_epochs": (), "epochs": {0.5: 1, 1.0: 1}, "id_mode_from_first_seed": True, "shipped": None}
    # A recipe of one mode (not `auto`): every seed trains in it, and no record says `auto` chose it.
    fixed = case.run_transfer_profile([0, 1], **{**run, "targets": {"R": ["--id_mode", "transductive"]}})
    assert not any("id_mode_chosen_on_seed" in r for r in fixed["runs"])
    assert {case.shown_id_mode(r) for r in fixed["runs"] if r["fraction"] == 1.0} == {"transductive"}
    trained.clear()
    result = case.run_transfer_profile([0, 1], **run)
    full = [(arm, seed, mode) for fraction, arm, seed, mode in trained if fraction == "1.0"]
    assert full == [(arm, "0", "auto") for arm in case.ARMS] + [(arm, "1", picks[arm]) for arm in case.ARMS]
    assert {mode for fraction, _, _, mode in trained if fraction == "0.5"} == {"inductive"}
    later = [r for r in result["runs"] if r["fraction"] == 1.0 and r["seed"] == 1]
    assert [(r["chosen_id_mode"], r["id_mode_chosen_on_seed"]) for r in later] == [(picks[a], 0) for a in case.ARMS]
    rows = {(r["fraction"], r["arm"]): r["id_modes"] for r in case.summarise(result["runs"])}
    assert rows[(1.0, "lora")] == ["auto: inductive", "auto: inductive (seed 0's)"]
    assert rows[(0.5, "lora")] == ["inductive"]


def test_a_checkout_that_lost_the_base_run_fine_tunes_the_shipped_base(case, monkeypatch, tmp_path):
    """The pre-training run's folder is not committed; the exported base is. A checkout without the run uses the
    shipped base instead of pre-training again, a run that started here continues, and budget-curve cells whose
    snapshot only the run had are skipped unless recorded."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "config.json").write_text("{}")
    (shipped / "metrics.json").write_text(json.dumps({"recipe": {"stage": "pretrain"}, "epochs": [{"epoch": 1}]}))
    pretrained = []
    monkeypatch.setattr(case, "train_run", lambda argv: pretrained.append(argv))
    assert case.ensure_base(tmp_path / "base", ["--epochs", "2"], shipped) == shipped and pretrained == []
    (tmp_path / "base" / "checkpoints").mkdir(parents=True)  # a pre-training that started here goes on
    assert case.ensure_base(tmp_path / "base", ["--epochs", "2"], shipped) == tmp_path / "base"
    assert case.ensure_base(tmp_path / "other", ["--epochs", "2"], None) == tmp_path / "other"
    assert [argv[:2] for argv in pretrained] == [["--epochs", "2"]] * 2

    ran, refreshed = [], []
    monkeypatch.setattr(case, "one_run", lambda target, fraction, arm, seed, base, *rest: ran.append((arm, base)))
    monkeypatch.setattr(case, "refresh_shipped_card", lambda shipped, root: refreshed.append((len(ran), shipped)))
    run = {"targets": {"T": []}, "fractions": (0.5,), "root": tmp_path / "case", "sanity": {}, "shipped": shipped}
    run |= {"budget_epochs": (1, 3), "budget_fraction": 0.5, "epochs": {0.5: 1}}
    folder, argv = case.planned_run("T", 0.5, "lora@epoch-3", 0, shipped, tmp_path / "case", [], {0.5: 1})
    folder.mkdir(parents=True)
    (folder / "bench_run.json").write_text(json.dumps({"argv": argv}))
    case.run_transfer_profile([0], **run)
    assert ran == [(arm, shipped) for arm in ("zero-shot", *case.ARMS, "lora@epoch-3")]
    assert refreshed == [(n, shipped) for n in range(1, len(case.ARMS) + 2)]  # after each run trained, not the recorded
    assert case.recorded_transfer_profile(tmp_path / "case", shipped)["base"]["epochs"] == [{"epoch": 1}]


def test_below_all_the_users_each_arm_trains_at_the_rate_chosen_for_its_kind(case, tmp_path):
    rates = {"scratch": 3e-4, "pretrained": 1e-4}
    words = lambda fraction, arm: case.run_arguments(  # noqa: E731
        ["--domain", "demo"], fraction, arm, 0, tmp_path / "base", tmp_path / "run", {0.05: 3, 1.0: 2}, None, rates
    )
    tail = lambda argv, key: argv[argv.index(key) + 1] if key in argv else None  # noqa: E731
    assert tail(words(0.05, "scratch"), "--learning_rate") == "0.0003"
    assert "--pretrained_learning_rate" not in words(0.05, "scratch")
    for arm in ("lora", "full", "lora@epoch-1"):
        assert tail(words(0.05, arm), "--pretrained_learning_rate") == "0.0001"
        assert "--learning_rate" not in words(0.05, arm)
    for argv in (words(1.0, "scratch"), words(1.0, "lora"), words(None, "zero-shot")):  # the recipe's rates
        assert "--learning_rate" not in argv and "--pretrained_learning_rate" not in argv


def test_a_record_trained_with_other_settings_is_trained_again(case, monkeypatch, tmp_path):
    """Changing a share's epoch cap retrains that share's runs and only those; where the files are (a checkout
    elsewhere, another data folder) does not make a record out of date."""
    trained = []

    def train_run(argv):
        if "--train_user_fraction" in argv:  # not the zero-shot run, which nothing here changes
            trained.append((argv[argv.index("--train_user_fraction") + 1], argv[argv.index("--epochs") + 1]))
        return fake_results(case, "inductive", "inductive")

    stub_training(case, monkeypatch, train_run)
    run = {"fractions": (0.5, 1.0), "root": tmp_path, "sanity": {}, "budget_epochs": (), "shipped": None}
    run_case = lambda data, caps: case.run_transfer_profile(  # noqa: E731
        [0], targets={"T": ["--data_dir", data]}, epochs=caps, **run
    )
    run_case("/data/here", {0.5: 1, 1.0: 2})
    assert sorted(trained) == sorted([("0.5", "1")] * 3 + [("1.0", "2")] * 3)
    trained.clear()
    run_case("/data/elsewhere", {0.5: 1, 1.0: 2})
    assert trained == []
    result = run_case("/data/here", {0.5: 1, 1.0: 4})
    assert trained == [("1.0", "4")] * 3
    full = [r["argv"] for r in result["runs"] if r["fraction"] == 1.0]
    assert [argv[argv.index("--epochs") + 1] for argv in full] == ["4"] * 3
    settings = case.training_settings(["--config", "a.yaml", "--epochs", "3", "--overwrite_output_dir=true"])
    assert settings == {"--epochs": "3", "--overwrite_output_dir": "true"}
