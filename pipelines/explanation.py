"""What drove a MISSRec recommendation, as far as the model can say (for the demo page and for debugging).

For each recommended catalogue item of one history:
- `modality_weights`: how much each modality counted in the item's fused score (the item fusion's weights:
  `MISSRecItemFusion.modality_weights`);
- `driven_by`: the history item whose removal lowers the item's score most, and by how much (leave-one-out over
  the `max_seq_length` items the encoder reads: one batch of the history with each item left out);
- `shared_interests`: the interests (cluster ids) the item shares with the history, each with how many of the
  history's item-modalities fall in it (the interest tokens the encoder reads).

The scores are the model's own (`score_items`, the rule `recommend` ranks by).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch import nn

from ..modeling_missrec import unwrap_missrec


@torch.no_grad()
def explain_recommendations(model: nn.Module, history: Sequence[int], item_ids: Sequence[int]) -> list[dict]:
    """Explain the scores of catalogue items `item_ids` for one `history` (item ids, most recent last).

    Args:
        model: a MISSRec model (a base, a head, or a `PeftModel` of either).
        history: the history's catalogue item ids, most recent last.
        item_ids: catalogue item ids to explain (e.g. the top-k `recommend` returned).

    Returns:
        One dict per item of `item_ids`: `{"item_id", "score", "modality_weights": {modality: weight},
        "driven_by": {"item_id", "score_drop"} or None (a one-item history), "shared_interests": [{"interest",
        "history_tokens"}, ...]}`.
    """
    base = unwrap_missrec(model)
    if not history:
        raise ValueError("the history is empty: there is nothing to explain")
    num_items = base.config.num_items
    bad = [i for i in [*history, *item_ids] if not 1 <= int(i) <= num_items]
    if bad:
        raise ValueError(f"items {bad[:5]} are not catalogue item ids [1, {num_items}]")
    device = base.device
    read = list(history)[-base.config.max_seq_length :]  # what the encoder reads
    ids = torch.tensor(list(item_ids), dtype=torch.long, device=device)
    seq = base.embed_sequences(torch.tensor([read], device=device))
    scores = base.score_items(seq, ids)[0]

    items = base.embed_items(ids)
    logits = torch.stack([seq @ items[m].T for m in base.modality_names])  # [M, 1, C]
    weights = base.item_fusion.modality_weights(logits, base.item_presence(ids), ids)[:, 0]  # [M, C]

    drivers = None
    if len(read) > 1:
        # Row i: the history without its i-th item (left-aligned, padded with 0).
        without = torch.tensor([read[:i] + read[i + 1 :] + [0] for i in range(len(read))], device=device)
        lengths = torch.full((len(read),), len(read) - 1, device=device)
        drops = scores - base.score_items(base.embed_sequences(without, lengths), ids)  # [L, C]
        drivers = drops.max(0)

    history_interests = Counter()
    item_interests = []
    for m in base.modality_names:
        table = getattr(base, f"{m}_interest_ids")
        history_interests.update(i for i in table[torch.tensor(read, device=device)].tolist() if i)
        item_interests.append(table[ids].tolist())
    explained = []
    for c, item in enumerate(ids.tolist()):
        shared = sorted({row[c] for row in item_interests if row[c] in history_interests})
        explained.append(
            {
                "item_id": item,
                "score": float(scores[c]),
                "modality_weights": {m: float(weights[j, c]) for j, m in enumerate(base.modality_names)},
                "driven_by": None
                if drivers is None
                else {"item_id": read[int(drivers.indices[c])], "score_drop": float(drivers.values[c])},
                "shared_interests": [{"interest": i, "history_tokens": history_interests[i]} for i in shared],
            }
        )
    return explained
