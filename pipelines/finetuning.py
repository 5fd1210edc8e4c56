"""Fine-tuning strategies for a pre-trained MISSRec: what trains, and the PEFT LoRA adapter.

- `"frozen"` (the paper): the Transformer (encoder and decoder) and the position embedding are frozen; the
  modality adaptors, the input LayerNorm, the fusion weight and the item-id embedding (transductive) train.
- `"lora"`: LoRA on every attention and feed-forward projection (`q_proj`, `k_proj`, `v_proj`, `o_proj`,
  `fc1`, `fc2`), and the modules the frozen strategy trains are saved whole with the adapter
  (`modules_to_save`). PEFT matches `modules_to_save` by name suffix, so the `LayerNorm`s of the
  Transformer sublayers train with the input one. The result is a `PeftModel`, saved as a small adapter
  folder and loaded back with `PeftModel.from_pretrained(base, folder)`.
- `"full"`: every parameter trains.

The catalogue (features, interest tables) is held in buffers of the base model, not in the adapter: `train.py`
saves the domain's catalogue and interest settings beside the adapter (`save_catalogue`), and
`modeling_missrec.pipelines.recommendation.load_missrec_adapter` puts them back and rediscovers the interests.
Interest discovery is deterministic (`config.interest_seed`), so a model whose interests were last discovered
from its final weights gets the same interests back.
"""

from __future__ import annotations

from peft import LoraConfig, get_peft_model
from torch import nn

STRATEGIES = ("frozen", "lora", "full")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")


def trained_in_frozen_mode(model: nn.Module) -> list[str]:
    """Names of the top-level modules that train under the `"frozen"` strategy (those the model has)."""
    names = [f"{m}_adaptor" for m in model.modality_names] + ["LayerNorm", "item_fusion"]
    if getattr(model, "item_id_embeddings", None) is not None:
        names.append("item_id_embeddings")
    return names


def apply_finetuning_strategy(
    model: nn.Module, strategy: str, *, lora_rank: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.0
) -> nn.Module:
    """Prepare a (pre-trained) MISSRec model for fine-tuning with `strategy` (see the module docstring).

    Args:
        model: a `MISSRecModel`.
        strategy: `"frozen"`, `"lora"` or `"full"`.
        lora_rank, lora_alpha, lora_dropout: the LoRA settings (`"lora"` only).

    Returns:
        The model itself (`"frozen"`, `"full"`; `requires_grad` set in place) or a `PeftModel` (`"lora"`).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {list(STRATEGIES)}")
    if strategy == "full":
        model.requires_grad_(True)
        return model
    if strategy == "frozen":
        model.requires_grad_(False)
        for name in trained_in_frozen_mode(model):
            getattr(model, name).requires_grad_(True)
        return model
    if lora_rank < 1:
        raise ValueError(f"lora_rank={lora_rank} must be >= 1")
    config = LoraConfig(
        r=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=list(LORA_TARGETS),
        modules_to_save=trained_in_frozen_mode(model),
    )
    return get_peft_model(model, config)
