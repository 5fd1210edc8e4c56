"""The `sequential-recommendation` pipeline: scores against the model, input forms, cache, cold start, adapters,
bad input, and the fresh-process remote-code round trip (package not importable, offline)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import FEATURE_DIM, WITHOUT_PACKAGE, fresh_env, random_histories, rec, tiny_model
from modeling_missrec.pipelines.training.finetuning import apply_finetuning_strategy
from transformers import pipeline

from modeling_missrec.pipeline_missrec import TASK, SequentialRecommendationPipeline
from modeling_missrec.served_files_missrec import (
    CATALOGUE_FILE,
    ITEM_METADATA_FILE,
    load_catalogue,
    load_item_metadata,
    load_missrec_adapter,
    save_catalogue,
    save_item_metadata,
)

NUM_ITEMS = 40
SOURCE_IDS = [f"B{i:04d}" for i in range(1, NUM_ITEMS + 1)]
TEXTS = [f"item number {i}" for i in range(1, NUM_ITEMS + 1)]
POPULARITY = [(i * 7) % 13 for i in range(1, NUM_ITEMS + 1)]


def recommender(model, **kwargs) -> SequentialRecommendationPipeline:
    metadata = {"num_items": NUM_ITEMS, "source_ids": SOURCE_IDS, "texts": TEXTS, "popularity": POPULARITY}
    return pipeline(TASK, model=model, item_metadata=metadata, **kwargs)


def with_missing_modalities(model):
    """Drop the image of items 1-4 and the text of items 5-8 (zero rows), then rediscover interests."""
    text, image = model.text_features[1:].clone(), model.image_features[1:].clone()
    image[:4], text[4:8] = 0, 0
    model.set_catalogue(text_features=text, image_features=image)
    model.discover_interests()
    return model


def same(a, b) -> bool:
    """Recommendation lists equal up to float rounding of the scores (batch composition changes the last bits)."""
    if isinstance(a, list) and a and isinstance(a[0], list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    strip = [[{k: v for k, v in r.items() if k != "score"} for r in rows] for rows in (a, b)]
    return strip[0] == strip[1] and [r["score"] for r in a] == pytest.approx([r["score"] for r in b], abs=1e-5)


def assert_matches_model(model, pipe, items, lengths, top_k):
    with torch.no_grad():
        reference = rec(model)(items, lengths).scores[:, 1:]
    outputs = pipe(items, top_k=top_k, exclude_history=False)
    assert len(outputs) == len(items)
    for row, expected in zip(outputs, reference):
        ids = torch.tensor([r["item_id"] for r in row])
        scores = torch.tensor([r["score"] for r in row])
        best = expected.topk(top_k)
        assert torch.equal(ids, best.indices + 1)
        torch.testing.assert_close(scores, best.values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"id_mode": "transductive"},
        {"item_mm_fusion": "static"},
        {"item_mm_fusion": "dynamic_instance", "id_mode": "transductive"},
        {"modalities": "text"},
        {"seq_mm_fusion": "contextual", "item_mm_fusion": "static", "id_mode": "transductive"},
    ],
)
def test_pipeline_ranks_exactly_like_the_model(overrides):
    model = tiny_model(NUM_ITEMS, **overrides)
    if model.config.modalities == "both":
        with_missing_modalities(model)
    if model.item_fusion.weight is not None:  # a non-trivial fusion gate (it starts at zero)
        model.item_fusion.weight.data.normal_(0, 3, generator=torch.Generator().manual_seed(1))
    items, lengths = random_histories(7, 10, NUM_ITEMS, seed=3)
    assert_matches_model(model, recommender(model), items, lengths, top_k=NUM_ITEMS)


def test_input_forms_give_the_same_recommendations():
    pipe = recommender(tiny_model(NUM_ITEMS))
    expected = pipe([[4, 9, 2]], top_k=5)[0]
    assert [r["item_id"] for r in expected] == [r["item_id"] for r in sorted(expected, key=lambda r: -r["score"])]
    assert pipe([4, 9, 2], top_k=5) == expected  # a flat list is one history, not a batch
    assert pipe((4, 9, 2), top_k=5) == expected
    assert pipe(torch.tensor([4, 9, 2]), top_k=5) == expected
    assert pipe(["B0004", "B0009", "B0002"], top_k=5) == expected  # source ids
    assert same(pipe(torch.tensor([[4, 9, 2, 0], [7, 0, 0, 0]]), top_k=5), [expected, pipe(7, top_k=5)])
    assert same(pipe([[4, 9, 2], [7]], top_k=5, batch_size=1), pipe([[4, 9, 2], [7]], top_k=5))
    assert [r["source_id"] for r in expected] == [SOURCE_IDS[r["item_id"] - 1] for r in expected]
    streamed = list(pipe(h for h in ([4, 9, 2], [7])))
    assert same(streamed, pipe([[4, 9, 2], [7]]))


def test_exclude_history_candidates_and_text():
    pipe = recommender(tiny_model(NUM_ITEMS))
    history = [4, 9, 2, 4]
    everything = pipe(history, top_k=NUM_ITEMS, exclude_history=False)
    kept = [r for r in everything if r["item_id"] not in history]
    assert pipe(history, top_k=NUM_ITEMS - 3) == kept
    assert len(pipe(history, top_k=NUM_ITEMS)) == NUM_ITEMS - 3  # excluded items are never returned
    allowed = [1, 2, 3, 30, "B0031"]
    restricted = pipe(history, top_k=4, candidates=allowed)
    assert [r["item_id"] for r in restricted] == [r["item_id"] for r in kept if r["item_id"] in {1, 3, 30, 31}]
    assert [r["score"] for r in restricted] == pytest.approx(
        [r["score"] for r in kept if r["item_id"] in {1, 3, 30, 31}]
    )
    with_text = pipe(history, top_k=3, return_text=True)
    assert [r["text"] for r in with_text] == [TEXTS[r["item_id"] - 1] for r in with_text]
    assert "text" not in pipe(history, top_k=3)[0]


@pytest.mark.parametrize("overrides", [{}, {"id_mode": "transductive"}])
def test_recommend_ranks_like_forward_and_serves_what_the_pipeline_serves(overrides):
    """`MISSRecForSequentialRecommendation.recommend` is the ranking: forward's scores with the whole history
    (longer than `max_seq_length` here) masked and the candidates kept; the pipeline returns exactly its lists."""
    model = with_missing_modalities(tiny_model(NUM_ITEMS, **overrides))
    head = rec(model).eval()
    length = model.config.max_seq_length + 4
    items, lengths = random_histories(6, length, NUM_ITEMS, seed=3)
    items[0, :length] = torch.arange(1, length + 1)  # a full history whose oldest items the encoder does not read
    lengths[0] = length
    candidates = torch.tensor([1, 2, 3, 5, 8, 13, 21, 34, 40])

    with torch.no_grad():
        scores = head(items, lengths).scores[:, 1:]
    history = torch.zeros(len(items), NUM_ITEMS + 1, dtype=torch.bool).scatter_(1, items, True)[:, 1:]
    outside = torch.ones(NUM_ITEMS, dtype=torch.bool)
    outside[candidates - 1] = False
    reference = scores.masked_fill(history | outside, float("-inf")).topk(4)

    top = head.recommend(items, lengths, top_k=4, exclude_history=True, candidates=candidates)
    torch.testing.assert_close(top.scores, reference.values, rtol=1e-5, atol=1e-5)
    # The first history holds all but three candidates: its row ends in padding, never in a history item.
    assert torch.equal(top.item_ids, (reference.indices + 1).masked_fill(reference.values == float("-inf"), 0))
    assert top.item_ids[0, -1] == 0 and (top.item_ids[1:] > 0).all()

    served = recommender(model)([row[:n].tolist() for row, n in zip(items, lengths)], top_k=4, candidates=candidates)
    assert [[r["item_id"] for r in rows] for rows in served] == [[i for i in row if i] for row in top.item_ids.tolist()]
    finite = [[v for v in row if v > float("-inf")] for row in top.scores.tolist()]
    assert [[r["score"] for r in rows] for rows in served] == [pytest.approx(row, abs=1e-6) for row in finite]

    everything = head.recommend(items, lengths, top_k=NUM_ITEMS, exclude_history=False)
    torch.testing.assert_close(everything.scores, scores.sort(descending=True).values, rtol=1e-5, atol=1e-5)


def test_recommend_ranks_new_items_beside_the_catalogue():
    model = tiny_model(NUM_ITEMS)
    generator = torch.Generator().manual_seed(9)
    new = {name: torch.randn(2, FEATURE_DIM, generator=generator) for name in ("text_features", "image_features")}
    items, lengths = random_histories(3, 5, NUM_ITEMS, seed=4)
    top = rec(model).recommend(items, lengths, top_k=NUM_ITEMS + 2, exclude_history=False, new_items=new)
    extended = tiny_model(NUM_ITEMS)
    extended.extend_catalogue(**new)
    with torch.no_grad():
        reference = rec(extended)(items, lengths).scores[:, 1:]
    torch.testing.assert_close(top.scores, reference.gather(1, top.item_ids - 1), rtol=1e-5, atol=1e-5)
    assert sorted(top.item_ids[0].tolist()) == list(range(1, NUM_ITEMS + 3))
    cold = {**new, "source_ids": ["N1", "N2"], "texts": ["x", "y"]}
    served = recommender(model)(items[0, : lengths[0]].tolist(), top_k=6, exclude_history=False, cold_start_items=cold)
    assert [r["item_id"] for r in served] == top.item_ids[0, :6].tolist()


def test_scoring_in_item_chunks_equals_one_chunk(monkeypatch):
    """Large catalogues are scored chunk by chunk (history items masked per chunk); small ones in one chunk
    (masked at once). Both give the same recommendations."""
    import modeling_missrec.scoring_missrec as scoring

    pipe = recommender(tiny_model(NUM_ITEMS))
    histories = [[4, 9, 2, 4], [33, 40, 1], [17]]
    kwargs = [{"top_k": 12}, {"top_k": 5, "candidates": [1, 2, 3, 9, 30, 33, 39, 40]}]
    one_chunk = [pipe(histories, **kw) for kw in kwargs] + [pipe(histories[0], top_k=12)]
    monkeypatch.setattr(scoring, "_CHUNK_ELEMENTS", 2 * 7)  # 7 items per chunk for one history
    chunked = [pipe(histories, **kw) for kw in kwargs] + [pipe(histories[0], top_k=12)]
    for a, b in zip(chunked, one_chunk):
        assert same(a, b)
    assert not {4, 9, 2} & {r["item_id"] for r in chunked[-1]}


def test_the_pipeline_serves_its_index_until_it_is_rebuilt():
    """The index is a snapshot: an in-place weight edit (one no version counter sees) changes nothing served until
    `rebuild_index()`, after which the pipeline serves the new ranking, the exact scores of the edited model."""
    model = tiny_model(NUM_ITEMS)
    pipe = recommender(model)
    items, lengths = random_histories(4, 6, NUM_ITEMS)
    assert_matches_model(model, pipe, items, lengths, top_k=10)
    before = pipe(items, top_k=10, exclude_history=False)
    model.text_adaptor.weight.data.mul_(-2)  # into .data: invisible to versions and storage alike
    model.encoder[0].self_attention.block.k_proj.weight.data.mul_(3)  # the interest projections' side
    assert same(pipe(items, top_k=10, exclude_history=False), before)
    pipe.rebuild_index()
    assert not same(pipe(items, top_k=10, exclude_history=False), before)
    assert_matches_model(model, pipe, items, lengths, top_k=10)
    assert set(pipe.index.tables) == {"catalogue", "interest_projections"}


def test_an_index_of_another_catalogue_is_refused_naming_both():
    model = tiny_model(NUM_ITEMS)
    pipe = recommender(model)
    model.extend_catalogue(text_features=torch.randn(5, FEATURE_DIM), image_features=torch.randn(5, FEATURE_DIM))
    with pytest.raises(ValueError, match=r"num_items differ.*num_items=40.*num_items=45.*rebuild_index"):
        pipe([1, 2], top_k=3)
    pipe.rebuild_index()
    pipe.item_metadata = None  # the metadata describes 40 items, the catalogue now has 45
    items, lengths = random_histories(4, 6, NUM_ITEMS)
    assert_matches_model(model, pipe, items, lengths, top_k=45)
    other = tiny_model(NUM_ITEMS, id_mode="transductive")
    with pytest.raises(ValueError, match=r"id_mode differ.*id_mode=inductive.*id_mode=transductive"):
        rec(other).recommend(items, index=model.build_item_index())
    with pytest.raises(ValueError, match="must be one of"):
        recommender(model, index="nearest")


def test_cold_start_items_are_ranked_from_their_features_alone():
    model = tiny_model(NUM_ITEMS)
    pipe = recommender(model)
    generator = torch.Generator().manual_seed(5)
    new = {
        "text_features": torch.randn(3, FEATURE_DIM, generator=generator),
        "image_features": torch.randn(3, FEATURE_DIM, generator=generator),
    }
    # The third new item is a copy of catalogue item 7 (features only): it must score exactly like item 7.
    new["text_features"][2], new["image_features"][2] = model.text_features[7], model.image_features[7]
    cold = {**new, "source_ids": ["NEW1", "NEW2", "NEW3"], "texts": ["a", "b", "c"]}
    history = [4, 9, 2]
    out = pipe(history, top_k=NUM_ITEMS + 3, exclude_history=False, cold_start_items=cold, return_text=True)
    scores = {r["item_id"]: r["score"] for r in out}
    assert scores[NUM_ITEMS + 3] == pytest.approx(scores[7], abs=1e-5)
    assert {r["source_id"]: r["text"] for r in out if r["item_id"] > NUM_ITEMS} == {
        "NEW1": "a",
        "NEW2": "b",
        "NEW3": "c",
    }
    # The same as extending the catalogue (the model's own path for new items), without changing the model.
    extended = tiny_model(NUM_ITEMS)
    extended.extend_catalogue(**new)
    with torch.no_grad():
        reference = rec(extended)(torch.tensor([history])).scores[0, 1:]
    assert sorted(scores) == list(range(1, NUM_ITEMS + 4))  # items 7 and 43 tie: compare scores per item
    assert [scores[i] for i in range(1, NUM_ITEMS + 4)] == pytest.approx(reference.tolist(), abs=1e-5)
    assert model.config.num_items == NUM_ITEMS


def test_peft_wrapped_model_serves_its_adapted_scores():
    base = tiny_model(NUM_ITEMS, id_mode="transductive")
    model = apply_finetuning_strategy(base, "lora", lora_rank=4)
    pipe = recommender(model)
    items, lengths = random_histories(5, 8, NUM_ITEMS, seed=2)
    assert_matches_model(model, pipe, items, lengths, top_k=10)
    with torch.no_grad():  # change adapter-only weights: the rebuilt index serves them
        model.base_model.model.text_adaptor.modules_to_save["default"].weight.add_(0.5)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    pipe.rebuild_index()
    assert_matches_model(model, pipe, items, lengths, top_k=10)


def test_bad_input_is_refused_with_clear_messages():
    model = tiny_model(NUM_ITEMS)
    pipe = recommender(model)
    with pytest.raises(ValueError, match=r"unknown item\(s\) \[41, 'NOPE'\]"):
        pipe([3, 41, "NOPE"])
    with pytest.warns(UserWarning, match=r"unknown item\(s\) \[0\] .*; dropped"):
        assert same(pipe([3, 0], on_unknown="skip", top_k=4), pipe([3], top_k=4))
    with pytest.raises(ValueError, match="histories \\[1\\] are empty"):
        pipe([[3], []])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="are empty"):
        pipe(["NOPE"], on_unknown="skip")
    popular = pipe([[3], []], fallback="popular", top_k=3)[1]
    assert [r["score"] for r in popular] == sorted(POPULARITY, reverse=True)[:3]
    assert [POPULARITY[r["item_id"] - 1] for r in popular] == [r["score"] for r in popular]
    for top_k in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="top_k"):
            pipe([3], top_k=top_k)
    with pytest.raises(ValueError, match="top_k=41 is larger than the 40 candidate items"):
        pipe([3], top_k=41)
    with pytest.raises(ValueError, match="top_k=3 is larger than the 2 candidate items"):
        pipe([3], top_k=3, candidates=[1, 2])
    with pytest.raises(ValueError, match=r"candidates has 1 unknown item\(s\) \[99\]"):
        pipe([3], candidates=[1, 99])
    with pytest.raises(ValueError, match="on_unknown"):
        pipe([3], on_unknown="ignore")
    # Issue 35, defects 8 and 10: a batch size that would serve nothing, a bare string as the candidates.
    for batch_size in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match=f"batch_size={batch_size!r} must be an integer >= 1"):
            pipe([[3], [4]], batch_size=batch_size)
    for bare in ("B0003", 3):
        with pytest.raises(ValueError, match=f"candidates={bare!r} must be a list of item ids or source ids"):
            pipe([3], candidates=bare)
    with pytest.raises(TypeError, match="unknown parameters \\['topk'\\]"):
        pipe([3], topk=3)
    with pytest.raises(ValueError, match="mix item ids and lists"):
        pipe([3, [4]])
    wide = {"text_features": torch.randn(2, FEATURE_DIM + 1), "image_features": torch.randn(2, FEATURE_DIM)}
    with pytest.raises(ValueError, match=r"text_features has shape \(2, 17\); expected \[num_items, 16\]"):
        pipe([3], cold_start_items=wide)
    nan = {"text_features": torch.randn(2, FEATURE_DIM), "image_features": torch.randn(2, FEATURE_DIM)}
    nan["image_features"][1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"image_features has NaN or Inf for items \[42\] \(item ids\)"):
        pipe([3], cold_start_items=nan)
    huge = {"text_features": torch.randn(2, FEATURE_DIM), "image_features": torch.randn(2, FEATURE_DIM)}
    huge["text_features"][0] = 3e38  # finite, but its projection overflows (issue 35, defect 7)
    with pytest.raises(ValueError, match=r"new items \[41\] have text features whose projection is not finite"):
        pipe([3], cold_start_items=huge)
    with pytest.raises(ValueError, match=r"image_features is required \(config.modalities='both'\)"):
        pipe([3], cold_start_items={"text_features": torch.randn(2, FEATURE_DIM)})
    transductive = recommender(tiny_model(NUM_ITEMS, id_mode="transductive"))
    with pytest.raises(ValueError, match="needs an inductive model"):
        transductive([3], cold_start_items=nan)
    bare = pipeline(TASK, model=model)  # no item metadata: ids work, source ids and popularity do not
    assert bare([3], top_k=2)[0]["source_id"] is None
    with pytest.raises(ValueError, match="no item metadata"):
        bare(["B0003"])
    with pytest.raises(ValueError, match="needs item popularity"):
        bare([[]], fallback="popular")
    # Source ids read before the catalogue shrank are not trusted afterwards: the metadata no longer describes it.
    shrinking = recommender(tiny_model(NUM_ITEMS))
    assert shrinking(["B0035"], top_k=2)
    inner = shrinking.model
    inner.set_catalogue(text_features=inner.text_features[1:31], image_features=inner.image_features[1:31])
    inner.discover_interests()
    with pytest.raises(ValueError, match="the item metadata describes 40 items but the catalogue has 30"):
        shrinking(["B0035"], top_k=2)


def test_item_metadata_and_catalogue_files_round_trip(tmp_path):
    save_item_metadata(tmp_path, SOURCE_IDS, TEXTS, popularity=torch.tensor(POPULARITY))
    metadata = load_item_metadata(tmp_path)
    assert (metadata["source_ids"], metadata["texts"], metadata["popularity"]) == (SOURCE_IDS, TEXTS, POPULARITY)
    (tmp_path / "empty").mkdir()
    assert load_item_metadata(tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError, match="neither a folder nor a Hub repository id"):
        load_item_metadata(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="repeated: \\['A'\\]"):
        save_item_metadata(tmp_path, ["A", "B", "A"])
    with pytest.raises(ValueError, match="texts has 1 entries"):
        save_item_metadata(tmp_path, ["A", "B"], ["x"])
    with pytest.raises(ValueError, match="non-negative"):
        save_item_metadata(tmp_path, ["A", "B"], popularity=[1, -1])

    model = with_missing_modalities(tiny_model(NUM_ITEMS))
    save_catalogue(tmp_path, model)
    tables, info = load_catalogue(tmp_path)
    assert torch.equal(tables["text_features"], model.text_features[1:])
    assert torch.equal(tables["image_present"], model.image_present[1:])
    assert info["base_signature"]["hidden_size"] == 32 and len(info["base_fingerprint"]) == 64
    bad = {"text_features": torch.randn(3, 4), "image_features": torch.randn(3, 4)}
    bad["text_features"][2, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf for items \\[3\\]"):
        save_catalogue(tmp_path / "bad", bad)
    assert (tmp_path / CATALOGUE_FILE).is_file() and (tmp_path / ITEM_METADATA_FILE).is_file()


# ------------------------------------------------------------------ adapters
def make_adapter(tmp_path, base_overrides=None, num_items=30):
    """A base model (exported with the pipeline) and a LoRA adapter trained on another, smaller catalogue."""
    base = tiny_model(NUM_ITEMS, **(base_overrides or {}))
    pipeline(TASK, model=base).save_pretrained(tmp_path / "base")
    adapted = tiny_model(num_items, seed=4, **(base_overrides or {}))
    adapted.load_state_dict(
        {
            k: v
            for k, v in base.state_dict().items()
            if "features" not in k and "present" not in k and "interest" not in k
        },
        strict=False,
    )
    model = apply_finetuning_strategy(adapted, "lora", lora_rank=4)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(3):
        items, lengths = random_histories(16, 8, num_items, seed=step)
        labels = torch.randint(1, num_items + 1, (16,), generator=torch.Generator().manual_seed(step))
        rec(model)(item_seq=items, lengths=lengths, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.base_model.model.discover_interests()
    model.save_pretrained(tmp_path / "adapter")
    save_catalogue(tmp_path / "adapter", model)
    save_item_metadata(
        tmp_path / "adapter", [f"D{i}" for i in range(1, num_items + 1)], popularity=list(range(num_items))
    )
    return base, model


def test_adapter_loads_in_one_call_with_its_catalogue_and_refuses_another_base(tmp_path):
    _, trained = make_adapter(tmp_path)
    loaded = load_missrec_adapter(str(tmp_path / "base"), tmp_path / "adapter")
    assert loaded.config.num_items == 30 and loaded.missrec_item_metadata["source_ids"][0] == "D1"
    items, lengths = random_histories(6, 8, 30, seed=9)
    # The same tensors (weights, catalogue, interests) as the trained adapter, hence its scores up to float-level
    # differences (adding a key to the adapter's scoring settings, which changes no tensor, moved them by 1e-6).
    for ours, theirs in (
        (loaded.state_dict(), trained.state_dict()),
        (dict(loaded.named_buffers()), dict(trained.named_buffers())),
    ):
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.no_grad():
        torch.testing.assert_close(rec(loaded)(items, lengths).scores, rec(trained)(items, lengths).scores)
    pipe = pipeline(TASK, model=str(tmp_path / "base"), adapter=str(tmp_path / "adapter"), trust_remote_code=True)
    assert pipe(["D3", "D4"], top_k=3) == recommender_output(trained, [3, 4], 3, prefix="D")

    other_dims = tiny_model(NUM_ITEMS, hidden_size=16)
    with pytest.raises(ValueError, match="trained on another base model: hidden_size: adapter 32 vs base 16"):
        load_missrec_adapter(other_dims, tmp_path / "adapter")
    other_weights = tiny_model(NUM_ITEMS, seed=11)
    with pytest.raises(ValueError, match="base model with other weights"):
        load_missrec_adapter(other_weights, tmp_path / "adapter")
    assert load_missrec_adapter(other_weights, tmp_path / "adapter", check_base_weights=False).config.num_items == 30
    with pytest.raises(ValueError, match="not a PEFT adapter"):
        load_missrec_adapter(tiny_model(NUM_ITEMS), tmp_path / "base")


def recommender_output(model, history, top_k, prefix):
    with torch.no_grad():
        scores = rec(model)(torch.tensor([history])).scores[0, 1:]
    scores[torch.tensor(history) - 1] = float("-inf")
    best = scores.topk(top_k)
    return [
        {"item_id": i + 1, "source_id": f"{prefix}{i + 1}", "score": pytest.approx(v, abs=1e-5)}
        for v, i in zip(best.values.tolist(), best.indices.tolist())
    ]


# ------------------------------------------------------------------ fresh process, package not importable
FRESH = WITHOUT_PACKAGE + textwrap.dedent(
    """
    import json
    import torch
    from transformers import AutoModel, pipeline

    args = json.loads(sys.argv[1])
    kwargs = {"adapter": args["adapter"]} if args.get("adapter") else {}
    pipe = pipeline("sequential-recommendation", model=args["model"], trust_remote_code=True, **kwargs)
    assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
    result = {"pipeline": pipe(args["histories"], top_k=args["top_k"], **args.get("call", {}))}
    if not args.get("adapter"):
        model = AutoModel.from_pretrained(args["model"], trust_remote_code=True).eval()
        head = sys.modules[type(model).__module__].MISSRecForSequentialRecommendation.from_base(model)
        with torch.no_grad():
            result["scores"] = head(torch.tensor(args["padded"])).scores.tolist()
    print(json.dumps(result))
    """
)


def run_fresh(tmp_path, **args) -> dict:
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    result = subprocess.run(
        [sys.executable, str(script), json.dumps(args)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=fresh_env(tmp_path),
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_saved_pipeline_in_a_fresh_process_gives_identical_recommendations(tmp_path):
    model = tiny_model(NUM_ITEMS)
    pipe = recommender(model)
    pipe.save_pretrained(tmp_path / "model")
    save_item_metadata(tmp_path / "model", SOURCE_IDS, TEXTS, popularity=POPULARITY)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["custom_pipelines"][TASK]["impl"] == "pipeline_missrec.SequentialRecommendationPipeline"
    histories = [["B0004", "B0009", "B0002"], [7, 1], [12]]
    cold = {
        "text_features": torch.randn(2, FEATURE_DIM).tolist(),
        "image_features": torch.randn(2, FEATURE_DIM).tolist(),
        "source_ids": ["N1", "N2"],
    }
    padded = [[4, 9, 2], [7, 1, 0], [12, 0, 0]]
    call = {"cold_start_items": cold, "return_text": True}
    fresh = run_fresh(tmp_path, model=str(tmp_path / "model"), histories=histories, top_k=8, padded=padded, call=call)
    assert fresh["pipeline"] == pipe(histories, top_k=8, **call)  # same code, same numbers: bit-identical
    with torch.no_grad():
        assert torch.equal(torch.tensor(fresh["scores"]), rec(model)(torch.tensor(padded)).scores)


def test_adapter_on_an_exported_base_in_a_fresh_process(tmp_path):
    _, trained = make_adapter(tmp_path)
    fresh = run_fresh(
        tmp_path,
        model=str(tmp_path / "base"),
        adapter=str(tmp_path / "adapter"),
        histories=[["D3", "D4"], [5]],
        top_k=4,
    )
    in_process = pipeline(TASK, model=str(tmp_path / "base"), adapter=str(tmp_path / "adapter"), trust_remote_code=True)
    assert fresh["pipeline"] == in_process([["D3", "D4"], [5]], top_k=4)
    assert fresh["pipeline"][0] == recommender_output(trained, [3, 4], 4, prefix="D")


def test_a_folder_without_custom_pipelines_is_not_servable_by_remote_code(tmp_path):
    tiny_model(NUM_ITEMS).save_pretrained(tmp_path / "plain")  # the model alone: no custom_pipelines
    with pytest.raises(subprocess.CalledProcessError) as error:
        run_fresh(tmp_path, model=str(tmp_path / "plain"), histories=[[1]], top_k=2, padded=[[1]])
    assert "Unknown task sequential-recommendation" in error.value.stderr


def test_importing_the_package_registers_the_task_and_needs_no_remote_code_flag(tmp_path):
    """After `import modeling_missrec` alone, `pipeline(TASK, model=model_object)` works (it raised KeyError when
    only importing the pipeline module registered the task), and so does `pipeline(TASK, model=folder)` without
    `trust_remote_code` (it demanded the flag). A fresh process: this session has the task registered."""
    code = textwrap.dedent(
        """
        import sys

        import torch
        import modeling_missrec
        from modeling_missrec.configuration.presets import load_preset
        from transformers import pipeline

        model = modeling_missrec.MISSRecModel(load_preset("missrec-tiny", modalities="text", text_feature_dim=8))
        model.set_catalogue(text_features=torch.randn(10, 8))
        model.discover_interests()
        pipe = pipeline("sequential-recommendation", model=model)
        pipe.save_pretrained(sys.argv[1])
        # Like AutoModel.from_pretrained(folder): the installed package needs no trust_remote_code.
        again = pipeline("sequential-recommendation", model=sys.argv[1])
        assert type(again).__module__ == "modeling_missrec.pipeline_missrec", type(again).__module__
        print(len(again([1, 2], top_k=3)), pipe([1, 2], top_k=3) == again([1, 2], top_k=3))
        """
    )
    command = [sys.executable, "-c", code, str(tmp_path / "folder")]
    done = subprocess.run(command, env=fresh_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "3 True", done.stderr[-2000:]
    config = json.loads((tmp_path / "folder" / "config.json").read_text())
    assert "sequential-recommendation" in config["custom_pipelines"]  # remote-code users still find the pipeline


def test_a_catalogue_set_under_inference_mode_is_served_fresh():
    """Issue 20, defect 2 (the inference-mode half): a catalogue set and clustered under `torch.inference_mode()`
    is served once the index is rebuilt, and what is served is the new catalogue (the retired serving cache compared
    inference tensors' versions, which they do not track, and raised)."""
    model = tiny_model(num_items=30)
    pipe = pipeline(TASK, model=model)
    pipe([[1, 2, 3]], top_k=5)  # served by the index of the first catalogue
    generator = torch.Generator().manual_seed(7)
    features = {m: torch.randn(25, FEATURE_DIM, generator=generator) for m in model.config.modality_names}
    with torch.inference_mode():
        model.set_catalogue(**{f"{m}_features": t for m, t in features.items()})
        model.discover_interests()
    assert not model.interest_centroids.is_inference()
    with pytest.raises(ValueError, match="num_items=30.*num_items=25"):
        pipe([[1, 2, 3]], top_k=5)
    pipe.rebuild_index()
    served = pipe([[1, 2, 3]], top_k=5, exclude_history=False)[0]
    with torch.no_grad():
        scores = rec(model)(torch.tensor([[1, 2, 3]])).scores[0]
    scores[0] = -float("inf")
    assert [r["item_id"] for r in served] == scores.topk(5).indices.tolist()
