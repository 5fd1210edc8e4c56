"""The demo page: its helpers, and the page itself driven in a real headless Chromium (skipped without one)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, tiny_config
from modeling_missrec.hub_cards.space.demo import Catalogue, parse_entries, resolve_model

from modeling_missrec import MISSRecModel

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", REPO / "test-artifacts"))
COLOURS = ["red", "blue", "green", "black", "white", "yellow"]
PRODUCTS = ["running shoes", "rain jacket", "wool scarf", "leather bag", "cotton shirt"]
TEXTS = [f"{colour} {product}" for product in PRODUCTS for colour in COLOURS]  # 30 items


def chromium() -> str | None:
    return next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and os.path.exists(p)), None)


@pytest.fixture(scope="module")
def served_folder(tmp_path_factory) -> Path:
    """A tiny inductive model whose text features are the offline MiniLM sentence encoder's (so items typed on
    the page can be encoded the same way), with item metadata, saved as a folder."""
    from modeling_missrec.pipelines.data.feature_extraction import extract_text_features

    from modeling_missrec.served_files_missrec import save_item_metadata

    text = torch.as_tensor(np.asarray(extract_text_features(TEXTS, kind="sentence", progress=False)))
    torch.manual_seed(0)
    model = MISSRecModel(tiny_config(text_feature_dim=text.shape[1], image_feature_dim=16))
    model.set_catalogue(text_features=text, image_features=torch.randn(len(TEXTS), 16))
    model.discover_interests()
    folder = tmp_path_factory.mktemp("served")
    model.save_pretrained(folder)
    source_ids = [f"P{i:03d}" for i in range(1, len(TEXTS) + 1)]
    save_item_metadata(folder, source_ids, TEXTS, popularity=np.arange(len(TEXTS))[::-1].copy())
    return folder


def test_catalogue_search_and_entries():
    catalogue = Catalogue(
        [f"P{i}" for i in range(1, 5)], ["red shoe", "blue shoe", "red bag", ""], np.array([1, 5, 3, 0])
    )
    assert catalogue.search("shoe") == [2, 1]  # most popular first
    assert catalogue.search("RED") == [3, 1]
    assert catalogue.search("red shoe") == [1]
    assert catalogue.search("sho") == [2, 1] and catalogue.search("P1") == [1]  # not P1x: short words match whole
    assert catalogue.search("") == [2, 3, 1, 4]
    assert catalogue.label(1) == "P1 · red shoe" and catalogue.label(4) == "P4"
    assert parse_entries("12, demo-000007  3") == [12, "demo-000007", 3]


def test_the_default_model_is_the_main_jobs_and_an_adapter_folder_finds_its_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="run the main job first"):
        resolve_model("runs/demo-finetune", None)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "runs/demo-pretrain"}')
    assert resolve_model(str(adapter), None) == ("runs/demo-pretrain", str(adapter))


def test_explanations_follow_the_model(served_folder):
    from modeling_missrec.hub_cards.space.demo import explain_recommendations

    model = MISSRecModel.from_pretrained(served_folder).eval()
    history, items = [1, 7, 13], [2, 8, 30]
    explained = explain_recommendations(model, history, items)
    with torch.no_grad():
        scores = model.score_items(model.embed_sequences(torch.tensor([history])), torch.tensor(items))[0]
        without = model.score_items(model.embed_sequences(torch.tensor([[1, 13]])), torch.tensor(items))[0]
    for row, score in zip(explained, scores.tolist()):
        assert row["score"] == pytest.approx(score, abs=1e-5)
        assert sum(row["modality_weights"].values()) == pytest.approx(1.0)
        assert (
            row["driven_by"]["item_id"] in history
            and row["driven_by"]["score_drop"] >= score - float(without[items.index(row["item_id"])]) - 1e-5
        )
    with pytest.raises(ValueError, match="history is empty"):
        explain_recommendations(model, [], [1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no Chromium installed (apt-get install chromium; .ci/run does)")
def test_the_page_in_a_real_browser_recommends_what_the_pipeline_does(served_folder, tmp_path):
    pytest.importorskip("gradio", reason="the demo extra is not installed (pip install -e '.[demo]')")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
    from modeling_missrec.hub_cards.space.demo import build_app, load_recommender
    from modeling_missrec.pipelines.data.feature_extraction import extract_text_features
    from PIL import Image

    pipe = load_recommender(str(served_folder))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(1, len(TEXTS) + 1):  # an image per item, <source_id>.jpg
        Image.new("RGB", (32, 32), (8 * i, 100, 200)).save(images / f"P{i:03d}.jpg")
    app = build_app(pipe, image_dir=str(images), text_encoder="sentence")
    port = free_port()
    app.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, allowed_paths=[str(images)]
    )
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")

            def add(query: str, label: str, count: int) -> None:
                """Search, select `label`, add it: the history then holds `count` items."""
                page.locator("#query textarea, #query input").first.fill(query)
                page.locator("#search").click()
                for _ in range(3):
                    page.locator("#results label", has_text=label).click()
                    page.locator("#add").click()
                    try:
                        sync_api.expect(page.locator("#history li")).to_have_count(count, timeout=10_000)
                        return
                    except AssertionError:
                        # On a loaded machine the search's reset of the selection (`value=None`, sent with the new
                        # results) can land after the click: the page then asks to select an item first, as it
                        # would a user, who selects it again.
                        sync_api.expect(page.locator("#message")).to_contain_text("select an item")
                raise AssertionError(f"{label!r} was not added to the history")

            def shown(count: int) -> list[int]:
                rows = page.locator("#recommendations tr[data-item-id]")
                sync_api.expect(rows).to_have_count(count, timeout=20_000)
                return [int(rows.nth(i).get_attribute("data-item-id")) for i in range(count)]

            add("shoes", "red running shoes", 1)
            add("jacket", "blue rain jacket", 2)
            history = [TEXTS.index("red running shoes") + 1, TEXTS.index("blue rain jacket") + 1]
            expected = [r["item_id"] for r in pipe(history, top_k=10)]
            page.wait_for_timeout(500)
            assert shown(10) == expected

            page.locator("#exclude input").uncheck()
            page.wait_for_function(
                "ids => [...document.querySelectorAll('#recommendations tr[data-item-id]')]"
                ".map(r => +r.dataset.itemId).join() === ids.join()",
                arg=[r["item_id"] for r in pipe(history, top_k=10, exclude_history=False)],
                timeout=20_000,
            )

            typed = "green running shoes for trail running"
            page.locator("#new-text textarea, #new-text input").first.fill(typed)
            page.locator("#add-new").click()
            cold = {
                "text_features": extract_text_features([typed], kind="sentence", progress=False),
                "image_features": np.zeros((1, 16), dtype=np.float32),
                "source_ids": ["NEW-1"],
            }
            with_new = [r["item_id"] for r in pipe(history, top_k=10, exclude_history=False, cold_start_items=cold)]
            full = pipe(history, top_k=len(TEXTS) + 1, exclude_history=False, cold_start_items=cold)
            rank = 1 + [r["item_id"] for r in full].index(len(TEXTS) + 1)
            new_rank = page.locator("#new-ranks li[data-source-id='NEW-1']")
            sync_api.expect(new_rank).to_have_attribute("data-rank", str(rank), timeout=30_000)
            page.wait_for_function(
                "ids => [...document.querySelectorAll('#recommendations tr[data-item-id]')]"
                ".map(r => +r.dataset.itemId).join() === ids.join()",
                arg=with_new,
                timeout=30_000,
            )
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "demo_page.png"), full_page=True)
            sync_api.expect(page.locator("#gallery img")).to_have_count(10, timeout=20_000)  # the items' images

            # The candidate filter: only these items are ranked (the new item too, as a new candidate).
            allowed = ["P002", "P003", "P010", "P020", "P025"]
            page.locator("#candidates textarea, #candidates input").first.fill(" ".join(allowed))
            page.locator("#candidates textarea, #candidates input").first.press("Enter")
            # (top_k 10 asks for more than the 5 + 1 candidates: the page ranks them all)
            only = pipe(history, top_k=6, exclude_history=False, candidates=allowed, cold_start_items=cold)
            page.wait_for_function(
                "ids => [...document.querySelectorAll('#recommendations tr[data-item-id]')]"
                ".map(r => +r.dataset.itemId).join() === ids.join()",
                arg=[r["item_id"] for r in only],
                timeout=20_000,
            )

            # A bad entry shows the pipeline's message, not a traceback.
            with pytest.raises(ValueError) as unknown:
                pipe.preprocess(["no-such-item"])
            page.locator("#entries textarea, #entries input").first.fill("no-such-item")
            page.locator("#set-history").click()
            sync_api.expect(page.locator("#message")).to_have_text(str(unknown.value), timeout=20_000)
            sync_api.expect(page.locator("#history li")).to_have_count(2)  # the history is kept
            browser.close()
    finally:
        app.close()
    assert (ARTIFACTS / "demo_page.png").stat().st_size > 10_000
