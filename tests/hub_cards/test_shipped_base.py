"""The pre-trained base the repository ships (`pretrained/missrec-base`): a catalogue-free MISSRec that loads offline,
recommends on a catalogue it never saw, and whose card carries the transfer-profile table the committed records
give (the transfer-profile case writes it again after each run it records)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REPO, import_bench_module, random_histories, run_train, write_atomic_files

from modeling_missrec import MISSRecModel

SHIPPED = REPO / "pretrained" / "missrec-base"


@pytest.fixture
def case(monkeypatch):
    return import_bench_module(monkeypatch, "transfer_profile_case")


def test_the_shipped_base_is_the_case_base_without_a_catalogue(case):
    assert sum(f.stat().st_size for f in SHIPPED.iterdir()) <= 10 * 2**20  # small enough to ship
    model = MISSRecModel.from_pretrained(SHIPPED).eval()
    assert (model.config.num_items, model.config.id_mode, model.modality_names) == (0, "inductive", ("text",))
    recipe = json.loads((SHIPPED / "metrics.json").read_text())["recipe"]
    assert recipe["stage"] == "pretrain" and recipe["domain"] == list(case.BASE_DOMAINS)

    # A catalogue it never saw, encoded as its own (MiniLM's 384-d text): interests, then finite scores.
    items = torch.randn(30, model.config.text_feature_dim, generator=torch.Generator().manual_seed(0))
    model.set_catalogue(text_features=items)
    model.discover_interests()
    item_seq, lengths = random_histories(4, 6, 30, seed=1)
    with torch.no_grad():
        scores = model.score_items(model(item_seq, lengths=lengths).sequence_embeddings)
    assert scores.shape[0] == 4 and scores.shape[1] >= 30 and torch.isfinite(scores[:, -30:]).all()


def test_the_shipped_card_carries_the_recorded_transfer_table(case):
    table = case.markdown(case.recorded_transfer_profile())
    assert table in (SHIPPED / "README.md").read_text(), (
        "the shipped base's card is older than the transfer-profile records: write it again (bench/"
        "transfer_profile_case.py refresh_shipped_card)"
    )


@pytest.mark.slow
def test_the_readme_fine_tunes_the_shipped_base_on_ones_own_data_and_serves_it(tmp_path, fresh_accelerate_state):
    """README, "Start from the pre-trained base": `train.py` with the text-domain recipe, `--pretrained` the shipped
    base and `--strategy lora` on one's own atomic files (MiniLM text, as the base was given), then the demo page's
    loader serves the adapter folder."""
    from modeling_missrec.hub_cards.space.demo import load_recommender

    shop = write_atomic_files(tmp_path / "MyShop", name="MyShop")
    run = tmp_path / "myshop-lora"
    recipe = REPO / "configuration" / "recipes" / "text-domain.yaml"
    results = run_train(
        ["--config", str(recipe), "--domain", "MyShop", "--data_dir", str(shop["folder"]), "--pretrained",
         str(SHIPPED), "--strategy", "lora", "--id_mode", "inductive", "--epochs", "1", "--baselines", "[]",
         "--output_dir", str(run)]
    )  # fmt: skip
    assert results["epochs"][0]["epoch"] == 0 and "ndcg@10" in results["test_exclude_history"]  # start validated
    assert (run / "adapter_config.json").is_file()
    recommend = load_recommender(str(run))
    served = recommend(["i3", "i5", "i12"], top_k=4)
    assert len(served) == 4 and not {"i3", "i5", "i12"} & {r["source_id"] for r in served}
