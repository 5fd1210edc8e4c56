"""Fine-tuning strategies: what trains under frozen / lora / full, and the LoRA adapter round trip."""

from __future__ import annotations

import pytest
import torch
from helpers import random_histories, rec, tiny_model
from modeling_missrec.pipelines.training.finetuning import apply_finetuning_strategy
from peft import PeftModel

from modeling_missrec import MISSRecModel
from modeling_missrec.served_files_missrec import load_missrec_adapter

NUM_ITEMS = 40


def train_steps(model, steps: int = 5, seed: int = 0) -> None:
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        items, lengths = random_histories(16, 8, NUM_ITEMS, seed=seed + step)
        labels = torch.randint(1, NUM_ITEMS + 1, (16,), generator=torch.Generator().manual_seed(step))
        loss = rec(model)(item_seq=items, lengths=lengths, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def grads_after_one_step(model) -> set[str]:
    items, lengths = random_histories(8, 8, NUM_ITEMS)
    model.train()
    rec(model)(item_seq=items, lengths=lengths, labels=torch.arange(1, 9)).loss.backward()
    return {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_frozen_strategy_trains_adaptors_layernorm_fusion_and_ids_only():
    model = apply_finetuning_strategy(tiny_model(NUM_ITEMS, id_mode="transductive"), "frozen")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "text_adaptor.weight",
        "text_adaptor.bias",
        "image_adaptor.weight",
        "image_adaptor.bias",
        "LayerNorm.weight",
        "LayerNorm.bias",
        "item_fusion.weight",
        "item_id_embeddings.weight",
    }
    assert grads_after_one_step(model) <= trainable
    assert {"text_adaptor.weight", "item_id_embeddings.weight", "LayerNorm.weight"} <= grads_after_one_step(model)


@pytest.mark.parametrize("strategy", ["frozen", "lora"])
@pytest.mark.parametrize(
    "module, switch", [("repeat_bias", "repeat_bias"), ("learned_temperature", "learn_score_temperature")]
)
def test_every_strategy_trains_the_learned_scoring_modules(strategy, module, switch):
    model = apply_finetuning_strategy(tiny_model(30, **{switch: True}), strategy, lora_rank=4)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any(module in name for name in trainable), trainable


def test_full_strategy_trains_everything_and_unknown_strategies_fail():
    model = apply_finetuning_strategy(apply_finetuning_strategy(tiny_model(NUM_ITEMS), "frozen"), "full")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="'adapter' is not one of"):
        apply_finetuning_strategy(model, "adapter")


def test_lora_targets_the_projections_and_the_adapter_reloads_to_identical_scores(tmp_path):
    base = tiny_model(NUM_ITEMS, id_mode="transductive")
    base.save_pretrained(tmp_path / "base")
    model = apply_finetuning_strategy(base, "lora", lora_rank=4)
    assert isinstance(model, PeftModel)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    for target in ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"):
        assert any(f"{target}.lora_A" in name for name in trainable), target
    assert any("text_adaptor.modules_to_save" in name for name in trainable)
    assert any("item_id_embeddings.modules_to_save" in name for name in trainable)
    assert not any(name.endswith("q_proj.base_layer.weight") for name in trainable)

    items, lengths = random_histories(8, 10, NUM_ITEMS, seed=7)
    with torch.no_grad():
        before = rec(model)(item_seq=items, lengths=lengths).scores
    train_steps(model)
    model.base_model.model.discover_interests()  # interests from the final weights, as a trainer ends
    with torch.no_grad():
        after = rec(model)(item_seq=items, lengths=lengths).scores
    assert not torch.allclose(before, after)
    model.save_pretrained(tmp_path / "adapter")
    adapter_bytes = sum(p.stat().st_size for p in (tmp_path / "adapter").iterdir())
    base_bytes = (tmp_path / "base" / "model.safetensors").stat().st_size
    assert adapter_bytes < base_bytes

    reloaded = load_missrec_adapter(MISSRecModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(rec(reloaded)(item_seq=items, lengths=lengths).scores, after)
    # LoRA-wrapped key/value projections are attended the projected way; merged, they are plain again and the
    # decoder folds them into its queries. Both give the adapted scores.
    attention = reloaded.base_model.model.decoder[-1].cross_attention.block
    assert not attention.folds_keys(1, 100, 1)
    merged = reloaded.merge_and_unload()
    assert merged.decoder[-1].cross_attention.block.folds_keys(1, 100, 1)
    with torch.no_grad():
        torch.testing.assert_close(rec(merged)(item_seq=items, lengths=lengths).scores, after, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("recipe", ["scientific.yaml", "text-domain.yaml"])
def test_the_shipped_recipes_give_a_pre_trained_model_the_scoring_of_a_model_from_scratch(recipe, tmp_path):
    """A pre-trained model keeps its own config (the preset is not applied to it): the recipes repeat the preset's
    scoring switches in `config_overrides`, so pre-trained and scratch arms differ only in the pre-training (the
    temperature starts where the pre-trained model left it)."""
    from helpers import REPO, tiny_config
    from modeling_missrec.configuration import parse_recipe_args
    from modeling_missrec.pipelines.training.loop import build_missrec

    assert not tiny_config().learn_score_temperature and not tiny_config().repeat_bias
    tiny_model(NUM_ITEMS).save_pretrained(tmp_path / "base")  # pre-trained without either switch
    words = ["--config", str(REPO / "configuration" / "recipes" / recipe), "--id_mode", "inductive"]
    args = parse_recipe_args([*words, "--pretrained", str(tmp_path / "base")])
    features = {f"{m}_features": torch.randn(NUM_ITEMS, tiny_config().text_feature_dim) for m in ("text", "image")}
    scratch = build_missrec(args, features, from_scratch=True).config
    fine_tuned = build_missrec(args, features).config
    assert fine_tuned.learn_score_temperature and fine_tuned.repeat_bias  # as from scratch:
    assert scratch.learn_score_temperature and scratch.repeat_bias
