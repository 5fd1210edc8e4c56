"""A tiny, randomly initialised CLIP saved like a Hub CLIP folder, for offline tests of CLIP feature extraction."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer


def save_tiny_clip(folder: str | Path, *, projection_dim: int = 16, seed: int = 0) -> str:
    """Save a tiny `CLIPModel` (2 layers, width 32, 32x32 images) with its tokenizer and image processor.

    The tokenizer is a character-level BPE (no merges) over lowercase letters, digits and some punctuation;
    other characters map to the unknown token. Returns the folder as a string, for `from_pretrained`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    characters = list(string.ascii_lowercase + string.digits + ".,&-'/()+:;!?%$#")
    vocab = ["<|startoftext|>", "<|endoftext|>", *characters, *(c + "</w>" for c in characters)]
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    layers = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(
            **layers, vocab_size=len(vocab), max_position_embeddings=40, bos_token_id=0, eos_token_id=1, pad_token_id=1
        ),
        vision_config=dict(**layers, image_size=32, patch_size=8),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    return str(folder)
