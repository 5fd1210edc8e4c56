"""The learned share of the item-id logit (`learned_id_weight`): the paper's join at start, one rule for training
scores and the serving index, trained, saved, and carried by a LoRA adapter onto a base without it."""

from __future__ import annotations

import pytest
import torch
from helpers import fine_tune_lora_adapter, random_histories, rec, tiny_model

from modeling_missrec import MISSRecModel, load_missrec_adapter
from modeling_missrec.scoring_missrec import join_id_scores

NUM_ITEMS = 30


def test_join_by_hand():
    ids, fused = torch.tensor([[3.0, -1.0]]), torch.tensor([[0.0, 2.0]])
    torch.testing.assert_close(join_id_scores(ids, fused), torch.tensor([[1.0, 1.0]]))  # (s_id + 2 fused) / 3
    share = torch.tensor([0.25])
    torch.testing.assert_close(join_id_scores(ids, fused, id_share=share), torch.tensor([[0.75, 1.25]]))
    buffer = fused.clone()
    join_id_scores(ids, buffer, id_share=share, in_place=True)
    torch.testing.assert_close(buffer, torch.tensor([[0.75, 1.25]]))


@pytest.mark.parametrize("fusion", ["dynamic_shared", "static"])
def test_a_new_share_scores_as_the_paper_and_serving_follows_it(fusion):
    paper = tiny_model(NUM_ITEMS, id_mode="transductive", item_mm_fusion=fusion)
    learned = tiny_model(NUM_ITEMS, id_mode="transductive", item_mm_fusion=fusion, learned_id_weight=True)
    items, lengths = random_histories(5, 6, NUM_ITEMS)
    torch.testing.assert_close(learned.item_fusion.id_share(), torch.tensor([1 / 3]))
    torch.testing.assert_close(rec(learned)(items, lengths).scores, rec(paper)(items, lengths).scores)
    with torch.no_grad():
        learned.item_fusion.id_weight.fill_(2.0)  # the ids count more: training scores and the index agree
    scores = rec(learned)(items, lengths).scores
    top = rec(learned).recommend(items, lengths, top_k=5, exclude_history=False)
    torch.testing.assert_close(top.scores, scores.topk(5).values)
    assert not torch.allclose(scores, rec(paper)(items, lengths).scores)
    assert tiny_model(NUM_ITEMS, learned_id_weight=True).item_fusion.id_weight is None  # inductive: no ids, no share


def test_the_share_trains_saves_and_travels_with_an_adapter(tmp_path):
    base = tiny_model(NUM_ITEMS, id_mode="transductive")
    base.save_pretrained(tmp_path / "base")
    tuned = MISSRecModel.from_pretrained(tmp_path / "base")
    tuned.add_learned_id_weight()
    with pytest.raises(ValueError, match="already learns"):
        tuned.add_learned_id_weight()
    tuned.discover_interests()
    adapted = fine_tune_lora_adapter(tuned, tmp_path / "adapter", NUM_ITEMS, lr=0.05)
    share = adapted.get_base_model().item_fusion.id_share()
    assert not torch.allclose(share, torch.tensor([1 / 3]))  # trained (it is saved whole with the adapter)
    loaded = load_missrec_adapter(str(tmp_path / "base"), tmp_path / "adapter")
    torch.testing.assert_close(loaded.get_base_model().item_fusion.id_share(), share)
    items, lengths = random_histories(4, 6, NUM_ITEMS, seed=1)
    torch.testing.assert_close(rec(loaded)(items, lengths).scores, rec(adapted)(items, lengths).scores)
