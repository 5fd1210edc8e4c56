"""What issue 21's search needs: `config_overrides`, the interest switch (`interest_method="none"`) and `tune.py`."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import REPO, fine_tune_lora_adapter, import_bench_module, random_histories, rec, run_train, tiny_model
from modeling_missrec.configuration.recipe import load_recipe, parse_recipe_args
from modeling_missrec.pipelines.training import loop, tuning

from modeling_missrec import MISSRecModel
from modeling_missrec import modeling_missrec as modeling_missrec
from modeling_missrec.served_files_missrec import load_missrec_adapter

NUM_ITEMS = 30
TINY_RUN = ["--num_users", "80", "--num_items", "50", "--baselines", "[]", "--epochs", "2"]


@pytest.fixture
def scripts():
    """The modules of the training loop and of `tune.py`'s trials, whose names the tests patch."""
    return loop, tuning


def test_config_overrides_read_as_a_mapping_or_the_transformers_string_form():
    as_string = load_recipe(None, ["--config_overrides", "hidden_dropout_prob=0.3,score_temperature=0.05"])
    as_yaml = load_recipe(None, ["--config_overrides", "{hidden_dropout_prob: 0.3, score_temperature: 0.05}"])
    assert (
        as_string.config_overrides
        == as_yaml.config_overrides
        == {"hidden_dropout_prob": 0.3, "score_temperature": 0.05}
    )
    assert load_recipe(None, ["--config_overrides", ""]).config_overrides is None
    with pytest.raises(ValueError, match="must read name=value,name=value"):
        load_recipe(None, ["--config_overrides", "hidden_dropout_prob"])


def test_config_overrides_set_the_model_config_and_refuse_catalogue_fields(scripts, tmp_path):
    train, _ = scripts
    args = parse_recipe_args([*TINY_RUN, "--config_overrides", "hidden_dropout_prob=0.25,interest_method=none"])
    features = {"text_features": torch.randn(NUM_ITEMS, 8), "image_features": torch.randn(NUM_ITEMS, 8)}
    model = train.build_missrec(args, features)
    assert model.config.hidden_dropout_prob == 0.25 and model.config.interest_method == "none"
    assert model.dropout.p == 0.25  # the modules are built from the overridden config
    model.save_pretrained(tmp_path / "base")
    loaded = train.build_missrec(
        parse_recipe_args(
            [*TINY_RUN, "--pretrained", str(tmp_path / "base"), "--config_overrides", "score_temperature=0.2"]
        ),
        features,
    )
    assert loaded.config.score_temperature == 0.2 and loaded.config.interest_method == "none"
    assert torch.equal(loaded.position_embeddings.weight, model.position_embeddings.weight)
    for bad, message in (("num_items=3", r"\['num_items'\] cannot be set"), ("dropout=0.1", r"\['dropout'\] cannot")):
        with pytest.raises(ValueError, match=message):
            train.build_missrec(parse_recipe_args([*TINY_RUN, "--config_overrides", bad]), features)
    for pretrained in ([], ["--pretrained", str(tmp_path / "base")]):  # the config's own checks, either way
        with pytest.raises(ValueError, match="hidden_dropout_prob"):
            overrides = ["--config_overrides", "hidden_dropout_prob=1.5"]
            train.build_missrec(parse_recipe_args([*TINY_RUN, *pretrained, *overrides]), features)


def test_interests_off_clusters_nothing_and_reads_one_constant_memory_token(monkeypatch):
    on = tiny_model(NUM_ITEMS)
    monkeypatch.setattr(modeling_missrec, "kmeans", lambda *a, **k: pytest.fail("clustered with interests off"))
    off = tiny_model(NUM_ITEMS, interest_method="none")  # same seed: the same weights and catalogue
    assert off.config.num_interests == 0 and off.interest_centroids.abs().sum() == 0
    assert all(int(getattr(off, f"{m}_interest_ids").abs().sum()) == 0 for m in off.modality_names)
    # The definition: the interest-on model with every item's interest id set to the padding interest 0.
    zeroed = {m: torch.zeros_like(getattr(on, f"{m}_interest_ids")) for m in on.modality_names}
    on.set_interest_tables(on.interest_centroids, zeroed)
    items, lengths = random_histories(8, 10, NUM_ITEMS, seed=3)
    with torch.no_grad():
        assert torch.allclose(off.embed_sequences(items, lengths), on.embed_sequences(items, lengths), atol=1e-6)
    fresh = MISSRecModel(off.config)  # never discovered: usable at once
    fresh.set_catalogue(text_features=off.text_features[1:], image_features=off.image_features[1:])
    fresh.eval().embed_sequences(items, lengths)


def test_interests_off_is_saved_and_honoured_by_adapters_and_serving(tmp_path):
    from transformers import pipeline

    base = tiny_model(NUM_ITEMS, id_mode="transductive", interest_method="none")
    base.save_pretrained(tmp_path / "base")
    adapted = fine_tune_lora_adapter(
        MISSRecModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter", NUM_ITEMS, 1e-2
    )
    loaded = load_missrec_adapter(str(tmp_path / "base"), tmp_path / "adapter")
    inner = loaded.get_base_model()
    assert inner.config.interest_method == "none" and inner.config.num_interests == 0
    items, lengths = random_histories(6, 8, NUM_ITEMS, seed=9)
    with torch.no_grad():
        assert torch.equal(rec(loaded)(items, lengths).scores, rec(adapted)(items, lengths).scores)
    pipe = pipeline("sequential-recommendation", model=str(tmp_path / "base"), trust_remote_code=True)
    with torch.no_grad():
        expected = rec(base).recommend(torch.tensor([[3, 4]]), top_k=3).item_ids[0].tolist()
    assert [r["item_id"] for r in pipe([3, 4], top_k=3)] == expected


class SplitsWithoutTest(dict):
    """A domain's splits whose test split may be dropped but not read."""

    def __getitem__(self, split):
        if split == "test":
            raise AssertionError("the search read the test split")
        return super().__getitem__(split)


def test_tune_scores_fixed_and_sampled_trials_on_validation_without_reading_test(
    scripts, tmp_path, monkeypatch, fresh_accelerate_state
):
    pytest.importorskip("optuna")
    train, tune = scripts
    run = [*TINY_RUN, "--output_dir", str(tmp_path / "run")]
    trained = run_train(run)  # the plain recipe, as train.py runs it
    load = train.load_training_data

    def guarded(args):
        domain = load(args)
        domain.sequences = SplitsWithoutTest(domain.sequences)
        return domain

    monkeypatch.setattr(tune, "load_training_data", guarded)
    transductive = run_train([*TINY_RUN, "--id_mode", "transductive", "--output_dir", str(tmp_path / "ids")])
    trials = "- {}\n- {config_overrides.interest_method: none, learning_rate: 0.003}\n- {id_mode: auto}\n"
    (tmp_path / "trials.yaml").write_text(trials)
    (tmp_path / "space.yaml").write_text("learning_rate: {float: [0.0005, 0.005], log: true}\n")
    args = load_recipe(None, [*TINY_RUN, "--output_dir", str(tmp_path / "tune")])
    fixed = yaml.safe_load((tmp_path / "trials.yaml").read_text())
    space = yaml.safe_load((tmp_path / "space.yaml").read_text())
    records = tune.run_study(args, [0], fixed, space, n_trials=2)
    assert [r["trial"] for r in records] == ["fixed-0", "fixed-1", "fixed-2", "optuna-0", "optuna-1"]
    assert json.loads((tmp_path / "tune" / "trials.json").read_text()) == records
    # The unchanged recipe scores what train.py's run validated: the same training.
    assert records[0]["mean_valid_ndcg@10"] == pytest.approx(max(e["ndcg@10"] for e in trained["epochs"]), abs=1e-6)
    assert records[1]["mean_valid_ndcg@10"] != records[0]["mean_valid_ndcg@10"]
    # Each record keeps the validation curve it was scored on.
    curve = records[0]["curves"][0]
    assert [row["ndcg@10"] for row in curve] == pytest.approx([e["ndcg@10"] for e in trained["epochs"]], abs=1e-6)
    # id_mode auto scores the better of the two modes' runs
    both = [max(e["ndcg@10"] for e in run["epochs"]) for run in (trained, transductive)]
    assert records[2]["mean_valid_ndcg@10"] == pytest.approx(max(both), abs=1e-6)
    assert all(0.0005 <= r["settings"]["learning_rate"] <= 0.005 for r in records[3:])
    with pytest.raises(ValueError, match="unknown setting 'lr'"):
        tune.apply_settings(load_recipe(None, TINY_RUN), {"lr": 0.1})


def test_a_killed_study_skips_recorded_trials_and_resumes_the_running_one(
    scripts, tmp_path, monkeypatch, fresh_accelerate_state
):
    """With checkpoints and `latest-if-any`, the same study again skips the fixed trials it recorded and continues
    the one a kill stopped from its own checkpoint, to the scores of an uninterrupted study."""
    pytest.importorskip("optuna")
    loop, tune = scripts
    fixed = [{}, {"learning_rate": 0.003}]
    resumable = ["--epochs", "3", "--checkpointing_steps", "epoch", "--resume_from_checkpoint", "latest-if-any"]
    whole = tune.run_study(
        load_recipe(None, [*TINY_RUN, *resumable, "--output_dir", str(tmp_path / "a")]), [0], fixed, {}
    )
    args = load_recipe(None, [*TINY_RUN, *resumable, "--output_dir", str(tmp_path / "b")])
    evaluate, calls = loop.evaluate_ranking, []

    def killed_at_the_fifth_validation(*a, **k):  # fixed-1's second epoch: after its first checkpoint
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return evaluate(*a, **k)

    monkeypatch.setattr(loop, "evaluate_ranking", killed_at_the_fifth_validation)
    with pytest.raises(KeyboardInterrupt):
        tune.run_study(args, [0], fixed, {})
    assert [r["trial"] for r in json.loads((tmp_path / "b" / "trials.json").read_text())] == ["fixed-0"]
    (folder,) = (tmp_path / "b" / "trials").glob("fixed-1-*")  # named by what the trial trains
    assert (folder / "seed0" / "checkpoints").is_dir()
    calls.clear()
    records = tune.run_study(args, [0], fixed, {})
    assert [r["trial"] for r in records] == ["fixed-0", "fixed-1"]
    assert len(calls) == 2  # fixed-0 not trained again; fixed-1 resumed after its first epoch
    for ours, theirs in zip(records, whole):
        assert ours["valid_ndcg@10"] == pytest.approx(theirs["valid_ndcg@10"], abs=1e-6)
    # Another trial under the same name (the list edited) is trained afresh, not read from the old one's record or
    # checkpoints; so is the same list for another model.
    calls.clear()
    records = tune.run_study(args, [0], [{}, {"learning_rate": 0.002}], {})
    assert [r["trial"] for r in records] == ["fixed-0", "fixed-1", "fixed-1"] and len(calls) == 3
    assert len(list((tmp_path / "b" / "trials").glob("fixed-1-*"))) == 2
    assert records[2]["valid_ndcg@10"] != records[1]["valid_ndcg@10"]
    assert (
        tune.TrialRunner(args, [0], tmp_path / "b" / "trials.json", model="sasrec").is_recorded("fixed-0", {}) is False
    )


def test_label_smoothing_spreads_over_real_items_only():
    model = tiny_model(NUM_ITEMS)
    items, lengths = random_histories(8, 10, NUM_ITEMS, seed=5)
    labels = torch.arange(1, 9)
    with torch.no_grad():
        plain = rec(model)(items, lengths, labels=labels)
        assert torch.allclose(
            plain.loss, torch.nn.functional.cross_entropy(plain.scores, labels) + 1e-4 * plain.diversity_loss
        )
        model.config.label_smoothing = 0.2
        smoothed = rec(model)(items, lengths, labels=labels)
    log_p = plain.scores[:, 1:].log_softmax(-1)  # column 0 is padding: no probability mass
    by_hand = -(0.8 * log_p[torch.arange(8), labels - 1] + 0.2 * log_p.mean(-1)).mean()
    assert torch.isfinite(smoothed.loss)
    assert torch.allclose(smoothed.loss, by_hand + 1e-4 * plain.diversity_loss, atol=1e-5)
    with pytest.raises(ValueError, match="label_smoothing=1.0 must be in"):
        tiny_model(NUM_ITEMS, label_smoothing=1.0)


def test_the_ablation_levers_lead_from_the_paper_recipe_to_the_tuned_defaults(scripts, monkeypatch):
    """bench/accuracy_case.py's LEVERS, applied to `scientific-paper.yaml`, give exactly `scientific.yaml`: the
    model config and every training key, so the ablation's last row measures the defaults a user gets."""
    accuracy_case = import_bench_module(monkeypatch, "accuracy_case")
    train, _ = scripts
    recipes = REPO / "configuration" / "recipes"
    paper_words = ["--config", str(recipes / "scientific-paper.yaml")]
    chained = parse_recipe_args(
        [*paper_words, *accuracy_case.recipe_flags(accuracy_case.merged_levers(len(accuracy_case.LEVERS) - 1))]
    )
    tuned = parse_recipe_args(["--config", str(recipes / "scientific.yaml")])
    features = {"text_features": torch.randn(NUM_ITEMS, 8), "image_features": torch.randn(NUM_ITEMS, 8)}
    assert (
        train.build_missrec(chained, features).config.to_dict() == train.build_missrec(tuned, features).config.to_dict()
    )
    # (`pretrained_learning_rate` is read only when a pre-trained base fine-tunes; the ablation trains from scratch)
    ignore = {"preset", "config_overrides", "output_dir", "pretrained_learning_rate"}
    assert {k: v for k, v in chained.training_settings.items() if k not in ignore} == {
        k: v for k, v in tuned.training_settings.items() if k not in ignore
    }
    assert train.build_missrec(parse_recipe_args(paper_words), features).config.score_temperature == 0.07


def test_a_trial_that_changes_the_data_trains_on_that_data(scripts, tmp_path):
    _, tune = scripts
    runner = tune.TrialRunner(load_recipe(None, TINY_RUN), [0], tmp_path / "trials.json")
    first = runner.domain(tune.apply_settings(runner.args, {}))
    assert runner.domain(tune.apply_settings(runner.args, {"learning_rate": 0.01})) is first  # same data: reused
    other = runner.domain(tune.apply_settings(runner.args, {"num_items": 40}))
    assert (first.num_items, other.num_items) == (50, 40) and "test" not in other.sequences


@pytest.mark.parametrize("path", sorted((REPO / "configuration" / "search").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_search_spaces_give_valid_recipes(scripts, path):
    optuna = pytest.importorskip("optuna")
    import yaml

    _, tune = scripts
    space = yaml.safe_load(path.read_text())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        settings = tune.suggest(study.ask(), space)
        assert set(settings) == set(space)
        tune.apply_settings(load_recipe(REPO / "configuration" / "recipes" / "scientific.yaml"), settings)


def test_sasrec_trials_set_its_own_dropout_and_learning_rate(scripts, tmp_path, monkeypatch, fresh_accelerate_state):
    """SASRec gets its settings chosen on validation like MISSRec: `tune.py --model sasrec` trains the recipe's
    `sasrec` baseline with `sasrec_config_overrides.<attribute>` and `sasrec_learning_rate`."""
    loop, tune = scripts
    seen = []
    real_fit = loop.fit

    def recording_fit(logger, name, model, train, valid, args, on_epoch_end=None):
        seen.append((name, model.config.hidden_dropout_prob, args.learning_rate, args.validation_protocol))
        return real_fit(logger, name, model, train, valid, args, on_epoch_end)

    monkeypatch.setattr(loop, "fit", recording_fit)
    args = load_recipe(None, [*TINY_RUN, "--validation_protocol", "exclude_history"])
    runner = tune.TrialRunner(args, [0], tmp_path / "trials.json", model="sasrec")
    settings = {"sasrec_config_overrides.hidden_dropout_prob": 0.2, "sasrec_learning_rate": 0.004}
    score = runner.run("sasrec", settings)
    assert seen == [("SASRec", 0.2, 0.004, "exclude_history")]
    assert 0 < score == runner.records[-1]["mean_valid_ndcg@10"]
    with pytest.raises(ValueError, match="num_items is set by the data"):
        loop.build_sasrec(tune.apply_settings(args, {"sasrec_config_overrides.num_items": 3}), 40, 50)
    with pytest.raises(ValueError, match="model='bert4rec' is not one of"):
        tune.TrialRunner(args, [0], tmp_path / "other.json", model="bert4rec")


def test_validation_protocol_decides_what_early_stopping_reads(scripts, tmp_path, monkeypatch, fresh_accelerate_state):
    loop, _ = scripts
    asked = []
    real = loop.evaluate_ranking

    def recording(model, collator, **kwargs):
        asked.append(kwargs.get("protocols"))
        return real(model, collator, **kwargs)

    monkeypatch.setattr(loop, "evaluate_ranking", recording)
    run = [*TINY_RUN, "--epochs", "1", "--output_dir", str(tmp_path / "run")]
    results = run_train([*run, "--validation_protocol", "exclude_history"])
    assert asked[0] == ("exclude_history",) and asked[-1] == ("official", "exclude_history")  # validation, test
    assert 0 < results["epochs"][0]["ndcg@10"] <= 1
    with pytest.raises(ValueError, match="validation_protocol='masked' is not one of"):
        load_recipe(None, ["--validation_protocol", "masked"])
