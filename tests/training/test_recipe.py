"""Training recipes: YAML + command-line overrides, typed values, clear errors."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from helpers import REPO, run_train
from modeling_missrec.configuration.recipe import TrainingRecipe, default_recipe_path, load_recipe, parse_recipe_args
from modeling_missrec.pipelines.training import loop
from modeling_missrec.pipelines.training.checkpointing import list_checkpoints, read_progress

RECIPES = REPO / "configuration" / "recipes"


@pytest.fixture
def train():
    """The training loop's module (`train.py` runs its `run_training`), whose names the tests patch."""
    return loop


def test_default_recipe_is_the_demo_job_and_overrides_are_typed():
    assert default_recipe_path().name == "demo.yaml"
    assert load_recipe() == TrainingRecipe()  # the shipped demo recipe states the defaults
    recipe = load_recipe(None, ["--epochs", "3", "--learning_rate", "5e-4", "--data_dir=null", "--domain", "Office"])
    assert (recipe.epochs, recipe.learning_rate, recipe.data_dir, recipe.domain) == (3, 5e-4, None, "Office")


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    assert isinstance(load_recipe(path), TrainingRecipe)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"unknown recipe keys \['lr'\]; valid keys: \['stage', 'domain'"):
        load_recipe(None, ["--lr", "0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nwarmup: 10\n")
    with pytest.raises(ValueError, match=r"unknown recipe keys \['warmup'\]"):
        load_recipe(bad)
    with pytest.raises(ValueError, match="--epochs needs a value"):
        load_recipe(None, ["--epochs"])
    with pytest.raises(ValueError, match="expected --key value"):
        load_recipe(None, ["epochs", "3"])
    with pytest.raises(ValueError, match="batch_size=0 must be an integer >= 1"):
        load_recipe(None, ["--batch_size", "0"])
    with pytest.raises(ValueError, match="id_mode='both'"):
        load_recipe(None, ["--id_mode", "both"])
    with pytest.raises(ValueError, match=r"metrics_at=\[10, 20\] must hold 10 \(early stopping\) and 50"):
        load_recipe(None, ["--metrics_at", "[10, 20]"])
    with pytest.raises(ValueError, match=r"metrics_at=\[10, 0, 50\] must be a list of integers >= 1"):
        load_recipe(None, ["--metrics_at", "[10, 0, 50]"])
    with pytest.raises(ValueError, match="recipe key metrics_at: True is not a valid int"):
        load_recipe(None, ["--metrics_at", "[10, true, 50]"])
    with pytest.raises(FileNotFoundError, match="recipes shipped with the package: \\['demo-finetune.yaml'"):
        load_recipe(tmp_path / "missing.yaml")


def test_train_stops_early_and_names_a_non_finite_loss(train, tmp_path, monkeypatch, fresh_accelerate_state):
    """In-process runs of train.main on a tiny demo domain with patched validation / loss."""
    tiny = ["--num_users", "60", "--num_items", "40", "--baselines", "[]", "--output_dir", str(tmp_path / "run")]
    falling = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    real = train.evaluate_ranking

    def validation(model, collator, **kwargs):
        metrics = real(model, collator, **kwargs)
        if "accelerator" in kwargs and kwargs.get("protocols") == ("official",):  # the per-epoch validation
            metrics["official"]["ndcg@10"] = next(falling)
        return metrics

    monkeypatch.setattr(train, "evaluate_ranking", validation)
    results = run_train([*tiny, "--epochs", "6", "--early_stopping_patience", "2"])
    assert [e["epoch"] for e in results["epochs"]] == [1, 2, 3]  # best at epoch 1, then 2 epochs without gain

    monkeypatch.setattr(train, "evaluate_ranking", real)
    head = train.MISSRecForSequentialRecommendation
    real_forward = head.forward

    def nan_loss(self, *args, **kwargs):
        output = real_forward(self, *args, **kwargs)
        if output.loss is not None:
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(head, "forward", nan_loss)
    with pytest.raises(FloatingPointError, match=r"MISSRec: loss is nan at epoch 1, step 0 \(batch of histories"):
        run_train([*tiny, "--epochs", "1"])


def test_metrics_at_sets_the_cutoffs_of_validation_and_test(train, tmp_path, fresh_accelerate_state):
    """Cut-off 11 next to 10 and 50: what the official MISSRec code prints as @10 (see docs/results.md)."""
    tiny = ["--num_users", "60", "--num_items", "40", "--baselines", "[]", "--output_dir", str(tmp_path / "run")]
    results = run_train([*tiny, "--epochs", "1", "--metrics_at", "[10, 11, 50]"])
    for metrics in (results["epochs"][0], results["test"], results["test_exclude_history"], results["popularity_test"]):
        assert {"hr@11", "ndcg@11", "mrr@11", "ndcg@50"} <= set(metrics) and "ndcg@20" not in metrics
    assert results["test"]["hr@10"] <= results["test"]["hr@11"] <= results["test"]["hr@50"]


def test_strategy_needs_a_pretrained_model():
    with pytest.raises(ValueError, match="strategy='lora' fine-tunes a pre-trained model: set pretrained"):
        load_recipe(None, ["--strategy", "lora"])
    with pytest.raises(ValueError, match="strategy='adapter' is not one of"):
        load_recipe(None, ["--strategy", "adapter", "--pretrained", "runs/demo"])


def test_stage_and_checkpoint_keys_are_validated():
    with pytest.raises(ValueError, match="stage='train' is not one of"):
        load_recipe(None, ["--stage", "train"])
    with pytest.raises(ValueError, match="stage='pretrain' trains every parameter without item ids"):
        load_recipe(None, ["--stage", "pretrain", "--id_mode", "transductive"])
    with pytest.raises(ValueError, match="stage='pretrain' trains every parameter without item ids"):
        load_recipe(None, ["--stage", "pretrain", "--id_mode", "auto"])
    with pytest.raises(ValueError, match="checkpointing_steps=0 must be"):
        load_recipe(None, ["--checkpointing_steps", "0"])
    with pytest.raises(ValueError, match="baseline 'scratch' compares a pre-trained model"):
        load_recipe(None, ["--baselines", "[scratch]"])
    with pytest.raises(ValueError, match="must be a domain name or a list of distinct names"):
        load_recipe(None, ["--domain", "[demo-1, demo-1]"])
    recipe = load_recipe(None, ["--domain", "[demo-1, demo-2]", "--stage", "pretrain"])
    assert recipe.domains == ["demo-1", "demo-2"] and "output_dir" not in recipe.training_settings


def test_checkpoints_resume_refuse_other_settings_and_protect_earlier_runs(train, tmp_path, fresh_accelerate_state):
    """In-process: epoch checkpoints are kept up to the limit, a finished run resumes without training again,
    a resume under other settings and a fresh run over existing checkpoints are refused."""
    run = tmp_path / "run"
    tiny = ["--num_users", "60", "--num_items", "40", "--baselines", "[]", "--output_dir", str(run), "--epochs", "3"]
    first = run_train([*tiny, "--checkpointing_steps", "epoch", "--checkpoints_total_limit", "2"])
    saved = list_checkpoints(run / "checkpoints" / "MISSRec")
    assert len(saved) == 2 and read_progress(saved[-1]).finished
    assert not list((run / "checkpoints" / "MISSRec").glob(".tmp-*"))  # every save completed its rename
    logged = (run / "train_log.jsonl").read_text().splitlines()
    resumed = run_train([*tiny, "--checkpointing_steps", "epoch", "--resume_from_checkpoint", "latest"])
    assert resumed["epochs"] == first["epochs"] and resumed["test"] == pytest.approx(first["test"], abs=1e-6)
    # Issue 35, defect 4: the resumed run appends to the log; the epochs logged before stay.
    after = (run / "train_log.jsonl").read_text().splitlines()
    assert after[: len(logged)] == logged and json.loads(after[len(logged)])["resumed"] is True
    with pytest.raises(ValueError, match=r"other settings \(learning_rate: 0.001 there, 0.002 now\)"):
        run_train([*tiny, "--learning_rate", "0.002", "--resume_from_checkpoint", "latest"])
    with pytest.raises(FileExistsError, match="holds checkpoints of an earlier run"):
        run_train(tiny)
    assert list_checkpoints(run / "checkpoints" / "MISSRec") == saved  # the refused runs wrote nothing


def test_latest_if_any_starts_a_long_run_and_continues_it_after_a_kill(train, tmp_path, fresh_accelerate_state):
    """`resume_from_checkpoint: latest-if-any` (the bench's long runs): the same command starts afresh in a folder
    without checkpoints and, after a kill, continues from the latest epoch (not training it again)."""
    with pytest.raises(ValueError, match="latest-if-any needs checkpointing_steps"):  # it would never resume
        load_recipe(None, ["--resume_from_checkpoint", "latest-if-any"])
    run = tmp_path / "run"
    words = ["--num_users", "120", "--num_items", "60", "--baselines", "[]", "--epochs", "2", "--output_dir", str(run)]
    words += ["--checkpointing_steps", "epoch", "--checkpoints_total_limit", "100"]
    words += ["--resume_from_checkpoint", "latest-if-any"]
    (run / "checkpoints" / "MISSRec" / ".tmp-step-00000001").mkdir(parents=True)  # a first save cut short
    first = run_train(words)
    checkpoints = run / "checkpoints" / "MISSRec"
    saved = list_checkpoints(checkpoints)
    assert first["recipe"]["resume_from_checkpoint"] is None and len(saved) == 2
    shutil.rmtree(saved[-1])  # the session ended during epoch 2: its save never happened
    # and epoch 1's save was cut short after it was complete, before its rename: the run still resumes from it
    saved[0].rename(checkpoints / f".tmp-{saved[0].name}")
    resumed = run_train(words)
    assert resumed["recipe"]["resume_from_checkpoint"] == "latest" and list_checkpoints(checkpoints) == saved
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2] and resumed["epochs"][0] == first["epochs"][0]
    assert resumed["test"] == pytest.approx(first["test"], abs=1e-6)


def test_checkpoints_fall_on_optimiser_steps_and_resume_exactly_with_accumulation(
    train, tmp_path, fresh_accelerate_state
):
    """With gradient accumulation, `checkpointing_steps` counts optimiser steps: no checkpoint falls inside an
    accumulation cycle, and a run resumed from a mid-epoch checkpoint ends with the uninterrupted run's metrics."""
    run = tmp_path / "run"
    tiny = ["--num_users", "60", "--num_items", "40", "--baselines", "[]", "--output_dir", str(run), "--epochs", "2",
            "--batch_size", "32", "--gradient_accumulation_steps", "2", "--checkpointing_steps", "1",
            "--checkpoints_total_limit", "100"]  # fmt: skip
    first = run_train(tiny)
    saved = list_checkpoints(run / "checkpoints" / "MISSRec")
    progress = [read_progress(path) for path in saved]
    batches = len(range(0, len(train.load_training_data(parse_recipe_args(tiny)).sequences["train"]), 32))
    assert batches % 2 == 1  # an odd epoch: its last cycle is partial, and still one optimiser step
    for p in progress[:-1]:
        assert p.step % 2 == 0 or p.step == batches, p.step  # never inside a cycle
    assert [p.global_step for p in progress[:-1]] == list(range(1, len(progress)))
    middle = next(path for path, p in zip(saved, progress) if p.epoch == 1 and 0 < p.step < batches)
    for path in saved[saved.index(middle) + 1 :]:
        shutil.rmtree(path)
    resumed = run_train([*tiny, "--resume_from_checkpoint", "latest"])
    assert resumed["test"] == pytest.approx(first["test"], abs=1e-6)


def test_the_saved_model_is_the_one_validated(train, tmp_path, fresh_accelerate_state):
    """The best epoch's weights and the interests its validation used are what is saved: the saved model scores
    the validation split exactly as that epoch did (re-discovering interests after training changed them)."""
    from modeling_missrec.pipelines.data.collator import SequenceCollator
    from modeling_missrec.pipelines.evaluation.full_ranking import evaluate_ranking

    from modeling_missrec import MISSRecForSequentialRecommendation

    run = tmp_path / "run"
    tiny = ["--num_users", "80", "--num_items", "50", "--baselines", "[]", "--output_dir", str(run), "--epochs", "3"]
    results = run_train(tiny)
    best = max(results["epochs"], key=lambda e: e["ndcg@10"])
    model = MISSRecForSequentialRecommendation.from_pretrained(run).eval()
    domain = train.load_training_data(parse_recipe_args(tiny))
    valid = SequenceCollator(domain.sequences["validation"], model.config.max_seq_length)
    assert evaluate_ranking(model, valid)["official"]["ndcg@10"] == pytest.approx(best["ndcg@10"], abs=1e-6)


def test_id_mode_auto_keeps_the_mode_of_the_best_validation_as_trained_alone(train, tmp_path, fresh_accelerate_state):
    """`id_mode: auto` trains both modes exactly as a run of each alone (same epochs, same test metrics) and keeps
    and saves the one of the better validation NDCG@10; a transductive pre-trained model leaves only its mode."""
    from modeling_missrec import MISSRecConfig

    tiny = ["--num_users", "80", "--num_items", "50", "--baselines", "[]", "--epochs", "2"]
    alone = {
        mode: run_train([*tiny, "--id_mode", mode, "--output_dir", str(tmp_path / mode)])
        for mode in ("transductive", "inductive")
    }
    auto = run_train([*tiny, "--id_mode", "auto", "--output_dir", str(tmp_path / "auto")])
    metrics = ("loss", "ndcg@10", "hr@10")
    for mode, run in alone.items():
        assert [e[k] for e in auto["id_mode_epochs"][mode] for k in metrics] == pytest.approx(
            [e[k] for e in run["epochs"] for k in metrics], abs=1e-6
        )
    best = {mode: max(e["ndcg@10"] for e in run["epochs"]) for mode, run in alone.items()}
    assert best["transductive"] != best["inductive"]  # else the choice below would test nothing
    chosen = max(best, key=best.get)
    assert auto["id_mode"] == chosen and auto["recipe"]["id_mode"] == "auto"
    assert auto["test"] == pytest.approx(alone[chosen]["test"], abs=1e-6)
    assert MISSRecConfig.from_pretrained(tmp_path / "auto").id_mode == chosen

    pretrained = parse_recipe_args(["--id_mode", "auto", "--pretrained", str(tmp_path / "transductive")])
    assert train.id_modes_to_try(pretrained) == ("transductive",)
    assert train.id_modes_to_try(parse_recipe_args(["--id_mode", "auto"])) == ("transductive", "inductive")


def test_optimisation_keys_are_validated():
    with pytest.raises(ValueError, match="lr_scheduler_type='step' is not one of"):
        load_recipe(None, ["--lr_scheduler_type", "step"])
    with pytest.raises(ValueError, match="'constant' has no warm-up: use 'constant_with_warmup'"):
        load_recipe(None, ["--warmup_ratio", "0.1"])
    with pytest.raises(ValueError, match=r"warmup_ratio=1.0 must be in \[0, 1\)"):
        load_recipe(None, ["--lr_scheduler_type", "linear", "--warmup_ratio", "1"])
    with pytest.raises(ValueError, match="weight_decay=-0.1 must be >= 0"):
        load_recipe(None, ["--weight_decay", "-0.1"])
    with pytest.raises(ValueError, match="max_grad_norm=0.0 must be > 0 or null"):
        load_recipe(None, ["--max_grad_norm", "0"])
    with pytest.raises(ValueError, match="pretrained_learning_rate=-0.0001 must be > 0 or null"):
        load_recipe(None, ["--pretrained_learning_rate", "-1e-4"])
    with pytest.raises(ValueError, match=r"report_to=\['jsonl', 'stdout'\] must be a non-empty list drawn from"):
        load_recipe(None, ["--report_to", "[jsonl, stdout]"])
    assert load_recipe(None, ["--report_to", "tensorboard"]).report_to == ["tensorboard"]
    # Under a decaying schedule the number of epochs shapes the rates: a resume must keep it.
    assert "epochs" not in load_recipe().training_settings
    assert load_recipe(None, ["--lr_scheduler_type", "cosine"]).training_settings["epochs"] == 8


def test_weight_decay_spares_biases_and_layernorm_gains(train):
    from helpers import rec, tiny_model

    head = rec(tiny_model())
    optimizer = train.build_optimizer(head, load_recipe(None, ["--weight_decay", "0.05"]))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in head.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert any("LayerNorm" in names[id(p)] or "layer_norm" in names[id(p)] for p in no_decay["params"])
    trained = [p for p in head.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trained)


def test_schedule_clipping_and_tensorboard_in_a_run(train, tmp_path, fresh_accelerate_state, monkeypatch):
    """A linear schedule with warm-up over the run's optimiser steps, the gradient norm clipped before each
    optimiser step, and the per-epoch scalars in TensorBoard beside the JSON lines."""
    from accelerate import Accelerator
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    clipped = []
    real_clip = Accelerator.clip_grad_norm_

    def counting_clip(self, parameters, max_norm, *args, **kwargs):
        clipped.append(max_norm)
        return real_clip(self, parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", counting_clip)
    run = tmp_path / "run"
    tiny = ["--num_users", "60", "--num_items", "40", "--baselines", "[]", "--output_dir", str(run)]
    options = ["--epochs", "2", "--batch_size", "16", "--gradient_accumulation_steps", "2"]
    options += ["--lr_scheduler_type", "linear", "--warmup_ratio", "0.25", "--max_grad_norm", "0.5"]
    results = run_train([*tiny, *options, "--report_to", "[jsonl, tensorboard]"])

    args = parse_recipe_args([*tiny, *options])
    batches = -(-len(train.training_collator(args, train.load_training_data(args), 50)) // 16)
    steps_per_epoch = -(-batches // 2)
    total = 2 * steps_per_epoch
    warmup = math.ceil(0.25 * total)
    assert clipped == [0.5] * total  # once per optimiser step, not per micro-batch
    first, last = (e["learning_rate"] for e in results["epochs"])
    assert first == pytest.approx(1e-3 * (total - steps_per_epoch) / (total - warmup)) and last == 0.0

    events = EventAccumulator(str(next(run.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    ndcg = [e.value for e in events.Scalars("MISSRec/valid_ndcg@10")]
    assert ndcg == pytest.approx([e["ndcg@10"] for e in results["epochs"]])
    logged = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [row["MISSRec/learning_rate"] for row in logged[1:]] == pytest.approx([first, last])


def test_a_tracker_that_is_not_installed_is_named():
    from accelerate.tracking import get_available_trackers
    from modeling_missrec.pipelines.training.tracking import run_trackers

    if "wandb" in {str(t) for t in get_available_trackers()}:
        pytest.skip("wandb is installed here")
    with pytest.raises(ValueError, match=r"report_to names \['wandb'\], which are not installed.*pip install wandb"):
        run_trackers(["jsonl", "wandb"], "runs/x")


def test_recipe_values_are_read_as_their_keys_types(tmp_path):
    """Issue 35, defects 2, 8 and 9: YAML's `1e-3` (a string to YAML), a quoted `"false"`, `epochs: true`, a YAML
    syntax error: one typed conversion per key, driven by the recipe's field types."""
    recipe = tmp_path / "typed.yaml"
    recipe.write_text('learning_rate: 1e-3\noverwrite_output_dir: "false"\nepochs: "5"\nreport_to: jsonl\n')
    typed = load_recipe(recipe)
    assert (typed.learning_rate, typed.overwrite_output_dir, typed.epochs, typed.report_to) == (
        0.001,
        False,
        5,
        ["jsonl"],
    )
    assert type(typed.learning_rate) is float and typed.overwrite_output_dir is False  # not the truthy string
    for words, message in (
        (["--epochs", "true"], "recipe key epochs: True is not a valid int"),
        (["--learning_rate", "fast"], "recipe key learning_rate: 'fast' is not a valid float"),
        (["--overwrite_output_dir", "maybe"], "recipe key overwrite_output_dir: 'maybe' is not a valid bool"),
        (["--checkpointing_steps", "[1]"], r"recipe key checkpointing_steps: \[1\] is not a valid int \| str \| None"),
    ):
        with pytest.raises(ValueError, match=message):
            load_recipe(None, words)
    recipe.write_text("epochs: 3\nlearning_rate: [0.1\n")
    with pytest.raises(ValueError, match=r"typed.yaml: line 3, column 1: not valid YAML"):
        load_recipe(recipe)
