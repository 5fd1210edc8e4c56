"""Shared fixtures: tiny MISSRec models on a small random catalogue."""

from __future__ import annotations

import pytest
import torch

from modeling_missrec import MISSRecConfig, MISSRecForPreTraining, MISSRecForSequentialRecommendation, MISSRecModel

FEATURE_DIM = 16


def tiny_config(**overrides) -> MISSRecConfig:
    """A small config (no dropout, so outputs are deterministic) with `overrides` applied."""
    values = dict(
        text_feature_dim=FEATURE_DIM,
        image_feature_dim=FEATURE_DIM,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_seq_length=12,
        interest_ratio=0.3,
    )
    values.update(overrides)
    return MISSRecConfig(**values)


def tiny_model(num_items: int = 40, seed: int = 0, **overrides) -> MISSRecModel:
    """A tiny model with a random catalogue of `num_items` items and discovered interests, in eval mode."""
    torch.manual_seed(seed)
    model = MISSRecModel(tiny_config(**overrides))
    generator = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(num_items, FEATURE_DIM, generator=generator) for m in ("text", "image")}
    model.set_catalogue(**{f"{m}_features": features[m] for m in model.config.modality_names})
    model.discover_interests()
    return model.eval()


def rec(model: torch.nn.Module) -> MISSRecForSequentialRecommendation:
    """`model` (a `MISSRecModel`, or a `PeftModel` of one) as its recommendation head, sharing its weights."""
    return MISSRecForSequentialRecommendation.from_base(model)


def pretraining(model: torch.nn.Module) -> MISSRecForPreTraining:
    """`model` as its pre-training head, sharing its weights."""
    return MISSRecForPreTraining.from_base(model)


def random_histories(batch: int, length: int, num_items: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned `[batch, length]` histories with random lengths in `1..length`, and the lengths."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    items = torch.randint(1, num_items + 1, (batch, length), generator=generator)
    return items * (torch.arange(length) < lengths[:, None]), lengths


def fine_tune_lora_adapter(base: MISSRecModel, folder, num_items: int, lr: float) -> torch.nn.Module:
    """`base` fine-tuned for three Adam steps (learning rate `lr`) through a rank-4 LoRA adapter on random
    histories of items `1..num_items`, the adapter saved with its catalogue into `folder`; the `PeftModel`, in eval
    mode."""
    from modeling_missrec.pipelines.finetuning import apply_finetuning_strategy
    from modeling_missrec.pipelines.served_files import save_catalogue

    adapted = apply_finetuning_strategy(base, "lora", lora_rank=4).train()
    optimizer = torch.optim.Adam([p for p in adapted.parameters() if p.requires_grad], lr=lr)
    for step in range(3):
        items, lengths = random_histories(16, 8, num_items, seed=step)
        rec(adapted)(item_seq=items, lengths=lengths, labels=torch.arange(1, 17)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    adapted.eval()
    adapted.save_pretrained(folder)
    save_catalogue(folder, adapted)
    return adapted


def official_transformer(model: MISSRecModel) -> torch.nn.Transformer:
    """torch's `nn.Transformer` as the official model builds it, holding `model`'s weights."""
    cfg = model.config
    official = torch.nn.Transformer(
        d_model=cfg.hidden_size,
        nhead=cfg.num_attention_heads,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dim_feedforward=cfg.intermediate_size,
        dropout=0.0,
        activation="gelu",
        layer_norm_eps=cfg.layer_norm_eps,
        batch_first=True,
    ).eval()

    def attention(theirs: torch.nn.MultiheadAttention, ours) -> None:
        projections = (ours.block.q_proj, ours.block.k_proj, ours.block.v_proj)
        theirs.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
        theirs.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
        theirs.out_proj.load_state_dict(ours.block.o_proj.state_dict())

    def feed_forward(theirs, ours) -> None:
        theirs.linear1.load_state_dict(ours.block.fc1.state_dict())
        theirs.linear2.load_state_dict(ours.block.fc2.state_dict())

    with torch.no_grad():
        encoder, decoder = official.encoder.layers[0], official.decoder.layers[0]
        attention(encoder.self_attn, model.encoder[0].self_attention)
        feed_forward(encoder, model.encoder[0].feed_forward)
        encoder.norm1.load_state_dict(model.encoder[0].self_attention.LayerNorm.state_dict())
        encoder.norm2.load_state_dict(model.encoder[0].feed_forward.LayerNorm.state_dict())
        attention(decoder.self_attn, model.decoder[0].self_attention)
        attention(decoder.multihead_attn, model.decoder[0].cross_attention)
        feed_forward(decoder, model.decoder[0].feed_forward)
        sublayers = ("self_attention", "cross_attention", "feed_forward")
        for norm, sublayer in zip((decoder.norm1, decoder.norm2, decoder.norm3), sublayers):
            norm.load_state_dict(getattr(model.decoder[0], sublayer).LayerNorm.state_dict())
        official.encoder.norm.load_state_dict(model.encoder_norm.state_dict())
        official.decoder.norm.load_state_dict(model.decoder_norm.state_dict())
    return official


@pytest.fixture
def model() -> MISSRecModel:
    return tiny_model()


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps a process-wide state once an `Accelerator` exists: reset it after the test."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
