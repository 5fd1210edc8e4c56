"""Fine-tuning strategies for a pre-trained MISSRec: what trains, and the PEFT LoRA adapter.

- `"frozen"` (the paper): the Transformer (encoder and decoder) and the position embedding are frozen; the
  modality adaptors, the input LayerNorm, the fusion weight, the item-id embedding (transductive), the repeat
  offsets and the learned temperature (when the model has them) train.
- `"lora"`: LoRA on every attention and feed-forward projection (`q_proj`, `k_proj`, `v_proj`, `o_proj`,
  `fc1`, `fc2`), and the modules the frozen strategy trains are saved whole with the adapter
  (`modules_to_save`). PEFT matches `modules_to_save` by name suffix, so the `LayerNorm`s of the
  Transformer sublayers train with the input one. The result is a `PeftModel`, saved as a small adapter
  folder and loaded back with `PeftModel.from_pretrained(base, folder)`.
- `"full"`: every parameter trains.

The catalogue (features, interest tables) is held in buffers of the base model, not in the adapter: `train.py`
saves the domain's catalogue and interest settings beside the adapter (`save_catalogue`), and
`modeling_missrec.pipeline_missrec.load_missrec_adapter` puts them back and rediscovers the interests.
Interest discovery is deterministic (`config.interest_seed`), so a model whose interests were last discovered
from its final weights gets the same interests back.
"""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

STRATEGIES = ("frozen", "lora", "full")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")


def trained_in_frozen_mode(model: nn.Module) -> list[str]:
    """Names of the top-level modules that train under the `"frozen"` strategy (those the model has)."""
    names = [f"{m}_adaptor" for m in model.modality_names] + ["LayerNorm", "item_fusion"]
    for optional in ("item_id_embeddings", "repeat_bias", "learned_temperature"):
        if getattr(model, optional, None) is not None:
            names.append(optional)
    return names


def match_catalogue_modalities(
    model: nn.Module, features: dict[str, torch.Tensor], add_missing: bool = True
) -> dict[str, torch.Tensor]:
    """Fit a pre-trained MISSRec to a domain whose modalities differ from the ones it was trained on.

    - A modality the domain has and the model does not (text-only pre-training, text + image fine-tuning) is
      added with a freshly initialised adaptor ([`MISSRecModel.add_modality`]), with a warning (`build_missrec`
      aligns it with the learned modalities once the catalogue is set: [`MISSRecModel.align_adaptor`]). Every strategy
      trains it (it is one of the modules `frozen` trains and `lora` saves whole). Without `add_missing` (a model
      that will not be trained: zero-shot) it is left out instead, with a warning: an untrained adaptor would
      only add noise to every item's embedding.
    - A modality the model reads and the domain lacks is kept, with every item marked as lacking it (all-zero
      rows, which the model masks), with a warning: the model then recommends from the other modality.
    - A modality both have must have the same feature width (else `ValueError`: features of another encoder).
    - Zero-shot, the domain must have a modality the model reads (else `ValueError`).

    Args:
        model: a `MISSRecModel` (changed in place when a modality is added).
        features: the domain's `{"text_features": [N, dt], "image_features": [N, di]}` (either may be absent).
        add_missing: add an adaptor for a modality the model lacks (False: leave the modality out).

    Returns:
        The features to give `model.set_catalogue`: one table per modality the model now reads.
    """
    config = model.config
    num_items = len(next(iter(features.values())))
    for m in ("text", "image"):
        table, width = features.get(f"{m}_features"), getattr(config, f"{m}_feature_dim")
        if table is not None and m in model.modality_names and table.shape[1] != width:
            raise ValueError(
                f"the pre-trained model reads {m} features of width {width}, but the domain's have width "
                f"{table.shape[1]}: extract them with the encoder the model was pre-trained with"
            )
    matched = dict(features)
    for m in ("text", "image"):
        if f"{m}_features" in features and m not in model.modality_names:
            reads = f"the pre-trained model reads {list(model.modality_names)} only; the domain also has {m} features"
            if add_missing:
                warnings.warn(f"{reads}: fine-tuning adds an {m} adaptor, to train", stacklevel=2)
                model.add_modality(m, features[f"{m}_features"].shape[1])
            else:
                warnings.warn(
                    f"{reads}: with nothing trained they are left out (untrained, they add noise)", stacklevel=2
                )
                del matched[f"{m}_features"]
    if not set(model.modality_names) & {name.removesuffix("_features") for name in matched}:
        raise ValueError(
            f"the pre-trained model reads {list(model.modality_names)} and the domain has none of them: with nothing "
            "trained (zero-shot) it has nothing to recommend from"
        )
    for m in model.modality_names:
        if f"{m}_features" not in features:
            warnings.warn(
                f"the pre-trained model reads {m} features, which the domain does not have: every item is marked as "
                f"lacking {m}, and the model recommends from {[x for x in model.modality_names if x != m]}",
                stacklevel=2,
            )
            matched[f"{m}_features"] = torch.zeros(num_items, getattr(config, f"{m}_feature_dim"))
    return matched


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
