"""The datasets builder and its sources: MISSRec files (real Scientific), demo, mix, collator, statistics."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA, rec
from modeling_missrec.pipelines.data.collator import SequenceCollator, catalogue_features, feature_matrix
from modeling_missrec.pipelines.data.demo_data import make_demo_domain
from modeling_missrec.pipelines.data.domain_data import leave_one_out
from modeling_missrec.pipelines.data.loading import domain_statistics, files_fingerprint, load_domain, mix_domains
from modeling_missrec.pipelines.data.missrec_files import read_missrec_folder, write_missrec_folder

SCIENTIFIC = SHARED_DATA / "amazon-scientific-mm"
needs_scientific = pytest.mark.skipif(not SCIENTIFIC.is_dir(), reason="../shared/data/amazon-scientific-mm is absent")


def parse_inter(path: Path) -> list[tuple[int, list[int], int]]:
    """Reference reader of a `.inter` file: (user, history, target) with the file's 0-based indices."""
    rows = []
    for line in path.read_text().splitlines()[1:]:
        user, history, target = line.split("\t")
        rows.append((int(user), [int(i) for i in history.split()], int(target)))
    return rows


@pytest.fixture(scope="module")
def scientific(tmp_path_factory):
    return load_domain("Scientific", data_dir=SCIENTIFIC, cache_dir=tmp_path_factory.mktemp("hf-cache"))


@needs_scientific
def test_scientific_counts_and_rows_equal_the_files(scientific):
    stats = domain_statistics(scientific)
    assert (stats["users"], stats["items"], stats["interactions"]) == (2928, 1585, 19712)
    assert stats["items_with_text"] == stats["items_with_image"] == 1585
    users = [line.split("\t")[0] for line in (SCIENTIFIC / "Scientific.user2index").read_text().splitlines()]
    for split, suffix in (("train", "train"), ("validation", "valid"), ("test", "test")):
        expected = parse_inter(SCIENTIFIC / f"Scientific.{suffix}.inter")
        table = scientific.sequences[split]
        assert len(table) == len(expected)
        assert table["history"] == [[i + 1 for i in history] for _, history, _ in expected]
        assert table["target"] == [target + 1 for _, _, target in expected]
        assert table["user"] == [users[user] for user, _, _ in expected]
        assert set(table["split"]) == {split}
    raw = np.fromfile(SCIENTIFIC / "Scientific.feat3CLS", dtype="<f4").reshape(1585, 512)
    np.testing.assert_array_equal(feature_matrix(scientific.items, "image_features"), raw)
    assert scientific.items["item_id"] == list(range(1, 1586))
    asins = [line.split("\t")[0] for line in (SCIENTIFIC / "Scientific.item2index").read_text().splitlines()]
    assert scientific.items["source_id"] == asins
    assert scientific.items[0]["text"].startswith("Vive Suction Cup Reacher Grabber")


@needs_scientific
def test_leave_one_out_and_the_writer_reproduce_the_official_files(tmp_path):
    data = read_missrec_folder(SCIENTIFIC, "Scientific")
    test = data.splits["test"]
    full = [np.append(test.history(r), test.targets[r]) for r in range(len(test))]
    rebuilt = leave_one_out(test.users, full)
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(rebuilt[split].offsets, data.splits[split].offsets)
        np.testing.assert_array_equal(rebuilt[split].items, data.splits[split].items)
        np.testing.assert_array_equal(rebuilt[split].targets, data.splits[split].targets)
    write_missrec_folder(data, tmp_path)
    for suffix in ("train.inter", "valid.inter", "test.inter", "item2index", "user2index", "feat1CLS", "feat3CLS"):
        assert (tmp_path / f"Scientific.{suffix}").read_bytes() == (SCIENTIFIC / f"Scientific.{suffix}").read_bytes()


def test_leave_one_out_caps_histories_and_orders_prefixes_like_recbole():
    splits = leave_one_out(["u"], [np.arange(1, 8)], max_history=3)
    assert [list(splits["train"].history(r)) for r in range(4)] == [[2, 3, 4], [1, 2, 3], [1, 2], [1]]
    assert list(splits["train"].targets) == [5, 4, 3, 2]
    assert list(splits["validation"].history(0)) == [3, 4, 5] and splits["validation"].targets[0] == 6
    assert list(splits["test"].history(0)) == [4, 5, 6] and splits["test"].targets[0] == 7
    with pytest.raises(ValueError, match="'short' has 2 items"):
        leave_one_out(["ok", "short"], [np.arange(1, 5), np.arange(1, 3)])


def test_demo_domain_is_seeded_and_has_structure():
    a, b = (make_demo_domain(num_items=80, num_users=50, missing_rate=0.3, seed=3) for _ in range(2))
    np.testing.assert_array_equal(a.splits["test"].items, b.splits["test"].items)
    np.testing.assert_array_equal(a.features["text_features"], b.features["text_features"])
    assert not np.array_equal(
        make_demo_domain(num_items=80, num_users=50, seed=4).splits["test"].items, a.splits["test"].items
    )
    # Missing modalities are all-zero rows and flagged; no item misses both.
    assert (~a.has_text).any() and (~a.has_image).any() and (a.has_text | a.has_image).all()
    assert not a.features["text_features"][~a.has_text].any()
    assert (a.texts[~a.has_text] == "").all() and (a.texts[a.has_text] != "").all()
    lengths = a.splits["test"].lengths + 1
    assert lengths.min() >= 6 and lengths.max() <= 20


def test_demo_users_stay_within_their_interests():
    data = make_demo_domain(num_items=400, num_users=300, num_interests=20, seed=0)
    interest_of = np.array([int(t.split("theme ")[1].rstrip(".")) if t else -1 for t in data.texts])
    test = data.splits["test"]
    distinct = [len(set(interest_of[np.append(test.history(r), test.targets[r]) - 1]) - {-1}) for r in range(len(test))]
    assert max(distinct) <= 3  # each user draws from 3 interests of their own


def test_builder_caches_and_mixes_domains(tmp_path):
    first = load_domain("demo", cache_dir=tmp_path, demo_num_items=60, demo_num_users=40)
    again = load_domain("demo", cache_dir=tmp_path, demo_num_items=60, demo_num_users=40)
    assert first.sequences["test"]["history"] == again.sequences["test"]["history"]
    other = load_domain("demo", cache_dir=tmp_path, demo_num_items=50, demo_num_users=30, demo_seed=1)
    other.name = "demo2"
    mixed = mix_domains([first, other])
    assert len(mixed.items) == 110 and mixed.items["item_id"] == list(range(1, 111))
    assert mixed.items[60]["source_id"] == "demo2:" + other.items[0]["source_id"]
    shifted = [[i + 60 for i in h] for h in other.sequences["train"]["history"]]
    assert mixed.sequences["train"]["history"][len(first.sequences["train"]) :] == shifted
    assert mixed.sequences["test"]["target"][:40] == first.sequences["test"]["target"]
    stats = domain_statistics(mixed)
    assert stats["users"] == 70 and stats["interactions"] == (
        domain_statistics(first)["interactions"] + domain_statistics(other)["interactions"]
    )
    with pytest.raises(ValueError, match="distinct"):
        mix_domains([first, first])


def test_collator_pads_recent_items_and_augments(tmp_path):
    sequences = load_domain("demo", cache_dir=tmp_path, demo_num_items=60, demo_num_users=40).sequences["train"]
    histories = sequences["history"]
    collator = SequenceCollator(sequences, max_seq_length=4)
    rows = [0, 5, 17]
    batch = collator(rows)
    for i, row in enumerate(rows):
        recent = histories[row][-4:]
        assert batch["item_seq"][i].tolist() == recent + [0] * (batch["item_seq"].shape[1] - len(recent))
        assert batch["lengths"][i] == len(recent)
        assert batch["labels"][i] == sequences[row]["target"]

    features = np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32)
    augmenting = SequenceCollator(
        sequences,
        6,
        item_drop_ratio=0.5,
        word_drop_ratio=0.5,
        text_features=features,
        alt_text_features=-features,
        seed=1,
    )
    batch = augmenting(np.arange(len(sequences)))
    seq, aug, aug_len = batch["item_seq"], batch["augmented_item_seq"], batch["augmented_lengths"]
    assert (aug_len >= 1).all() and (aug_len <= batch["lengths"]).all() and (aug_len < batch["lengths"]).any()
    for row in range(len(seq)):  # the augmented view is an ordered subsequence, left-aligned
        kept = aug[row, : aug_len[row]].tolist()
        assert (aug[row, aug_len[row] :] == 0).all()
        original = iter(seq[row].tolist())
        assert all(item in original for item in kept)
    text = batch["augmented_text_features"]
    present = aug != 0
    own = torch.from_numpy(features)[(aug - 1).clamp_min(0)]
    swapped = (text == -own).all(-1) & present
    assert (((text == own).all(-1) | swapped) | ~present).all() and swapped.any() and (~swapped & present).any()
    assert (text[~present] == 0).all()


def test_catalogue_features_fit_the_model(tmp_path):
    from modeling_missrec.configuration.presets import load_preset

    from modeling_missrec import MISSRecModel

    domain = load_domain("demo", cache_dir=tmp_path, demo_num_items=60, demo_num_users=40, text_dim=24, image_dim=16)
    features = catalogue_features(domain.items)
    assert features["text_features"].shape == (60, 24) and features["image_features"].shape == (60, 16)
    model = MISSRecModel(load_preset("missrec-tiny", text_feature_dim=24, image_feature_dim=16))
    model.set_catalogue(**features)
    model.discover_interests()
    batch = SequenceCollator(domain.sequences["test"], model.config.max_seq_length)(range(8))
    assert rec(model)(**batch).loss.isfinite()


# ------------------------------------------------------------------ bad input


@pytest.fixture
def scientific_copy(tmp_path):
    if not SCIENTIFIC.is_dir():
        pytest.skip("../shared/data/amazon-scientific-mm is absent")
    folder = tmp_path / "sci"
    shutil.copytree(SCIENTIFIC, folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def _corrupt_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[lineno - 1] = text
    path.write_text("".join(lines))


@pytest.mark.parametrize(
    ("suffix", "lineno", "line", "message"),
    [
        ("train.inter", 3, "0\t0 1\n", "train.inter:3: expected 3 tab-separated columns, got 2"),
        ("valid.inter", 2, "0\t0 x 2\t3\n", "valid.inter:2: history '0 x 2' is not made of integer indices"),
        ("test.inter", 2, "0\t0 1 2 3\t1585\n", "test.inter:2: item index 1585 is not in item2index"),
        ("test.inter", 2, "2928\t0 1 2 3\t4\n", "test.inter:2: user index 2928 is not in user2index"),
        ("item2index", 1, "B00O47ILVA\tzero\n", "item2index:1: index 'zero' is not an integer"),
        ("text", 2, "B0000223UV\n", "Scientific.text:2: expected 2 tab-separated columns, got 1"),
    ],
)
def test_malformed_lines_name_file_and_line(scientific_copy, suffix, lineno, line, message):
    _corrupt_line(scientific_copy / f"Scientific.{suffix}", lineno, line)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        read_missrec_folder(scientific_copy, "Scientific")


def test_bad_feature_files_and_missing_files(scientific_copy):
    feat = scientific_copy / "Scientific.feat1CLS"
    data = feat.read_bytes()
    feat.write_bytes(data[:-4])
    with pytest.raises(ValueError, match="Scientific.feat1CLS: 3246076 bytes is not 1585 rows .* of one width"):
        read_missrec_folder(scientific_copy, "Scientific")  # the width cannot be inferred
    with pytest.raises(ValueError, match="not a whole number of float32 rows of width 512"):
        read_missrec_folder(scientific_copy, "Scientific", text_dim=512)
    feat.write_bytes(data[: -512 * 4])
    with pytest.raises(ValueError, match="1584 rows of width 512, but item2index lists 1585 items"):
        read_missrec_folder(scientific_copy, "Scientific", text_dim=512)
    nan = np.frombuffer(data, dtype="<f4").copy()
    nan[512 * 7 + 3] = np.nan
    nan.tofile(feat)
    with pytest.raises(ValueError, match="row 7 .* NaN or Inf"):
        read_missrec_folder(scientific_copy, "Scientific")
    feat.write_bytes(data)
    with pytest.raises(ValueError, match="width 300"):
        read_missrec_folder(scientific_copy, "Scientific", image_dim=300)
    (scientific_copy / "Scientific.valid.inter").unlink()
    with pytest.raises(FileNotFoundError, match="Scientific.valid.inter"):
        read_missrec_folder(scientific_copy, "Scientific")


def test_a_feature_file_cut_by_whole_rows_is_not_read_as_narrower_features(scientific_copy, tmp_path):
    """1585 items x 512 floats cut by 2 x 1585 floats is a whole 510 floats per item: every row would shift."""
    feat = scientific_copy / "Scientific.feat1CLS"
    whole = feat.read_bytes()
    feat.write_bytes(whole[: -1585 * 2 * 4])
    with pytest.raises(ValueError, match=r"feat1CLS: 3233400 bytes over 1585 items is 510 floats per item, a width no"):
        read_missrec_folder(scientific_copy, "Scientific")
    with pytest.raises(ValueError, match="not a whole number of float32 rows of width 512, but item2index lists 1585"):
        read_missrec_folder(scientific_copy, "Scientific", text_dim=512)
    feat.write_bytes(whole)
    image = scientific_copy / "Scientific.feat3CLS"  # cut to half: 256 is a common width too
    image.write_bytes(image.read_bytes()[: 1585 * 256 * 4])
    with pytest.raises(ValueError, match=r"widths, inferred from their sizes, differ \(Scientific.feat1CLS 512, Scien"):
        read_missrec_folder(scientific_copy, "Scientific")

    # a folder this project writes records its widths, uncommon ones included; the record is checked
    small = make_demo_domain(num_users=40, num_items=30, seed=0, text_dim=16, image_dim=24)
    folder = write_missrec_folder(small, tmp_path / "small")
    assert json.loads((folder / "demo.feature_widths.json").read_text()) == {"feat1CLS": 16, "feat3CLS": 24}
    assert read_missrec_folder(folder, "demo").features["image_features"].shape == (30, 24)
    image = folder / "demo.feat3CLS"
    image.write_bytes(image.read_bytes()[: -30 * 8 * 4])  # 16 floats per item: the text width, cut
    with pytest.raises(ValueError, match=r"demo.feat3CLS: 1920 bytes is 20 rows of width 24, but item2index lists 30"):
        read_missrec_folder(folder, "demo")
    with pytest.raises(ValueError, match="the folder records width 16, but width 32 was asked for"):
        read_missrec_folder(folder, "demo", text_dim=32)
    (folder / "demo.feature_widths.json").unlink()  # without the record, 16 is no common encoder's width
    with pytest.raises(ValueError, match=r"record it in the folder's <domain>.feature_widths.json .*feat1CLS.*: 16"):
        read_missrec_folder(folder, "demo")
    assert read_missrec_folder(folder, "demo", text_dim=16, image_dim=16).features["text_features"].shape == (30, 16)


def test_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Garden.item2index"):  # an own domain: its files are read
        load_domain("Garden", data_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="source='raw' needs an Amazon domain"):
        load_domain("Garden", source="raw", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="must be a file prefix"):
        load_domain("../Garden", data_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="reads the Scientific.\\* files from data_dir"):
        load_domain("Scientific", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="source='demo' goes with domain='demo' only"):
        load_domain("Scientific", source="demo", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="word_drop_ratio > 0 needs"):
        SequenceCollator(load_domain("demo", cache_dir=tmp_path).sequences["train"], 5, word_drop_ratio=0.2)


def test_export_round_trips_through_load_dataset_and_the_card_parses(tmp_path):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard
    from modeling_missrec.hub_cards.dataset_cards import export_domain

    domain = load_domain("demo", cache_dir=tmp_path / "cache", demo_num_items=60, demo_num_users=40)
    folder = export_domain(domain, tmp_path / "export", repo_id="org/missrec-demo")
    sequences = load_dataset(str(folder), "demo-sequences", cache_dir=str(tmp_path / "cache2"))
    items = load_dataset(str(folder), "demo-items", split="items", cache_dir=str(tmp_path / "cache2"))
    for split in ("train", "validation", "test"):
        assert sequences[split]["history"] == domain.sequences[split]["history"]
    assert items.features == domain.items.features
    np.testing.assert_array_equal(feature_matrix(items, "text_features"), feature_matrix(domain.items, "text_features"))

    card = DatasetCard.load(folder / "README.md")
    stats = domain_statistics(domain)
    assert [c["config_name"] for c in card.data.configs] == ["demo-sequences", "demo-items"]
    assert f"| interactions | {stats['interactions']:,} |" in card.text
    assert f"| users | {stats['users']:,} |" in card.text
    assert 'load_dataset("org/missrec-demo", "demo-sequences")' in card.text
    assert card.data.license == "apache-2.0" and "synthetic" in card.text.lower()


@needs_scientific
def test_build_command_prints_statistics(tmp_path, capsys):
    from modeling_missrec.pipelines.data.build import main

    stats = main(["--domain", "Scientific", "--data_dir", str(SCIENTIFIC), "--cache_dir", str(tmp_path)])
    assert (stats["users"], stats["items"], stats["interactions"]) == (2928, 1585, 19712)
    assert '"interactions": 19712' in capsys.readouterr().out


def test_collator_and_features_follow_a_selected_or_shuffled_view(tmp_path):
    domain = load_domain("demo", cache_dir=tmp_path, demo_num_items=60, demo_num_users=40)
    train = domain.sequences["train"]
    view = train.select([7, 0, 3])
    batch = SequenceCollator(view, 50)([0, 1, 2])
    assert len(SequenceCollator(view, 50)) == 3
    assert batch["labels"].tolist() == [train[7]["target"], train[0]["target"], train[3]["target"]]
    shuffled = domain.items.shuffle(seed=0)
    np.testing.assert_array_equal(
        feature_matrix(shuffled, "text_features")[:5], np.array(shuffled[:5]["text_features"], dtype=np.float32)
    )


def test_the_cache_follows_file_contents_not_their_times(tmp_path):
    """The same files with new times (a fresh checkout, a re-provisioned data folder) keep the cache; the same
    sizes and times with other bytes rebuild it."""
    files = write_missrec_folder(make_demo_domain(num_items=50, num_users=30, name="MyShop"), tmp_path / "files")
    first = load_domain("MyShop", data_dir=files, cache_dir=tmp_path / "cache")
    cached = first.sequences.cache_files["train"][0]["filename"]
    for path in files.iterdir():
        os.utime(path, (1_000_000_000, 1_000_000_000))
    assert (
        load_domain("MyShop", data_dir=files, cache_dir=tmp_path / "cache").sequences.cache_files["train"][0][
            "filename"
        ]
        == cached
    )
    assert files_fingerprint(files) == files_fingerprint(shutil.copytree(files, tmp_path / "copy"))
    train = files / "MyShop.train.inter"
    rows = train.read_text().splitlines()
    rows[1], rows[2] = rows[2], rows[1]  # same bytes, another order: another file
    train.write_text("\n".join(rows) + "\n")
    os.utime(train, (1_000_000_000, 1_000_000_000))  # only the bytes differ
    assert train.stat().st_size == (tmp_path / "copy" / "MyShop.train.inter").stat().st_size
    changed = load_domain("MyShop", data_dir=files, cache_dir=tmp_path / "cache")
    assert changed.sequences.cache_files["train"][0]["filename"] != cached
    assert changed.sequences["train"]["user"][:2] == first.sequences["train"]["user"][:2][::-1]


def test_cache_follows_file_changes_and_max_history_applies_to_files(tmp_path):
    data = make_demo_domain(num_items=50, num_users=30, max_length=12, name="MyShop")
    write_missrec_folder(data, tmp_path / "files")
    first = load_domain("MyShop", data_dir=tmp_path / "files", cache_dir=tmp_path / "cache")
    assert domain_statistics(first)["users"] == 30
    assert first.sequences.cache_files["train"][0]["filename"].split("/")[-3].startswith("MyShop-sequences")
    write_missrec_folder(make_demo_domain(num_items=50, num_users=10, name="MyShop"), tmp_path / "files")
    assert (
        domain_statistics(load_domain("MyShop", data_dir=tmp_path / "files", cache_dir=tmp_path / "cache"))["users"]
        == 10
    )

    write_missrec_folder(data, tmp_path / "files")
    capped = load_domain("MyShop", data_dir=tmp_path / "files", cache_dir=tmp_path / "cache", max_history=3)
    assert max(len(h) for h in capped.sequences["test"]["history"]) == 3
    full = data.splits["test"]
    assert capped.sequences["test"]["history"][0] == list(full.history(0)[-3:])
    # Statistics count whole sequences, not the capped histories.
    stats = domain_statistics(capped)
    assert stats["interactions"] == int((full.lengths + 1).sum()) and stats["max_sequence_length"] > 4


def test_alternative_text_view_travels_from_files_to_the_word_drop(tmp_path):
    data = make_demo_domain(num_items=40, num_users=20, text_dim=8, image_dim=8, name="Alt")
    data.features["alt_text_features"] = -data.features["text_features"]
    write_missrec_folder(data, tmp_path / "files")
    assert (tmp_path / "files" / "Alt.feat2CLS").is_file()
    domain = load_domain("Alt", data_dir=tmp_path / "files", cache_dir=tmp_path / "cache", text_dim=8, image_dim=8)
    alt = feature_matrix(domain.items, "alt_text_features")
    np.testing.assert_array_equal(alt, -data.features["text_features"])
    collator = SequenceCollator(
        domain.sequences["train"],
        10,
        word_drop_ratio=0.99,
        text_features=feature_matrix(domain.items, "text_features"),
        alt_text_features=alt,
    )
    batch = collator(range(len(collator)))
    seq, text = batch["augmented_item_seq"], batch["augmented_text_features"]
    present = seq != 0
    rows = seq[present] - 1
    from_alt = (text[present] == torch.tensor(alt)[rows]).all(-1)
    from_text = (text[present] == torch.tensor(-alt)[rows]).all(-1)
    assert (from_alt | from_text).all() and from_alt.float().mean() > 0.9
