"""Transformer blocks of MISSRec, written with separate q/k/v/o projections.

torch's `nn.Transformer*` layers are avoided on purpose: their fused eval fast path ignores unmerged LoRA
weights and their packed `in_proj_weight` cannot be targeted by PEFT. Every projection here is a plain
`nn.Linear`, so LoRA can target `q_proj`, `k_proj`, `v_proj`, `o_proj`, `fc1` and `fc2`.
All blocks are post-LayerNorm, as in the paper's (torch default) Transformer.

Also here, shared by MISSRec and the SASRec baseline: validation and truncation of left-aligned histories.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN

from .configuration_missrec import MISSRecConfig
from .scoring_missrec import pair_fusion, present_mean, stand_in_for_absent, text_share


def init_standard_weights(module: nn.Module, std: float) -> None:
    """BERT-style init: normal(0, std) Linear/Embedding weights (zero padding row), zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            init.zeros_(module.weight[module.padding_idx])
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)


def first_values(values: torch.Tensor, limit: int = 5) -> list:
    """The first `limit` entries of `values` as a list, for error messages."""
    return values.flatten()[:limit].tolist()


def validate_history(
    item_seq: torch.Tensor, lengths: torch.Tensor | None, num_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a batch of left-aligned histories and return it as `(item_seq [B, L] long, lengths [B] long)`.

    Raises a `ValueError` naming the offending value for: a non-integer or non-2-D `item_seq`, item ids
    outside `[0, num_items]`, `lengths` of the wrong shape or range, lengths that disagree with the padding
    (histories are left-aligned, 0 = padding after the last item), and rows that hold only padding.

    Args:
        item_seq: `[B, L]` integer item ids, most recent last.
        lengths: `[B]` items per row, or None to count them.
        num_items: catalogue size; valid ids are `1..num_items`.
    """
    if item_seq.ndim != 2 or item_seq.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"item_seq must be an integer [B, L] tensor, got {item_seq.dtype} {tuple(item_seq.shape)}")
    item_seq = item_seq.long()
    # Each check is one reduction on the happy path; the offending values are looked up only to name them.
    out_of_range = (item_seq < 0) | (item_seq > num_items)
    if out_of_range.any():
        raise ValueError(
            f"item ids {first_values(item_seq[out_of_range])} are outside the catalogue [1, {num_items}] (0 = padding)"
        )
    nonzero = item_seq != 0
    positions = torch.arange(item_seq.shape[1], device=item_seq.device)
    if lengths is None:
        lengths = nonzero.sum(1)
    else:
        lengths = torch.as_tensor(lengths, device=item_seq.device).long()
        if lengths.shape != item_seq.shape[:1]:
            raise ValueError(f"lengths has shape {tuple(lengths.shape)}; expected ({item_seq.shape[0]},)")
        outside = (lengths < 0) | (lengths > item_seq.shape[1])
        if outside.any():
            raise ValueError(
                f"lengths {first_values(lengths[outside])} are outside [0, {item_seq.shape[1]}] (the padded width)"
            )
    misaligned = ((positions < lengths[:, None]) != nonzero).any(1)
    if misaligned.any():
        row = misaligned.nonzero()[0, 0]
        raise ValueError(
            f"row {int(row)}: length {int(lengths[row])} disagrees with the padded history "
            f"{item_seq[row].tolist()} (histories are left-aligned, 0 = padding after the last item)"
        )
    empty = lengths == 0
    if empty.any():
        raise ValueError(
            f"rows {first_values(empty.nonzero())} hold only padding: every history needs at least one item"
        )
    return item_seq, lengths


def validate_labels(labels: torch.Tensor, batch: int, num_items: int) -> torch.Tensor:
    """Check next-item `labels`: an integer tensor `[batch]` of catalogue ids `1..num_items` (`ValueError` naming
    the first bad ones). Returns them as long."""
    labels = torch.as_tensor(labels)
    if labels.shape != (batch,) or labels.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"labels must be an integer tensor of shape ({batch},), got {labels.dtype} {tuple(labels.shape)}"
        )
    bad = labels[(labels < 1) | (labels > num_items)]
    if bad.numel():
        raise ValueError(f"labels {first_values(bad)} are outside the catalogue [1, {num_items}]")
    return labels.long()


def catalogue_cross_entropy(
    scores: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0, excluded: torch.Tensor | None = None
) -> torch.Tensor:
    """The softmax cross-entropy of next-item `labels` over the catalogue, padding column left out.

    Args:
        scores: `[B, num_items + 1]` logits, column = item id (column 0, the padding, is never a class).
        labels: `[B]` long target item ids in `1..num_items`.
        label_smoothing: ε in [0, 1): the target keeps 1 - ε, the rest is spread evenly over the classes.
        excluded: optional `[B, num_items + 1]` bool, True at items that are not classes of that row (the history
            other than the target, [`history_mask`]: "train as you serve"); they get no probability mass and no
            smoothed mass. The target must not be excluded.

    Returns:
        `()` the mean loss. Without `excluded` it equals `F.cross_entropy(scores[:, 1:], labels - 1,
        label_smoothing=label_smoothing)`.
    """
    if excluded is None:
        return F.cross_entropy(scores[:, 1:], labels - 1, label_smoothing=label_smoothing)
    classes = ~excluded
    classes[:, 0] = False
    return _cross_entropy_over(scores, labels, classes, label_smoothing)


def _cross_entropy_over(
    logits: torch.Tensor, targets: torch.Tensor, classes: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Mean cross-entropy of `targets` `[B]` over the columns `classes` `[B, C]` (bool) of `logits` `[B, C]` only;
    smoothed mass is spread over those classes."""
    log_probs = logits.masked_fill(~classes, float("-inf")).log_softmax(1)
    loss = -log_probs.gather(1, targets[:, None]).squeeze(1)
    if label_smoothing:
        uniform = -log_probs.masked_fill(~classes, 0.0).sum(1) / classes.sum(1)
        loss = (1 - label_smoothing) * loss + label_smoothing * uniform
    return loss.mean()


def validate_candidates(candidate_ids: torch.Tensor, log_q: torch.Tensor, num_items: int) -> None:
    """Check the candidates of a sampled softmax: `[C]` sorted distinct ids in `1..num_items`, `log_q` `[C]`."""
    if candidate_ids.ndim != 1 or not len(candidate_ids) or log_q.shape != candidate_ids.shape:
        raise ValueError(
            f"candidate_ids {tuple(candidate_ids.shape)} and candidate_log_q {tuple(log_q.shape)} must be [C], [C]"
        )
    if (
        not bool((candidate_ids[1:] > candidate_ids[:-1]).all())
        or candidate_ids[0] < 1
        or candidate_ids[-1] > num_items
    ):
        raise ValueError(f"candidate_ids must be sorted distinct item ids in 1..{num_items}")


def sampled_cross_entropy(
    logits: torch.Tensor,
    target_columns: torch.Tensor,
    log_q: torch.Tensor,
    label_smoothing: float = 0.0,
    excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """The sampled softmax cross-entropy with the logQ correction (Yi et al., RecSys 2019): each candidate's
    logit is lowered by the log of how often the sampler proposes it, so popular candidates, which appear as
    negatives more often than the catalogue softmax would weigh them, are not over-penalised.

    Args:
        logits: `[B, C]` logits of the candidates shared by the batch.
        target_columns: `[B]` long, each row's target among the candidates.
        log_q: `[C]` log of each candidate's expected count in a batch's candidate set (a constant gives the
            uncorrected softmax over the candidates).
        label_smoothing, excluded: as in [`catalogue_cross_entropy`] (`excluded` `[B, C]`; the target must not be
            excluded).

    Returns:
        `()` the mean loss. With every catalogue item a candidate exactly once (`log_q` constant), it equals
        [`catalogue_cross_entropy`] on the same logits.
    """
    corrected = logits - log_q.to(logits.dtype)
    if excluded is None:
        return F.cross_entropy(corrected, target_columns, label_smoothing=label_smoothing)
    return _cross_entropy_over(corrected, target_columns, ~excluded, label_smoothing)


def keep_most_recent(
    item_seq: torch.Tensor, lengths: torch.Tensor, max_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Keep the `max_len` most recent items of validated left-aligned histories.

    Args:
        item_seq: `[B, L]` long; lengths: `[B]` long (from [`validate_history`]).
        max_len: the longest history the model reads.

    Returns:
        `(item_seq [B, min(L, max_len)], lengths [B], index)`: `index` `[B, max_len]` holds the kept columns
        (to gather per-position side inputs the same way), or is None when nothing was cut.
    """
    if item_seq.shape[1] <= max_len:
        return item_seq, lengths, None
    positions = torch.arange(max_len, device=item_seq.device)
    start = (lengths - max_len).clamp_min(0)
    index = (start[:, None] + positions).clamp_max(item_seq.shape[1] - 1)
    lengths = lengths.clamp_max(max_len)
    keep = positions < lengths[:, None]
    return item_seq.gather(1, index) * keep, lengths, index


def join_buckets(parts: list[torch.Tensor]) -> torch.Tensor:
    """The packed `[T_bucket, ...]` results of consecutive buckets as one `[T, ...]` tensor (no copy for one bucket)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def unpack(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scatter packed tokens `[T, d]` (the True positions of `mask` `[B, S]`, row-major) to `[B, S, d]`."""
    return tokens.new_zeros(*mask.shape, tokens.shape[-1]).index_put((mask,), tokens)


class PackedLayout:
    """Where the packed tokens of a `[B, S]` mask sit, split into row buckets for attention.

    Tokens travel packed (`[T, d]`, the True positions of `mask` in row-major order), so per-token layers
    never touch padding. Attention needs a padded layout; it is built per bucket of consecutive rows, each
    padded only to its own widest row. With rows sorted by length this keeps padding small. A bucket with no
    padding at all (a single history, or rows of equal length) is a view of the packed tokens: no copies.

    Args:
        mask: `[B, S]` bool, True = real token.
        row_splits: bucket boundaries `[0, b1, ..., B]`.
        lengths: for a left-aligned mask (row `b` True in exactly its first `lengths[b]` columns), those lengths,
            when the caller has them: they are then not recomputed from the mask.
    """

    def __init__(self, mask: torch.Tensor, row_splits: list[int], lengths: list[int] | None = None):
        self.mask = mask
        if lengths is not None:
            widths = counts = lengths
        else:
            columns = torch.arange(1, mask.shape[1] + 1, device=mask.device)
            # One host transfer for the per-row width (last real column + 1) and token count: bucket bounds are
            # then plain Python, which costs less than a tensor op per bucket (it matters for single requests).
            widths, counts = torch.stack([(columns * mask).amax(1), mask.sum(1)]).tolist()
        self.buckets = []
        t0 = 0
        for a, b in zip(row_splits[:-1], row_splits[1:]):
            width, t1 = max(widths[a:b]), t0 + sum(counts[a:b])
            bucket_mask = mask[a:b, :width]
            # Flat positions of the real tokens in the bucket's [b * w] grid: index_copy / index_select with
            # them is cheaper than boolean indexing, which searches the mask again on every call.
            dense = t1 - t0 == (b - a) * width
            flat = None if dense else bucket_mask.flatten().nonzero().flatten()
            self.buckets.append((t0, t1, bucket_mask, flat))
            t0 = t1
        self.full = t0 == mask.numel()  # no padding at all (e.g. one history): packing is a reshape

    def pack(self, values: torch.Tensor) -> torch.Tensor:
        """The real positions of `values` `[B, S, ...]`, packed: `[T, ...]`."""
        return values.flatten(0, 1) if self.full else values[self.mask]

    def positions(self) -> torch.Tensor:
        """`[B, S]` long: the packed row of every position (meaningless at padding)."""
        if self.full:
            return torch.arange(self.mask.numel(), device=self.mask.device).view(self.mask.shape)
        return self.mask.flatten().cumsum(0).view(self.mask.shape) - 1

    def row_means(self, tokens: torch.Tensor) -> torch.Tensor:
        """The mean of every row's packed tokens `[T, d]`: `[B, d]`."""
        if self.full:  # (one token per row: the tokens are the means, a mean over size 1 is a kernel call)
            return tokens if self.mask.shape[1] == 1 else tokens.view(*self.mask.shape, -1).mean(1)
        # A row's tokens are consecutive in the packed order: summing them by row index touches `[T, d]` only
        # (unpacking to `[B, S, d]` first filled and copied the padding too, forward and backward).
        counts = self.mask.sum(1)
        rows = torch.repeat_interleave(torch.arange(len(counts), device=tokens.device), counts)
        sums = tokens.new_zeros(len(counts), tokens.shape[-1]).index_add(0, rows, tokens)
        return sums / counts.unsqueeze(1).to(tokens.dtype)

    def is_dense(self, bucket: int) -> bool:
        """Whether bucket `bucket` has no padding (its attention needs no mask)."""
        return self.buckets[bucket][3] is None

    def padded(self, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Packed `tokens` `[T, d]` as one `[b, w, d]` tensor per bucket, each with its mask `[b, w]`.

        The tokens are split once: a slice per bucket would give each slice's backward a zero `[T, d]`
        gradient to fill and add up, once per bucket.
        """
        parts = tokens.split([t1 - t0 for t0, t1, _, _ in self.buckets]) if len(self.buckets) > 1 else [tokens]
        out = []
        for part, (_, _, mask, flat) in zip(parts, self.buckets):
            if flat is not None:
                part = part.new_zeros(mask.numel(), part.shape[-1]).index_copy_(0, flat, part)
            out.append((part.view(*mask.shape, -1), mask))
        return out

    def packed(self, padded: torch.Tensor, bucket: int) -> torch.Tensor:
        """Inverse of [`padded`]: the real tokens `[T_bucket, d]` of a `[b, w, d]` bucket tensor."""
        flat = self.buckets[bucket][3]
        padded = padded.reshape(-1, padded.shape[-1])
        return padded if flat is None else padded.index_select(0, flat)


# ------------------------------------------------------------------ the token layouts of a batch of histories
def longest_first(lengths: torch.Tensor) -> torch.Tensor | None:
    """`[B]` the row order that puts the longest histories first (stable), so attention buckets of consecutive
    rows hold histories of similar lengths and little padding; None for a single row (nothing to order)."""
    return lengths.argsort(descending=True, stable=True) if len(lengths) > 1 else None


def row_buckets(batch: int, rows_per_bucket: int = 64) -> list[int]:
    """Bucket boundaries `[0, b1, ..., B]` of a batch for [`PackedLayout`]: up to 8 buckets of about
    `rows_per_bucket` rows (each padded to its own widest row)."""
    num_buckets = max(1, min(8, batch // rows_per_bucket))
    return [round(i * batch / num_buckets) for i in range(num_buckets + 1)]


def modality_tokens(
    per_modality: list[torch.Tensor], present: torch.Tensor, item_layout: PackedLayout, row_splits: list[int]
) -> tuple[torch.Tensor, PackedLayout, torch.Tensor]:
    """The tokens of contextual sequence fusion: one per (history item, present modality), row `b` holding
    `(m, l)` in modality-major order, packed.

    Args:
        per_modality: `M` tensors `[Tv, d]`: modality `m`'s token of every packed history item of `item_layout`.
        present: `[B, M, L]` bool, modality `m` of item `(b, l)` is present (False at padding).
        item_layout: the packed layout of the history items (`[B, L]`).
        row_splits: bucket boundaries (see [`row_buckets`]).

    Returns:
        `(tokens [T, d], layout over [B, M * L], token_mask [B, M * L])`. A history item with no modality keeps
        its first modality's (position-only) token, so it still counts.
    """
    token_mask = present.clone()
    token_mask[:, 0] |= item_layout.mask & ~present.any(1)
    token_mask = token_mask.flatten(1)
    layout = PackedLayout(token_mask, row_splits)
    # Token (b, m, l) is row m * Tv + (packed row of item (b, l)) of the stacked per-modality tokens.
    offsets = len(per_modality[0]) * torch.arange(len(per_modality), device=token_mask.device)
    source = (item_layout.positions()[:, None] + offsets[:, None]).flatten(1)  # [B, M * L]
    return F.embedding(layout.pack(source), torch.cat(per_modality)), layout, token_mask


def interest_memory_layout(
    interest_ids: torch.Tensor, counts: list[int], row_splits: list[int]
) -> tuple[PackedLayout, torch.Tensor]:
    """The layout of every history's interest tokens and their centroid ids, packed.

    Args:
        interest_ids: `[B, S]` left-aligned interest ids of each history, 0 = padding (from `interest_tokens`).
        counts: the number of interest tokens of each history.
        row_splits: bucket boundaries (see [`row_buckets`]).

    Returns:
        `(layout over [B, S], rows [Tm])`. A history with no interest token reads the all-zero padding centroid
        (row 0) instead of nothing.
    """
    mask = interest_ids != 0
    mask[:, 0] |= ~mask.any(1)
    layout = PackedLayout(mask, row_splits, [max(count, 1) for count in counts])
    return layout, layout.pack(interest_ids)


def last_item_queries(
    hidden: torch.Tensor,
    layout: PackedLayout,
    token_mask: torch.Tensor,
    output_index: torch.Tensor,
    row_splits: list[int],
    query_lengths: list[int] | None,
) -> tuple[torch.Tensor, PackedLayout]:
    """The tokens of every history's last item, as the queries of the last decoder layer (only they form the
    output, so that layer computes just them).

    Args:
        hidden: packed `[T, d]` tokens of `layout`; token_mask: `[B, S]` its mask.
        output_index: `[B, Q]` the columns of the last item's tokens (one per modality for contextual fusion).
        row_splits: bucket boundaries; query_lengths: `[B]` queries per row when every row's are all real.

    Returns:
        `(queries [Tq, d], their layout over [B, Q])`.
    """
    query_layout = PackedLayout(token_mask.gather(1, output_index), row_splits, query_lengths)
    return hidden[query_layout.pack(layout.positions().gather(1, output_index))], query_layout


class MISSRecDropout(nn.Module):
    """Inverted dropout whose keep mask is drawn 16 bits per element: one 64-bit random number serves four
    elements. On CPUs random numbers are the cost of dropout (the model's dropout, 0.5 on every sublayer, was a
    tenth of a training step); this draws them about 3x faster than `torch.rand` and 6x faster than
    `bernoulli_`. Elements are kept with probability `1 - p` rounded to a multiple of 2^-16 (exact for p = 0.5).
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability {p} must be in [0, 1)")
        self.p = p
        # A uniform int16 is >= this threshold with probability (32768 - threshold) / 65536 = 1 - p.
        self.threshold = round(p * 65536) - 32768

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., d]` -> `[..., d]`, unchanged in eval mode or with `p = 0`."""
        if not self.training or self.p == 0:
            return x
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
        keep = words.view(torch.int16)[: x.numel()].view(x.shape) >= self.threshold
        return x * keep.to(x.dtype).mul_(1 / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MISSRecAttention(nn.Module):
    """Multi-head attention on packed tokens, computed per row bucket.

    Projections run on packed tokens only (padding costs nothing there); just the attention itself sees a
    padded layout, bucket by bucket (see [`PackedLayout`]). Two exact ways to attend:

    - projected keys (`F.scaled_dot_product_attention`): `k_proj` and `v_proj` run on every key token;
    - folded keys, when the queries are few (in practice the decoder's last layer: one query per history, or one
      per modality token with `contextual` fusion, over all its tokens and interests): with `W_k,h`, `W_v,h` head
      h's rows of the projections, `q_h . (W_k,h m + b_k,h) = (q_h W_k,h) . m + q_h . b_k,h` and
      `sum_j a_j (W_v,h m_j + b_v,h) = W_v,h (sum_j a_j m_j) + (sum_j a_j) b_v,h`, so the projections move to the
      query side: a few rows per history instead of every key token (5-10x fewer matrix-product FLOPs there). It
      reads the projection weights directly, so it is used only when `k_proj` and `v_proj` are plain `nn.Linear`
      modules without forward hooks (a PEFT LoRA layer adds its update in its own forward; pruning and Accelerate
      offloading set the weight in a hook).
    """

    def __init__(self, config: MISSRecConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.attention_dropout = MISSRecDropout(config.attention_probs_dropout_prob)  # (both paths read its `p`)
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def project_table(
        self, queries: torch.Tensor, keys: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(q_proj(queries), k_proj(keys), v_proj(keys))`, each `[T, d]`; `keys` defaults to `queries`."""
        keys = queries if keys is None else keys
        return self.q_proj(queries), self.k_proj(keys), self.v_proj(keys)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

    @staticmethod
    def _is_plain(projection: nn.Module) -> bool:
        hooked = projection._forward_hooks or projection._forward_pre_hooks or hasattr(projection, "_hf_hook")
        return type(projection) is nn.Linear and not hooked

    def folds_keys(self, num_queries: int, num_keys: int, num_rows: int) -> bool:
        """Whether attention of `num_queries` over `num_keys` tokens of `num_rows` histories takes the folded-keys
        path (see the class): when the projections are plain and it costs fewer multiply-adds. Projected:
        `2 Tk d^2` for the keys and values plus `2 Tq w d` for the scores and contexts (`w = Tk / rows` keys per
        query); folded: `2 Tq d^2` plus `2 Tq w d H` (the products with the keys run in `d`, not `d / H`, per head)."""
        d = self.num_heads * self.head_dim
        keys_per_row = num_keys / max(num_rows, 1)
        cheaper = num_queries * (d + (self.num_heads - 1) * keys_per_row) < num_keys * d
        return cheaper and self._is_plain(self.k_proj) and self._is_plain(self.v_proj)

    def _attend_folded(
        self, queries: torch.Tensor, query_layout: PackedLayout, keys: torch.Tensor, key_layout: PackedLayout
    ) -> torch.Tensor:
        """Attention of packed `queries` `[Tq, d]` over raw packed `keys` `[Tk, d]` with the key and value
        projections folded into the query side (see the class). Returns `[Tq, d]`, before `o_proj`.

        The per-query products run once on all packed queries; only the products with the keys go per bucket.
        """
        heads, head_dim, d = self.num_heads, self.head_dim, keys.shape[-1]
        q = self.q_proj(queries).view(-1, heads, head_dim).transpose(0, 1)  # [H, Tq, e]
        folded = torch.bmm(q, self.k_proj.weight.view(heads, head_dim, d))  # [H, Tq, d]: q_h W_k,h
        # q_h . b_k,h is the same for every key of a query (softmax ignores it); kept so that b_k stays in the
        # graph with its (zero) gradient, as in the projected path.
        shift = torch.bmm(q, self.k_proj.bias.view(heads, head_dim, 1))  # [H, Tq, 1]
        folded, shift = folded.transpose(0, 1).reshape(-1, heads * d), shift.transpose(0, 1).reshape(-1, heads)
        scale = head_dim**-0.5
        dropped = self.training and self.attention_dropout.p > 0
        contexts, kept = [], []
        buckets = zip(query_layout.padded(folded), query_layout.padded(shift), key_layout.padded(keys))
        for bucket, ((f, _), (s, _), (k, k_mask)) in enumerate(buckets):
            b, wq = f.shape[:2]  # rows of the scores: (query, head) pairs
            scores = torch.baddbmm(
                s.reshape(b, wq * heads, 1), f.view(b, wq * heads, d), k.transpose(1, 2), beta=scale, alpha=scale
            )
            if not key_layout.is_dense(bucket):
                scores = scores.masked_fill(~k_mask[:, None, :], float("-inf"))
            weights = self.attention_dropout(torch.softmax(scores, dim=-1))  # [b, wq * H, wk]
            context = torch.bmm(weights, k)  # [b, wq * H, d]: sum_j a_j m_j
            contexts.append(query_layout.packed(context.view(b, wq, heads * d), bucket))
            if dropped:
                kept.append(query_layout.packed(weights.sum(-1).view(b, wq, heads), bucket))
        context = join_buckets(contexts)  # [Tq, H * d]
        value_weight = self.v_proj.weight.view(heads, head_dim, d)
        out = torch.bmm(context.view(-1, heads, d).transpose(0, 1), value_weight.transpose(1, 2))  # [H, Tq, e]
        value_bias = self.v_proj.bias.view(heads, 1, head_dim)
        if dropped:  # sum_j a_j is 1 without dropout; with it, the bias is weighted like the values it rides on
            value_bias = join_buckets(kept).T[..., None] * value_bias
        return (out + value_bias).transpose(0, 1).reshape(-1, heads * head_dim)

    def forward(
        self,
        queries: torch.Tensor,
        query_layout: PackedLayout,
        keys: torch.Tensor,
        key_layout: PackedLayout,
        rows: torch.Tensor | None = None,
        projected: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """
        Args:
            queries: `[Tq, d]` packed query tokens laid out by `query_layout`.
            keys: `[Tk, d]` packed key/value tokens laid out by `key_layout` (same rows and buckets); every
                row needs at least one key.
            rows: `[T]`, for self-attention over tokens that are rows of a table: `queries` and `keys` are then
                that table `[R, d]` and token `t` is its row `rows[t]`. The projections run once per table row
                and are gathered (with `F.embedding`, whose backward is deterministic): cheaper when R < T.
            projected: with `rows`, the table's projections `(q_proj(table), k_proj(table), v_proj(table))`,
                each `[R, d]`, computed earlier (see [`project_table`]); they are then not recomputed.

        Returns:
            `[Tq, d]`.
        """
        if rows is None and self.folds_keys(len(queries), len(keys), key_layout.mask.shape[0]):
            return self.o_proj(self._attend_folded(queries, query_layout, keys, key_layout))
        q_all, k_all, v_all = self.project_table(queries, keys) if projected is None else projected
        if rows is not None:
            q_all, k_all, v_all = (F.embedding(rows, table) for table in (q_all, k_all, v_all))
        return self.o_proj(self._attend_projected(q_all, k_all, v_all, query_layout, key_layout))

    def _attend_projected(
        self,
        q_all: torch.Tensor,
        k_all: torch.Tensor,
        v_all: torch.Tensor,
        query_layout: PackedLayout,
        key_layout: PackedLayout,
        causal: bool = False,
    ) -> torch.Tensor:
        """Attention of projected packed queries `[Tq, d]` over projected packed keys and values `[Tk, d]`, bucket
        by bucket (`F.scaled_dot_product_attention`). Returns `[Tq, d]`, before `o_proj`.

        `causal`: the queries are the keys (one layout), each attending to the positions up to its own. Rows are
        left-aligned, so the causal mask alone keeps every real position away from padding (only ever after it).
        """
        outputs = []
        buckets = zip(query_layout.padded(q_all), key_layout.padded(k_all), key_layout.padded(v_all))
        for bucket, ((q, _), (k, k_mask), (v, _)) in enumerate(buckets):
            out = F.scaled_dot_product_attention(
                self._heads(q),
                self._heads(k),
                self._heads(v),
                attn_mask=None if causal or key_layout.is_dense(bucket) else k_mask[:, None, None, :],
                dropout_p=self.attention_dropout.p if self.training else 0.0,
                is_causal=causal,
            )
            outputs.append(query_layout.packed(out.transpose(1, 2).flatten(2), bucket))
        return join_buckets(outputs)


class MISSRecFeedForward(nn.Module):
    """Position-wise feed-forward: `fc2(dropout(act(fc1(x))))`."""

    def __init__(self, config: MISSRecConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.dropout = MISSRecDropout(config.hidden_dropout_prob)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[T, d]` -> `[T, d]`."""
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class MISSRecSublayer(nn.Module):
    """Residual wrapper `LayerNorm(x + dropout(f(x, ...)))` around one attention or feed-forward block."""

    def __init__(self, config: MISSRecConfig, block: nn.Module):
        super().__init__()
        self.block = block
        self.dropout = MISSRecDropout(config.hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        *args: torch.Tensor,
        rows: torch.Tensor | None = None,
        projected: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`x` `[T, d]` packed tokens and the block's extra inputs -> `[T, d]`.

        With `rows` `[T]` (attention blocks only), `x` is a table `[R, d]` whose row `rows[t]` is token `t`, and
        `projected` optionally holds the table's precomputed q/k/v projections.
        """
        if rows is None:
            return self.LayerNorm(x + self.dropout(self.block(x, *args)))
        update = self.block(x, *args, rows=rows, projected=projected)
        return self.LayerNorm(F.embedding(rows, x) + self.dropout(update))


class MISSRecEncoderLayer(nn.Module):
    """Self-attention over the interest tokens, then feed-forward."""

    def __init__(self, config: MISSRecConfig):
        super().__init__()
        self.self_attention = MISSRecSublayer(config, MISSRecAttention(config))
        self.feed_forward = MISSRecSublayer(config, MISSRecFeedForward(config))

    def forward(
        self,
        x: torch.Tensor,
        layout: PackedLayout,
        rows: torch.Tensor | None = None,
        projected: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`x` `[T, d]` packed interest tokens laid out by `layout` -> `[T, d]`.

        With `rows` `[T]`, `x` is the centroid table `[K + 1, d]` and token `t` is centroid `rows[t]`: the first
        layer then projects each centroid once instead of once per history that holds it. `projected` holds
        those projections when they were computed earlier (serving: they change only with the weights).
        """
        return self.feed_forward(self.self_attention(x, layout, x, layout, rows=rows, projected=projected))


class MISSRecDecoderLayer(nn.Module):
    """Self-attention over the history (not causal), cross-attention to the interest memory, feed-forward."""

    def __init__(self, config: MISSRecConfig):
        super().__init__()
        self.self_attention = MISSRecSublayer(config, MISSRecAttention(config))
        self.cross_attention = MISSRecSublayer(config, MISSRecAttention(config))
        self.feed_forward = MISSRecSublayer(config, MISSRecFeedForward(config))

    def forward(
        self,
        x: torch.Tensor,
        layout: PackedLayout,
        memory: torch.Tensor,
        memory_layout: PackedLayout,
        queries: tuple[torch.Tensor, PackedLayout] | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x: `[T, d]` packed history tokens laid out by `layout`.
            memory: `[Tm, d]` packed interest tokens laid out by `memory_layout`.
            queries: `(tokens [Tq, d], layout)`, a subset of `x` whose outputs are wanted (default: all of
                `x`). A position's output depends on the others only through attention, so this is exact.

        Returns:
            `[Tq, d]` (`Tq = T` without `queries`).
        """
        q, q_layout = (x, layout) if queries is None else queries
        h = self.self_attention(q, q_layout, x, layout)
        h = self.cross_attention(h, q_layout, memory, memory_layout)
        return self.feed_forward(h)


class MISSRecItemFusion(nn.Module):
    """Fuses per-modality candidate logits into one item logit (the dynamic item fusion of the paper).

    `static`: mean over the item's present modalities ([`present_mean`]). `dynamic_shared` / `dynamic_instance`:
    `sum_m s_m * softmax_m(s_m * w)` over present modalities, with one learned `w` shared by all items or
    one per item ([`pair_fusion`]: the two-way softmax as a sigmoid). Absent modalities get weight 0; an item with no
    modality at all scores 0. The rules live in `scoring_missrec`, which the serving index applies too.
    """

    def __init__(self, config: MISSRecConfig):
        super().__init__()
        # With one modality every mode reduces to its logit, so there is nothing to learn.
        self.mode = config.item_mm_fusion if len(config.modality_names) > 1 else "static"
        if self.mode == "dynamic_shared":
            self.weight = nn.Parameter(torch.zeros(1))
        elif self.mode == "dynamic_instance":
            self.weight = nn.Parameter(torch.zeros(config.num_items + 1))
        else:
            self.register_parameter("weight", None)
        # The learned share of the item-id logit (`config.learned_id_weight`), as a logit; only ids have one.
        learned = config.learned_id_weight and config.id_mode == "transductive"
        self.id_weight = nn.Parameter(torch.zeros(1)) if learned else None

    def id_share(self) -> torch.Tensor | None:
        """`[1]` the share of the item-id logit in a transductive score ([`join_id_scores`]), or None for the
        paper's fixed 1/3."""
        return None if self.id_weight is None else torch.sigmoid(self.id_weight)

    def forward(
        self, modality_logits: torch.Tensor, present: torch.Tensor, item_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            modality_logits: `[M, B, C]` cosine logits of C candidates for M modalities (modality first, so each
                modality's logits are one contiguous `[B, C]` slice: several times faster to fuse than a last
                dimension of size M).
            present: `[M, C]` bool, whether the candidate has that modality.
            item_ids: `[C]` catalogue ids of the candidates (needed by `dynamic_instance`;
                None means all items `0..num_items` in order).

        Returns:
            `[B, C]` fused logits.
        """
        if self.mode == "static":
            return present_mean(modality_logits, present[:, None])
        w = self.weight if self.mode == "dynamic_shared" or item_ids is None else self.weight[item_ids]
        text, image = stand_in_for_absent(*modality_logits, *present[:, None])
        # An item with no modality at all scores 0 (there is nothing to fuse).
        return pair_fusion(text, image, w).masked_fill(~present.any(0), 0.0)

    def modality_weights(
        self, modality_logits: torch.Tensor, present: torch.Tensor, item_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """How much each modality counts in each fused logit: `[M, B, C]`, summing to 1 over the present
        modalities (0 for absent ones and for items with none), so that `forward` is `(weights * logits).sum(0)`.
        Arguments as [`forward`]; for explaining a ranking, not on the scoring path."""
        present = present[:, None].expand_as(modality_logits)
        if self.mode == "static":
            weights = present.to(modality_logits.dtype)
            return weights / weights.sum(0).clamp_min(1)
        w = self.weight if self.mode == "dynamic_shared" or item_ids is None else self.weight[item_ids]
        text = text_share(modality_logits[0] - modality_logits[1], w)
        text = torch.where(present[1], text, present[0].to(text.dtype))  # one modality: all its weight
        text = text.masked_fill(~present[0], 0.0)
        return torch.stack([text, (1 - text).masked_fill(~present[1], 0.0)])


class MISSRecRepeatBias(nn.Module):
    """A learned logit offset for recommending an item the history already holds, one per recency position
    (`weight[0]`: the most recent item; items older than `max_seq_length - 1` positions share the last entry).

    The paper scores a history's own items like any other candidate, and they score high (an item is close to the
    representation of a history it is in). Whether users take an item again is a property of the domain (rare in
    purchases, common in listening), so it is learned from the training targets rather than fixed: the offsets start
    at 0 (a fresh model scores as without them) and the cross-entropy moves them. An item that occurs several times
    gets the offset of its most recent occurrence.
    """

    def __init__(self, config: MISSRecConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(config.max_seq_length))

    def forward(
        self, item_seq: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            item_seq: `[B, L]` long, left-aligned histories (0 = padding, most recent last); L may exceed
                `max_seq_length`.
            lengths: `[B]` items per history (default: counted).

        Returns:
            `(rows [E], item_ids [E], offsets [E])`: one entry per distinct item of each history, for
            [`add_history_offsets`].
        """
        present = item_seq != 0
        if lengths is None:
            lengths = present.sum(1)
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        recency = (lengths[:, None] - 1 - positions).clamp(0, len(self.weight) - 1)
        later = positions[:, None] < positions[None, :]  # [L, L]: position j' comes after j
        seen_later = ((item_seq[:, :, None] == item_seq[:, None, :]) & later).any(-1)
        rows, cols = (present & ~seen_later).nonzero(as_tuple=True)
        return rows, item_seq[rows, cols], self.weight[recency[rows, cols]]


class MISSRecScoreTemperature(nn.Module):
    """The learned score temperature τ (`config.learn_score_temperature`): logits are cosines divided by it.

    Kept as `log(1 / τ)`, as CLIP keeps its logit scale, so that steps are relative, starting from
    `config.score_temperature`. τ is held at or above `MIN_TEMPERATURE` (CLIP's bound): a sharper softmax only
    memorises the training targets.
    """

    MIN_TEMPERATURE = 0.01

    def __init__(self, config: MISSRecConfig):
        super().__init__()
        self.log_inverse = nn.Parameter(torch.tensor(-math.log(config.score_temperature)))

    def forward(self) -> torch.Tensor:
        """`()`: the temperature τ."""
        return self.log_inverse.clamp(max=-math.log(self.MIN_TEMPERATURE)).neg().exp()
