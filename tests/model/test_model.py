"""MISSRecModel math: invariances, fusion by hand, truncation, gradients, losses."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from helpers import FEATURE_DIM, official_transformer, pretraining, random_histories, rec, tiny_config, tiny_model
from torch.nn.utils import prune

from modeling_missrec import (
    MISSRecModel,
    MISSRecModelOutput,
    MISSRecPreTrainingOutput,
    MISSRecSequentialRecommendationOutput,
)
from modeling_missrec.layers_missrec import (
    MISSRecAttention,
    MISSRecDropout,
    MISSRecEncoderLayer,
    PackedLayout,
    interest_memory_layout,
    last_item_queries,
    longest_first,
    modality_tokens,
    row_buckets,
)


@pytest.mark.parametrize("seq_mm_fusion", ["add", "contextual"])
@pytest.mark.parametrize("id_mode", ["inductive", "transductive"])
def test_sequence_embedding_ignores_padding_and_batch_composition(seq_mm_fusion, id_mode):
    model = tiny_model(seq_mm_fusion=seq_mm_fusion, id_mode=id_mode)
    items, lengths = random_histories(70, 10, 40)
    full = model.embed_sequences(items, lengths)
    # Extra padding columns change nothing.
    padded = torch.cat([items, torch.zeros(70, 2, dtype=torch.long)], 1)
    torch.testing.assert_close(model.embed_sequences(padded), full, atol=1e-5, rtol=0)
    # Each row alone, trimmed to its own length, gives the same embedding as inside the batch.
    for row in (0, 5, 33, 69):
        alone = model.embed_sequences(items[row : row + 1, : lengths[row]])
        torch.testing.assert_close(alone[0], full[row], atol=1e-5, rtol=0)
    # Shuffling the batch only shuffles the embeddings.
    order = torch.randperm(70, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.embed_sequences(items[order]), full[order], atol=1e-5, rtol=0)
    assert torch.allclose(full.norm(dim=-1), torch.ones(70))
    # Serving's precomputed tables (adapted catalogue, first-layer projections of the centroids) change nothing.
    tables = {"catalogue": model.adapted_catalogue(), "interest_projections": model.interest_projections()}
    torch.testing.assert_close(model.embed_sequences(items, lengths, **tables), full, atol=1e-5, rtol=0)
    alone = model.embed_sequences(items[:1, : lengths[0]], **tables)
    torch.testing.assert_close(alone[0], full[0], atol=1e-5, rtol=0)
    # Nor does skipping the input checks, as the pipeline does for the histories it builds.
    unchecked = model.embed_sequences(items, lengths, check_inputs=False, **tables)
    torch.testing.assert_close(unchecked, full, atol=1e-5, rtol=0)
    alone = model.embed_sequences(items[:1, : lengths[0]], lengths[:1], check_inputs=False, **tables)
    torch.testing.assert_close(alone[0], full[0], atol=1e-5, rtol=0)


def test_history_longer_than_max_seq_length_keeps_the_most_recent_items(model):
    max_len = model.config.max_seq_length
    long = torch.arange(1, max_len + 6)[None]  # 17 items, model reads 12
    recent = long[:, -max_len:]
    torch.testing.assert_close(model.embed_sequences(long), model.embed_sequences(recent))
    ragged = torch.tensor([[*range(1, max_len + 4)], [3, 4, 5] + [0] * max_len])
    out = model.embed_sequences(ragged)
    torch.testing.assert_close(out[0], model.embed_sequences(ragged[:1, 3:])[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], model.embed_sequences(torch.tensor([[3, 4, 5]]))[0], atol=1e-6, rtol=0)


def identity_model(item_mm_fusion: str, id_mode: str = "inductive") -> MISSRecModel:
    """Adaptors are the identity (feature dim = hidden size = 4), so item embeddings equal their features."""
    config = tiny_config(
        text_feature_dim=4,
        image_feature_dim=4,
        hidden_size=4,
        num_attention_heads=1,
        item_mm_fusion=item_mm_fusion,
        id_mode=id_mode,
        score_temperature=0.5,
    )
    model = MISSRecModel(config).eval()
    with torch.no_grad():
        for adaptor in (model.text_adaptor, model.image_adaptor):
            adaptor.weight.copy_(torch.eye(4))
            adaptor.bias.zero_()
    text = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]])
    image = torch.tensor([[0.0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])  # item 3 has no image
    model.set_catalogue(text, image)
    return model


SEQ = F.normalize(torch.tensor([[2.0, 1.0, 1.0, 0.0]]), dim=-1)
# Cosines of SEQ with each item's text and image features, by hand.
S_TEXT = torch.tensor([2, 1, 3 / math.sqrt(2)]) / math.sqrt(6)
S_IMAGE = torch.tensor([1, 2, 0]) / math.sqrt(6)


def test_static_fusion_is_the_mean_of_present_modalities():
    model = identity_model("static")
    expected = torch.stack([(S_TEXT[0] + S_IMAGE[0]) / 2, (S_TEXT[1] + S_IMAGE[1]) / 2, S_TEXT[2]]) / 0.5
    scores = model.score_items(SEQ)
    torch.testing.assert_close(scores[0, 1:], expected)
    assert scores[0, 0] == torch.finfo(scores.dtype).min


def test_dynamic_shared_fusion_by_hand():
    model = identity_model("dynamic_shared")
    with torch.no_grad():
        model.item_fusion.weight.fill_(3.0)
    expected = []
    for t, i in zip(S_TEXT[:2], S_IMAGE[:2]):
        wt, wi = torch.softmax(torch.tensor([3 * t, 3 * i]), 0)
        expected.append(t * wt + i * wi)
    expected.append(S_TEXT[2])  # no image: the text logit alone
    torch.testing.assert_close(model.score_items(SEQ)[0, 1:], torch.stack(expected) / 0.5)


def test_dynamic_instance_fusion_by_hand_with_item_ids():
    model = identity_model("dynamic_instance", id_mode="transductive")
    with torch.no_grad():
        model.item_fusion.weight.copy_(torch.tensor([0.0, -2.0, 5.0, 1.0]))
        model.item_id_embeddings.weight.copy_(torch.tensor([[0.0] * 4, [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 1, 0]]))
    s_id = torch.tensor([0.0, 2 / math.sqrt(6), 2 / math.sqrt(12)])
    expected = []
    for item, (t, i) in enumerate(zip(S_TEXT, S_IMAGE), start=1):
        w = model.item_fusion.weight[item].item()
        fused = t if item == 3 else (torch.softmax(torch.tensor([w * t, w * i]), 0) * torch.stack([t, i])).sum()
        expected.append((s_id[item - 1] + 2 * fused) / 3)
    torch.testing.assert_close(model.score_items(SEQ)[0, 1:], torch.stack(expected) / 0.5)
    # Scoring a candidate subset gives the same numbers.
    torch.testing.assert_close(model.score_items(SEQ, torch.tensor([3, 1]))[0], torch.stack(expected)[[2, 0]] / 0.5)


def test_single_modality_model_scores_cosine_over_temperature():
    config = tiny_config(
        modalities="image",
        text_feature_dim=4,
        image_feature_dim=4,
        hidden_size=4,
        num_attention_heads=1,
        score_temperature=0.5,
    )
    model = MISSRecModel(config).eval()
    with torch.no_grad():
        model.image_adaptor.weight.copy_(torch.eye(4))
        model.image_adaptor.bias.zero_()
    model.set_catalogue(image_features=torch.tensor([[0.0, 0, 1, 0], [1, 0, 0, 0]]))
    torch.testing.assert_close(model.score_items(SEQ)[0, 1:], S_IMAGE[:2] / 0.5)
    assert not hasattr(model, "text_adaptor")


def test_forward_scores_equal_embed_then_score(model):
    items, lengths = random_histories(9, 8, 40)
    out = rec(model)(items, lengths)
    torch.testing.assert_close(out.scores, model.score_items(model.embed_sequences(items, lengths)))
    assert out.scores.shape == (9, 41) and out.loss is None and out.diversity_loss is None


def test_each_class_returns_its_own_output():
    """The base gives sequence representations, each head its objective; all three share one set of weights."""
    model = tiny_model()
    items, lengths = random_histories(5, 8, 40)
    labels = torch.tensor([4, 7, 9, 12, 30])
    base = model(items, lengths)
    assert isinstance(base, MISSRecModelOutput) and set(base.keys()) == {"sequence_embeddings", "diversity_loss"}
    torch.testing.assert_close(base.sequence_embeddings, model.embed_sequences(items, lengths))
    finetuning = rec(model)(items, lengths, labels=labels)
    assert isinstance(finetuning, MISSRecSequentialRecommendationOutput) and finetuning.scores.shape == (5, 41)
    torch.testing.assert_close(finetuning.diversity_loss, base.diversity_loss)
    pre = pretraining(model)(items, labels, augmented_item_seq=items, lengths=lengths)
    assert isinstance(pre, MISSRecPreTrainingOutput) and pre.scores.shape == (5, 5)
    head = rec(model)
    assert head.base is model and head.config is model.config and not list(head.parameters(recurse=False))
    assert dict(head.named_parameters()).keys() == {f"missrec.{k}" for k, _ in model.named_parameters()}


def test_reusing_weight_tables_gives_the_same_scores(model):
    items, lengths = random_histories(9, 8, 40)
    with torch.no_grad():
        expected = rec(model)(items, lengths).scores
    with model.reusing_weight_tables():
        first = rec(model)(items[:4], lengths[:4]).scores
        tables = dict(model._weight_tables)
        second = rec(model)(items[4:], lengths[4:]).scores
        assert set(tables) == {"catalogue", "projections"}
        assert all(model._weight_tables[k] is v for k, v in tables.items())  # computed once, then reused
    assert model._weight_tables is None
    torch.testing.assert_close(torch.cat([first, second]), expected, atol=1e-5, rtol=0)


def test_finetuning_loss_is_full_catalogue_cross_entropy_plus_diversity(model):
    items, lengths = random_histories(6, 8, 40)
    labels = torch.tensor([1, 5, 9, 40, 2, 3])
    out = rec(model)(items, lengths, labels=labels)
    expected = F.cross_entropy(out.scores[:, 1:], labels - 1) + model.config.diversity_loss_weight * out.diversity_loss
    torch.testing.assert_close(out.loss, expected)
    assert out.diversity_loss > 0


def test_pretraining_loss_by_hand(model):
    items, lengths = random_histories(5, 8, 40)
    labels = torch.tensor([4, 7, 4, 12, 30])  # item 4 twice: not its own negative
    augmented = items.clone()
    augmented[:, 0] = torch.where(lengths > 1, augmented[:, 1], augmented[:, 0])
    out = pretraining(model)(items, labels, augmented, lengths)
    seq = model.embed_sequences(items, lengths)
    seq_aug = model.embed_sequences(augmented)
    logits = model.score_items(seq, labels)
    logits[0, 2] = logits[2, 0] = torch.finfo(logits.dtype).min
    target = torch.arange(5)
    seq_item = F.cross_entropy(logits, target)
    seq_seq = F.cross_entropy(seq @ seq_aug.T / model.config.score_temperature, target)
    torch.testing.assert_close(out.seq_item_loss, seq_item)
    torch.testing.assert_close(out.seq_seq_loss, seq_seq)
    cfg = model.config
    expected = seq_item + cfg.seq_seq_loss_weight * seq_seq + cfg.diversity_loss_weight * out.diversity_loss
    torch.testing.assert_close(out.loss, expected)
    assert out.scores.shape == (5, 5)

    # Without the sequence->sequence term the augmented view is not encoded: its diversity is not counted either.
    cfg.seq_seq_loss_weight = 0.0
    encoded = []
    hook = model.LayerNorm.register_forward_hook(lambda module, args, output: encoded.append(len(output)))
    out = pretraining(model)(items, labels, augmented, lengths)
    hook.remove()
    assert len(encoded) == 1 and out.seq_seq_loss is None
    torch.testing.assert_close(out.seq_item_loss, seq_item)
    _, diversity = model._encode(items, lengths)
    torch.testing.assert_close(out.diversity_loss, diversity)
    torch.testing.assert_close(out.loss, seq_item + cfg.diversity_loss_weight * diversity)
    without_view = pretraining(model)(items, labels, lengths=lengths, return_dict=False)  # the view is not needed
    assert len(without_view) == 5 and torch.equal(without_view[0], out.loss)  # loss, scores, seq, seq_item, diversity
    cfg.seq_seq_loss_weight = 0.001
    with pytest.raises(ValueError, match="needs augmented_item_seq"):
        pretraining(model)(items, labels, lengths=lengths)


def test_word_drop_view_uses_the_given_text_features(model):
    items, lengths = random_histories(4, 6, 40)
    same = model.text_features[items]
    torch.testing.assert_close(model.embed_sequences(items, lengths, text_features=same), model.embed_sequences(items))
    other = model.embed_sequences(items, lengths, text_features=torch.randn_like(same))
    assert not torch.allclose(other, model.embed_sequences(items))


def trained_parameter_names(model: MISSRecModel, pre_training: bool = False) -> set[str]:
    model.train()
    model.zero_grad()
    items, lengths = random_histories(16, 8, model.config.num_items)
    labels = torch.arange(1, 17)
    if pre_training:
        pretraining(model)(items, labels, augmented_item_seq=items, lengths=lengths).loss.backward()
    else:
        rec(model)(items, lengths, labels=labels).loss.backward()
    return {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize(
    ("overrides", "absent"),
    [
        ({}, {"item_id_embeddings.weight"}),
        ({"id_mode": "transductive"}, set()),
        ({"item_mm_fusion": "static"}, {"item_fusion.weight", "item_id_embeddings.weight"}),
        ({"item_mm_fusion": "dynamic_instance", "seq_mm_fusion": "contextual"}, {"item_id_embeddings.weight"}),
        ({"modalities": "text"}, {"item_id_embeddings.weight", "item_fusion.weight", "image_adaptor.weight"}),
    ],
)
def test_gradients_reach_exactly_the_parameters_of_the_mode(overrides, absent):
    model = tiny_model(**overrides)
    names = {name for name, _ in model.named_parameters()}
    assert not absent & names, f"{absent & names} should not exist in this mode"
    assert trained_parameter_names(model) == names
    # The interest centroids are a buffer: discovered, never learned.
    assert "interest_centroids" not in names and "interest_centroids" in dict(model.named_buffers())


def test_pretraining_gradients_reach_every_parameter():
    model = tiny_model()
    names = {name for name, _ in model.named_parameters()} - {"item_id_embeddings.weight"}
    assert trained_parameter_names(model, pre_training=True) == names


def test_missing_modalities_are_masked_not_zero_vectors():
    model = tiny_model(num_items=10)
    text, image = model.text_features[1:].clone(), model.image_features[1:].clone()
    image[2] = 0  # item 3 loses its image
    model.set_catalogue(text, image)
    assert not model.image_present[3] and model.image_present[1]
    model.discover_interests()
    assert model.image_interest_ids[3] == 0 and model.text_interest_ids[3] > 0
    scores = rec(model)(torch.tensor([[3, 1]])).scores
    assert torch.isfinite(scores[0, 1:]).all()


def test_extend_catalogue_scores_unseen_items_from_features_alone(model):
    items, lengths = random_histories(3, 6, 40)
    before = rec(model)(items, lengths).scores
    new_text, new_image = torch.randn(2, FEATURE_DIM), torch.randn(2, FEATURE_DIM)
    ids = model.extend_catalogue(new_text, new_image)
    assert ids.tolist() == [41, 42] and model.config.num_items == 42
    after = rec(model)(items, lengths).scores
    assert after.shape == (3, 43)
    # New items join existing interests (their nearest centroid); old items keep their scores.
    assert (model.text_interest_ids[41:] > 0).all()
    torch.testing.assert_close(after[:, :41], before)
    # A new item identical to item 7 scores exactly like item 7.
    ids = model.extend_catalogue(model.text_features[7:8].clone(), model.image_features[7:8].clone())
    torch.testing.assert_close(rec(model)(items, lengths).scores[:, ids[0]], after[:, 7])


def test_discovered_interests_follow_the_ratio(model):
    vectors = 2 * model.config.num_items
    assert model.config.num_interests == math.ceil(0.3 * vectors)
    assert model.interest_centroids.shape == (model.config.num_interests + 1, 32)
    assert model.interest_centroids[0].abs().sum() == 0
    assert model.text_interest_ids[0] == model.image_interest_ids[0] == 0
    dpc = tiny_model(interest_method="dpc_knn")
    assert dpc.config.num_interests == math.ceil(0.3 * vectors)
    assert set(dpc.text_interest_ids[1:].tolist()) | set(dpc.image_interest_ids[1:].tolist()) <= set(
        range(1, dpc.config.num_interests + 1)
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_catalogue_methods_follow_the_model_dtype(dtype):
    model = tiny_model(id_mode="transductive", item_mm_fusion="dynamic_instance").to(dtype)
    model.set_catalogue(torch.randn(30, FEATURE_DIM), torch.randn(30, FEATURE_DIM))
    model.discover_interests()
    model.extend_catalogue(torch.randn(2, FEATURE_DIM), torch.randn(2, FEATURE_DIM))
    assert model.item_id_embeddings.weight.dtype == model.item_fusion.weight.dtype == dtype
    assert rec(model)(torch.tensor([[1, 31, 32]])).scores.dtype == dtype


def test_extend_catalogue_keeps_frozen_parameters_frozen():
    model = tiny_model(id_mode="transductive", item_mm_fusion="dynamic_instance")
    model.requires_grad_(False)
    model.extend_catalogue(torch.randn(2, FEATURE_DIM), torch.randn(2, FEATURE_DIM))
    assert not any(p.requires_grad for p in model.parameters())


def test_training_gradients_are_bitwise_reproducible_on_a_multithreaded_cpu():
    """Same seed, same batch, same gradients: needed for kill-and-resume to match an uninterrupted run."""
    generator = torch.Generator().manual_seed(0)
    features = {m: torch.randn(600, 512, generator=generator) for m in ("text", "image")}
    items = torch.randint(1, 601, (256, 20), generator=generator)
    gradients = []
    for _ in range(2):
        torch.manual_seed(0)
        model = MISSRecModel(tiny_config(text_feature_dim=512, image_feature_dim=512, num_items=0))
        model.set_catalogue(**{f"{m}_features": features[m] for m in ("text", "image")})
        model.discover_interests()
        model.train()
        rec(model)(items, labels=torch.arange(256) % 600 + 1).loss.backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys()
    assert all(torch.equal(gradients[0][name], gradients[1][name]) for name in gradients[0])


def test_dropout_keeps_the_expectation_and_routes_gradients_through_kept_units_only():
    dropout = MISSRecDropout(0.5).train()
    x = torch.ones(400, 300, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert torch.equal(y[kept], torch.full_like(y[kept], 2.0))  # kept units scaled by 1 / (1 - p)
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() * 2)
    assert dropout.eval()(x) is x and MISSRecDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="dropout probability 1.0"):
        MISSRecDropout(1.0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_masks_have_the_right_rate_and_independent_lanes(p):
    """Four elements share one 64-bit random number: each 16-bit lane must keep with probability 1 - p, and
    neighbouring lanes must agree as often as independent draws do."""
    torch.manual_seed(1)
    kept = (MISSRecDropout(p).train()(torch.ones(1000, 400)) != 0).flatten().float()
    lanes = kept.view(-1, 4)  # the four lanes of each random word
    for lane in range(4):
        assert lanes[:, lane].mean().item() == pytest.approx(1 - p, abs=0.005)
    agreement = (lanes[:, 0] == lanes[:, 1]).float().mean().item()
    assert agreement == pytest.approx(p**2 + (1 - p) ** 2, abs=0.005)


def test_encoder_layer_reading_a_table_equals_the_gathered_tokens_with_gradients():
    """The first encoder layer projects the K + 1 centroids once and gathers (`rows`); same output and gradients
    as projecting every memory token."""
    torch.manual_seed(0)
    layer = MISSRecEncoderLayer(tiny_config()).eval()
    table = torch.randn(7, 32, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    rows = torch.tensor([1, 3, 5, 3, 6, 1, 2, 3, 4])  # packed: centroids repeat across histories
    layout = PackedLayout(mask, [0, 3])
    gathered = layer(table[rows], layout)
    torch.autograd.backward(gathered, torch.ones_like(gathered))
    expected_grads = [table.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    table.grad = None
    layer.zero_grad()
    from_table = layer(table, layout, rows=rows)
    torch.autograd.backward(from_table, torch.ones_like(from_table))
    torch.testing.assert_close(from_table, gathered, atol=1e-5, rtol=0)
    for expected, got in zip(expected_grads, [table.grad] + [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mask", [[[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], [[1, 1], [1, 1]], [[1], [1]]])
def test_row_means_average_each_rows_real_tokens(mask):
    mask = torch.tensor(mask, dtype=torch.bool)
    tokens = torch.randn(int(mask.sum()), 5, dtype=torch.float64, requires_grad=True)
    layout = PackedLayout(mask, [0, len(mask)])
    means = layout.row_means(tokens)
    rows = mask.sum(1).tolist()
    expected = torch.stack([part.mean(0) for part in tokens.split(rows)])
    torch.testing.assert_close(means, expected)
    # Each token's gradient is its row's upstream gradient over the row's token count.
    upstream = torch.randn_like(means)
    (tokens_grad,) = torch.autograd.grad(means, tokens, upstream)
    per_token = torch.cat([upstream[b].expand(n, -1) / n for b, n in enumerate(rows)])
    torch.testing.assert_close(tokens_grad, per_token)


def attention_inputs(num_queries_per_row: int = 1):
    """A 4-head attention block with non-trivial weights, packed keys of ragged rows and their queries."""
    torch.manual_seed(0)
    attention = MISSRecAttention(tiny_config())
    for parameter in attention.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    lengths = [7, 3, 12, 1, 5, 9]
    key_mask = torch.arange(12) < torch.tensor(lengths)[:, None]
    query_mask = torch.arange(num_queries_per_row) < torch.tensor([num_queries_per_row, 1, 2, 1, 2, 1])[:, None]
    keys = torch.randn(int(key_mask.sum()), 32, requires_grad=True)
    queries = torch.randn(int(query_mask.sum()), 32, requires_grad=True)
    return attention, queries, query_mask, keys, key_mask


@pytest.mark.parametrize("queries_per_row", [1, 2])
@pytest.mark.parametrize("splits", [[0, 6], [0, 3, 6]])
def test_attention_with_folded_keys_equals_projected_keys_with_gradients(queries_per_row, splits):
    """Few queries over many keys: the key/value projections move to the query side (exact), with the same
    output and gradients (every parameter, the key bias included, gets one) as projecting every key."""
    attention, queries, query_mask, keys, key_mask = attention_inputs(queries_per_row)
    query_layout, key_layout = PackedLayout(query_mask, splits), PackedLayout(key_mask, splits)
    assert attention.folds_keys(len(queries), len(keys), 6)
    inputs = [queries, keys, *attention.parameters()]
    out = attention(queries, query_layout, keys, key_layout)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), inputs)
    with mock.patch.object(MISSRecAttention, "folds_keys", return_value=False):
        expected = attention(queries, query_layout, keys, key_layout)
        expected_grads = torch.autograd.grad((expected * weights).sum(), inputs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_projections_with_hooks_or_few_keys_are_not_folded():
    """Folding reads the projection weights directly: a projection whose forward is hooked (pruning, offloading)
    keeps the projected path, and so do queries that are not fewer than the keys would make cheap."""
    attention = MISSRecAttention(tiny_config())
    assert attention.folds_keys(8, 64, 8) and not attention.folds_keys(8, 8, 8)
    prune.l1_unstructured(attention.v_proj, "weight", amount=0.5)  # a forward pre-hook
    assert not attention.folds_keys(8, 64, 8)
    _, queries, query_mask, keys, key_mask = attention_inputs()
    layouts = PackedLayout(query_mask, [0, 6]), PackedLayout(key_mask, [0, 6])
    out = attention(queries, layouts[0], keys, layouts[1])
    (out.sum()).backward()
    assert attention.v_proj.weight_orig.grad is not None  # the hook ran: the pruned weight was used


def test_attention_with_folded_keys_drops_attention_weights_like_the_paper():
    """In training the attention weights are dropped and rescaled (dropout 0.5): the folded path's output is the
    projected attention computed by hand with the same kept weights, the value bias weighted by what was kept."""
    attention, queries, query_mask, keys, key_mask = attention_inputs()
    attention.attention_dropout = MISSRecDropout(0.5)
    attention.train()
    layout, key_layout = PackedLayout(query_mask, [0, 6]), PackedLayout(key_mask, [0, 6])
    masks = []
    draw = attention.attention_dropout.forward

    def recorded(x):
        out = draw(x)
        masks.append(out != 0)
        return out

    with mock.patch.object(attention.attention_dropout, "forward", side_effect=recorded):
        out = attention(queries, layout, keys, key_layout)
    (kept,) = masks  # [rows, heads * 1, keys]
    assert 0.3 < kept[:, :, :1].float().mean() < 0.7
    heads, head_dim = 4, 8
    q = attention.q_proj(queries).view(6, heads, head_dim)
    k_all, v_all = attention.k_proj(keys), attention.v_proj(keys)
    rows = []
    for row, (start, stop) in enumerate(zip([0, 7, 10, 22, 23, 28], [7, 10, 22, 23, 28, 37])):
        k, v = (t[start:stop].view(-1, heads, head_dim) for t in (k_all, v_all))
        scores = torch.einsum("he,khe->hk", q[row], k) / head_dim**0.5
        weights = torch.softmax(scores, -1) * kept[row, :, : stop - start] / 0.5
        rows.append(torch.einsum("hk,khe->he", weights, v).flatten())
    torch.testing.assert_close(out, attention.o_proj(torch.stack(rows)), atol=1e-5, rtol=1e-5)


def test_packed_layout_from_known_lengths_equals_the_one_read_from_the_mask():
    """A left-aligned mask's layout built from the caller's row lengths has the same buckets as the one that
    reads them off the mask."""
    lengths = [5, 1, 3, 3, 2]
    mask = torch.arange(5) < torch.tensor(lengths)[:, None]
    for splits in ([0, 5], [0, 2, 5]):
        read, given = PackedLayout(mask, splits), PackedLayout(mask, splits, lengths)
        assert read.full == given.full
        for a, b in zip(read.buckets, given.buckets):
            assert a[:2] == b[:2] and torch.equal(a[2], b[2]) and (a[3] is None) == (b[3] is None)
            assert a[3] is None or torch.equal(a[3], b[3])


def test_packed_layout_buckets_without_padding_are_views_of_the_packed_tokens():
    """A bucket whose rows fill their width (a single history, equal lengths) is a view: no copy, no attention
    mask; a bucket with padding is scattered into a zero grid. Both round-trip to the packed tokens."""
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    tokens = torch.randn(int(mask.sum()), 4)
    layout = PackedLayout(mask, [0, 2, 4])
    assert layout.is_dense(0) and not layout.is_dense(1)
    (dense, dense_mask), (padded, padded_mask) = layout.padded(tokens)
    assert dense.data_ptr() == tokens.data_ptr() and dense.shape == (2, 3, 4) and dense_mask.all()
    assert padded.shape == (2, 2, 4) and padded_mask.tolist() == [[True, True], [True, False]]
    torch.testing.assert_close(padded[padded_mask], tokens[6:], rtol=0, atol=0)
    assert (padded[~padded_mask] == 0).all()
    repacked = torch.cat([layout.packed(dense, 0), layout.packed(padded, 1)])
    torch.testing.assert_close(repacked, tokens, rtol=0, atol=0)
    # Gradients flow back through the split and the zero grid to the packed tokens, padding contributing none.
    tokens.requires_grad_(True)
    sum(bucket.sum() for bucket, _ in layout.padded(tokens)).backward()
    torch.testing.assert_close(tokens.grad, torch.ones_like(tokens), rtol=0, atol=0)


def test_modality_tokens_equal_the_padded_grid_of_present_item_modalities():
    """Contextual fusion's packed tokens are the `[B, M, L, d]` grid of per-modality tokens read at the present
    (item, modality) pairs, modality-major per row; an item with no modality keeps its first modality's token."""
    valid = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    present = torch.tensor(
        [[[1, 0, 1], [1, 1, 0]], [[0, 0, 0], [1, 0, 0]]], dtype=torch.bool
    )  # [B = 2, M = 2, L = 3]: item (0, 1) is image-only, item (1, 1) has no modality
    item_layout = PackedLayout(valid, [0, 2])
    per_modality = [torch.randn(int(valid.sum()), 4) for _ in range(2)]  # [Tv, d] each
    tokens, layout, token_mask = modality_tokens(per_modality, present, item_layout, [0, 2])
    grid = torch.stack([torch.zeros(2, 3, 4).index_put((valid,), t) for t in per_modality], 1)  # [B, M, L, d]
    expected_mask = present.clone()
    expected_mask[1, 0, 1] = True  # the item with no modality: a token from its first modality's row
    assert torch.equal(token_mask, expected_mask.flatten(1))
    torch.testing.assert_close(tokens, grid.flatten(1, 2)[token_mask], rtol=0, atol=0)
    torch.testing.assert_close(layout.pack(grid.flatten(1, 2)), tokens, rtol=0, atol=0)


def test_interest_memory_and_last_item_query_layouts_by_hand():
    interest_ids = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 0, 0]])
    layout, rows = interest_memory_layout(interest_ids, [2, 0, 1], [0, 3])
    assert rows.tolist() == [3, 1, 0, 2]  # the history with no interest reads the padding centroid
    assert layout.mask.tolist() == [[True, True, False], [True, False, False], [True, False, False]]

    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    hidden = torch.arange(5.0)[:, None].expand(-1, 2)  # packed token t holds t
    queries, query_layout = last_item_queries(
        hidden, PackedLayout(mask, [0, 2]), mask, torch.tensor([[2], [1]]), [0, 2], [1, 1]
    )
    assert queries[:, 0].tolist() == [2.0, 4.0] and query_layout.mask.shape == (2, 1)


def test_rows_are_ordered_longest_first_and_bucketed():
    assert longest_first(torch.tensor([2, 5, 2, 7])).tolist() == [3, 1, 0, 2]  # stable among equal lengths
    assert longest_first(torch.tensor([4])) is None
    assert row_buckets(10) == [0, 10] and row_buckets(256) == [0, 64, 128, 192, 256]
    assert row_buckets(4096) == [round(i * 4096 / 8) for i in range(9)]  # at most 8 buckets


@pytest.mark.parametrize("id_mode", ["inductive", "transductive"])
def test_sequence_embedding_equals_the_official_forward_through_torch_transformer(id_mode):
    """The official model: interest tokens -> nn.Transformer encoder; LayerNorm(items + positions [+ ids]) ->
    decoder with cross-attention; the last item's output, L2-normalised (eval mode, `add` fusion)."""
    model = tiny_model(id_mode=id_mode)
    with torch.no_grad():  # trained-looking norms, so that dropping the final ones would show
        for norm in (model.encoder_norm, model.decoder_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.3)
    official = official_transformer(model)
    items, lengths = random_histories(16, 10, 40)
    with torch.no_grad():
        catalogue = model.adapted_catalogue()
        tokens = catalogue["text"][items] + catalogue["image"][items] + model.position_embeddings.weight[:10]
        if id_mode == "transductive":
            tokens = tokens + model.item_id_embeddings(items)
        interests = [torch.cat([model.text_interest_ids[row], model.image_interest_ids[row]]).unique() for row in items]
        interests = torch.nn.utils.rnn.pad_sequence([i[i != 0] for i in interests], batch_first=True)
        memory = official.encoder(model.interest_centroids[interests], src_key_padding_mask=interests == 0)
        output = official.decoder(
            model.LayerNorm(tokens), memory, tgt_key_padding_mask=items == 0, memory_key_padding_mask=interests == 0
        )
        expected = F.normalize(output[torch.arange(16), lengths - 1], dim=-1)
        torch.testing.assert_close(model.embed_sequences(items, lengths), expected, atol=1e-5, rtol=0)


def test_initialisation_follows_the_official_model():
    """RecBole's normal(0, 0.02) except where the official model keeps torch's own init: the packed attention
    input projection of `nn.MultiheadAttention` (xavier uniform) and the adaptors, created after its init pass."""
    torch.manual_seed(0)
    model = MISSRecModel(tiny_config(hidden_size=64, text_feature_dim=256, image_feature_dim=256))
    d = model.config.hidden_size
    xavier = math.sqrt(6 / (4 * d))
    for name, module in model.named_modules():
        if isinstance(module, MISSRecAttention):
            qkv = torch.cat([module.q_proj.weight, module.k_proj.weight, module.v_proj.weight])
            assert qkv.abs().max() <= xavier, name
            assert qkv.std().item() == pytest.approx(xavier / math.sqrt(3), rel=0.05), name
            assert not torch.cat([module.q_proj.bias, module.k_proj.bias, module.v_proj.bias]).any()
            assert module.o_proj.weight.std().item() == pytest.approx(0.02, rel=0.1), name
    for adaptor in (model.text_adaptor, model.image_adaptor):
        bound = 1 / math.sqrt(256)
        for tensor in (adaptor.weight, adaptor.bias):
            assert tensor.abs().max() <= bound and tensor.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)
    assert model.position_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.decoder[0].feed_forward.block.fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)
    for norm in (model.encoder_norm, model.decoder_norm):
        assert (norm.weight == 1).all() and (norm.bias == 0).all()


def test_interest_tables_are_set_in_one_checked_place(model):
    """`set_interest_tables` is what discovery writes and what restores saved interests: it sets the tables and
    `config.num_interests` together, and refuses tables that do not fit the catalogue."""
    discovered = {m: getattr(model, f"{m}_interest_ids").clone() for m in model.modality_names}
    centroids = model.interest_centroids.clone()
    fresh = tiny_model()
    fresh.set_interest_tables(centroids[:3], {m: ids.clamp_max(2) for m, ids in discovered.items()})
    assert fresh.config.num_interests == 2 and fresh.interest_centroids.shape == (3, model.config.hidden_size)
    fresh.set_interest_tables(centroids, discovered)
    items, lengths = random_histories(4, 6, 40)
    with torch.no_grad():
        assert torch.equal(rec(fresh)(items, lengths).scores, rec(model)(items, lengths).scores)
    with pytest.raises(ValueError, match=r"centroids \(3, 5\) must be \[K \+ 1,"):
        fresh.set_interest_tables(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="text interest ids .* do not fit 40 items and 2 interests"):
        fresh.set_interest_tables(centroids[:3], {"text": discovered["text"]})
