"""A user's own data: text-only MISSRec folders of any width, RecBole atomic files, and pre-trained models whose
modalities differ from the fine-tuning domain's. Small data the tests write; the real MiniLM encoder."""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, rec, run_train, write_atomic_files
from modeling_missrec.configuration import load_recipe
from modeling_missrec.configuration.presets import load_preset
from modeling_missrec.hub_cards.dataset_cards import export_domain
from modeling_missrec.hub_cards.export import export_model
from modeling_missrec.pipelines.data.atomic_files import read_atomic_domain
from modeling_missrec.pipelines.data.collator import SequenceCollator, catalogue_features
from modeling_missrec.pipelines.data.demo_data import make_demo_domain
from modeling_missrec.pipelines.data.loading import domain_statistics, load_domain
from modeling_missrec.pipelines.data.missrec_files import read_missrec_folder, write_missrec_folder
from modeling_missrec.pipelines.data.text_reencoding import reencode_text_features
from modeling_missrec.pipelines.evaluation.full_ranking import evaluate_ranking
from modeling_missrec.pipelines.training.finetuning import match_catalogue_modalities
from modeling_missrec.pipelines.training.loop import load_training_data
from transformers import pipeline

from modeling_missrec import MISSRecModel
from modeling_missrec.served_files_missrec import load_missrec_adapter

TEXT_WIDTH = 384  # MiniLM's, the project's default sentence encoder


def write_text_only_folder(folder: Path, name: str = "MyShop", seed: int = 0, **sizes) -> Path:
    """A MISSRec-format folder with 384-wide text features and no image file."""
    data = make_demo_domain(text_dim=TEXT_WIDTH, image_dim=8, seed=seed, name=name, **sizes)
    data.features = {"text_features": data.features["text_features"]}
    data.has_image = np.zeros(data.num_items, dtype=bool)
    return write_missrec_folder(data, folder)


# ------------------------------------------------------------------------------------- MISSRec folders, any width
def test_text_only_folder_of_any_width_loads_and_fits_a_text_only_model(tmp_path):
    write_text_only_folder(tmp_path / "files", num_items=50, num_users=40)
    data = read_missrec_folder(tmp_path / "files", "MyShop")
    assert set(data.features) == {"text_features"} and data.features["text_features"].shape == (50, TEXT_WIDTH)
    assert not data.has_image.any()
    domain = load_domain("MyShop", data_dir=tmp_path / "files", cache_dir=tmp_path / "cache")
    assert "image_features" not in domain.items.features
    assert domain_statistics(domain)["feature_dims"] == {"text_features": TEXT_WIDTH}
    features = catalogue_features(domain.items)
    assert set(features) == {"text_features"}
    # the same 384-wide features, read as an image modality, make an image-only domain
    (tmp_path / "files" / "MyShop.feat1CLS").rename(tmp_path / "files" / "MyShop.feat3CLS")
    image_only = read_missrec_folder(tmp_path / "files", "MyShop")
    assert set(image_only.features) == {"image_features"} and not image_only.has_text.any()
    (tmp_path / "files" / "MyShop.feat3CLS").unlink()
    with pytest.raises(FileNotFoundError, match="neither MyShop.feat1CLS .* nor MyShop.feat3CLS"):
        read_missrec_folder(tmp_path / "files", "MyShop")


def test_text_only_folder_trains_evaluates_exports_and_serves(tmp_path, fresh_accelerate_state):
    write_text_only_folder(tmp_path / "files", num_items=80, num_users=120)
    run = tmp_path / "run"
    results = run_train(
        ["--domain", "MyShop", "--data_dir", str(tmp_path / "files"), "--epochs", "2", "--baselines", "[]",
         "--output_dir", str(run)]
    )  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["modalities"] == "text" and config["text_feature_dim"] == TEXT_WIDTH
    assert results["test"]["ndcg@10"] > results["popularity_test"]["ndcg@10"]
    exported = export_model(run, tmp_path / "export")
    assert "**MyShop**" in (exported / "README.md").read_text()
    recommend = pipeline("sequential-recommendation", model=str(exported), trust_remote_code=True)
    domain = load_domain("MyShop", data_dir=tmp_path / "files", cache_dir=tmp_path / "cache")
    history = domain.sequences["test"][0]["history"]
    served = recommend([history], top_k=5, exclude_history=False)[0]
    model = MISSRecModel.from_pretrained(run).eval()
    with torch.no_grad():
        scores = rec(model)(torch.tensor([history])).scores[0]
    scores[0] = -float("inf")
    assert [r["item_id"] for r in served] == scores.topk(5).indices.tolist()


# ------------------------------------------------------------------------------------- RecBole atomic files
def test_atomic_files_order_split_drop_and_count(tmp_path):
    case = write_atomic_files(tmp_path / "atomic")
    data, stats = read_atomic_domain(case["folder"], case["name"])
    assert stats["users_dropped_below_3_interactions"] == 1 and stats["interactions_dropped_with_them"] == 2
    assert stats["text_fields"] == ["title", "categories"]  # text columns only, in file order; price is a float
    assert stats["users"] == 31 and "short" not in set(data.splits["test"].users)
    assert stats["items_without_text"] == int((~data.has_text).sum()) == 1
    by_source = {s: i + 1 for i, s in enumerate(data.source_ids)}
    for user, history in case["histories"].items():
        ids = [by_source[s] for s in history]
        row = list(data.splits["test"].users).index(user)
        assert data.splits["test"].history(row).tolist() == ids[:-1] and data.splits["test"].targets[row] == ids[-1]
        row = list(data.splits["validation"].users).index(user)
        assert data.splits["validation"].targets[row] == ids[-2]
    assert data.texts[by_source["i12"] - 1] == "Product 12 Category 2"  # whitespace folded, fields joined
    assert data.texts[by_source["i7"] - 1] == "" and not data.has_text[by_source["i7"] - 1]
    titles, _ = read_atomic_domain(case["folder"], case["name"], text_fields=["title"])
    assert titles.texts[by_source["i12"] - 1] == "Product 12"


@pytest.mark.parametrize(
    "suffix, edit, message",
    [
        ("inter", lambda lines: [lines[0].replace("timestamp:float", "time:float")] + lines[1:],
         r"Shop.inter:1: the header has no column 'timestamp'"),
        ("inter", lambda lines: lines[:3] + ["u0\ti1\t5\tyesterday"] + lines[4:],
         r"Shop.inter:4: timestamp 'yesterday'"),
        ("inter", lambda lines: lines[:2] + ["u0\ti1\t5"] + lines[3:], r"Shop.inter:3: expected 4 tab-separated"),
        ("inter", lambda lines: lines + ["u0\tnowhere\t5\t99"], r"Shop.inter:\d+: item 'nowhere' has no row in"),
        ("item", lambda lines: ["title:token_seq\tcategories:token_seq"] + lines[1:],
         r"Shop.item:1: the header has no"),
        ("item", lambda lines: lines + [lines[1]], r"Shop.item:\d+: item 'i0' has a second row"),
    ],
)  # fmt: skip
def test_bad_atomic_files_name_the_file_and_line(tmp_path, suffix, edit, message):
    case = write_atomic_files(tmp_path / "atomic")
    path = case["folder"] / f"Shop.{suffix}"
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(ValueError, match=message):
        read_atomic_domain(case["folder"], "Shop")


def test_atomic_text_fields_must_exist(tmp_path):
    case = write_atomic_files(tmp_path / "atomic")
    with pytest.raises(ValueError, match=r"text_fields \['brand'\] are not all columns"):
        read_atomic_domain(case["folder"], "Shop", text_fields=["brand"])


def test_atomic_domain_builds_with_minilm_features_cached_and_trains(tmp_path, fresh_accelerate_state):
    case = write_atomic_files(tmp_path / "atomic")
    domain = load_domain("Shop", source="atomic", data_dir=case["folder"], cache_dir=tmp_path / "cache")
    assert domain.build["text_encoder"] == "sentence" and domain.build["statistics"]["users"] == 31
    text = catalogue_features(domain.items)["text_features"]
    assert text.shape[1] == TEXT_WIDTH and set(catalogue_features(domain.items)) == {"text_features"}
    has_text = torch.tensor(domain.items["has_text"])
    assert not has_text.all() and (text.abs().sum(1) > 0).equal(has_text)  # empty text: a missing modality
    prepared = list((tmp_path / "cache" / "missrec_prepared").iterdir())
    assert len(prepared) == 1 and (prepared[0] / "Shop.feat1CLS").is_file()
    again = load_domain("Shop", source="atomic", data_dir=case["folder"], cache_dir=tmp_path / "cache")
    assert again.items["source_id"] == domain.items["source_id"]
    assert len(list((tmp_path / "cache" / "missrec_prepared").iterdir())) == 1  # cached like the raw source
    card = (export_domain(domain, tmp_path / "dataset") / "README.md").read_text()
    assert "RecBole atomic files" in card and "catalogue with text features" in card

    run = tmp_path / "run"
    results = run_train(
        ["--domain", "Shop", "--source", "atomic", "--data_dir", str(case["folder"]), "--epochs", "1",
         "--baselines", "[]", "--output_dir", str(run), "--text_fields", "[title]"]
    )  # fmt: skip
    assert results["recipe"]["source"] == "atomic" and "ndcg@10" in results["test"]
    assert json.loads((run / "config.json").read_text())["modalities"] == "text"
    exported = export_model(run, tmp_path / "export")
    assert "RecBole atomic files" in (exported / "README.md").read_text()
    recommend = pipeline("sequential-recommendation", model=str(exported), trust_remote_code=True)
    served = recommend(["i3", "i5", "i12"], top_k=4, return_text=True)  # the .inter file's item ids
    assert len(served) == 4 and not {"i3", "i5", "i12"} & {r["source_id"] for r in served}
    assert all(r["text"] in ("", f"Product {r['source_id'][1:]}") for r in served)  # the run's text: titles only


# ------------------------------------------------------------------------------------- modalities that differ
def tiny_model(modalities: str, **dims) -> MISSRecModel:
    torch.manual_seed(0)
    return MISSRecModel(load_preset("missrec-tiny", modalities=modalities, **dims))


def test_an_added_modality_leaves_the_model_unchanged_until_items_have_it():
    model = tiny_model("text", text_feature_dim=12).eval()
    text = torch.randn(20, 12)
    model.set_catalogue(text_features=text)
    model.discover_interests()
    history = torch.tensor([[3, 5, 7], [2, 0, 0]])
    with torch.no_grad():
        before = rec(model)(history).scores
    model.add_modality("image", 9)
    assert model.config.modalities == "both" and model.image_adaptor.in_features == 9
    assert model.item_fusion.weight is not None  # two modalities: the fusion weight is learned
    with torch.no_grad():
        torch.testing.assert_close(rec(model)(history).scores, before)  # no item has an image yet
    model.set_catalogue(text_features=text, image_features=torch.randn(20, 9))
    model.discover_interests()
    with torch.no_grad():
        assert not torch.allclose(rec(model)(history).scores, before)
    with pytest.raises(ValueError, match="cannot add modality 'image'"):
        model.add_modality("image", 9)


def test_match_catalogue_modalities_warns_adds_or_masks_and_refuses_other_widths():
    features = {"text_features": torch.randn(10, 12), "image_features": torch.randn(10, 7)}
    model = tiny_model("text", text_feature_dim=12)
    with pytest.warns(UserWarning, match="fine-tuning adds an image adaptor"):
        matched = match_catalogue_modalities(model, features)
    assert model.modality_names == ("text", "image") and set(matched) == set(features)
    untrained = tiny_model("text", text_feature_dim=12)  # zero-shot: no adaptor that nothing will train
    with pytest.warns(UserWarning, match="with nothing trained they are left out"):
        matched = match_catalogue_modalities(untrained, features, add_missing=False)
    assert untrained.modality_names == ("text",) and set(matched) == {"text_features"}
    with pytest.raises(ValueError, match="has none of them: with nothing trained"), pytest.warns(UserWarning):
        match_catalogue_modalities(untrained, {"image_features": features["image_features"]}, add_missing=False)
    both = tiny_model("both", text_feature_dim=12, image_feature_dim=7)
    with pytest.warns(UserWarning, match="every item is marked as lacking image"):
        matched = match_catalogue_modalities(both, {"text_features": features["text_features"]})
    assert not matched["image_features"].any() and matched["image_features"].shape == (10, 7)
    with pytest.raises(ValueError, match="reads text features of width 12, but the domain's have width 5"):
        match_catalogue_modalities(tiny_model("text", text_feature_dim=12), {"text_features": torch.randn(10, 5)})


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_text_only_pretraining_then_text_and_image_finetuning(tmp_path, strategy, fresh_accelerate_state):
    """Pre-train on text-only domains, fine-tune on a domain with text and images: the image adaptor is added
    (with a warning), trains, and travels with the saved model or adapter."""
    for seed, name in ((1, "ShopA"), (2, "ShopB")):
        write_text_only_folder(tmp_path / "files", name=name, seed=seed, num_items=60, num_users=80)
    target = make_demo_domain(num_items=60, num_users=100, text_dim=TEXT_WIDTH, image_dim=16, seed=0, name="Target")
    write_missrec_folder(target, tmp_path / "files")
    pretrained = tmp_path / "pretrain"
    run_train(
        ["--stage", "pretrain", "--domain", "[ShopA, ShopB]", "--data_dir", str(tmp_path / "files"),
         "--epochs", "1", "--baselines", "[]", "--output_dir", str(pretrained)]
    )  # fmt: skip
    assert json.loads((pretrained / "config.json").read_text())["modalities"] == "text"
    run = tmp_path / f"finetune-{strategy}"
    with pytest.warns(UserWarning, match="fine-tuning adds an image adaptor"):
        results = run_train(
            ["--domain", "Target", "--data_dir", str(tmp_path / "files"), "--pretrained", str(pretrained),
             "--strategy", strategy, "--epochs", "1", "--baselines", "[]", "--output_dir", str(run)]
        )  # fmt: skip
    domain = load_domain("Target", data_dir=tmp_path / "files", cache_dir=tmp_path / "cache")
    test = SequenceCollator(domain.sequences["test"], 50)
    if strategy == "lora":
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # loading a saved adapter is no fine-tuning: no warning
            model = load_missrec_adapter(str(pretrained), str(run))
        inner = model.get_base_model()
    else:
        model = inner = MISSRecModel.from_pretrained(run).eval()
    assert inner.config.modalities == "both" and inner.image_adaptor.in_features == 16
    reloaded = evaluate_ranking(rec(model), test, ks=[10, 20, 50])["official"]
    assert reloaded["ndcg@10"] == pytest.approx(results["test"]["ndcg@10"], abs=1e-6)


def test_sampled_splits_and_a_folder_per_domain(tmp_path, fresh_accelerate_state):
    """`data_dir` with `{domain}` reads one folder a domain; `max_train_examples` / `max_eval_examples` train and
    evaluate on seeded samples, recorded in metrics.json."""
    for seed, name in ((1, "ShopA"), (2, "ShopB")):
        write_text_only_folder(tmp_path / "data" / name, name=name, seed=seed, num_items=50, num_users=60)
    args = ["--stage", "pretrain", "--domain", "[ShopA, ShopB]", "--data_dir", str(tmp_path / "data" / "{domain}"),
            "--epochs", "1", "--baselines", "[]", "--max_train_examples", "300",
            "--max_eval_examples", "40"]  # fmt: skip
    results = run_train([*args, "--output_dir", str(tmp_path / "run")])
    build = results["build"]
    assert build["domains"] == ["ShopA", "ShopB"]
    assert build["train_examples"]["sampled"] == 300 and build["train_examples"]["of"] > 300
    assert build["validation_examples"] == build["test_examples"] == {"sampled": 40, "of": 120}
    again = run_train([*args, "--output_dir", str(tmp_path / "again")])
    assert again["test"] == results["test"]  # the samples are seeded


def test_readme_csv_to_atomic_files_snippet_runs(tmp_path, monkeypatch):
    page = (REPO / "docs" / "own-data.md").read_text()
    start = page.index("import pandas as pd")
    snippet = textwrap.dedent("  " + page[start : page.index("```", start)])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "MyShop").mkdir(parents=True)
    rows = [f"u{u},i{(u * 3 + k) % 12},{100 * k + u}" for u in range(8) for k in range(5)]
    (tmp_path / "interactions.csv").write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    items = [f"i{k},Title {k},{'' if k == 4 else f'Description {k}'}" for k in range(12)]
    (tmp_path / "items.csv").write_text("item,title,description\n" + "\n".join(items) + "\n")
    exec(snippet, {})
    data, stats = read_atomic_domain(tmp_path / "data" / "MyShop", "MyShop")
    assert stats["users"] == 8 and stats["interactions"] == 40 and stats["text_fields"] == ["title", "description"]
    assert data.texts[list(data.source_ids).index("i4")] == "Title 4"  # the empty description adds nothing


def test_reencoding_a_folder_keeps_its_data_and_replaces_the_text_features(tmp_path):
    data = make_demo_domain(num_items=30, num_users=20, text_dim=16, image_dim=12, name="Small")
    data.texts = np.array([f"item number {i}" if i % 7 else "" for i in range(data.num_items)], dtype=object)
    write_missrec_folder(data, tmp_path / "clip")
    out = reencode_text_features(tmp_path / "clip", "Small", tmp_path / "minilm", progress=False)
    again = read_missrec_folder(out, "Small")
    assert again.features["text_features"].shape == (30, TEXT_WIDTH)
    np.testing.assert_array_equal(again.features["image_features"], data.features["image_features"])
    np.testing.assert_array_equal(again.has_text, data.texts != "")  # no text: a missing modality
    assert again.splits["test"].targets.tolist() == data.splits["test"].targets.tolist()
    text_only = reencode_text_features(tmp_path / "clip", "Small", tmp_path / "minilm", keep_images=False)
    assert set(read_missrec_folder(text_only, "Small").features) == {"text_features"}
    with pytest.raises(ValueError, match="is the input folder"):
        reencode_text_features(tmp_path / "clip", "Small", tmp_path / "clip")


def test_a_share_of_the_training_users_keeps_all_their_examples(tmp_path, monkeypatch):
    """`train_user_fraction` trains on a seeded sample of users, every example of each; validation and test keep
    every user."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    base = ["--domain", "demo", "--num_users", "120", "--num_items", "60"]
    full = load_training_data(load_recipe(None, base))
    few = load_training_data(load_recipe(None, [*base, "--train_user_fraction", "0.1"]))
    users = np.asarray(full.sequences["train"]["user"])
    kept = np.unique(np.asarray(few.sequences["train"]["user"]))
    assert len(kept) == 12 and few.build["train_users"] == {"sampled": 12, "of": 120, "fraction": 0.1}
    assert len(few.sequences["train"]) == np.isin(users, kept).sum()  # every example of a sampled user
    assert len(few.sequences["validation"]) == len(full.sequences["validation"])
    again = load_training_data(load_recipe(None, [*base, "--train_user_fraction", "0.1"]))
    other = load_training_data(load_recipe(None, [*base, "--train_user_fraction", "0.1", "--seed", "1"]))
    assert np.array_equal(np.unique(np.asarray(again.sequences["train"]["user"])), kept)
    assert not np.array_equal(np.unique(np.asarray(other.sequences["train"]["user"])), kept)
    with pytest.raises(ValueError, match="train_user_fraction"):
        load_recipe(None, [*base, "--train_user_fraction", "0"])
