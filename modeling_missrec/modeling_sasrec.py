"""SASRec (Kang & McAuley, ICDM 2018), the ID-only baseline, as a Hugging Face `PreTrainedModel`.

Follows RecBole's SASRec: item + learned position embeddings, LayerNorm, dropout, post-LayerNorm causal
self-attention layers (no dropout inside the feed-forward), the output at the last item of each history,
scores = that output · every item embedding, and the full-softmax cross-entropy ("CE") loss.
The attention and feed-forward blocks are MISSRec's (separate `q_proj/k_proj/v_proj/o_proj`, `fc1/fc2`
`nn.Linear`s), so PEFT can target the same module names in both models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_sasrec import SASRecConfig
from .layers_missrec import (
    MISSRecAttention,
    MISSRecFeedForward,
    MISSRecSublayer,
    PackedLayout,
    catalogue_cross_entropy,
    init_standard_weights,
    keep_most_recent,
    last_item_queries,
    longest_first,
    row_buckets,
    unpack,
    validate_history,
    validate_labels,
)
from .scoring_missrec import history_mask


@dataclass
class SASRecOutput(ModelOutput):
    """
    Output of [`SASRecModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Full-catalogue softmax cross-entropy of the next item.
        scores (`torch.FloatTensor` of shape `(batch_size, num_items + 1)`):
            Logits of every catalogue item (column = item id); column 0 (padding) is the dtype's minimum.
        sequence_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Output of the last Transformer layer at each history's last item (not normalised).
    """

    loss: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    sequence_embeddings: torch.FloatTensor | None = None


class SASRecAttention(MISSRecAttention):
    """Causal multi-head self-attention on packed history tokens, computed per row bucket (see [`PackedLayout`]).

    Histories are left-aligned, so in a bucket's padded layout the causal mask alone keeps every real position
    away from padding. A history's last position attends to all of its history, so when only those positions are
    wanted (`queries`: the last layer) their attention is MISSRec's unmasked one over the row, with no causal mask.
    """

    def forward(
        self,
        queries: torch.Tensor,
        query_layout: PackedLayout,
        keys: torch.Tensor,
        key_layout: PackedLayout,
    ) -> torch.Tensor:
        """`[Tq, d]` outputs of packed `queries` over packed `keys` `[Tk, d]` of the same rows.

        With `query_layout is key_layout` the queries are the keys (every position, causal); otherwise each row's
        queries are its last position alone.
        """
        if query_layout is not key_layout:
            return super().forward(queries, query_layout, keys, key_layout)
        projected = self.project_table(queries)
        return self.o_proj(self._attend_projected(*projected, key_layout, key_layout, causal=True))


class SASRecFeedForward(MISSRecFeedForward):
    """`fc2(act(fc1(x)))`: RecBole's SASRec has no dropout between the activation and `fc2`."""

    def __init__(self, config: SASRecConfig):
        super().__init__(config)
        self.dropout = nn.Identity()


class SASRecLayer(nn.Module):
    """Causal self-attention, then feed-forward, each as `LayerNorm(x + dropout(block(x)))`."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.self_attention = MISSRecSublayer(config, SASRecAttention(config))
        self.feed_forward = MISSRecSublayer(config, SASRecFeedForward(config))

    def forward(
        self, x: torch.Tensor, layout: PackedLayout, queries: tuple[torch.Tensor, PackedLayout] | None = None
    ) -> torch.Tensor:
        """`x` `[T, d]` packed history tokens laid out by `layout` -> `[Tq, d]`: every token's output, or with
        `queries` (`(tokens [B, d], layout)`: each row's last token, a subset of `x`) only theirs (exact: a
        position's output depends on the others only through attention)."""
        q, q_layout = (x, layout) if queries is None else queries
        return self.feed_forward(self.self_attention(q, q_layout, x, layout))


class SASRecPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading conventions of SASRec models (RecBole's initialisation)."""

    config_class = SASRecConfig
    base_model_prefix = "sasrec"
    main_input_name = "item_seq"
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        init_standard_weights(module, self.config.initializer_range)


class SASRecModel(SASRecPreTrainedModel):
    """
    SASRec: a causal Transformer over the item-id history; the output at the last item scores every item
    by a dot product with the (shared) item embedding table.

    Item ids are `1..config.num_items`; 0 is padding. Histories are left-aligned `[B, L]` tensors, most
    recent item last; histories longer than `config.max_seq_length` keep their most recent items.

    ```python
    model = SASRecModel(SASRecConfig(num_items=1585))
    out = model(item_seq, labels=targets)  # out.loss, out.scores [B, 1586]
    ```
    """

    def __init__(self, config: SASRecConfig):
        super().__init__(config)
        d = config.hidden_size
        self.item_embeddings = nn.Embedding(config.num_items + 1, d, padding_idx=0)
        self.position_embeddings = nn.Embedding(config.max_seq_length, d)
        self.LayerNorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(SASRecLayer(config) for _ in range(config.num_hidden_layers))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.item_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.item_embeddings = value

    # ------------------------------------------------------------------ sequence side
    def _prepare_history(
        self, item_seq: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.num_items == 0:
            raise ValueError("config.num_items is 0: SASRecConfig(num_items=...) must give the catalogue size")
        item_seq, lengths = validate_history(item_seq, lengths, self.config.num_items)
        item_seq, lengths, _ = keep_most_recent(item_seq, lengths, self.config.max_seq_length)
        return item_seq, lengths

    def _packed_tokens(
        self, item_seq: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, PackedLayout, torch.Tensor | None, torch.Tensor]:
        """The embedded history tokens, packed (no padding: most histories are far shorter than the longest of a
        batch, which a padded `[B, L, d]` grid would be sized by), rows longest first.

        Returns:
            `(tokens [T, d], layout over [B, L'], order [B] or None, lengths [B])`: row `i` of the layout is history
            `order[i]` (None: the input order), `lengths` in layout order.
        """
        item_seq, lengths = self._prepare_history(item_seq, lengths)
        order = longest_first(lengths)
        if order is not None:
            item_seq, lengths = item_seq[order], lengths[order]
        length_list = lengths.tolist()
        positions = torch.arange(length_list[0], device=item_seq.device)
        layout = PackedLayout(positions < lengths[:, None], row_buckets(len(lengths)), length_list)
        tokens = self.item_embeddings(layout.pack(item_seq[:, : length_list[0]]))
        tokens = tokens + self.position_embeddings(layout.pack(positions.expand(len(lengths), -1)))
        return self.dropout(self.LayerNorm(tokens)), layout, order, lengths

    def encode(self, item_seq: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs of the last Transformer layer at every position.

        Position `t` depends on the items at positions `0..t` only (causal). Columns past the longest
        history are dropped, and histories longer than `max_seq_length` keep their most recent items first.

        Args:
            item_seq: `[B, L]` long, left-aligned item ids, 0 = padding, most recent last.
            lengths: `[B]` items per history (default: counted from `item_seq`).

        Returns:
            `(hidden [B, L', hidden_size], lengths [B])` with `L' = max(lengths) <= max_seq_length`; `hidden`
            is 0 at padding positions.
        """
        tokens, layout, order, lengths = self._packed_tokens(item_seq, lengths)
        for layer in self.layers:
            tokens = layer(tokens, layout)
        hidden = unpack(tokens, layout.mask)
        if order is None:
            return hidden, lengths
        restore = order.argsort()
        return hidden[restore], lengths[restore]

    def embed_sequences(self, item_seq: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence representations: the last layer's output at each history's last item (the last layer computes
        only those positions).

        Args:
            item_seq: `[B, L]` long, left-aligned item ids, 0 = padding, most recent last.
            lengths: `[B]` items per history (default: counted from `item_seq`).

        Returns:
            `[B, hidden_size]`.
        """
        tokens, layout, order, lengths = self._packed_tokens(item_seq, lengths)
        for layer in self.layers[:-1]:
            tokens = layer(tokens, layout)
        batch = len(lengths)
        queries = last_item_queries(
            tokens, layout, layout.mask, (lengths - 1)[:, None], row_buckets(batch), [1] * batch
        )
        output = self.layers[-1](tokens, layout, queries=queries)
        return output if order is None else output[order.argsort()]

    # ------------------------------------------------------------------ item side
    def embed_items(self, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Item embeddings: `[C, hidden_size]` for `item_ids` `[C]`, or the whole table `[num_items + 1, d]`."""
        weight = self.item_embeddings.weight
        return weight if item_ids is None else weight[item_ids]

    def score_items(self, sequence_embeddings: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Dot-product logits of candidate items.

        Args:
            sequence_embeddings: `[B, d]` from [`embed_sequences`].
            item_ids: `[C]` candidate ids, or None for the whole catalogue.

        Returns:
            `[B, C]`, or `[B, num_items + 1]` (column = item id, column 0 set to the dtype's minimum).
        """
        logits = sequence_embeddings @ self.embed_items(item_ids).T
        if item_ids is None:
            logits[:, 0] = torch.finfo(logits.dtype).min
        return logits

    # ------------------------------------------------------------------ loss
    def cross_entropy_loss(
        self, scores: torch.Tensor, labels: torch.Tensor, item_seq: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Full-catalogue softmax cross-entropy (RecBole's `CE` loss); with `config.exclude_history_in_loss`, the
        items of `item_seq` other than the target are no classes.

        Args:
            scores: `[B, num_items + 1]` from [`score_items`]; labels: `[B]` target item ids in `1..num_items`;
            item_seq: `[B, L]` the histories (needed with `exclude_history_in_loss`).

        Returns:
            `()` loss.
        """
        labels = validate_labels(torch.as_tensor(labels, device=scores.device), len(scores), self.config.num_items)
        excluded = None
        if self.config.exclude_history_in_loss:
            excluded = history_mask(item_seq.to(scores.device), scores.shape[1], keep=labels)
        return catalogue_cross_entropy(scores, labels, excluded=excluded)

    def forward(
        self,
        item_seq: torch.Tensor,
        lengths: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> SASRecOutput | tuple:
        """
        Args:
            item_seq: `[B, L]` long, left-aligned histories (0 = padding, most recent last).
            lengths: `[B]` items per history (default: counted).
            labels: `[B]` next item ids. With them the output carries the loss.
            return_dict: return a `ModelOutput` (default) or a tuple.

        Returns:
            [`SASRecOutput`] with `scores` `[B, num_items + 1]` and `sequence_embeddings` `[B, hidden_size]`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        seq = self.embed_sequences(item_seq, lengths)
        scores = self.score_items(seq)
        loss = None if labels is None else self.cross_entropy_loss(scores, labels, item_seq)
        output = SASRecOutput(loss=loss, scores=scores, sequence_embeddings=seq)
        return output if return_dict else output.to_tuple()


SASRecConfig.register_for_auto_class()
SASRecModel.register_for_auto_class("AutoModel")
