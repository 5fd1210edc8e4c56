"""Item ids that start from content (`item_id_init="content"`): the rule by hand, and that training applies it to
the ids it creates only, never to ids a pre-trained model learned."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import FEATURE_DIM, tiny_config
from modeling_missrec.configuration.recipe import TrainingRecipe
from modeling_missrec.pipelines.training.loop import build_missrec

from modeling_missrec import MISSRecModel

NUM_ITEMS = 6


def catalogue() -> dict[str, torch.Tensor]:
    """Random features; item 3 has no image, item 5 has nothing at all."""
    generator = torch.Generator().manual_seed(0)
    text, image = (torch.randn(NUM_ITEMS, FEATURE_DIM, generator=generator) for _ in range(2))
    image[2] = 0
    text[4], image[4] = 0, 0
    return {"text_features": text, "image_features": image}


def test_ids_start_from_content_by_hand():
    torch.manual_seed(0)
    model = MISSRecModel(tiny_config(id_mode="transductive", item_id_init="content"))
    features = catalogue()
    model.set_catalogue(**features)
    random_rows = model.item_id_embeddings.weight.detach().clone()
    model.init_item_ids_from_content()
    ids = model.item_id_embeddings.weight.detach()

    text = F.normalize(model.text_adaptor(features["text_features"]), dim=-1)
    image = F.normalize(model.image_adaptor(features["image_features"]), dim=-1)
    scale = model.config.initializer_range * math.sqrt(model.config.hidden_size)
    for item in (1, 2, 4, 6):  # both modalities: the mean direction of the two
        expected = scale * F.normalize(text[item - 1] + image[item - 1], dim=-1)
        torch.testing.assert_close(ids[item], expected.detach())
    torch.testing.assert_close(ids[3], (scale * text[2]).detach())  # text only
    torch.testing.assert_close(ids[5], random_rows[5])  # no content: its random row stays
    assert torch.count_nonzero(ids[0]) == 0  # padding
    torch.testing.assert_close(ids[[1, 2, 3, 4, 6]].norm(dim=-1), torch.full((5,), scale))


def test_an_inductive_model_has_no_ids_to_start():
    model = MISSRecModel(tiny_config())
    model.set_catalogue(**catalogue())
    with pytest.raises(ValueError, match="no item-id embeddings"):
        model.init_item_ids_from_content()
    with pytest.raises(ValueError, match="item_id_init"):
        tiny_config(item_id_init="zeros")


def content_cosines(model: MISSRecModel) -> torch.Tensor:
    """`[N]` cosine of each item's id embedding with its content direction (items 1..N)."""
    items = model.embed_items()
    content = sum(items[m] for m in model.modality_names)
    return F.cosine_similarity(items["id"][1:], content[1:], dim=-1).detach()


def recipe(**fields) -> TrainingRecipe:
    return TrainingRecipe(**{"preset": "missrec-tiny", "id_mode": "transductive", **fields})


def test_training_starts_the_ids_it_creates_from_content(tmp_path):
    features = {"text_features": torch.randn(NUM_ITEMS, FEATURE_DIM)}
    content = recipe(config_overrides={"item_id_init": "content"})
    assert content_cosines(build_missrec(content, features)).min() > 0.9999
    assert content_cosines(build_missrec(recipe(), features)).abs().max() < 0.9  # the paper's random ids

    # A pre-trained transductive model keeps the ids it learned on this catalogue.
    learned = build_missrec(recipe(), features)
    with torch.no_grad():
        learned.item_id_embeddings.weight[1:] = torch.randn(NUM_ITEMS, learned.config.hidden_size)
    learned.save_pretrained(tmp_path / "transductive")
    kept = build_missrec(
        recipe(pretrained=str(tmp_path / "transductive"), config_overrides=content.config_overrides), features
    )
    torch.testing.assert_close(kept.item_id_embeddings.weight, learned.item_id_embeddings.weight)

    # An inductive base fine-tuned transductively gets new ids: those start from its (trained) adaptor's content.
    base = build_missrec(recipe(id_mode="inductive"), features)
    base.save_pretrained(tmp_path / "inductive")
    added = build_missrec(
        recipe(pretrained=str(tmp_path / "inductive"), config_overrides=content.config_overrides), features
    )
    assert content_cosines(added).min() > 0.9999
