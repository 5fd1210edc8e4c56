"""The scoring rules of `scoring_missrec` against their textbook forms, and their fast paths against the plain ones."""

from __future__ import annotations

import pytest
import torch

from modeling_missrec.scoring_missrec import join_id_scores, pair_fusion, present_mean, stand_in_for_absent


def masked_softmax_fusion(text, image, weight, text_present, image_present):
    """The paper's dynamic fusion written out: softmax over the present modalities of `w * s`, times `s`."""
    logits = torch.stack([weight * text, weight * image])
    present = torch.stack([text_present.expand_as(text), image_present.expand_as(image)])
    weights = logits.masked_fill(~present, float("-inf")).softmax(0)
    return (weights * torch.stack([text, image])).sum(0)


@pytest.mark.parametrize("per_item", [False, True])
def test_pair_fusion_is_the_masked_softmax_of_the_paper(per_item):
    generator = torch.Generator().manual_seed(0)
    text, image = torch.randn(2, 5, 7, generator=generator)
    weight = torch.randn(7 if per_item else 1, generator=generator)
    text_present = torch.rand(7, generator=generator) > 0.3
    image_present = ~text_present | (torch.rand(7, generator=generator) > 0.5)  # every item has a modality
    fused = pair_fusion(*stand_in_for_absent(text, image, text_present, image_present), weight)
    torch.testing.assert_close(fused, masked_softmax_fusion(text, image, weight, text_present, image_present))


@pytest.mark.parametrize("per_item", [False, True])
def test_pair_fusion_in_place_equals_the_plain_form(per_item):
    generator = torch.Generator().manual_seed(1)
    text, image = torch.randn(2, 4, 9, generator=generator)
    weight = torch.randn(9 if per_item else 1, generator=generator)
    buffers = (torch.empty(64), torch.empty(64))  # larger than the chunk, as serving reuses them
    in_place = pair_fusion(text, image, weight, out=buffers)
    assert in_place.data_ptr() == buffers[1].data_ptr()
    torch.testing.assert_close(in_place, pair_fusion(text, image, weight), rtol=1e-6, atol=1e-6)


def test_present_mean_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]])  # [M = 2, C = 3]
    present = torch.tensor([[True, False, False], [True, True, False]])
    torch.testing.assert_close(present_mean(values, present), torch.tensor([3.0, 6.0, 0.0]))


def test_join_id_scores_by_hand_and_in_place():
    ids, fused = torch.tensor([3.0, -3.0]), torch.tensor([0.0, 3.0])
    expected = torch.tensor([1.0, 1.0])
    torch.testing.assert_close(join_id_scores(ids, fused), expected)
    buffer = fused.clone()
    assert join_id_scores(ids, buffer, in_place=True) is buffer
    torch.testing.assert_close(buffer, expected)


@pytest.mark.parametrize("mode", ["static", "dynamic_shared", "dynamic_instance"])
def test_item_fusion_weights_recompose_its_logits(mode):
    """`MISSRecItemFusion.modality_weights` are the weights `forward` applies: `forward = (weights * logits).sum(0)`,
    summing to 1 over present modalities, 0 for absent ones (and for an item with none)."""
    from helpers import tiny_config

    from modeling_missrec.layers_missrec import MISSRecItemFusion

    fusion = MISSRecItemFusion(tiny_config(item_mm_fusion=mode, num_items=6))
    if fusion.weight is not None:
        torch.nn.init.normal_(fusion.weight, std=2.0, generator=torch.Generator().manual_seed(3))
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(4))  # [M, B, C = all 0..6]
    present = torch.tensor([[1, 1, 0, 1, 0, 1, 1], [1, 0, 1, 1, 0, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        weights = fusion.modality_weights(logits, present)
        torch.testing.assert_close((weights * logits).sum(0), fusion(logits, present), rtol=1e-5, atol=1e-6)
    totals = weights.sum(0)
    torch.testing.assert_close(totals[:, present.any(0)], torch.ones(3, 6))
    assert (weights[:, :, 4] == 0).all() and (weights[1, :, 1] == 0).all() and (weights[0, :, 2] == 0).all()


def test_a_score_that_is_not_a_number_never_ranks_above_one_that_is():
    """Issue 35, defect 7: `topk` ranks NaN first; the index ranks it last."""
    from helpers import random_histories, rec, tiny_model

    model = tiny_model(30)
    items, lengths = random_histories(3, 5, 30)
    items[items == 7] = 8  # histories without the broken item (its own embedding would break theirs)
    with torch.no_grad():  # an item whose adapted embedding is not finite scores NaN
        model.text_features[7] = float("inf")
    top = rec(model).recommend(items, lengths, top_k=30, exclude_history=False)
    # Item 7 is never recommended: it is dropped, as an excluded item is (before the fix it ranked first).
    assert (top.item_ids != 7).all() and (top.item_ids[:, -1] == 0).all()
    assert torch.isfinite(top.scores[:, :-1]).all()


@pytest.mark.parametrize("id_mode", ["inductive", "transductive"])
def test_static_scores_fused_on_embeddings_equal_the_fused_logits(id_mode):
    """`score_items` under static fusion fuses the item embeddings once (`static_item_embeddings`); the scores and
    every weight's gradient are those of the rule applied to each modality's logits (`MISSRecItemFusion`, then
    `join_id_scores`, then the temperature), for the whole catalogue and for candidates."""
    from helpers import tiny_model

    learned = {"learned_id_weight": True} if id_mode == "transductive" else {}
    model = tiny_model(30, id_mode=id_mode, item_mm_fusion="static", learn_score_temperature=True, **learned)
    model = model.double()
    model.image_present[[3, 7, 8]] = False  # items without an image: the mean is over their text alone
    model.text_present[[5]] = False
    with torch.no_grad():
        model.learned_temperature.log_inverse.add_(0.3)  # neither 1 nor the starting value
        if model.item_fusion.id_weight is not None:
            model.item_fusion.id_weight.fill_(0.7)
    sequences = torch.randn(4, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for item_ids in (None, torch.tensor([2, 3, 5, 8, 11, 29])):
        items = model.embed_items(item_ids)
        logits = torch.stack([sequences @ items[m].T for m in model.modality_names])
        expected = model.item_fusion(logits, model.item_presence(item_ids), item_ids)
        if "id" in items:
            expected = join_id_scores(sequences @ items["id"].T, expected, id_share=model.item_fusion.id_share())
        expected = expected / model.score_temperature()
        scores = model.score_items(sequences, item_ids)
        if item_ids is None:
            expected, scores = expected[:, 1:], scores[:, 1:]  # (column 0, the padding, is set to the minimum)
        torch.testing.assert_close(scores, expected, atol=1e-12, rtol=0)
        weights = torch.randn(scores.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        parameters = [p for p in model.parameters() if p.requires_grad]
        ours = torch.autograd.grad((scores * weights).sum(), parameters, allow_unused=True)
        theirs = torch.autograd.grad((expected * weights).sum(), parameters, allow_unused=True)
        for name, a, b in zip([n for n, p in model.named_parameters() if p.requires_grad], ours, theirs):
            assert (a is None) == (b is None), name
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=lambda m, name=name: f"{name}: {m}")
