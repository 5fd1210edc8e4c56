"""How MISSRec scores candidate items, and the exact top-k index that serves those scores fast.

One implementation of each scoring rule (the paper's dynamic item fusion; the repository's docs/design.md, "How
MISSRec is computed"), used by the model's training scores, by evaluation (which calls the model) and by serving
(the [`ItemIndex`] behind `recommend` and the pipeline):

- [`present_mean`]: static fusion, the mean over an item's present modalities. It is linear, so the same function
  fuses logits (training) and embeddings (the static index folds the fusion into one column per item);
- [`stand_in_for_absent`] + [`pair_fusion`]: dynamic fusion of the text and image logits, the softmax over the
  two gated logits written as `s_i + d * sigmoid(w d)` with `d = s_t - s_i`; an absent modality takes the present
  one's value, which gives the masked softmax's result;
- [`join_id_scores`]: `(s_id + 2 * fused) / 3` in transductive mode (linear too);
- [`static_item_embeddings`]: the two linear rules applied to the embeddings, so that one matmul gives the static
  fused scores (training and the index alike);
- [`add_history_offsets`]: the learned repeat offsets (`MISSRecRepeatBias`, `config.repeat_bias`) added to the
  logits of the items a history holds.

The index keeps the fused per-item embeddings of the whole catalogue as one `[d, N * P]` matrix (`P` columns per
item) and scores a batch with one matmul per chunk of items, the fusion and a running `topk`. The object a user
builds, holds and saves (exact or approximate) is `index_missrec.MISSRecItemIndex`, which wraps it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Scores of one chunk of items are at most this many floats (keeps the working set in cache, bounds memory).
_CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------------- the rules
def present_mean(values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Static fusion: the mean of `values` over the present modalities (0 where none is present).

    Args:
        values: `[M, ...]` per-modality logits or embeddings.
        present: bool, broadcastable to `values` (e.g. `[M, 1, C]` for logits `[M, B, C]`, `[M, C, 1]` for
            embeddings `[M, C, d]`).

    Returns:
        `values.shape[1:]`.
    """
    weights = present.to(values.dtype)
    return (values * weights).sum(0) / weights.sum(0).clamp_min(1)


def stand_in_for_absent(
    text: torch.Tensor, image: torch.Tensor, text_present: torch.Tensor, image_present: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Give an absent modality the present one's value, so [`pair_fusion`] returns the present one's logit (the
    masked softmax gives an absent modality weight 0). Works on logits and on embeddings alike.

    Args:
        text, image: per-modality values of the same shape; text_present, image_present: bool, broadcastable.
    """
    return torch.where(text_present, text, image), torch.where(image_present, image, text)


def pair_fusion(
    text: torch.Tensor,
    image: torch.Tensor,
    weight: torch.Tensor,
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Dynamic fusion of two modality logits: `softmax([w s_t, w s_i]) . [s_t, s_i] = s_i + d * sigmoid(w d)`.

    Args:
        text, image: `[B, C]` logits (absent modalities already stood in for, see [`stand_in_for_absent`]).
        weight: the learned gate, `[1]` (shared) or `[C]` (per item).
        out: two preallocated `[B * C]`-or-larger buffers; when given (serving, no gradient), the result is computed
            in place into the second one. At 1M items these elementwise passes are a third of the matmul's time,
            and fresh tensors would add allocation and page faults to every chunk.

    Returns:
        `[B, C]` fused logits.
    """
    if out is None:
        difference = text - image
        return image + difference * text_share(difference, weight)
    difference, fused = (buffer[: text.numel()].view(text.shape) for buffer in out)
    torch.sub(text, image, out=difference)
    if weight.numel() > 1:
        return torch.mul(difference, weight, out=fused).sigmoid_().mul_(difference).add_(image)
    w = float(weight)
    if w == 0.0:  # an untrained gate: the softmax is 1/2 each
        return torch.add(text, image, out=fused).mul_(0.5)
    # d * sigmoid(w d) = silu(w d) / w: one fused op instead of three
    F.silu(torch.mul(difference, w, out=fused), inplace=True)
    return torch.add(image, fused, alpha=1.0 / w, out=fused)


def text_share(difference: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The text modality's weight in [`pair_fusion`] (the image's is one minus it): `softmax([w s_t, w s_i])_t =
    sigmoid(w (s_t - s_i))`, from `difference = s_t - s_i`."""
    return torch.sigmoid(weight * difference)


def join_id_scores(
    id_scores: torch.Tensor, fused: torch.Tensor, *, id_share: torch.Tensor | None = None, in_place: bool = False
) -> torch.Tensor:
    """Transductive scores: the paper's `(s_id + 2 * fused) / 3`, or with a learned `id_share` `a` (`[1]`,
    `config.learned_id_weight`) `a * s_id + (1 - a) * fused`. Linear, so it joins embeddings as well as logits;
    `in_place` writes into `fused` (a serving buffer)."""
    if id_share is not None:
        return fused.lerp_(id_scores, id_share) if in_place else fused.lerp(id_scores, id_share)
    if in_place:
        return fused.mul_(2).add_(id_scores).div_(3)
    return (id_scores + 2 * fused) / 3


def static_item_embeddings(
    embeddings: dict[str, torch.Tensor],
    present: torch.Tensor,
    modalities: Sequence[str],
    id_share: torch.Tensor | None = None,
) -> torch.Tensor:
    """One embedding per item whose dot product with a sequence is that item's static fused score: [`present_mean`]
    over the present modalities, joined with the id embedding ([`join_id_scores`]) when there is one. Both rules
    are linear, so fusing embeddings once equals fusing every row's logits (one matmul scores a batch).

    Args:
        embeddings: `{modality: [C, d]}` normalised item embeddings (and `"id"`, transductive).
        present: `[M, C]` bool, in `modalities` order; id_share: as [`join_id_scores`].

    Returns:
        `[C, d]`.
    """
    mean = present_mean(torch.stack([embeddings[m] for m in modalities]), present[..., None])
    return join_id_scores(embeddings["id"], mean, id_share=id_share) if "id" in embeddings else mean


def history_items(item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The `(row, item id)` pairs of the items the histories `item_seq` `[B, L]` hold (padding, 0, left out): what
    "the history excluded" removes, the one rule for serving (these pairs), evaluation and the training softmax
    ([`history_mask`]). Each `[E]` long."""
    rows, positions = item_seq.nonzero(as_tuple=True)
    return rows, item_seq[rows, positions]


def candidate_columns(candidate_ids: torch.Tensor, item_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where `item_ids` (any shape) are among the sorted `candidate_ids` `[C]`: `(columns, is_candidate)`, both of
    `item_ids`' shape (a column is meaningless where `is_candidate` is False). A binary search, not a table of all
    items: a sampled softmax or an approximate index scores a few hundred of millions."""
    columns = torch.searchsorted(candidate_ids, item_ids).clamp_max(len(candidate_ids) - 1)
    return columns, candidate_ids[columns] == item_ids


def history_mask(
    item_seq: torch.Tensor,
    num_columns: int,
    keep: torch.Tensor | None = None,
    candidate_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """`[B, num_columns]` bool, True at the column of every item of each history `item_seq` `[B, L]`
    ([`history_items`]), except each row's `keep` column (`[B]`, the target: it is never excluded). A column is the
    item id, or with `candidate_ids` (`[C]` sorted, `num_columns = C`) the item's position among them (history items
    that are not candidates have no column)."""
    mask = torch.zeros(len(item_seq), num_columns, dtype=torch.bool, device=item_seq.device)
    rows, items = history_items(item_seq)
    if candidate_ids is not None:
        items, inside = candidate_columns(candidate_ids, items)
        rows, items = rows[inside], items[inside]
    mask[rows, items] = True
    if keep is not None:
        mask[torch.arange(len(item_seq), device=item_seq.device), keep] = False
    return mask


def add_history_offsets(
    scores: torch.Tensor, offsets: tuple[torch.Tensor, torch.Tensor, torch.Tensor], scale: float = 1.0
) -> torch.Tensor:
    """`scores` `[B, C]` with `scale * offsets[2]` added at the `(offsets[0], offsets[1])` (row, column) pairs, which
    must be distinct ([`MISSRecRepeatBias`] gives one pair per distinct history item); differentiable."""
    rows, columns, values = offsets
    return scores.index_put((rows, columns), (values * scale).to(scores.dtype), accumulate=True)


# ---------------------------------------------------------------------------------------------------- the index
class ItemIndex:
    """Fused item embeddings laid out for exact brute-force top-k scoring.

    Columns: `P` per item, item-major, in a `[d, N * P]` matrix (the transposed layout keeps single-history
    scoring a memory-bound matrix-vector product over contiguous rows). What the columns are depends on the
    model's item fusion:

    - `static` (or one modality): one column, the [`present_mean`] of the item's normalised modality embeddings
      ([`join_id_scores`] with the id embedding folded in, transductive), so scoring is exactly one matmul;
    - `dynamic_shared` / `dynamic_instance`: the text and image embeddings ([`stand_in_for_absent`]) and,
      transductive, the id embedding, fused per chunk by [`pair_fusion`] and [`join_id_scores`].

    Build it with [`from_model`] (a model's catalogue) or [`from_embeddings`]
    (cold-start items). The matrix is filled chunk by chunk of items, so building it takes little memory beyond
    the matrix itself (2.4 GB for 1M items, d = 300, two columns per item).

    Args:
        modalities: the model's modality names; mode: its item fusion mode.
        weight: the fusion weight (`[1]`, `[N]` or None); temperature: the score temperature.
        num_items: N; hidden_size: d; has_id: whether the model has item-id embeddings (transductive);
        id_share: the learned share of the id logit (`config.learned_id_weight`), or None for the paper's 1/3.
        dtype: the matrix's precision (float32, or float16 to halve it); matrix: a filled `[d, N * P]` matrix
            (a saved index), instead of an empty one.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        mode: str,
        weight: torch.Tensor | None,
        temperature: float,
        *,
        num_items: int,
        hidden_size: int,
        has_id: bool,
        id_share: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        matrix: torch.Tensor | None = None,
    ):
        self.modalities = list(modalities)
        self.mode = "static" if len(modalities) == 1 else mode
        self.temperature = temperature
        self.num_items = num_items
        self.has_id = has_id and self.mode != "static"
        self.id_folded = has_id and self.mode == "static"
        self.columns_per_item = 1 if self.mode == "static" else 2 + int(self.has_id)
        shape = (hidden_size, num_items * self.columns_per_item)
        if matrix is not None and tuple(matrix.shape) != shape:
            raise ValueError(f"the index matrix is {tuple(matrix.shape)}; these settings need {shape}")
        self.matrix = torch.empty(shape, device=device, dtype=dtype) if matrix is None else matrix  # [d, N * P]
        self.weight = None if weight is None or self.mode == "static" else weight.detach().reshape(-1)
        self.id_share = None if id_share is None else id_share.detach()

    def to(self, device: torch.device | str) -> ItemIndex:
        """Move the tables to `device`; returns self."""
        self.matrix = self.matrix.to(device)
        self.weight = None if self.weight is None else self.weight.to(device)
        self.id_share = None if self.id_share is None else self.id_share.to(device)
        return self

    @classmethod
    def _empty_for(
        cls,
        model: nn.Module,
        weight: torch.Tensor | None,
        num_items: int,
        *,
        has_id: bool,
        dtype: torch.dtype = torch.float32,
    ) -> ItemIndex:
        """An unfilled index of `num_items` items with the fusion settings of MISSRec model `model`."""
        return cls(
            model.modality_names,
            model.item_fusion.mode,
            weight,
            float(torch.as_tensor(model.score_temperature()).detach()),
            num_items=num_items,
            hidden_size=model.config.hidden_size,
            has_id=has_id,
            id_share=model.item_fusion.id_share() if has_id else None,
            device=model.device,
            dtype=dtype,
        )

    def _fill(self, start: int, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> None:
        """Write the columns of items `start .. start + c - 1` (0-based rows) from their normalised embeddings
        (`{"text": [c, d], "image": [c, d], "id": [c, d]}`) and modality presence `[M, c]`."""
        if self.mode == "static":
            columns = [static_item_embeddings(embeddings, present, self.modalities, self.id_share)]
        else:
            text, image = stand_in_for_absent(embeddings["text"], embeddings["image"], *present[:, :, None])
            columns = [text, image] + ([embeddings["id"]] if self.has_id else [])
        view = self.matrix.view(self.matrix.shape[0], self.num_items, self.columns_per_item)
        for j, column in enumerate(columns):
            view[:, start : start + len(column), j] = column.T

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: nn.Module, chunk_items: int = 65536, dtype: torch.dtype = torch.float32) -> ItemIndex:
        """The index of a MISSRec model's catalogue (items `1..N`), built in chunks of items to bound memory;
        `dtype` float16 halves the table (scores are still computed in float32)."""
        num_items = model.config.num_items
        if num_items == 0:
            raise ValueError("the model has no item catalogue: call set_catalogue(...) first")
        fusion = model.item_fusion
        weight = fusion.weight
        if weight is not None and fusion.mode == "dynamic_instance":
            weight = weight[1:]  # per item id; row 0 is padding
        index = cls._empty_for(model, weight, num_items, has_id=model.item_id_embeddings is not None, dtype=dtype)
        for start in range(1, num_items + 1, chunk_items):
            ids = torch.arange(start, min(num_items, start + chunk_items - 1) + 1, device=model.device)
            embeddings = {key: value.float() for key, value in model.embed_items(ids).items()}
            index._fill(start - 1, embeddings, model.item_presence(ids))
        return index

    @classmethod
    @torch.no_grad()
    def from_embeddings(cls, model: nn.Module, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> ItemIndex:
        """An index of items that are not in the catalogue (cold-start items, scored from their features alone).

        Args:
            embeddings: `{"text": [n, d], "image": [n, d]}` from `MISSRecModel.embed_new_items`; present: `[M, n]`.
        """
        weight = model.item_fusion.weight
        num = present.shape[1]
        if weight is not None and model.item_fusion.mode == "dynamic_instance":
            weight = weight.new_zeros(num)  # new items' per-item weights start at zero
        index = cls._empty_for(model, weight, num, has_id=False)  # cold-start items: inductive models only
        index._fill(0, {m: e.float() for m, e in embeddings.items()}, present)
        return index

    @torch.no_grad()
    def top_k(
        self,
        sequence_embeddings: torch.Tensor,
        k: int,
        item_rows: torch.Tensor | None = None,
        excluded: tuple[torch.Tensor, torch.Tensor] | None = None,
        offsets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-`k` items of every history.

        Args:
            sequence_embeddings: `[B, d]`.
            k: how many to return per history (at most the number of candidates).
            item_rows: `[C]` long, sorted distinct rows of the index to rank (an allow-list), or None for all `N`.
            excluded: `(batch_rows [E], index_rows [E])` pairs that must not be returned (scored `-inf`).
            offsets: `(batch_rows [F], index_rows [F], logits [F])`, distinct pairs whose logits (after the
                temperature) get these values added ([`add_history_offsets`]).

        Returns:
            `(scores [B, k], index_rows [B, k])`, best first; scores are divided by the temperature, and excluded
            pairs that still fill the top-k (too few candidates) carry `-inf`.
        """
        sequence_embeddings = sequence_embeddings.float()
        batch, width = sequence_embeddings.shape[0], self.columns_per_item
        matrix, weight = self.matrix, self.weight
        if item_rows is not None:
            # (`index_select` of whole columns: 5x faster than advanced indexing of the `[d, N, P]` view.)
            columns = (item_rows[:, None] * width + torch.arange(width, device=item_rows.device)).flatten()
            matrix = matrix.index_select(1, columns)
            if weight is not None and weight.numel() > 1:
                weight = weight[item_rows]
        num = matrix.shape[1] // width
        if item_rows is not None:
            # Index rows -> positions in the sorted allow-list (rows outside it are not scored).
            def to_allow_list(pairs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
                local, inside = candidate_columns(item_rows, pairs[1])
                return (pairs[0][inside], local[inside], *(extra[inside] for extra in pairs[2:]))

            excluded = None if excluded is None else to_allow_list(excluded)
            offsets = None if offsets is None else to_allow_list(offsets)
        chunk = max(1, min(num, _CHUNK_ELEMENTS // max(1, batch * width)))
        # A half table is widened to float32 chunk by chunk (the matmul runs in float32), in chunks whose widened
        # copy is as small as a chunk of scores: a copy of the whole table per request would cost more than the scan.
        widened = None
        if matrix.dtype != torch.float32:
            chunk = max(1, min(chunk, _CHUNK_ELEMENTS // (matrix.shape[0] * width)))
            widened = sequence_embeddings.new_empty(matrix.shape[0] * chunk * width)
        buffer = sequence_embeddings.new_empty(batch * chunk * width)
        scratch = (sequence_embeddings.new_empty(batch * chunk), sequence_embeddings.new_empty(batch * chunk))
        values, indices = [], []
        for start in range(0, num, chunk):
            stop = min(num, start + chunk)
            out = buffer[: batch * (stop - start) * width].view(batch, (stop - start) * width)
            columns = matrix[:, start * width : stop * width]
            if widened is not None:
                columns = widened[: columns.numel()].view(columns.shape).copy_(columns)
            torch.matmul(sequence_embeddings, columns, out=out)
            logits = out.view(batch, stop - start, width)
            if self.mode == "static":
                scores = logits[..., 0]
            else:
                chunk_weight = weight if weight.numel() == 1 else weight[start:stop]
                scores = pair_fusion(logits[..., 0], logits[..., 1], chunk_weight, out=scratch)
                if self.has_id:
                    scores = join_id_scores(logits[..., 2], scores, id_share=self.id_share, in_place=True)
            if offsets is not None:
                inside = (offsets[1] >= start) & (offsets[1] < stop)
                chunk_offsets = (offsets[0][inside], offsets[1][inside] - start, offsets[2][inside])
                scores = add_history_offsets(scores, chunk_offsets, scale=self.temperature)
            if excluded is not None:
                # (`scores` lives in a reused buffer: writing into it is fine.)
                if stop - start == num:  # one chunk (a single request's whole catalogue): no range test
                    scores.index_put_(excluded, scores.new_tensor(float("-inf")))
                else:
                    inside = (excluded[1] >= start) & (excluded[1] < stop)
                    scores[excluded[0][inside], excluded[1][inside] - start] = float("-inf")
            # `topk` ranks NaN above everything: a score that is not a number never ranks above one that is.
            scores.nan_to_num_(nan=float("-inf"))
            top = scores.topk(min(k, stop - start), dim=1)
            values.append(top.values)
            indices.append(top.indices + start if start else top.indices)
        values, indices = (values[0], indices[0]) if len(values) == 1 else (torch.cat(values, 1), torch.cat(indices, 1))
        if values.shape[1] > k:
            best = values.topk(k, dim=1)
            values, indices = best.values, indices.gather(1, best.indices)
        if item_rows is not None:
            indices = item_rows[indices]
        return values / self.temperature, indices
