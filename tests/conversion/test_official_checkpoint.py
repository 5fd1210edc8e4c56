"""Importing checkpoints of the official MISSRec code: weight mapping, RecBole's item order, its pickled config."""

from __future__ import annotations

import enum
import os
import re
import sys
import types

import numpy as np
import pytest
import torch
import yaml
from helpers import official_transformer, random_histories, rec, tiny_model
from modeling_missrec.pipelines.conversion.official_checkpoint import (
    UnsafeCheckpointError,
    load_official_checkpoint,
    main,
    read_official_checkpoint,
    recbole_item_order,
)

from modeling_missrec import MISSRecModel

NUM_ITEMS = 30


class Config:
    """What the official trainer pickles as `checkpoint["config"]`: RecBole's Config keeps its settings in
    `final_config_dict`, its YAML loader class, and enums of its own among the settings."""

    def __init__(self, settings: dict) -> None:
        self.final_config_dict = settings
        self.yaml_loader = yaml.FullLoader


class ModelType(enum.Enum):
    """RecBole's `recbole.utils.enum_type.ModelType`, pickled among the settings."""

    SEQUENTIAL = 2


class MISSRec:
    """The official model class, which RecBole's config names."""


def save_official_checkpoint(
    model: MISSRecModel, path, item_order: torch.Tensor, monkeypatch, pretraining: bool = False, **settings
) -> None:
    """Write `model` as the official trainer would: RecBole's tensor names, per-item rows in RecBole's id order
    (RecBole id r holds our item `item_order[r - 1]`), and a config whose classes exist only at saving time.
    A pre-training checkpoint has no catalogue and no interest table (its data loader carries the features)."""
    rows = torch.cat([torch.zeros(1, dtype=torch.long), item_order])  # RecBole id -> our id
    state = {f"trm_model.{k}": v for k, v in official_transformer(model).state_dict().items()}
    state |= {
        "position_embedding.weight": model.position_embeddings.weight,
        "LayerNorm.weight": model.LayerNorm.weight,
        "LayerNorm.bias": model.LayerNorm.bias,
        "fusion_factor": model.item_fusion.weight.reshape(()),
        "interest_embeddings": model.interest_centroids,
    }
    if model.item_id_embeddings is not None:  # the official model has none in pre-training and inductive mode
        state["item_embedding.weight"] = model.item_id_embeddings.weight[rows]
    for theirs, ours in (("text", "text"), ("img", "image")):
        adaptor = getattr(model, f"{ours}_adaptor")
        state |= {f"{theirs}_adaptor.{p}": adaptor.get_parameter(p) for p in ("weight", "bias")}
    for theirs, ours in (("plm", "text"), ("img", "image")):
        state[f"{theirs}_embedding.weight"] = getattr(model, f"{ours}_features")[rows]
        state[f"{theirs}_interest_lookup_table"] = getattr(model, f"{ours}_interest_ids")[rows]
        state[f"{theirs}_embedding_empty_mask"] = ~getattr(model, f"{ours}_present")[rows]
    stage = "transductive_ft" if model.config.id_mode == "transductive" else "inductive_ft"
    if pretraining:
        catalogue = ("plm_", "img_embedding", "img_interest", "interest")
        state, stage = {k: v for k, v in state.items() if not k.startswith(catalogue)}, "pretrain"
    settings = {"n_heads": model.config.num_attention_heads, "train_stage": stage, "model": MISSRec} | settings
    settings |= {"device": torch.device("cpu"), "ITEM_ID_FIELD": "item_id", "topk": [10, 50]}  # as RecBole keeps
    settings |= {"MODEL_TYPE": ModelType.SEQUENTIAL, "valid_metric_bigger": True}
    with monkeypatch.context() as patch:  # the classes' modules exist only while saving, as in the official repo
        for name, value in (("recbole", None), ("recbole.config", None), ("recbole.config.configurator", Config)):
            module = types.ModuleType(name)
            if value is not None:
                module.Config = value
            patch.setitem(sys.modules, name, module)
        patch.setattr(Config, "__module__", "recbole.config.configurator")
        patch.setitem(sys.modules, "recbole.utils.enum_type", types.SimpleNamespace(ModelType=ModelType))
        patch.setattr(ModelType, "__module__", "recbole.utils.enum_type")
        patch.setitem(sys.modules, "missrec", types.SimpleNamespace(MISSRec=MISSRec))
        patch.setattr(MISSRec, "__module__", "missrec")
        state = {k: v.detach().clone() for k, v in state.items()}
        # what the official trainer saves beside the weights: a numpy best score and the optimiser's state
        trained = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
        optimizer = torch.optim.Adam(trained)
        for parameter in trained:
            parameter.grad = torch.ones_like(parameter)
        optimizer.step()  # its state holds tensors (exp_avg, exp_avg_sq, step)
        checkpoint = {"config": Config(settings), "epoch": 7, "cur_step": 3, "best_valid_score": np.float64(0.0812)}
        checkpoint |= {"state_dict": state, "other_parameter": None, "optimizer": optimizer.state_dict()}
        torch.save(checkpoint, path)


def scores_of(model: MISSRecModel) -> torch.Tensor:
    items, lengths = random_histories(16, 10, NUM_ITEMS)
    with torch.no_grad():
        return rec(model)(item_seq=items, lengths=lengths).scores


@pytest.mark.parametrize("id_mode", ["inductive", "transductive"])
def test_an_official_checkpoint_scores_as_the_model_it_was_saved_from(id_mode, tmp_path, monkeypatch):
    model = tiny_model(NUM_ITEMS, id_mode=id_mode)
    with torch.no_grad():  # trained-looking norms, biases and fusion weight, so that a misplaced tensor would show
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name or name.startswith(("encoder_norm", "decoder_norm")) or name.endswith("bias"):
                parameter.add_(torch.randn_like(parameter) * 0.3)
        model.item_fusion.weight.fill_(2.0)
    order = torch.randperm(NUM_ITEMS, generator=torch.Generator().manual_seed(1)) + 1
    path = tmp_path / "MISSRec-official.pth"
    save_official_checkpoint(model, path, order, monkeypatch)
    assert "recbole.config.configurator" not in sys.modules and "missrec" not in sys.modules

    imported = load_official_checkpoint(path, item_ids=order.numpy())
    config = imported.config
    assert (config.id_mode, config.num_items, config.num_interests) == (id_mode, NUM_ITEMS, model.config.num_interests)
    assert config.num_attention_heads == model.config.num_attention_heads and not imported.training
    torch.testing.assert_close(scores_of(imported), scores_of(model), atol=1e-5, rtol=0)

    in_recbole_order = load_official_checkpoint(path)  # columns are RecBole ids: column r holds item order[r - 1]
    torch.testing.assert_close(in_recbole_order.text_features[1:], model.text_features[order])
    assert torch.equal(in_recbole_order.image_interest_ids[1:], model.image_interest_ids[order])

    # the command line keeps RecBole's ids without a domain; the saved folder loads with transformers
    main([str(path), "--output", str(tmp_path / "converted")])
    reloaded = MISSRecModel.from_pretrained(tmp_path / "converted").eval()
    torch.testing.assert_close(reloaded.text_features, in_recbole_order.text_features, atol=0, rtol=0)
    torch.testing.assert_close(scores_of(reloaded), scores_of(in_recbole_order), atol=1e-6, rtol=0)


def test_unconvertible_checkpoints_are_refused_with_the_reason(tmp_path, monkeypatch):
    model = tiny_model(NUM_ITEMS)
    order = torch.arange(1, NUM_ITEMS + 1)
    path = tmp_path / "contextual.pth"
    save_official_checkpoint(model, path, order, monkeypatch, seq_mm_fusion="contextual")
    with pytest.raises(ValueError, match="seq_mm_fusion='contextual': only 'add' converts exactly"):
        load_official_checkpoint(path)
    save_official_checkpoint(model, path, order, monkeypatch)
    state, settings = read_official_checkpoint(path)
    assert settings["n_heads"] == 4 and settings["model"].__name__ == "MISSRec"  # a stand-in: no `missrec` module
    torch.save({"state_dict": state}, tmp_path / "no-config.pth")
    with pytest.raises(ValueError, match="no RecBole config with n_heads"):
        load_official_checkpoint(tmp_path / "no-config.pth")
    with pytest.raises(ValueError, match=r"item_ids must be a permutation of 1\.\.30"):
        load_official_checkpoint(path, item_ids=np.ones(NUM_ITEMS, dtype=np.int64))
    torch.save({"state_dict": {"item_embedding.weight": torch.zeros(3, 4)}}, path)  # e.g. a SASRec checkpoint
    with pytest.raises(ValueError, match=r"not a MISSRec model \(model=None\): it lacks \['position_embedding"):
        load_official_checkpoint(path)
    torch.save({"weights": {}}, path)
    with pytest.raises(ValueError, match="not a checkpoint of the official MISSRec code"):
        load_official_checkpoint(path)


class _RunsCommand:
    """Unpickles to `os.system(command)`, as a malicious checkpoint would."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Evaluates:
    def __reduce__(self):
        return eval, ("print('ran')",)


@pytest.mark.parametrize("payload", ["posix.system", "builtins.eval"])
def test_a_checkpoint_whose_pickle_names_other_globals_is_refused_before_it_runs(payload, tmp_path, monkeypatch):
    model = tiny_model(NUM_ITEMS)
    path = tmp_path / "evil.pth"
    save_official_checkpoint(model, path, torch.arange(1, NUM_ITEMS + 1), monkeypatch)
    state, _ = read_official_checkpoint(path)
    marker = tmp_path / "ran"
    evil = _RunsCommand(f"touch {marker}") if payload == "posix.system" else _Evaluates()
    torch.save({"config": evil, "state_dict": state}, path)
    refused = re.escape(f"{path}: refused to load the global {payload}")
    with pytest.raises(UnsafeCheckpointError, match=refused):
        read_official_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError, match=refused):
        main([str(path), "--output", str(tmp_path / "converted")])
    assert not marker.exists() and not (tmp_path / "converted").exists()


def test_recbole_item_order_is_first_appearance_over_targets_then_histories(tmp_path):
    """RecBole remaps item tokens with `pd.factorize` over the target column of train, valid and test, then over
    their history column; this repository's id of item index i is i + 1."""
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    files = {
        "train": ["0\t4 0\t2", "0\t4\t0", "1\t3\t1"],
        "valid": ["0\t4 0 2\t5", "1\t3 1\t1"],
        "test": ["0\t4 0 2 5\t6", "1\t3 1 1\t3"],
    }
    for split, lines in files.items():
        (tmp_path / f"D.{split}.inter").write_text(header + "\n".join(lines) + "\n")
    # targets: 2, 0, 1, 5, 6, 3; then histories add 4
    assert recbole_item_order(tmp_path, "D").tolist() == [3, 1, 2, 6, 7, 4, 5]


def test_a_pre_training_checkpoint_loads_without_a_catalogue_and_takes_one(tmp_path, monkeypatch):
    model = tiny_model(NUM_ITEMS)
    path = tmp_path / "pretrained.pth"
    ratio = model.config.interest_ratio
    save_official_checkpoint(model, path, torch.arange(1, NUM_ITEMS + 1), monkeypatch, True, interest_ratio=ratio)
    imported = load_official_checkpoint(path)
    assert (imported.config.num_items, imported.config.num_interests, imported.config.id_mode) == (0, 0, "inductive")
    with pytest.raises(ValueError, match="holds no catalogue"):
        load_official_checkpoint(path, item_ids=np.arange(1, NUM_ITEMS + 1))
    imported.set_catalogue(text_features=model.text_features[1:], image_features=model.image_features[1:])
    imported.discover_interests()
    model.discover_interests()  # the same weights cluster the same catalogue the same way
    torch.testing.assert_close(scores_of(imported), scores_of(model), atol=1e-5, rtol=0)


def test_items_without_a_modality_are_flagged(tmp_path, monkeypatch, caplog):
    """The official model adds the adaptor bias for an absent modality; this one leaves it out: say so."""
    model = tiny_model(NUM_ITEMS)
    features = model.image_features[1:].clone()
    features[[3, 7]] = 0
    model.set_catalogue(text_features=model.text_features[1:], image_features=features)
    model.discover_interests()
    path = tmp_path / "missing.pth"
    save_official_checkpoint(model, path, torch.arange(1, NUM_ITEMS + 1), monkeypatch)
    with caplog.at_level("WARNING"):
        imported = load_official_checkpoint(path)
    assert "items without a modality (image: 2) score differently here" in caplog.text
    assert imported.image_present[1:].tolist() == model.image_present[1:].tolist()
