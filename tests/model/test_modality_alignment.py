"""A modality added to a pre-trained model starts aligned with the ones it learned (`align_adaptor`): by hand on
features that determine the target exactly, and in the training path that adds it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import FEATURE_DIM, tiny_config
from modeling_missrec.configuration import load_recipe
from modeling_missrec.pipelines.training.loop import build_missrec

from modeling_missrec import MISSRecModel

NUM_ITEMS = 50


def test_an_exact_linear_relation_is_recovered_on_the_items_with_both_modalities():
    """Image features that are an affine function of each item's adapted text embedding: the aligned image adaptor
    gives back that embedding. An item without text (its image features are garbage) is left out of the fit."""
    torch.manual_seed(0)
    hidden = 8
    model = MISSRecModel(tiny_config(hidden_size=hidden, num_attention_heads=2, image_feature_dim=3 * hidden))
    text = torch.randn(NUM_ITEMS, FEATURE_DIM)
    with torch.no_grad():
        embedded = model.text_adaptor(text)  # [N, hidden]
    mixing, shift = torch.randn(hidden, 3 * hidden), torch.randn(3 * hidden)
    image = embedded @ mixing + shift
    text[4] = 0  # item 5 has no text
    image[4] = 1e3 * torch.randn(3 * hidden)
    model.set_catalogue(text_features=text, image_features=image)
    model.align_adaptor("image", ridge=1e-9)
    with torch.no_grad():
        aligned = model.image_adaptor(image)
    keep = torch.arange(NUM_ITEMS) != 4
    torch.testing.assert_close(aligned[keep], embedded[keep], atol=1e-3, rtol=1e-3)


def test_the_sums_in_chunks_fit_what_one_pass_fits():
    torch.manual_seed(0)
    model = MISSRecModel(tiny_config())
    model.set_catalogue(
        text_features=torch.randn(NUM_ITEMS, FEATURE_DIM), image_features=torch.randn(NUM_ITEMS, FEATURE_DIM)
    )
    model.align_adaptor("image")
    whole = [p.detach().clone() for p in model.image_adaptor.parameters()]
    model.align_adaptor("image", chunk_size=7)
    for chunked, expected in zip(model.image_adaptor.parameters(), whole):
        torch.testing.assert_close(chunked, expected)


def test_a_larger_penalty_shrinks_the_map_and_bad_calls_fail():
    torch.manual_seed(0)
    model = MISSRecModel(tiny_config())
    model.set_catalogue(
        text_features=torch.randn(NUM_ITEMS, FEATURE_DIM), image_features=torch.randn(NUM_ITEMS, FEATURE_DIM)
    )
    norms = []
    for ridge in (1e-3, 10.0):
        model.align_adaptor("image", ridge=ridge)
        norms.append(model.image_adaptor.weight.norm())
    assert norms[1] < norms[0] / 2
    with pytest.raises(ValueError, match="ridge"):
        model.align_adaptor("image", ridge=0.0)
    text_only = MISSRecModel(tiny_config(modalities="text"))
    text_only.set_catalogue(text_features=torch.randn(NUM_ITEMS, FEATURE_DIM))
    with pytest.raises(ValueError, match="cannot align 'text'"):
        text_only.align_adaptor("text")


def mean_cosine_with_text(model: MISSRecModel) -> float:
    items = model.embed_items()
    return F.cosine_similarity(items["image"][1:], items["text"][1:], dim=-1).mean().item()


def test_fine_tuning_a_text_only_base_on_images_starts_them_aligned(tmp_path):
    """The training path aligns the image adaptor it adds (a random one points anywhere)."""
    torch.manual_seed(0)
    MISSRecModel(tiny_config(modalities="text")).save_pretrained(tmp_path / "base")
    text = torch.randn(NUM_ITEMS, FEATURE_DIM)
    image = text @ torch.randn(FEATURE_DIM, FEATURE_DIM)  # the same information, in other coordinates
    words = ["--pretrained", str(tmp_path / "base"), "--id_mode", "inductive", "--baselines", "[]", "--epochs", "1"]
    with pytest.warns(UserWarning, match="fine-tuning adds an image adaptor"):
        model = build_missrec(load_recipe(None, words), {"text_features": text, "image_features": image})
    assert mean_cosine_with_text(model) > 0.95
    torch.manual_seed(0)
    model.image_adaptor.reset_parameters()  # what it added before aligning
    assert abs(mean_cosine_with_text(model)) < 0.3


def test_without_items_that_have_both_modalities_the_new_adaptor_stays_random(tmp_path):
    torch.manual_seed(0)
    MISSRecModel(tiny_config(modalities="text")).save_pretrained(tmp_path / "base")
    text, image = torch.randn(NUM_ITEMS, FEATURE_DIM), torch.randn(NUM_ITEMS, FEATURE_DIM)
    text[1:25], image[25:] = 0, 0  # only item 1 has both
    words = ["--pretrained", str(tmp_path / "base"), "--id_mode", "inductive", "--baselines", "[]", "--epochs", "1"]
    with pytest.warns(UserWarning, match="fewer than 2 catalogue items have it and another modality"):
        model = build_missrec(load_recipe(None, words), {"text_features": text, "image_features": image})
    assert model.modality_names == ("text", "image")
