"""A pre-trained base exported without its catalogue: the weights that transfer, a few MB, and a card that says
what it was pre-trained on, under which terms, at what budget, and what transfer measured."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import random_histories, run_script_without_package, tiny_config
from huggingface_hub import ModelCard
from modeling_missrec.hub_cards.base_cards import DATA_TERMS, NO_TERMS, NO_TRANSFER
from modeling_missrec.hub_cards.export import export_base, main
from safetensors.torch import load_file

from modeling_missrec import MISSRecModel


def catalogue(num_items: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"{m}_features": torch.randn(num_items, 16, generator=generator) for m in ("text", "image")}


def pretrained_model(**config) -> MISSRecModel:
    torch.manual_seed(0)
    model = MISSRecModel(tiny_config(repeat_bias=True, **config))
    model.set_catalogue(**catalogue(80, seed=1))
    model.discover_interests()
    return model.eval()


def embeddings_on(model: MISSRecModel, items: dict[str, torch.Tensor]) -> torch.Tensor:
    model.set_catalogue(**items)
    model.discover_interests()
    item_seq, lengths = random_histories(6, 10, len(items["text_features"]), seed=3)
    with torch.no_grad():
        return model(item_seq, lengths=lengths).sequence_embeddings


@pytest.mark.parametrize("fusion", ["dynamic_shared", "dynamic_instance"])  # per-item fusion weights or not
def test_clearing_the_catalogue_keeps_what_transfers(tmp_path, fusion):
    model = pretrained_model(item_mm_fusion=fusion)
    model.save_pretrained(tmp_path / "with")
    model.clear_catalogue()
    assert (model.config.num_items, model.config.num_interests) == (0, 0)
    assert model.text_features.shape == (1, 16) and model.interest_centroids.shape == (1, 32)
    assert fusion == "dynamic_shared" or model.item_fusion.weight.shape == (1,)
    with pytest.raises(ValueError, match="no item catalogue"):
        model(torch.tensor([[1, 2]]))
    model.save_pretrained(tmp_path / "without")

    # On a new catalogue the base without its old items embeds histories exactly as the one with them.
    new_items = catalogue(50, seed=2)
    with_items = embeddings_on(MISSRecModel.from_pretrained(tmp_path / "with").eval(), new_items)
    without_items = embeddings_on(MISSRecModel.from_pretrained(tmp_path / "without").eval(), new_items)
    torch.testing.assert_close(without_items, with_items, rtol=0, atol=0)


def test_a_transductive_model_loses_its_item_ids_with_its_catalogue(tmp_path):
    model = pretrained_model(id_mode="transductive")
    model.clear_catalogue()
    assert model.item_id_embeddings.num_embeddings == 1  # the padding row: ids are re-learnt on a new catalogue
    model.save_pretrained(tmp_path / "without")
    reloaded = MISSRecModel.from_pretrained(tmp_path / "without")
    assert reloaded.config.num_items == 0 and reloaded.item_id_embeddings.num_embeddings == 1


def write_pretraining_run(folder, recipe_overrides: dict | None = None, **metrics_overrides) -> dict:
    """A `stage: pretrain` run folder in train.py's shape (weights and metrics.json)."""
    pretrained_model().save_pretrained(folder)
    statistics = {"Beauty": {"users": 22363, "items": 12101, "interactions": 198502}}
    metrics = {
        "recipe": {"stage": "pretrain", "domain": ["Beauty", "MyShop"], "text_encoder": "sentence",
                   "batch_size": 4096, "learning_rate": 0.001, "max_train_examples": None,
                   "output_dir": str(folder), **(recipe_overrides or {})},
        "build": {"source": "atomic", "text_encoder": "sentence", "domains": ["Beauty", "MyShop"],
                  "statistics": statistics},
        "num_processes": 1,
        "epochs": [{"epoch": 1, "loss": 7.49, "ndcg@10": 0.0175, "train_seconds": 2700.0},
                   {"epoch": 2, "loss": 7.21, "ndcg@10": 0.0198, "train_seconds": 1800.0}],
        "test": {"ndcg@10": 0.02},
        **metrics_overrides,
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def test_the_exported_base_holds_no_catalogue_and_its_card_says_what_it_is(tmp_path):
    run = tmp_path / "pretrain"
    write_pretraining_run(run)
    transfer = tmp_path / "transfer-table"
    transfer.write_text("| target | zero-shot NDCG@10 |\n|---|---|\n| MovieLens100K | 0.0123 |\n")
    assert main(["base", "--run_dir", str(run), "--output_dir", str(tmp_path / "base"),
                 "--transfer_results", str(transfer)]) == 0  # fmt: skip
    base = tmp_path / "base"

    weights = load_file(base / "model.safetensors")
    assert weights["text_features"].shape == (1, 16) and weights["text_interest_ids"].shape == (1,)
    assert json.loads((base / "config.json").read_text())["num_items"] == 0
    assert json.loads((base / "metrics.json").read_text())["recipe"]["output_dir"] == "pretrain"  # no local paths

    card = ModelCard.load(base / "README.md")
    assert "pre-trained-base" in card.data.tags and card.data.license == "other"
    text = card.text
    # the data and their terms, per domain; a domain without known terms says to check them
    assert f"| Beauty | 22,363 | 12,101 | 198,502 | {DATA_TERMS['Beauty']} |" in text
    assert f"| MyShop | – | – | – | {NO_TERMS} |" in text
    assert "all-MiniLM-L6-v2" in text  # how a new catalogue's text must be encoded
    # the budget and the validation curve; the kept weights are the best epoch's
    assert "2 epochs over every training example of each domain" in text and "1.2 hours of training" in text
    assert "epoch 2, the best on validation" in text
    assert "| 1 | 7.490 | 0.0175 | 2700 |" in text and "| 2 | 7.210 | 0.0198 | 1800 |" in text
    # the transfer table as measured, and the commands that give the base a catalogue
    assert transfer.read_text().strip() in text
    assert f"--pretrained {base.resolve()} --epochs 0" in text and "--strategy lora" in text

    # The card's Python runs as written, as remote code, without this package.
    code = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    assert run_script_without_package(code, tmp_path).strip().endswith("torch.Size([1, 32])")

    # A base shipped inside a repository: the card's commands name it as given, relative to where they run.
    assert main(["base", "--run_dir", str(run), "--output_dir", str(tmp_path / "shipped"),
                 "--model_id", "pretrained/missrec-base"]) == 0  # fmt: skip
    shipped = (tmp_path / "shipped" / "README.md").read_text()
    assert "--pretrained pretrained/missrec-base --epochs 0" in shipped and str(tmp_path) not in shipped


def test_a_demo_base_card_says_synthetic_and_reads_short_runs_right(tmp_path):
    demo = {"domain": ["demo-1", "demo-2"], "max_eval_examples": None, "max_train_examples": 5000}
    build = {"source": "demo", "domains": ["demo-1", "demo-2"]}
    epochs = [{"epoch": 1, "loss": 4.9, "ndcg@10": None, "train_seconds": 95.0}]
    write_pretraining_run(tmp_path / "pretrain", demo, build=build, epochs=epochs)
    card = ModelCard.load(export_base(tmp_path / "pretrain", tmp_path / "base") / "README.md")
    assert card.data.license == "apache-2.0" and "synthetic" in card.text and "research-use" not in card.text
    assert "| demo-1 | – | – | – | synthetic (the project's seeded demo generator) |" in card.text
    assert "1 epoch over a seeded sample of 5,000 examples" in card.text and "2 minutes of training." in card.text
    assert "for every validation user." in card.text and "best on validation" not in card.text  # no score, no pick
    assert "| 1 | 4.900 | – | 95 |" in card.text
    assert "configuration/recipes/demo-finetune.yaml" in card.text and "text-domain.yaml" not in card.text


def test_a_base_without_transfer_results_says_so_and_only_pretraining_runs_are_bases(tmp_path):
    write_pretraining_run(tmp_path / "pretrain")
    card = ModelCard.load(export_base(tmp_path / "pretrain", tmp_path / "base") / "README.md")
    assert f"## Transfer\n\n{NO_TRANSFER}" in card.text

    write_pretraining_run(tmp_path / "finetune", {"stage": "finetune"})
    with pytest.raises(ValueError, match="stage='finetune' run: a base is a pre-training run"):
        export_base(tmp_path / "finetune", tmp_path / "not-a-base")


def test_a_snapshot_of_the_budget_curve_exports_with_the_epochs_it_had_seen(tmp_path):
    """An `epoch-<N>` folder of `save_epochs` has no metrics of its own: its card tells the run's first N epochs
    and says the weights are those after epoch N, not the best on validation."""
    write_pretraining_run(tmp_path / "pretrain")
    pretrained_model().save_pretrained(tmp_path / "pretrain" / "epoch-1")
    card = ModelCard.load(export_base(tmp_path / "pretrain" / "epoch-1", tmp_path / "base") / "README.md")
    assert "1 epoch over every training example" in card.text and "| 1 | 7.490 | 0.0175 | 2700 |" in card.text
    assert "| 2 | 7.210 |" not in card.text and "best on validation" not in card.text
    assert "the weights are those after epoch 1 (a snapshot of a longer run)" in card.text
    shared = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert shared["snapshot_epoch"] == 1 and "test" not in shared  # the run's test numbers are its kept weights'
    (tmp_path / "pretrain" / "metrics.json").unlink()  # a run still pre-training
    with pytest.raises(FileNotFoundError, match="snapshot of the run .* which has not finished"):
        export_base(tmp_path / "pretrain" / "epoch-1", tmp_path / "other")
