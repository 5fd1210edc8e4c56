"""Bad input gets a ValueError naming the offending value; nothing is silently wrong."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import FEATURE_DIM, pretraining, rec, tiny_config, tiny_model

from modeling_missrec import MISSRecModel


@pytest.mark.parametrize(
    ("item_seq", "lengths", "message"),
    [
        (torch.tensor([[1, 41, 0]]), None, r"item ids \[41\] are outside the catalogue \[1, 40\]"),
        (torch.tensor([[1, -3, 0]]), None, r"item ids \[-3\] are outside the catalogue"),
        (torch.tensor([[1, 2], [0, 0]]), None, r"rows \[1\] hold only padding"),
        (torch.tensor([[1, 2, 0]]), torch.tensor([3]), "row 0: length 3 disagrees"),
        (torch.tensor([[1, 2, 0]]), torch.tensor([1]), "row 0: length 1 disagrees"),
        (torch.tensor([[0, 1, 2]]), None, "row 0: length 2 disagrees"),
        (torch.tensor([[1, 2]]), torch.tensor([2, 2]), r"lengths has shape \(2,\); expected \(1,\)"),
        (torch.tensor([1, 2]), None, "item_seq must be an integer \\[B, L\\] tensor"),
        (torch.tensor([[1.0, 2.0]]), None, "item_seq must be an integer"),
    ],
)
def test_bad_histories(model, item_seq, lengths, message):
    with pytest.raises(ValueError, match=message):
        model(item_seq, lengths)


def test_bad_labels(model):
    with pytest.raises(ValueError, match=r"labels \[0\] are outside the catalogue"):
        rec(model)(torch.tensor([[1, 2]]), labels=torch.tensor([0]))
    with pytest.raises(ValueError, match=r"labels \[99\] are outside the catalogue \[1, 40\]"):
        pretraining(model)(torch.tensor([[1, 2]]), torch.tensor([99]), augmented_item_seq=torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \(1,\)"):
        pretraining(model)(torch.tensor([[1, 2]]), torch.tensor([1, 2]), augmented_item_seq=torch.tensor([[1, 2]]))


def test_model_without_catalogue_or_interests():
    model = MISSRecModel(tiny_config())
    with pytest.raises(ValueError, match="no item catalogue: call set_catalogue"):
        model(torch.tensor([[1]]))
    model.set_catalogue(torch.randn(5, FEATURE_DIM), torch.randn(5, FEATURE_DIM))
    with pytest.raises(ValueError, match="call discover_interests"):
        model(torch.tensor([[1]]))


@pytest.mark.parametrize(
    ("text", "image", "message"),
    [
        (torch.randn(5, FEATURE_DIM + 1), torch.randn(5, FEATURE_DIM), r"text_features has shape \(5, 17\); expected"),
        (torch.randn(5, FEATURE_DIM), torch.randn(4, FEATURE_DIM), "image_features has 4 rows but another modality"),
        (None, torch.randn(5, FEATURE_DIM), "text_features is required"),
        (torch.randn(5), torch.randn(5, FEATURE_DIM), r"text_features has shape \(5,\)"),
    ],
)
def test_bad_feature_tables(text, image, message):
    model = MISSRecModel(tiny_config())
    with pytest.raises(ValueError, match=message):
        model.set_catalogue(text, image)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_name_the_item(bad):
    model = MISSRecModel(tiny_config())
    text = torch.randn(5, FEATURE_DIM)
    text[3, 2] = bad
    with pytest.raises(ValueError, match=r"text_features has NaN or Inf for items \[4\]"):
        model.set_catalogue(text, torch.randn(5, FEATURE_DIM))
    extended = tiny_model()
    first_new = extended.config.num_items + 1  # errors name the ids the new items get
    with pytest.raises(ValueError, match=rf"image_features has NaN or Inf for items \[{first_new + 3}\]"):
        extended.extend_catalogue(torch.randn(5, FEATURE_DIM), text)


def test_features_of_a_modality_the_model_does_not_read():
    model = MISSRecModel(tiny_config(modalities="text"))
    with pytest.raises(ValueError, match="image_features given but config.modalities='text'"):
        model.set_catalogue(torch.randn(3, FEATURE_DIM), torch.randn(3, FEATURE_DIM))


def test_bad_presence_mask():
    model = MISSRecModel(tiny_config())
    with pytest.raises(ValueError, match=r"text_present has shape \(4,\); expected \(5,\)"):
        model.set_catalogue(torch.randn(5, FEATURE_DIM), torch.randn(5, FEATURE_DIM), text_present=torch.ones(4))


def test_wrong_augmented_text_features(model):
    with pytest.raises(ValueError, match=r"text_features has shape \(1, 3, 16\); expected \[B, L, d\]"):
        model.embed_sequences(torch.tensor([[1, 2]]), text_features=torch.randn(1, 3, FEATURE_DIM))


def test_loading_weights_that_do_not_fit_the_config(model, tmp_path):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_items"] = 45
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"text_features: saved \(41, 16\) vs config \(46, 16\)"):
        MISSRecModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("lengths", [torch.tensor([5]), torch.tensor([-1])])
def test_lengths_outside_the_padded_width(model, lengths):
    with pytest.raises(ValueError, match="are outside \\[0, 3\\]"):
        model(torch.tensor([[1, 2, 3]]), lengths)


def test_augmented_text_features_on_an_image_only_model():
    model = tiny_model(modalities="image")
    with pytest.raises(ValueError, match="text_features given but config.modalities='image'"):
        model.embed_sequences(torch.tensor([[1, 2]]), text_features=torch.randn(1, 2, FEATURE_DIM))
    with pytest.raises(ValueError, match="text_features has width 999"):
        tiny_model().embed_sequences(torch.tensor([[1, 2]]), text_features=torch.randn(1, 2, 999))
