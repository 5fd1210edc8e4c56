"""Raw Amazon 2018 files -> DomainData: filtering, order, splits, texts, images and features, checked against a
fixture whose expected outcome is computed naively (tests/amazon_fixture.py)."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from amazon_fixture import write_raw_fixture
from helpers import save_tiny_clip
from modeling_missrec.pipelines.data import amazon_raw, feature_extraction
from modeling_missrec.pipelines.data.amazon_raw import (
    clean_text,
    first_occurrences,
    item_text,
    iter_json_lines,
    k_core_mask,
    prepare_amazon_2018,
    raw_file_urls,
    read_amazon_2018,
)
from modeling_missrec.pipelines.data.domain_data import leave_one_out


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    return write_raw_fixture(tmp_path_factory.mktemp("amazon-raw"))


@pytest.fixture(scope="module")
def domain(raw):
    return read_amazon_2018(
        raw["reviews_path"], raw["meta_path"], domain=raw["domain"], image_dir=raw["image_dir"], progress=False
    )


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory) -> str:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), projection_dim=16)


def sequences_of(data) -> dict[str, list[str]]:
    """{user: full chronological ASIN sequence}, rebuilt from the test split (history + target)."""
    test = data.splits["test"]
    return {
        user: [data.source_ids[i - 1] for i in [*test.history(row), test.targets[row]]]
        for row, user in enumerate(test.users)
    }


# ------------------------------------------------------------------------------------- locations


def test_raw_file_urls():
    urls = raw_file_urls("Scientific")
    assert urls == {
        "reviews": "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/categoryFiles/Industrial_and_Scientific.json.gz",
        "meta": "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/metaFiles2/meta_Industrial_and_Scientific.json.gz",
    }
    assert raw_file_urls("Prime_Pantry", amazon_raw.AMAZON_2018_MIRRORS[1] + "/")["meta"] == (
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2/meta_Prime_Pantry.json.gz"
    )
    with pytest.raises(ValueError, match="unknown Amazon domain 'Sci'"):
        raw_file_urls("Sci")


# ------------------------------------------------------------------------- filtering and ordering


def test_domain_matches_the_naive_reference(raw, domain):
    data = domain.data
    assert list(data.splits["test"].users) == raw["users"]  # users by their first review line
    assert sequences_of(data) == raw["sequences"]  # k-core, dedupe, metadata filter, chronological order
    assert list(data.source_ids) == raw["item_order"]  # ids 1..N by first appearance
    assert set(raw["removed_users"]).isdisjoint(data.splits["train"].users)
    assert domain.stats == {
        "reviews": raw["reviews"],
        "without_metadata": raw["without_metadata"],
        "duplicates": raw["duplicates"],
        "k_core_rounds": raw["k_core_rounds"],
        "interactions": sum(len(s) for s in raw["sequences"].values()),
        "users": len(raw["users"]),
        "items": len(raw["item_order"]),
    }
    # The fixture exercises what it claims to.
    assert raw["k_core_rounds"] == 3 and raw["duplicates"] == 6 and raw["without_metadata"] > 0
    assert "B00NOMETA1" not in data.source_ids and "A090FIXTUREUSER" in raw["removed_users"]


def test_chronological_order_ties_keep_the_file_order(domain):
    data, sequences = domain.data, sequences_of(domain.data)
    # User 0 reviewed B00FIX0009 then B00FIX0006 on the same (last) day, in that file order.
    assert sequences["A000FIXTUREUSER"][-2:] == ["B00FIX0009", "B00FIX0006"]
    # User 1 bought B00FIX0007 again later: both interactions stay.
    assert sequences["A001FIXTUREUSER"][-2:] == ["B00FIX0007", "B00FIX0007"]
    row = list(data.splits["test"].users).index("A001FIXTUREUSER")
    assert data.splits["validation"].targets[row] == data.splits["test"].targets[row]


def test_k_core_mask_equals_a_naive_loop_on_random_graphs():
    for seed in range(6):
        rng = random.Random(seed)
        pairs = [(rng.randrange(40), int(rng.paretovariate(1.2)) % 30) for _ in range(rng.randrange(50, 400))]
        users, items = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        for k_user, k_item in ((3, 3), (5, 5), (4, 2)):
            mask, _ = k_core_mask(users, items, k_user, k_item)
            # Naive: remove one offending user (else item) at a time, another order than the vectorised rounds.
            alive = list(range(len(pairs)))
            while True:
                user_count = Counter(pairs[r][0] for r in alive)
                item_count = Counter(pairs[r][1] for r in alive)
                bad_users = [u for u, c in user_count.items() if c < k_user]
                bad_items = [i for i, c in item_count.items() if c < k_item]
                if bad_users:
                    alive = [r for r in alive if pairs[r][0] != bad_users[0]]
                elif bad_items:
                    alive = [r for r in alive if pairs[r][1] != bad_items[0]]
                else:
                    break
            assert np.flatnonzero(mask).tolist() == alive, (seed, k_user, k_item)


def test_first_occurrences_keeps_the_first_row_of_each_key():
    users, items, times = np.array([1, 0, 1, 1, 0]), np.array([5, 5, 5, 5, 5]), np.array([9, 9, 8, 9, 9])
    assert first_occurrences(users, items, times).tolist() == [True, True, True, False, False]
    assert first_occurrences(np.zeros(0, int)).tolist() == []


def test_leave_one_out_splits(raw):
    domain = read_amazon_2018(raw["reviews_path"], raw["meta_path"], domain="Scientific", max_history=4, progress=False)
    data = domain.data
    ids = {asin: i + 1 for i, asin in enumerate(data.source_ids)}
    histories = [np.array([ids[a] for a in raw["sequences"][u]]) for u in raw["users"]]
    expected = leave_one_out(raw["users"], histories, max_history=4)
    for name in ("train", "validation", "test"):
        got, want = data.splits[name], expected[name]
        assert list(got.users) == list(want.users)
        np.testing.assert_array_equal(got.offsets, want.offsets)
        np.testing.assert_array_equal(got.items, want.items)
        np.testing.assert_array_equal(got.targets, want.targets)
    test, validation = data.splits["test"], data.splits["validation"]
    assert test.lengths.max() == 4 and len(data.splits["train"]) == sum(len(h) - 3 for h in histories)
    for row, history in enumerate(histories):
        assert test.targets[row] == history[-1] and validation.targets[row] == history[-2]
        np.testing.assert_array_equal(test.history(row), history[:-1][-4:])


# --------------------------------------------------------------------------------- texts, images


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Gorilla Glue, 8 ounce", "Gorilla Glue, 8 ounce."),
        (["Industrial &amp; Scientific", "Lab Supplies"], "Industrial & Scientific Lab Supplies."),
        ('<span class="a">12&quot; Ruler</span>...', "12 Ruler."),
        ("Line\r\nbreaks\tand   spaces . .", "Line breaks and spaces."),
        ("Inc.", "Inc."),
        ({"Material:": "Steel"}, "Steel."),
        (None, ""),
        ("", ""),
        ([], ""),
        ("...", ""),
        ("x" * 1999, ""),
        ("x" * 1998, "x" * 1998 + "."),
    ],
)
def test_clean_text(value, expected):
    assert clean_text(value) == expected


def test_item_text():
    meta = {"title": "Tape", "category": ["Industrial & Scientific", "Tapes"], "brand": "3M", "price": "$3"}
    assert item_text(meta) == "Tape. Industrial & Scientific Tapes. 3M."
    assert item_text({"brand": "3M", "title": None}) == "3M."
    assert item_text({"description": ["only a description"]}) == ""


def test_texts_and_image_flags(raw, domain):
    data = domain.data
    assert dict(zip(data.source_ids, data.texts)) == raw["texts"]
    assert data.has_text.tolist() == [bool(raw["texts"][a]) for a in data.source_ids]
    assert not data.has_text.all() and data.has_text.any()
    assert data.has_image.tolist() == [raw["has_image"][a] for a in data.source_ids]
    assert not data.has_image.all() and data.has_image.any()
    assert {a: p for a, p in zip(data.source_ids, domain.image_paths) if p} == raw["image_files"]
    assert any(p.endswith(".JPG") for p in raw["image_files"].values())  # suffix case does not matter
    assert raw["image_files"]["B00FIX0005"].endswith(".jpg")  # .jpg beats .png
    without = read_amazon_2018(raw["reviews_path"], raw["meta_path"], domain="Scientific", progress=True)
    assert not without.data.has_image.any() and without.image_paths == [None] * data.num_items


@pytest.mark.parametrize("meta_format", ["json", "python"])
def test_json_and_python_literal_metadata_read_the_same(tmp_path, domain, meta_format):
    raw = write_raw_fixture(tmp_path, meta_format=meta_format, images=False)
    lines = gzip.open(raw["meta_path"], "rt").read().splitlines()
    assert all(line.startswith("{'" if meta_format == "python" else '{"') for line in lines)
    other = read_amazon_2018(raw["reviews_path"], raw["meta_path"], domain="Scientific", progress=False).data
    assert list(other.source_ids) == list(domain.data.source_ids)
    assert list(other.texts) == list(domain.data.texts)


# -------------------------------------------------------------------------------------- features


def test_features_from_a_tiny_clip(raw, clip_path, tmp_path):
    data = prepare_amazon_2018(
        raw["reviews_path"],
        raw["meta_path"],
        domain="Scientific",
        image_dir=raw["image_dir"],
        text_model=clip_path,
        batch_size=4,
        feature_dir=tmp_path / "features",
        progress=False,
    )
    text, image = data.features["text_features"], data.features["image_features"]
    assert text.shape == image.shape == (data.num_items, 16) and text.dtype == image.dtype == np.float32
    np.testing.assert_array_equal(text.any(1), data.has_text)
    np.testing.assert_array_equal(image.any(1), data.has_image)
    direct = feature_extraction.extract_text_features(list(data.texts), clip_path, progress=False)
    np.testing.assert_allclose(text, direct, atol=1e-5)
    # Distinct images give distinct rows (the .JPG and the .png items all decode).
    assert len({tuple(np.round(row, 4)) for row in image[data.has_image]}) == int(data.has_image.sum())

    folders = sorted(p.name.split("-")[0] for p in (tmp_path / "features").iterdir())
    assert folders == ["image", "text"]
    assert all(any(p.glob("*.npy")) for p in (tmp_path / "features").iterdir())
    again = prepare_amazon_2018(
        raw["reviews_path"], raw["meta_path"], domain="Scientific", image_dir=raw["image_dir"],
        text_model=clip_path, feature_dir=tmp_path / "features", progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(again.features["image_features"], image)
    # Other filtering -> another item list -> new shard folders, not a clash with the old ones.
    prepare_amazon_2018(
        raw["reviews_path"], raw["meta_path"], domain="Scientific", min_interactions=8, text_model=clip_path,
        feature_dir=tmp_path / "features", progress=False,
    )  # fmt: skip
    assert len(list((tmp_path / "features").iterdir())) == 3


def test_no_image_dir_gives_a_text_only_domain(raw, clip_path, tmp_path):
    data = prepare_amazon_2018(
        raw["reviews_path"], raw["meta_path"], domain="Scientific", text_model=clip_path, progress=False
    )
    assert set(data.features) == {"text_features"} and not data.has_image.any()
    # An image model without images changes nothing: there is nothing to embed.
    wide = save_tiny_clip(tmp_path / "wide-clip", projection_dim=24)
    data = prepare_amazon_2018(
        raw["reviews_path"], raw["meta_path"], domain="Scientific", text_model=clip_path, image_model=wide,
        progress=False,
    )  # fmt: skip
    assert set(data.features) == {"text_features"}


def test_sentence_encoder_arguments_are_passed_on(raw, monkeypatch):
    calls = []

    def fake_text(texts, model, **kwargs):
        calls.append((model, kwargs))
        return np.ones((len(texts), 7), np.float32) * np.array([bool(t) for t in texts], np.float32)[:, None]

    monkeypatch.setattr(feature_extraction, "extract_text_features", fake_text)
    data = prepare_amazon_2018(
        raw["reviews_path"], raw["meta_path"], domain="Scientific", text_encoder="sentence", batch_size=3,
        device="cpu", progress=False,
    )  # fmt: skip
    ((model, kwargs),) = calls
    assert model is None and kwargs == dict(kind="sentence", batch_size=3, device="cpu", shard_dir=None, progress=False)
    assert data.features["text_features"].shape == (data.num_items, 7) and "image_features" not in data.features


# ------------------------------------------------------------------------------------- bad input


def _write_lines(path: Path, lines: list[str], compress: bool = True) -> Path:
    opener = gzip.open if compress else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("parser", ["default", "json"])
def test_reader_reads_plain_files_and_skips_blank_lines(tmp_path, monkeypatch, parser):
    if parser == "json":  # without orjson
        monkeypatch.setattr(amazon_raw, "_loads", json.loads)
    lines = ['{"asin": "A"}', "", "{'asin': 'B', 'x': None}", '{"asin": "C", "price": NaN}']
    path = _write_lines(tmp_path / "meta.json", lines, compress=False)
    records = list(iter_json_lines(path, progress=False))
    assert records[:2] == [(1, {"asin": "A"}), (3, {"asin": "B", "x": None})]
    assert records[2][0] == 4 and np.isnan(records[2][1]["price"])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"reviewerID": "U", "asin": "A", "unixReviewTime": 1', r"bad\.json\.gz:3: not a JSON object"),
        ('["a list"]', r"bad\.json\.gz:3: expected an object, got list"),
        ('{"asin": "A", "unixReviewTime": 1}', r"bad\.json\.gz:3: 'reviewerID' is missing"),
        ('{"reviewerID": "U", "asin": "A"}', r"bad\.json\.gz:3: 'unixReviewTime' is missing"),
        ('{"reviewerID": "U", "asin": "A", "unixReviewTime": "soon"}', r"bad\.json\.gz:3: 'unixReviewTime' 'soon'"),
    ],
)
def test_malformed_review_line_names_file_and_line(raw, tmp_path, line, message):
    good = json.dumps({"reviewerID": "U", "asin": "A", "unixReviewTime": 1, "overall": 5.0})
    path = _write_lines(tmp_path / "bad.json.gz", [good, good, line, good])
    with pytest.raises(ValueError, match=message):
        read_amazon_2018(path, raw["meta_path"], domain="Scientific", progress=False)


def test_malformed_meta_line_and_truncated_gzip(raw, tmp_path):
    path = _write_lines(tmp_path / "meta_bad.json.gz", ['{"asin": "A"}', "{'asin': 'B',"])
    with pytest.raises(ValueError, match=r"meta_bad\.json\.gz:2: not a JSON object nor a Python dict literal"):
        read_amazon_2018(raw["reviews_path"], path, domain="Scientific", progress=False)
    path = _write_lines(tmp_path / "meta_noasin.json.gz", ['{"asin": "A"}', '{"title": "no asin"}'])
    with pytest.raises(ValueError, match=r"meta_noasin\.json\.gz:2: 'asin' is missing"):
        read_amazon_2018(raw["reviews_path"], path, domain="Scientific", progress=False)
    truncated = tmp_path / "cut.json.gz"
    truncated.write_bytes(Path(raw["reviews_path"]).read_bytes()[:-200])
    with pytest.raises(ValueError, match=r"cut\.json\.gz: unreadable after line \d+"):
        read_amazon_2018(truncated, raw["meta_path"], domain="Scientific", progress=False)


def test_missing_files(raw, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"review file .*nope\.json\.gz does not exist"):
        read_amazon_2018(tmp_path / "nope.json.gz", raw["meta_path"], domain="Scientific")
    with pytest.raises(FileNotFoundError, match=r"metadata file .*meta_nope\.json\.gz does not exist"):
        prepare_amazon_2018(raw["reviews_path"], tmp_path / "meta_nope.json.gz", domain="Scientific")
    with pytest.raises(FileNotFoundError, match=r"image folder .*no-images does not exist"):
        read_amazon_2018(raw["reviews_path"], raw["meta_path"], domain="Scientific", image_dir=tmp_path / "no-images")


def test_no_user_left_after_k_core(raw):
    with pytest.raises(
        ValueError, match=r"Industrial_and_Scientific\.json\.gz: no user is left .* >= 40 reviews per user"
    ):
        read_amazon_2018(
            raw["reviews_path"], raw["meta_path"], domain="Scientific", min_interactions=40, progress=False
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(min_interactions=2), "min_interactions=2 must be >= 3"),
        (dict(min_item_interactions=0), "min_item_interactions=0 must be >= 1"),
        (dict(max_history=0), "max_history=0 must be >= 1"),
        (dict(text_encoder="bert"), "text_encoder='bert'"),
        (dict(batch_size=0), "batch_size=0"),
    ],
)
def test_bad_arguments(raw, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prepare_amazon_2018(raw["reviews_path"], raw["meta_path"], domain="Scientific", progress=False, **kwargs)


def test_builder_raw_source_prepares_once_and_serves_both_tables(tmp_path, monkeypatch):
    """`load_domain(source="raw")`: both tables from one preparation, features from CLIP, ids as the fixture."""
    from modeling_missrec.pipelines.data.collator import feature_matrix
    from modeling_missrec.pipelines.data.loading import domain_statistics, load_domain

    expected = write_raw_fixture(tmp_path / "raw")
    clip = save_tiny_clip(tmp_path / "clip")
    calls = []
    prepare = amazon_raw.prepare_amazon_2018
    monkeypatch.setattr(amazon_raw, "prepare_amazon_2018", lambda *a, **k: calls.append(1) or prepare(*a, **k))
    options = dict(source="raw", data_dir=tmp_path / "raw", image_dir=expected["image_dir"], text_model=clip)
    domain = load_domain("Scientific", cache_dir=tmp_path / "cache", **options)
    assert len(calls) == 1  # the items table reused the prepared folder of the sequences table
    stats = domain_statistics(domain)
    assert stats["users"] == len(expected["sequences"]) and stats["items"] == len(expected["item_order"])
    assert domain.items["source_id"] == expected["item_order"]
    assert domain.items["has_image"] == [expected["has_image"][asin] for asin in expected["item_order"]]
    ids = {asin: i + 1 for i, asin in enumerate(expected["item_order"])}
    test = {row["user"]: row["history"] + [row["target"]] for row in domain.sequences["test"]}
    assert test == {user: [ids[a] for a in seq] for user, seq in expected["sequences"].items()}
    images = feature_matrix(domain.items, "image_features")
    assert images.shape[1] == 16 and (np.abs(images).sum(1) > 0).tolist() == domain.items["has_image"]


def test_builder_downloads_raw_files_when_no_data_dir_is_given(tmp_path, monkeypatch):
    """Without `data_dir` the builder fetches the domain's files through the datasets download manager."""
    from modeling_missrec.pipelines.data.loading import domain_statistics, load_domain

    expected = write_raw_fixture(tmp_path / "raw", images=False)
    urls = {"reviews": str(expected["reviews_path"]), "meta": str(expected["meta_path"])}
    asked = []
    monkeypatch.setattr(amazon_raw, "raw_file_urls", lambda domain: asked.append(domain) or urls)
    domain = load_domain(
        "Scientific", source="raw", cache_dir=tmp_path / "cache", text_model=save_tiny_clip(tmp_path / "c")
    )
    assert asked and set(asked) == {"Scientific"}
    assert domain_statistics(domain)["users"] == len(expected["sequences"])
    assert not any(domain.items["has_image"])
