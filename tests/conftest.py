"""Shared fixtures: tiny MISSRec models on a small random catalogue."""

from __future__ import annotations

import pytest
import torch

from modeling_missrec import MISSRecConfig, MISSRecModel

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


def random_histories(batch: int, length: int, num_items: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned `[batch, length]` histories with random lengths in `1..length`, and the lengths."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    items = torch.randint(1, num_items + 1, (batch, length), generator=generator)
    return items * (torch.arange(length) < lengths[:, None]), lengths


@pytest.fixture
def model() -> MISSRecModel:
    return tiny_model()


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps a process-wide state once an `Accelerator` exists: reset it after the test."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
