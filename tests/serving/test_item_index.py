"""The explicit item index: exact and approximate (faiss HNSW) answers, half-precision tables, saving and loading,
fallbacks and refusals."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
from helpers import FEATURE_DIM, random_histories, rec, tiny_model
from transformers import pipeline

from modeling_missrec.index_missrec import INDEX_FILE, MISSRecItemIndex
from modeling_missrec.pipeline_missrec import TASK

pytest.importorskip("faiss", reason="the approximate index needs faiss (pip install -e '.[dev]' installs it)")

NUM_ITEMS = 40
CONFIGS = [
    {},
    {"id_mode": "transductive", "repeat_bias": True},
    {"item_mm_fusion": "static", "id_mode": "transductive"},
    {"item_mm_fusion": "dynamic_instance", "id_mode": "transductive"},
    {"modalities": "text"},
]


def ranked(model, index, items, lengths, **kwargs):
    out = rec(model).recommend(items, lengths, index=index, **kwargs)
    return out.item_ids, out.scores


@pytest.mark.parametrize("overrides", CONFIGS)
@pytest.mark.parametrize("exclude_history", [True, False])
def test_approximate_index_asked_for_every_candidate_is_exact(overrides, exclude_history):
    """With as many candidates per column as items, the graphs propose the whole catalogue and the exact
    re-scoring returns the exact top-k, scores included (history excluded, or ranked with its repeat offsets)."""
    model = tiny_model(NUM_ITEMS, **overrides)
    items, lengths = random_histories(6, 8, NUM_ITEMS, seed=3)
    exact = model.build_item_index()
    approximate = model.build_item_index("approximate", candidates=NUM_ITEMS)
    assert approximate.kind == "approximate" and exact.kind == "exact"
    expected_ids, expected_scores = ranked(model, exact, items, lengths, top_k=10, exclude_history=exclude_history)
    rescored = []
    scan = approximate.exact.top_k
    approximate.exact.top_k = lambda seq, k, rows=None, *args: rescored.append(rows) or scan(seq, k, rows, *args)
    ids, scores = ranked(model, approximate, items, lengths, top_k=10, exclude_history=exclude_history)
    assert len(rescored) == 1 and rescored[0] is not None  # the proposals were re-scored, not the catalogue scanned
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(scores, expected_scores)
    if exclude_history:
        assert not any(set(row.tolist()) & set(h.tolist()) for row, h in zip(ids, items))


def test_candidate_lists_and_short_proposals_fall_back_to_exact_scoring_once_logged(caplog, monkeypatch):
    logging.Logger.warning_once.cache_clear()  # transformers logs each message once per process
    model = tiny_model(NUM_ITEMS)
    items, lengths = random_histories(5, 8, NUM_ITEMS, seed=4)
    exact = model.build_item_index()
    approximate = model.build_item_index("approximate", candidates=8)
    allowed = torch.tensor([2, 3, 5, 8, 13, 21, 34])
    for _ in range(2):
        ids, scores = ranked(model, approximate, items, lengths, top_k=4, candidates=allowed)
        assert torch.equal(ids, ranked(model, exact, items, lengths, top_k=4, candidates=allowed)[0])
    # Proposals that the exclusions empty (a graph that finds only the history's own items): exact for the request.
    history, length = items[:1], lengths[:1]
    monkeypatch.setattr(approximate.candidates, "search", lambda seq, count: history - 1)  # rows = ids - 1
    for _ in range(2):
        ids, _ = ranked(model, approximate, history, length, top_k=10)
        assert torch.equal(ids, ranked(model, exact, history, length, top_k=10)[0])
    messages = [r.getMessage() for r in caplog.records]
    assert sum("candidate list" in m for m in messages) == 1 and sum("fewer than top_k" in m for m in messages) == 1


def test_saved_and_reloaded_indexes_serve_the_same_top_k(tmp_path):
    model = tiny_model(NUM_ITEMS, id_mode="transductive")
    items, lengths = random_histories(6, 8, NUM_ITEMS, seed=5)
    for kind, dtype in (("exact", "float32"), ("approximate", "float32"), ("approximate", "float16")):
        index = model.build_item_index(kind, table_dtype=dtype, candidates=16)
        folder = tmp_path / f"{kind}-{dtype}"
        index.save_pretrained(folder)
        loaded = MISSRecItemIndex.from_pretrained(folder, model)
        assert loaded.kind == kind and loaded.exact.matrix.dtype == getattr(torch, dtype)
        for kwargs in ({"top_k": 10}, {"top_k": 5, "exclude_history": False}):
            a, b = ranked(model, index, items, lengths, **kwargs), ranked(model, loaded, items, lengths, **kwargs)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match=r"\(num_items, num_interests differ\)"):
        MISSRecItemIndex.from_pretrained(tmp_path / "exact-float32", tiny_model(NUM_ITEMS + 1, id_mode="transductive"))
    with pytest.raises(FileNotFoundError, match=INDEX_FILE):
        MISSRecItemIndex.from_pretrained(tmp_path)


def test_half_precision_tables_keep_the_top_10():
    model = tiny_model(400)
    items, lengths = random_histories(32, 10, 400, seed=6)
    full_ids, full_scores = ranked(model, model.build_item_index(), items, lengths, top_k=10)
    half_ids, half_scores = ranked(model, model.build_item_index(table_dtype=torch.float16), items, lengths, top_k=10)
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(full_ids, half_ids)) / full_ids.numel()
    assert overlap >= 0.95
    torch.testing.assert_close(half_scores, full_scores, atol=0.05, rtol=0.01)
    with pytest.raises(ValueError, match="table_dtype"):
        model.build_item_index(table_dtype="int4")


def test_the_pipeline_builds_and_serves_an_approximate_index(tmp_path):
    model = tiny_model(NUM_ITEMS)
    items, _ = random_histories(4, 6, NUM_ITEMS, seed=7)
    exact = pipeline(TASK, model=model)
    approximate = pipeline(TASK, model=model, index="approximate", index_options={"candidates": NUM_ITEMS})
    assert approximate.index.kind == "approximate"
    assert exact(items, top_k=5) == approximate(items, top_k=5)
    approximate.index.save_pretrained(tmp_path)
    loaded = pipeline(TASK, model=model, index=MISSRecItemIndex.from_pretrained(tmp_path, model))
    assert loaded(items, top_k=5) == exact(items, top_k=5)
    model.text_adaptor.weight.data.mul_(-1)
    assert approximate.rebuild_index().kind == "approximate"
    assert approximate(items, top_k=5) == pipeline(TASK, model=model)(items, top_k=5)


def test_cold_start_items_are_ranked_beside_an_approximate_index():
    model = tiny_model(NUM_ITEMS)
    items, lengths = random_histories(4, 6, NUM_ITEMS, seed=8)
    new = {"text_features": torch.randn(3, FEATURE_DIM), "image_features": torch.randn(3, FEATURE_DIM)}
    approximate = model.build_item_index("approximate", candidates=NUM_ITEMS)
    a = ranked(model, approximate, items, lengths, top_k=12, new_items=new)
    b = ranked(model, None, items, lengths, top_k=12, new_items=new)
    assert torch.equal(a[0], b[0])


def test_a_missing_faiss_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"pip install \"missrec-hf\[approximate\]\""):
        tiny_model(NUM_ITEMS).build_item_index("approximate")
