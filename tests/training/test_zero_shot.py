"""Zero-shot: a pre-trained base recommends on a catalogue it never saw, nothing trained (`epochs: 0`), beside the
content-kNN baseline; and the content-kNN scores by hand."""

from __future__ import annotations

import pytest
import torch
from helpers import FEATURE_DIM, REPO, run_train, tiny_config
from modeling_missrec.configuration import load_recipe
from modeling_missrec.hub_cards.export import export_base, export_model
from modeling_missrec.pipelines.evaluation.content_knn import ContentKNNRecommender
from modeling_missrec.pipelines.training.loop import build_missrec
from safetensors.torch import load_file
from transformers import pipeline

from modeling_missrec import MISSRecModel  # (importing the package registers the task)

PRETRAIN = REPO / "configuration" / "recipes" / "demo-pretrain.yaml"


def test_content_knn_scores_by_the_mean_of_the_last_items():
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [0.0, 0.0]])  # items 1..4; item 4 has no text
    knn = ContentKNNRecommender(features, window=2)
    item_seq = torch.tensor([[1, 2, 3, 0], [2, 0, 0, 0]])
    scores = knn(item_seq=item_seq, lengths=torch.tensor([3, 1])).scores
    # history 1: the last two items are 2 and 3: profile (0, 1) + (0.707, 0.707), normalised
    profile = torch.nn.functional.normalize(torch.tensor([0.7071, 1.7071]), dim=0)
    expected = [profile[0].item(), profile[1].item(), (profile.sum() / 2**0.5).item(), 0.0]
    torch.testing.assert_close(scores[0, 1:], torch.tensor(expected), atol=1e-4, rtol=0)
    torch.testing.assert_close(scores[1, 1:], torch.tensor([0.0, 1.0, 0.7071, 0.0]), atol=1e-4, rtol=0)
    assert scores[:, 0].eq(float("-inf")).all()  # the padding id is never recommended


def test_a_base_recommends_on_a_catalogue_it_never_saw_and_the_folder_serves(tmp_path):
    small = ["--num_users", "300", "--num_items", "200", "--batch_size", "256"]
    run_train(["--config", str(PRETRAIN), "--output_dir", str(tmp_path / "pretrain"), "--epochs", "2", *small])
    base = export_base(tmp_path / "pretrain", tmp_path / "base")  # without the pre-training catalogue

    target = ["--domain", "demo", "--num_users", "200", "--num_items", "300"]  # another seeded catalogue
    zero_shot = tmp_path / "zero-shot"
    argv = ["--pretrained", str(base), "--epochs", "0", "--baselines", "[content-knn]", "--output_dir", str(zero_shot)]
    results = run_train([*argv, *target])
    assert results["id_mode"] == "inductive" and [row["epoch"] for row in results["epochs"]] == [0]
    assert results["content_knn_window"] in results["content_knn_valid_ndcg@10"]
    for protocol in ("test", "test_exclude_history"):  # the base ranks the new catalogue, above popularity
        assert results[protocol]["ndcg@10"] > results[f"popularity_{protocol}"]["ndcg@10"], protocol
        assert 0 < results[f"content_knn_{protocol}"]["ndcg@10"] < 1
    # nothing was trained: the sequence encoder and adaptors are the base's, bit for bit
    trained, pretrained = ({k.removeprefix("missrec."): v for k, v in load_file(folder / "model.safetensors").items()}
                           for folder in (zero_shot, base))  # fmt: skip
    assert pretrained["text_features"].shape[0] == 1  # the base held no items
    encoder = [k for k in pretrained if "interest" not in k and "features" not in k and "present" not in k]
    assert len(encoder) > 20 and all(torch.equal(trained[k], pretrained[k]) for k in encoder)
    assert trained["text_features"].shape[0] == 301  # the new catalogue, padding row first

    served = export_model(zero_shot, tmp_path / "served")
    recommend = pipeline("sequential-recommendation", model=str(served))
    history = ["demo-000003", "demo-000042", "demo-000117"]
    top = recommend(history, top_k=10)
    assert len(top) == 10 and not {r["source_id"] for r in top} & set(history)


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([], r"epochs=0 must be an integer >= 1 \(0: zero-shot, with pretrained\)"),
        (["--pretrained", "x", "--strategy", "lora"], "zero-shot.*strategy full"),
        (["--pretrained", "x", "--id_mode", "transductive"], "zero-shot.*id_mode inductive or auto"),
        (["--pretrained", "x", "--baselines", "[sasrec]"], r"baselines \['sasrec'\] would be untrained"),
    ],
)
def test_zero_shot_recipes_that_cannot_be(words, message):
    with pytest.raises(ValueError, match=message):
        load_recipe(None, ["--epochs", "0", *words])


def test_zero_shot_leaves_out_a_modality_the_base_never_learned(tmp_path):
    """A text-only base on a catalogue with text and images: fine-tuning adds an image adaptor to train; zero-shot
    trains nothing, so the images are left out rather than read through a random adaptor."""
    MISSRecModel(tiny_config(modalities="text")).save_pretrained(tmp_path / "base")
    features = {f"{m}_features": torch.randn(30, FEATURE_DIM) for m in ("text", "image")}
    words = ["--pretrained", str(tmp_path / "base"), "--id_mode", "inductive", "--baselines", "[]"]
    with pytest.warns(UserWarning, match="with nothing trained they are left out"):
        zero_shot = build_missrec(load_recipe(None, [*words, "--epochs", "0"]), dict(features))
    assert zero_shot.modality_names == ("text",) and zero_shot.config.num_items == 30
    with pytest.warns(UserWarning, match="fine-tuning adds an image adaptor"):
        finetuned = build_missrec(load_recipe(None, [*words, "--epochs", "1"]), dict(features))
    assert finetuned.modality_names == ("text", "image")
