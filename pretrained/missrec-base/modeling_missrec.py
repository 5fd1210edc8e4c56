"""MISSRec: multi-modal interest-aware sequential recommender as a Hugging Face `PreTrainedModel`."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_missrec import CATALOGUE_FIELDS, MISSRecConfig
from .index_missrec import MISSRecItemIndex
from .interest_missrec import ClusteringResult, assign_to_nearest, dpc_knn, interest_tokens, kmeans
from .layers_missrec import (
    MISSRecAttention,
    MISSRecDecoderLayer,
    MISSRecDropout,
    MISSRecEncoderLayer,
    MISSRecItemFusion,
    MISSRecRepeatBias,
    MISSRecScoreTemperature,
    PackedLayout,
    catalogue_cross_entropy,
    init_standard_weights,
    interest_memory_layout,
    keep_most_recent,
    last_item_queries,
    longest_first,
    modality_tokens,
    row_buckets,
    sampled_cross_entropy,
    validate_candidates,
    validate_history,
    validate_labels,
)
from .layers_missrec import first_values as _first
from .scoring_missrec import (
    ItemIndex,
    add_history_offsets,
    candidate_columns,
    history_items,
    history_mask,
    join_id_scores,
    static_item_embeddings,
)
from .utils_missrec import unwrap_missrec

FeatureTable = torch.Tensor | np.ndarray


@dataclass
class MISSRecModelOutput(ModelOutput):
    """
    Output of [`MISSRecModel.forward`]: what the encoder makes of the histories.

    Args:
        sequence_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            L2-normalised sequence representations.
        diversity_loss (`torch.FloatTensor` of shape `()`):
            Interest diversity regulariser of the batch (the mean-pooled interest memory's squared norm per dimension,
            summed over the batch).
    """

    sequence_embeddings: torch.FloatTensor | None = None
    diversity_loss: torch.FloatTensor | None = None


@dataclass
class MISSRecSequentialRecommendationOutput(ModelOutput):
    """
    Output of [`MISSRecForSequentialRecommendation.forward`] (fine-tuning, evaluation).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Full-catalogue cross-entropy plus γ times the diversity regulariser.
        scores (`torch.FloatTensor` of shape `(batch_size, num_items + 1)`):
            Logits of every catalogue item (column = item id); column 0 (padding) is the dtype's minimum.
        sequence_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            L2-normalised sequence representations.
        diversity_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Interest diversity regulariser, summed over the batch.
    """

    loss: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    sequence_embeddings: torch.FloatTensor | None = None
    diversity_loss: torch.FloatTensor | None = None


@dataclass
class MISSRecPreTrainingOutput(ModelOutput):
    """
    Output of [`MISSRecForPreTraining.forward`] (the pre-training objective).

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            `seq_item_loss + λ * seq_seq_loss + γ * diversity_loss`.
        scores (`torch.FloatTensor` of shape `(batch_size, batch_size)`):
            In-batch logits of every sequence against every sequence's target item.
        sequence_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            L2-normalised representations of the original sequences.
        seq_item_loss (`torch.FloatTensor` of shape `()`):
            In-batch sequence→item contrastive cross-entropy.
        seq_seq_loss (`torch.FloatTensor` of shape `()`):
            Sequence→augmented-sequence contrastive cross-entropy; None when `config.seq_seq_loss_weight` is 0 (the
            augmented view is then not encoded).
        diversity_loss (`torch.FloatTensor` of shape `()`):
            Diversity regulariser of both views (of the original one alone without the sequence→sequence term),
            summed over the batch.
    """

    loss: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    sequence_embeddings: torch.FloatTensor | None = None
    seq_item_loss: torch.FloatTensor | None = None
    seq_seq_loss: torch.FloatTensor | None = None
    diversity_loss: torch.FloatTensor | None = None


@dataclass
class MISSRecRecommendationOutput(ModelOutput):
    """
    Output of [`MISSRecForSequentialRecommendation.recommend`]: the top-k items of every history, best first.

    Args:
        scores (`torch.FloatTensor` of shape `(batch_size, top_k)`):
            The items' logits (the same as `forward`'s `scores` for them); `-inf` where fewer than `top_k`
            candidates were left after excluding the history.
        item_ids (`torch.LongTensor` of shape `(batch_size, top_k)`):
            Catalogue item ids `1..num_items`; new items (`new_items`) get ids `num_items + 1 ..` in their order.
    """

    scores: torch.FloatTensor | None = None
    item_ids: torch.LongTensor | None = None


# The catalogue and interest buffers are model state that later code (training, `extend_catalogue`) may update in
# place: created under `torch.inference_mode()` they would be inference tensors, which refuse in-place updates
# outside it. So the methods that write them run outside inference mode.
writes_catalogue_state = torch.inference_mode(False)


class MISSRecPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading conventions shared by MISSRec models."""

    config_class = MISSRecConfig
    base_model_prefix = "missrec"
    main_input_name = "item_seq"
    _supports_sdpa = True

    # Every saved folder names every class, whichever of them saved it, so any of them loads it as remote code.
    _AUTO_MAP = {
        "AutoModel": "modeling_missrec.MISSRecModel",
        "AutoModelForPreTraining": "modeling_missrec.MISSRecForPreTraining",
        "AutoModelForSequentialRecommendation": "modeling_missrec.MISSRecForSequentialRecommendation",
    }

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`; the folder's `auto_map` names the base and both heads."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._AUTO_MAP}
        super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with a `ValueError` naming every tensor whose saved shape does
        not fit the config (for instance a catalogue of another size than `config.num_items`)."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except RuntimeError as error:
            if "mismatched" not in str(error):
                raise
            raise ValueError(cls._describe_mismatch(pretrained_model_name_or_path, kwargs.get("config"))) from error

    @classmethod
    def _describe_mismatch(cls, folder, config: MISSRecConfig | None) -> str:
        weights = os.path.join(str(folder), "model.safetensors")
        config = config if isinstance(config, MISSRecConfig) else MISSRecConfig.from_pretrained(folder)
        summary = (
            f"num_items={config.num_items}, num_interests={config.num_interests}, hidden_size={config.hidden_size}"
        )
        if not os.path.isfile(weights):
            return f"the weights of {folder} do not fit its config ({summary})"
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
        with safe_open(weights, framework="pt") as f:
            saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        bad = [f"{k}: saved {s} vs config {expected[k]}" for k, s in saved.items() if expected.get(k, s) != s]
        return f"the weights of {folder} do not fit its config ({summary}): " + "; ".join(bad)

    def _init_weights(self, module: nn.Module) -> None:
        """The official model's initialisation: RecBole's normal(0, std) over an `nn.Transformer`, except where
        the official model keeps torch's own init.

        Those exceptions are applied from the model itself, which is initialised after its submodules
        (`transformers` skips modules without parameters of their own, such as the attention blocks):
        `nn.MultiheadAttention` draws its packed `[3d, d]` input projection with `xavier_uniform_`, and the
        official adaptors, created after its init pass, keep `nn.Linear`'s default.
        """
        init_standard_weights(module, self.config.initializer_range)
        if isinstance(module, MISSRecItemFusion):
            if module.weight is not None:
                init.zeros_(module.weight)
            if module.id_weight is not None:  # the paper's share, 1/3: sigmoid(log 0.5)
                init.constant_(module.id_weight, math.log(0.5))
        elif isinstance(module, MISSRecRepeatBias):
            init.zeros_(module.weight)
        elif isinstance(module, MISSRecScoreTemperature):
            init.constant_(module.log_inverse, -math.log(self.config.score_temperature))
        elif isinstance(module, MISSRecModel):
            d = self.config.hidden_size
            bound = math.sqrt(6.0 / (d + 3 * d))  # xavier_uniform_ of the packed [3d, d] matrix
            for attention in (m for m in module.modules() if isinstance(m, MISSRecAttention)):
                for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
                    init.uniform_(projection.weight, -bound, bound)
            for m in module.modality_names:
                adaptor = getattr(module, f"{m}_adaptor")
                bound = 1.0 / math.sqrt(adaptor.in_features)  # nn.Linear.reset_parameters
                init.uniform_(adaptor.weight, -bound, bound)
                init.uniform_(adaptor.bias, -bound, bound)


class MISSRecModel(MISSRecPreTrainedModel):
    """
    MISSRec (Wang et al., ACM MM 2023). Holds the item catalogue (feature tables, modality masks, interest
    lookup tables and centroids) as buffers, so a saved model can serve on its own.

    Item ids are `1..config.num_items`; 0 is padding. Histories are left-aligned `[B, L]` tensors, most
    recent item last.

    Typical use:

    ```python
    model = MISSRecModel(MISSRecConfig())
    model.set_catalogue(text_features=text, image_features=image)  # [N, 512] each
    model.discover_interests()  # before every training epoch
    out = model(item_seq, labels=targets)  # out.loss, out.scores [B, N + 1]
    ```
    """

    def __init__(self, config: MISSRecConfig):
        super().__init__(config)
        d = config.hidden_size
        self.modality_names = config.modality_names
        for m in self.modality_names:
            setattr(self, f"{m}_adaptor", nn.Linear(config.feature_dim(m), d))
        self.position_embeddings = nn.Embedding(config.max_seq_length, d)
        self.item_id_embeddings = (
            nn.Embedding(config.num_items + 1, d, padding_idx=0) if config.id_mode == "transductive" else None
        )
        self.LayerNorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = MISSRecDropout(config.hidden_dropout_prob)
        self.encoder = nn.ModuleList(MISSRecEncoderLayer(config) for _ in range(config.num_encoder_layers))
        self.decoder = nn.ModuleList(MISSRecDecoderLayer(config) for _ in range(config.num_decoder_layers))
        # nn.Transformer's final norms, which the official model has after its post-LN layers
        self.encoder_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.decoder_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.item_fusion = MISSRecItemFusion(config)
        self.repeat_bias = MISSRecRepeatBias(config) if config.repeat_bias else None
        self.learned_temperature = MISSRecScoreTemperature(config) if config.learn_score_temperature else None
        self._register_catalogue_buffers(config.num_items, config.num_interests)
        self._weight_tables: dict[str, object] | None = None  # see `reusing_weight_tables`
        self.post_init()

    # ------------------------------------------------------------------ catalogue
    def _describe_catalogue(self, **fields) -> None:
        """The one writer of the config fields that describe the catalogue the model holds rather than its
        architecture ([`CATALOGUE_FIELDS`]); only the catalogue methods call it, so the config saved with the
        weights always describes the buffers beside it."""
        unknown = sorted(set(fields) - set(CATALOGUE_FIELDS))
        if unknown:
            raise ValueError(f"{unknown} are not catalogue fields {list(CATALOGUE_FIELDS)}")
        for name, value in fields.items():
            setattr(self.config, name, value)

    def _register_catalogue_buffers(self, num_items: int, num_interests: int) -> None:
        for m in self.modality_names:
            self.register_buffer(f"{m}_features", torch.zeros(num_items + 1, self.config.feature_dim(m)))
            self.register_buffer(f"{m}_present", torch.zeros(num_items + 1, dtype=torch.bool))
            self.register_buffer(f"{m}_interest_ids", torch.zeros(num_items + 1, dtype=torch.long))
        self.register_buffer("interest_centroids", torch.zeros(num_interests + 1, self.config.hidden_size))

    def _as_feature_table(
        self, modality: str, table: FeatureTable | None, num_rows: int | None, first_id: int
    ) -> torch.Tensor:
        if table is None:
            raise ValueError(f"{modality}_features is required (config.modalities={self.config.modalities!r})")
        table = torch.as_tensor(table, dtype=torch.float32)
        width = self.config.feature_dim(modality)
        if table.ndim != 2 or table.shape[1] != width:
            raise ValueError(
                f"{modality}_features has shape {tuple(table.shape)}; expected [num_items, {width}] "
                f"(config.{modality}_feature_dim={width})"
            )
        if num_rows is not None and table.shape[0] != num_rows:
            raise ValueError(f"{modality}_features has {table.shape[0]} rows but another modality has {num_rows}")
        bad = (~torch.isfinite(table)).any(1).nonzero().flatten()
        if bad.numel():
            raise ValueError(f"{modality}_features has NaN or Inf for items {_first(bad + first_id)} (item ids)")
        return table

    def _validated_catalogue(
        self,
        features: dict[str, FeatureTable | None],
        present: dict[str, FeatureTable | None],
        first_id: int = 1,
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """`{modality: (features [N, width], present [N])}` of tables whose first row is item `first_id`, or a
        `ValueError` naming what does not fit the config."""
        unknown = [m for m, t in features.items() if t is not None and m not in self.modality_names]
        if unknown:
            raise ValueError(f"{unknown[0]}_features given but config.modalities={self.config.modalities!r}")
        tables, num_rows = {}, None
        for m in self.modality_names:
            table = self._as_feature_table(m, features[m], num_rows, first_id)
            num_rows = table.shape[0]
            mask = present[m]
            mask = table.abs().sum(1) > 0 if mask is None else torch.as_tensor(mask, dtype=torch.bool)
            if mask.shape != (num_rows,):
                raise ValueError(f"{m}_present has shape {tuple(mask.shape)}; expected ({num_rows},)")
            tables[m] = (table, mask)
        return tables

    @writes_catalogue_state
    def set_catalogue(
        self,
        text_features: FeatureTable | None = None,
        image_features: FeatureTable | None = None,
        *,
        text_present: FeatureTable | None = None,
        image_present: FeatureTable | None = None,
    ) -> None:
        """Replace the item catalogue. Item `i` (1-based) is row `i - 1` of the tables.

        Interest tables are reset (run [`discover_interests`] next). When the number of items changes, the
        per-item parameters (item-id embedding, per-item fusion weights) are re-initialised.

        Args:
            text_features: `[N, text_feature_dim]` (required when the model reads text).
            image_features: `[N, image_feature_dim]` (required when the model reads images).
            text_present, image_present: `[N]` bool; default: a row is present unless it is all zeros.
        """
        tables = self._validated_catalogue(
            {"text": text_features, "image": image_features}, {"text": text_present, "image": image_present}
        )
        self._empty_catalogue(next(iter(tables.values()))[0].shape[0])
        for m, (table, mask) in tables.items():
            getattr(self, f"{m}_features")[1:] = table
            getattr(self, f"{m}_present")[1:] = mask

    @writes_catalogue_state
    def clear_catalogue(self) -> None:
        """Remove the item catalogue (feature tables, interest tables, per-item parameters), keeping the sequence
        encoder and the adaptors: what a pre-trained base ships, a few MB instead of its pre-training items.
        [`set_catalogue`] gives it a catalogue again (a zero-shot run, fine-tuning)."""
        self._empty_catalogue(0)

    def _empty_catalogue(self, num_items: int) -> None:
        """All-zero catalogue buffers for `num_items` items and no interests, on the model's device and described in
        its config; the per-item parameters are re-initialised when the number of items changes."""
        device = self.position_embeddings.weight.device
        resized = num_items != self.config.num_items
        self._describe_catalogue(num_items=num_items, num_interests=0)
        self._register_catalogue_buffers(num_items, 0)
        self.to(device)
        if resized:
            self._reset_item_parameters(num_items)

    def _fresh_item_id_embeddings(self) -> nn.Embedding:
        embeddings = nn.Embedding(self.config.num_items + 1, self.config.hidden_size, padding_idx=0)
        embeddings = embeddings.to(self.position_embeddings.weight.device, self.dtype)
        self._init_weights(embeddings)
        return embeddings

    def _reset_item_parameters(self, num_items: int) -> None:
        device = self.position_embeddings.weight.device
        if self.item_id_embeddings is not None:
            self.item_id_embeddings = self._fresh_item_id_embeddings()
        if self.item_fusion.mode == "dynamic_instance":
            self.item_fusion.weight = nn.Parameter(torch.zeros(num_items + 1, device=device, dtype=self.dtype))

    def add_item_id_embeddings(self) -> None:
        """Switch an inductive model to transductive mode: add a freshly initialised item-id embedding.

        This is how a pre-trained model (pre-training uses no item ids) is fine-tuned in transductive mode;
        the id logits join the fused modality logits as `(s_id + 2 * fused) / 3`.
        """
        if self.item_id_embeddings is not None:
            raise ValueError("the model is already transductive (it has item-id embeddings)")
        self._describe_catalogue(id_mode="transductive")
        self.item_id_embeddings = self._fresh_item_id_embeddings()
        self._add_id_share()

    @torch.no_grad()
    def init_item_ids_from_content(self) -> None:
        """Start each item's id embedding in the direction of its content (`config.item_id_init="content"`): the
        mean of its L2-normalised adapted modality embeddings, rescaled to the norm a random row has
        (`initializer_range * sqrt(hidden_size)`), so that the history tokens keep their scale. The id logit is a
        cosine, so an item the training data rarely shows then scores like its content, not like a random
        direction. Items with no modality keep their row; the padding row stays 0.
        """
        if self.item_id_embeddings is None:
            raise ValueError("the model has no item-id embeddings (inductive): nothing to initialise")
        items = self.embed_items()
        content = F.normalize(sum(items[m] for m in self.modality_names), dim=-1)  # [N + 1, d]
        scale = self.config.initializer_range * math.sqrt(self.config.hidden_size)
        has_content = self.item_presence().any(0)
        has_content[0] = False
        weight = self.item_id_embeddings.weight
        weight[has_content] = (scale * content[has_content]).to(weight.dtype)

    def add_repeat_bias(self) -> None:
        """Switch the learned repeat offsets on ([`MISSRecRepeatBias`], `config.repeat_bias`), starting at 0 (the
        scores do not change until they are trained): how a model pre-trained without them is fine-tuned with them.
        """
        if self.repeat_bias is not None:
            raise ValueError("the model already has repeat offsets")
        self.config.repeat_bias = True
        self.repeat_bias = MISSRecRepeatBias(self.config).to(self.position_embeddings.weight.device, self.dtype)

    def add_learned_temperature(self) -> None:
        """Switch the learned score temperature on ([`MISSRecScoreTemperature`], `config.learn_score_temperature`),
        starting at `config.score_temperature` (the scores do not change until it is trained): how a model with a
        fixed temperature is fine-tuned, or an adapter loaded, with a learned one."""
        if self.learned_temperature is not None:
            raise ValueError("the model already learns its score temperature")
        self.config.learn_score_temperature = True
        self.learned_temperature = MISSRecScoreTemperature(self.config).to(
            self.position_embeddings.weight.device, self.dtype
        )

    def score_temperature(self) -> torch.Tensor | float:
        """The temperature the cosine logits are divided by: the learned one (a `()` tensor), or
        `config.score_temperature`."""
        return self.config.score_temperature if self.learned_temperature is None else self.learned_temperature()

    def add_learned_id_weight(self) -> None:
        """Switch the learned id share on (`config.learned_id_weight`), starting at the paper's 1/3 (the scores do
        not change until it is trained): how a model without it is fine-tuned, or an adapter loaded, with it."""
        if self.config.learned_id_weight:
            raise ValueError("the model already learns its id share")
        self.config.learned_id_weight = True
        self._add_id_share()

    def _add_id_share(self) -> None:
        """The learned id share's parameter, at 1/3, for a transductive model that learns it and lacks it."""
        if self.item_id_embeddings is not None and self.item_fusion.id_weight is None and self.config.learned_id_weight:
            weight = torch.full((1,), math.log(0.5), device=self.position_embeddings.weight.device, dtype=self.dtype)
            self.item_fusion.id_weight = nn.Parameter(weight)

    @writes_catalogue_state
    def add_modality(self, modality: str, feature_dim: int) -> None:
        """Make the model read one more modality: add a freshly initialised adaptor for it.

        This is how a model pre-trained on text alone is fine-tuned on a domain with text and images: the
        Transformer and the text adaptor keep their weights, the new adaptor starts from `nn.Linear`'s default
        initialisation (as the official model's adaptors), and with two modalities the item fusion gets its
        learned weight (zero: the mean of the two logits). Until [`set_catalogue`] gives the new modality's
        features, every catalogue item lacks it; then [`align_adaptor`] can start the adaptor where the learned
        modalities are (training does).

        Args:
            modality: `"text"` or `"image"`, one the model does not read yet.
            feature_dim: the width of that modality's raw features.
        """
        if modality not in ("text", "image") or modality in self.modality_names:
            raise ValueError(f"cannot add modality {modality!r} to a model that reads {list(self.modality_names)}")
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim={feature_dim!r} must be an integer >= 1")
        device = self.position_embeddings.weight.device
        self._describe_catalogue(modalities="both", **{f"{modality}_feature_dim": feature_dim})
        self.modality_names = self.config.modality_names
        adaptor = nn.Linear(feature_dim, self.config.hidden_size)  # nn.Linear's own init, as in `_init_weights`
        setattr(self, f"{modality}_adaptor", adaptor.to(device, self.dtype))
        self.item_fusion = MISSRecItemFusion(self.config).to(device, self.dtype)
        self._init_weights(self.item_fusion)
        rows = self.config.num_items + 1
        self.register_buffer(f"{modality}_features", torch.zeros(rows, feature_dim, device=device))
        self.register_buffer(f"{modality}_present", torch.zeros(rows, dtype=torch.bool, device=device))
        self.register_buffer(f"{modality}_interest_ids", torch.zeros(rows, dtype=torch.long, device=device))

    @torch.no_grad()
    def align_adaptor(self, modality: str, ridge: float = 1e-2, chunk_size: int = 65536) -> None:
        """Set `modality`'s adaptor to the linear map that best predicts, from that modality's features, the
        adapted embeddings of the model's other modalities (their sum), fitted on the catalogue's items that have
        both (ridge regression on centred features, penalty `ridge` times the mean diagonal of their Gram matrix).

        A modality added to a pre-trained model ([`add_modality`]) starts from a random adaptor, whose embeddings
        are noise beside the trained ones: they dilute every fused logit and blur every history token, so that
        fine-tuning on few users starts far below the model it came from. Aligned, the new modality starts out
        agreeing with the trained ones (an image embedded where its item's text is), and training refines it.

        Args:
            modality: a modality the model reads beside another, whose features the catalogue holds
                ([`set_catalogue`] first).
            ridge: the relative penalty (> 0).
            chunk_size: items per step of the sums (float64 `[chunk, width]` blocks, not the whole catalogue).
        """
        if modality not in self.modality_names or len(self.modality_names) < 2:
            raise ValueError(f"cannot align {modality!r}: the model reads {list(self.modality_names)}")
        if ridge <= 0:
            raise ValueError(f"ridge={ridge!r} must be > 0")
        self._check_catalogue()
        others = [m for m in self.modality_names if m != modality]
        with_others = torch.stack([getattr(self, f"{m}_present") for m in others]).any(0)
        rows = (getattr(self, f"{modality}_present") & with_others).nonzero().flatten()
        if len(rows) < 2:
            raise ValueError(f"cannot align {modality!r}: fewer than 2 catalogue items have it and another modality")
        adaptor, features = getattr(self, f"{modality}_adaptor"), getattr(self, f"{modality}_features")
        width, d = features.shape[1], self.config.hidden_size
        sums = {
            "x": torch.zeros(width),
            "y": torch.zeros(d),
            "xx": torch.zeros(width, width),
            "xy": torch.zeros(width, d),
        }
        sums = {k: v.to(features.device, torch.float64) for k, v in sums.items()}
        for chunk in rows.split(chunk_size):
            catalogue = self.adapted_catalogue(chunk)
            x, y = features[chunk].double(), sum(catalogue[m] for m in others).double()  # [c, w], [c, d]
            sums["x"] += x.sum(0)
            sums["y"] += y.sum(0)
            sums["xx"] += x.T @ x
            sums["xy"] += x.T @ y
        n = len(rows)
        mean_x, mean_y = sums["x"] / n, sums["y"] / n
        gram = sums["xx"] - n * torch.outer(mean_x, mean_x)  # of the centred features
        cross = sums["xy"] - n * torch.outer(mean_x, mean_y)
        penalty = ridge * gram.diagonal().mean().clamp_min(torch.finfo(gram.dtype).tiny)
        eye = torch.eye(width, dtype=gram.dtype, device=gram.device)
        weight = torch.linalg.solve(gram + penalty * eye, cross)  # [w, d]
        adaptor.weight.copy_(weight.T.to(adaptor.weight.dtype))
        adaptor.bias.copy_((mean_y - mean_x @ weight).to(adaptor.bias.dtype))

    @writes_catalogue_state  # outermost: leaving inference mode turns gradients back on, no_grad then off
    @torch.no_grad()
    def extend_catalogue(
        self,
        text_features: FeatureTable | None = None,
        image_features: FeatureTable | None = None,
        *,
        text_present: FeatureTable | None = None,
        image_present: FeatureTable | None = None,
    ) -> torch.Tensor:
        """Append new items (e.g. never seen in training) and return their ids `[N_new]`.

        Their interest ids are their nearest existing centroids, so no re-clustering is needed to serve
        them. Per-item parameters of new items start at zero: in transductive mode a new item has no id
        signal (its id logit is 0) until it is trained.

        Args:
            text_features: `[N_new, text_feature_dim]`; image_features: `[N_new, image_feature_dim]`.
            text_present, image_present: `[N_new]` bool (default: non-zero rows).

        Returns:
            `[N_new]` long, the new item ids `num_items + 1 .. num_items + N_new`.
        """
        tables = self._validated_catalogue(
            {"text": text_features, "image": image_features},
            {"text": text_present, "image": image_present},
            self.config.num_items + 1,
        )
        device = self.position_embeddings.weight.device
        old = self.config.num_items
        num_new = next(iter(tables.values()))[0].shape[0]
        for m, (table, mask) in tables.items():
            table, mask = table.to(device), mask.to(device)
            interest = torch.zeros(num_new, dtype=torch.long, device=device)
            if self.config.num_interests and mask.any():
                adapted = self._adapt(m, table[mask].to(self.dtype)).float()
                labels, _ = assign_to_nearest(adapted, self.interest_centroids[1:].float())
                interest[mask] = labels + 1
            for name, new in (("features", table), ("present", mask), ("interest_ids", interest)):
                buffer = getattr(self, f"{m}_{name}")
                setattr(self, f"{m}_{name}", torch.cat([buffer, new.to(buffer.dtype)]))
        if self.item_id_embeddings is not None:
            weight = self.item_id_embeddings.weight
            grown = nn.Embedding(old + num_new + 1, weight.shape[1], padding_idx=0).to(device, weight.dtype)
            grown.weight.copy_(torch.cat([weight, weight.new_zeros(num_new, weight.shape[1])]))
            grown.weight.requires_grad_(weight.requires_grad)
            self.item_id_embeddings = grown
        if self.item_fusion.mode == "dynamic_instance":
            weight = self.item_fusion.weight
            self.item_fusion.weight = nn.Parameter(
                torch.cat([weight, weight.new_zeros(num_new)]), requires_grad=weight.requires_grad
            )
        self._describe_catalogue(num_items=old + num_new)
        return torch.arange(old + 1, old + num_new + 1, device=device)

    def _adapt(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"{modality}_adaptor")(features)

    @writes_catalogue_state  # outermost: leaving inference mode turns gradients back on, no_grad then off
    @torch.no_grad()
    def discover_interests(self) -> ClusteringResult:
        """Cluster the adapted embeddings of every present item-modality into interests (no gradient).

        K = `ceil(interest_ratio * number of present item-modality vectors)`. Writes the interest lookup
        tables (ids `1..K`, 0 for padding and missing modalities) and the centroid table, and sets
        `config.num_interests = K`. Run it before every training epoch, as the paper does. With
        `interest_method="none"` it writes empty tables (K = 0: every id 0, only the padding centroid).

        Returns:
            The [`ClusteringResult`] (labels of the vectors in modality order, centroids `[K, d]`).
        """
        self._check_catalogue()
        cfg = self.config
        if cfg.interest_method == "none":
            no_interests = {m: torch.zeros_like(getattr(self, f"{m}_interest_ids")) for m in self.modality_names}
            self.set_interest_tables(self.interest_centroids.new_zeros(1, cfg.hidden_size), no_interests)
            empty = self.interest_centroids.new_zeros(0, cfg.hidden_size)
            return ClusteringResult(labels=empty.new_zeros(0, dtype=torch.long), centroids=empty, inertia=0.0, n_iter=0)
        vectors, rows = [], {}
        for m in self.modality_names:
            present = getattr(self, f"{m}_present")
            rows[m] = present.nonzero().flatten()
            vectors.append(self._adapt(m, getattr(self, f"{m}_features")[rows[m]].to(self.dtype)).float())
        vectors = torch.cat(vectors)
        if not len(vectors):
            raise ValueError("no item in the catalogue has any modality present: nothing to cluster")
        num_interests = max(1, math.ceil(self.config.interest_ratio * len(vectors)))
        if cfg.interest_method == "kmeans":
            result = kmeans(
                vectors,
                num_interests,
                init=cfg.kmeans_init,
                max_iter=cfg.kmeans_max_iter,
                tol=cfg.kmeans_tol,
                seed=cfg.interest_seed,
            )
        else:
            local = max(1, math.ceil(cfg.knn_local_ratio * len(vectors)))
            result = dpc_knn(vectors, num_interests, local_size=local)
        start, interest_ids = 0, {}
        for m in self.modality_names:
            interest_ids[m] = torch.zeros_like(getattr(self, f"{m}_interest_ids"))
            interest_ids[m][rows[m]] = result.labels[start : start + len(rows[m])] + 1
            start += len(rows[m])
        self.set_interest_tables(
            torch.cat([result.centroids.new_zeros(1, cfg.hidden_size), result.centroids]), interest_ids
        )
        return result

    @writes_catalogue_state
    def set_interest_tables(self, centroids: torch.Tensor, interest_ids: dict[str, torch.Tensor] | None = None) -> None:
        """Hold the interests `centroids` `[K + 1, hidden_size]` (row 0: the all-zero padding interest) and, per
        modality, `interest_ids` `[num_items + 1]` (each item-modality's interest, 0 for padding and absent ones;
        None keeps the current tables), and set `config.num_interests = K`. What [`discover_interests`] writes;
        also how saved interests are restored (a checkpoint, an adapter's catalogue).
        """
        if centroids.ndim != 2 or centroids.shape[1] != self.config.hidden_size or len(centroids) < 1:
            raise ValueError(f"centroids {tuple(centroids.shape)} must be [K + 1, {self.config.hidden_size}]")
        device = self.interest_centroids.device
        for m, ids in (interest_ids or {}).items():
            if ids.shape != getattr(self, f"{m}_interest_ids").shape or (len(ids) and int(ids.max()) >= len(centroids)):
                raise ValueError(
                    f"{m} interest ids {tuple(ids.shape)} do not fit {self.config.num_items} items and "
                    f"{len(centroids) - 1} interests"
                )
            setattr(self, f"{m}_interest_ids", ids.to(device=device, dtype=torch.long))
        self.interest_centroids = centroids.to(device=device, dtype=self.interest_centroids.dtype)
        self._describe_catalogue(num_interests=len(centroids) - 1)

    def _check_catalogue(self) -> None:
        if self.config.num_items == 0:
            raise ValueError("the model has no item catalogue: call set_catalogue(...) first")

    def _check_interests(self) -> None:
        # A model with interests switched off has its (empty) tables from the start.
        if self.config.num_interests == 0 and self.config.interest_method != "none":
            raise ValueError("interests have not been discovered: call discover_interests() first")

    # ------------------------------------------------------------------ inputs
    def _prepare_history(
        self,
        item_seq: torch.Tensor,
        lengths: torch.Tensor | None,
        text_features: torch.Tensor | None,
        check_inputs: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Validate a left-aligned history (unless `check_inputs` is False: the caller built it from checked ids,
        with exact `lengths`) and keep its `max_seq_length` most recent items."""
        self._check_catalogue()
        self._check_interests()
        if check_inputs or lengths is None:
            item_seq, lengths = validate_history(item_seq, lengths, self.config.num_items)
        else:
            lengths = torch.as_tensor(lengths, device=item_seq.device).long()
        if text_features is not None and "text" not in self.modality_names:
            raise ValueError(f"text_features given but config.modalities={self.config.modalities!r}")
        if text_features is not None and text_features.shape[-1] != self.config.text_feature_dim:
            raise ValueError(
                f"text_features has width {text_features.shape[-1]}; expected {self.config.text_feature_dim}"
            )
        if text_features is not None and text_features.shape[:2] != item_seq.shape:
            raise ValueError(
                f"text_features has shape {tuple(text_features.shape)}; expected [B, L, d] with [B, L] = "
                f"{tuple(item_seq.shape)}"
            )
        item_seq, lengths, index = keep_most_recent(item_seq, lengths, self.config.max_seq_length)
        if index is not None and text_features is not None:
            text_features = text_features.gather(1, index[..., None].expand(-1, -1, text_features.shape[-1]))
        return item_seq, lengths, text_features

    # ------------------------------------------------------------------ sequence side
    def adapted_catalogue(self, item_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Adapted (not normalised) embeddings per modality, zero where the modality is absent.

        Args:
            item_ids: `[C]` long item ids, or None for the whole catalogue `0..num_items` (row = item id).

        Returns:
            `{"text": [C, d], "image": [C, d]}` (the config's modalities).
        """
        out = {}
        for m in self.modality_names:
            features, present = getattr(self, f"{m}_features"), getattr(self, f"{m}_present")
            if item_ids is not None:
                features, present = features[item_ids], present[item_ids]
            out[m] = self._adapt(m, features.to(self.dtype)) * present[:, None]
        return out

    def _history_embeddings(
        self,
        modality: str,
        item_ids: torch.Tensor,
        present: torch.Tensor,
        text_features: torch.Tensor | None,
        catalogue: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        """`[T, d]` adapted embeddings of packed history items `item_ids` `[T]`, zero where `present` `[T]` is False.

        `text_features` `[T, text_feature_dim]`: the items' own text (augmented view) instead of the catalogue's.
        """
        if modality == "text" and text_features is not None:
            features = text_features
        elif catalogue is not None:
            # `F.embedding`'s backward sums the gradients of repeated items in a fixed order (indexing's backward
            # does not: its multi-threaded scatter varies run to run).
            return F.embedding(item_ids, catalogue[modality]) * present[:, None]
        else:
            features = getattr(self, f"{modality}_features")[item_ids]
        return self._adapt(modality, features.to(self.dtype)) * present[:, None]

    def _encode(
        self,
        item_seq: torch.Tensor,
        lengths: torch.Tensor | None,
        text_features: torch.Tensor | None = None,
        catalogue: dict[str, torch.Tensor] | None = None,
        with_diversity: bool = True,
        interest_projections: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        check_inputs: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sequence embeddings `[B, d]` and the diversity regulariser `()` (None unless `with_diversity`).

        `catalogue` (from [`adapted_catalogue`]) saves adapting the same item twice when the caller scores
        the catalogue too; without it the adaptor runs on the history's own rows. `interest_projections` (from
        [`interest_projections`]) saves the first encoder layer's projections.
        """
        item_seq, lengths, text_features = self._prepare_history(item_seq, lengths, text_features, check_inputs)
        order = longest_first(lengths)
        if order is not None:
            item_seq, lengths = item_seq[order], lengths[order]
            text_features = None if text_features is None else text_features[order]
        length_list = lengths.tolist()
        seq_len = length_list[0]  # positions past the longest history are padding in every row: dropped
        item_seq = item_seq[:, :seq_len]
        text_features = None if text_features is None else text_features[:, :seq_len]
        batch = item_seq.shape[0]
        positions = torch.arange(seq_len, device=item_seq.device)
        valid = positions < lengths[:, None]
        row_splits = row_buckets(batch)
        # Tokens are built for the real history items only (packed, [Tv, d]), not a padded [B, L, d] grid.
        item_layout = PackedLayout(valid, row_splits, length_list)
        item_ids = item_layout.pack(item_seq)  # [Tv]
        text_rows = None if text_features is None else item_layout.pack(text_features)

        # E^m: the adapted embedding of each history item's modality m (0 where absent), and its interest id.
        present, embeddings, interests = [], [], []
        for m in self.modality_names:
            mask = getattr(self, f"{m}_present")[item_seq] & valid  # [B, L]
            embeddings.append(self._history_embeddings(m, item_ids, item_layout.pack(mask), text_rows, catalogue))
            present.append(mask)
            interests.append(getattr(self, f"{m}_interest_ids")[item_seq] * mask)
        # P (+ ID): the position embedding (and, transductive, the item-id embedding) of every history item.
        position = self.position_embeddings(item_layout.pack(positions.expand(batch, -1)))  # [Tv, d]
        if self.item_id_embeddings is not None:
            position = position + self.item_id_embeddings(item_ids)
        last = lengths - 1
        if self.config.seq_mm_fusion == "add":  # one token per item: sum_m E^m + P
            tokens, layout, token_mask = sum(embeddings, position), item_layout, valid
            output_index, query_lengths = last[:, None], [1] * batch  # [B, 1], every row's query is real
        else:  # contextual: one token per item and present modality, E^m + P
            per_modality = [e + position for e in embeddings]
            tokens, layout, token_mask = modality_tokens(per_modality, torch.stack(present, 1), item_layout, row_splits)
            output_index = last[:, None] + seq_len * torch.arange(len(embeddings), device=last.device)  # [B, M]
            query_lengths = None  # (the last item's modality tokens: not left-aligned)
        hidden = self.dropout(self.LayerNorm(tokens))  # packed [T, d]

        # The interest memory: the encoder over the centroids of the history's interest tokens.
        interest_ids, counts = interest_tokens(torch.cat(interests, 1), return_counts=True)
        memory_layout, memory_rows = interest_memory_layout(interest_ids, counts, row_splits)
        centroids = self.interest_centroids.to(hidden.dtype)
        if interest_projections is not None or len(centroids) < len(memory_rows):
            # The first layer projects the K + 1 centroids (or reads their projections), not the Tm tokens.
            memory = self.encoder[0](centroids, memory_layout, rows=memory_rows, projected=interest_projections)
        else:
            memory = self.encoder[0](centroids[memory_rows], memory_layout)
        for layer in self.encoder[1:]:
            memory = layer(memory, memory_layout)
        memory = self.encoder_norm(memory)
        diversity = None
        if with_diversity:  # the squared norm, per dimension, of each history's mean-pooled interest memory
            pooled = memory_layout.row_means(memory)
            diversity = pooled.square().sum() / pooled.shape[-1]

        # The decoder reads the item tokens against the memory; the sequence is the mean of its last item's tokens.
        for layer in self.decoder[:-1]:
            hidden = layer(hidden, layout, memory, memory_layout)
        queries = last_item_queries(hidden, layout, token_mask, output_index, row_splits, query_lengths)
        output = self.decoder[-1](hidden, layout, memory, memory_layout, queries=queries)
        output = F.normalize(queries[1].row_means(self.decoder_norm(output)), dim=-1)
        return (output if order is None else output[order.argsort()]), diversity

    def embed_sequences(
        self,
        item_seq: torch.Tensor,
        lengths: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        *,
        catalogue: dict[str, torch.Tensor] | None = None,
        interest_projections: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        check_inputs: bool = True,
    ) -> torch.Tensor:
        """L2-normalised sequence representations.

        Args:
            item_seq: `[B, L]` long, left-aligned item ids, 0 = padding, most recent last.
            lengths: `[B]` number of items per row (default: counted from `item_seq`).
            text_features: `[B, L, text_feature_dim]` to use instead of the catalogue text features of the
                history (the "word drop" augmentation of pre-training).
            catalogue: the whole catalogue's [`adapted_catalogue`], to look the history items up in instead of
                adapting them; interest_projections: [`interest_projections`]. Both change only with the weights
                and the catalogue, so a server computes them once for many requests.
            check_inputs: False skips validating `item_seq` against `lengths` (ids in range, left-aligned, no
                empty row), for a caller that built both from ids it has checked (the serving pipeline): on a
                single request the checks are a tenth of the encoder's ops. Ignored without `lengths`.

        Returns:
            `[B, hidden_size]`.
        """
        return self._encode(
            item_seq,
            lengths,
            text_features,
            catalogue=catalogue,
            with_diversity=False,
            interest_projections=interest_projections,
            check_inputs=check_inputs,
        )[0]

    @contextlib.contextmanager
    def reusing_weight_tables(self) -> Iterator[None]:
        """A context (gradients off) in which the weights and the catalogue are taken as fixed: the work that
        depends on them alone (the adapted catalogue, the first encoder layer's projections of the interest
        centroids) is done by the first `forward` call and reused by the next ones. For evaluation loops, where
        it would otherwise be redone for every batch."""
        with torch.no_grad():
            self._weight_tables = {}
            try:
                yield
            finally:
                self._weight_tables = None

    @torch.no_grad()
    def interest_projections(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first encoder layer's query, key and value projections of every interest centroid (row 0: padding).

        Returns:
            `(q, k, v)`, each `[num_interests + 1, hidden_size]`; pass them to [`embed_sequences`].
        """
        self._check_interests()
        return self.encoder[0].self_attention.block.project_table(self.interest_centroids.to(self.dtype))

    # ------------------------------------------------------------------ item side
    def item_presence(self, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """`[M, C]` bool: whether items `item_ids` `[C]` (None: the whole catalogue `0..num_items`) have each
        modality, in `config.modality_names` order."""
        present = torch.stack([getattr(self, f"{m}_present") for m in self.modality_names])
        return present if item_ids is None else present[:, item_ids]

    def embed_items(
        self, item_ids: torch.Tensor | None = None, catalogue: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """L2-normalised item embeddings per modality (and id in transductive mode).

        Args:
            item_ids: `[C]` long item ids, or None for the whole catalogue `0..num_items` (row = item id).
            catalogue: adapted embeddings of the same items, when the caller already has them.

        Returns:
            `{"text": [C, d], "image": [C, d], "id": [C, d]}` (keys as the config reads), absent modalities
            as zero rows.
        """
        self._check_catalogue()
        catalogue = self.adapted_catalogue(item_ids) if catalogue is None else catalogue
        out = {m: F.normalize(catalogue[m], dim=-1) for m in self.modality_names}
        if self.item_id_embeddings is not None:
            weight = self.item_id_embeddings.weight
            out["id"] = F.normalize(weight if item_ids is None else weight[item_ids], dim=-1)
        return out

    def embed_new_items(
        self, text_features: FeatureTable | None = None, image_features: FeatureTable | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """L2-normalised embeddings of items that are not in the catalogue (cold-start items), from their features
        alone, validated as [`set_catalogue`] validates a catalogue (errors name them by the ids `recommend` gives
        them, `num_items + 1 ..`).

        Args:
            text_features: `[n, text_feature_dim]`; image_features: `[n, image_feature_dim]` (the config's modalities).

        Returns:
            `({"text": [n, d], "image": [n, d]}, present [M, n])`.
        """
        first_id = self.config.num_items + 1  # the ids `recommend` gives them
        features = {"text": text_features, "image": image_features}
        tables = self._validated_catalogue(features, {"text": None, "image": None}, first_id)
        present = torch.stack([mask for _, mask in tables.values()]).to(self.device)
        empty = (~present.any(0)).nonzero().flatten()
        if empty.numel():
            raise ValueError(f"new items {_first(empty + first_id)} have no features (all zeros; item ids)")
        embeddings = {}
        for m, (table, mask) in tables.items():
            adapted = self._adapt(m, table.to(self.device, self.dtype)) * mask.to(self.device)[:, None]
            overflow = (~torch.isfinite(adapted).all(1)).nonzero().flatten()
            if overflow.numel():  # finite features of huge magnitude: their projection is not a number to rank
                raise ValueError(
                    f"new items {_first(overflow + first_id)} have {m} features whose projection is not finite "
                    "(values too large; item ids)"
                )
            embeddings[m] = F.normalize(adapted, dim=-1)
        return embeddings, present

    def score_items(
        self,
        sequence_embeddings: torch.Tensor,
        item_ids: torch.Tensor | None = None,
        catalogue: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Fused logits (divided by the temperature) of candidate items: the cosine logit of each modality, fused
        by [`MISSRecItemFusion`], joined with the id logit in transductive mode (`scoring_missrec`'s rules, which
        the serving index applies too).

        Args:
            sequence_embeddings: `[B, d]` from [`embed_sequences`].
            item_ids: `[C]` candidate ids, or None for the whole catalogue.
            catalogue: adapted embeddings of the candidates, when the caller already has them.

        Returns:
            `[B, C]`, or `[B, num_items + 1]` (column = item id, column 0 set to the dtype's minimum).
        """
        items = self.embed_items(item_ids, catalogue)
        if self.item_fusion.mode == "static":
            # Linear rules: fused on the `[C, d]` embeddings, one matmul, instead of on every `[B, C]` logit.
            table = static_item_embeddings(
                items, self.item_presence(item_ids), self.modality_names, self.item_fusion.id_share()
            )
            logits = (sequence_embeddings / self.score_temperature()) @ table.T
        else:
            modality_logits = torch.stack([sequence_embeddings @ items[m].T for m in self.modality_names])  # [M, B, C]
            logits = self.item_fusion(modality_logits, self.item_presence(item_ids), item_ids)
            if "id" in items:
                id_logits = sequence_embeddings @ items["id"].T
                logits = join_id_scores(id_logits, logits, id_share=self.item_fusion.id_share())
            logits = logits / self.score_temperature()
        if item_ids is None:
            logits[:, 0] = torch.finfo(logits.dtype).min
        return logits

    def _tables_for_forward(self) -> tuple[dict[str, torch.Tensor], tuple | None]:
        """The adapted catalogue and interest projections a forward pass uses: computed now, or inside
        [`reusing_weight_tables`] computed by the first pass and reused."""
        tables = self._weight_tables
        if tables is None:
            return self.adapted_catalogue(), None
        if not tables:
            tables |= {"catalogue": self.adapted_catalogue(), "projections": self.interest_projections()}
        return tables["catalogue"], tables["projections"]

    def forward(
        self,
        item_seq: torch.Tensor,
        lengths: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> MISSRecModelOutput | tuple:
        """
        Args:
            item_seq: `[B, L]` long, left-aligned histories (0 = padding, most recent last).
            lengths: `[B]` items per history (default: counted).
            text_features: `[B, L, text_feature_dim]` text of the history items to use instead of the catalogue's.
            return_dict: return a `ModelOutput` (default) or a tuple.

        Returns:
            [`MISSRecModelOutput`]: `sequence_embeddings` `[B, hidden_size]`, `diversity_loss` `()`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        catalogue, projections = self._tables_for_forward() if text_features is None else (None, None)
        seq, diversity = self._encode(
            item_seq, lengths, text_features, catalogue=catalogue, interest_projections=projections
        )
        output = MISSRecModelOutput(sequence_embeddings=seq, diversity_loss=diversity)
        return output if return_dict else output.to_tuple()

    def build_item_index(self, kind: str = "exact", **options) -> MISSRecItemIndex:
        """The item index that serves this model's catalogue, as the weights are now: `"exact"` (brute force) or
        `"approximate"` (HNSW candidates re-scored exactly; needs faiss). Build it again after changing the weights
        or the catalogue. `options`: see [`MISSRecItemIndex.build`] (`table_dtype`, `candidates`, `ef_search`, ...).
        """
        self._check_catalogue()
        return MISSRecItemIndex.build(self, kind, **options)


class _MISSRecHead(MISSRecPreTrainedModel):
    """A MISSRec head: the [`MISSRecModel`] (`self.missrec`) and a training objective, with no weights of its own
    (items are scored with the base's own item embeddings, as a tied language-model head scores tokens), so a
    head folder, a base folder and an adapter all hold the same tensors."""

    def __init__(self, config: MISSRecConfig):
        super().__init__(config)
        self.missrec = MISSRecModel(config)
        self.post_init()

    @classmethod
    def from_base(cls, missrec: nn.Module):
        """This head around an existing base (a [`MISSRecModel`] or a `PeftModel` of one), sharing its weights,
        catalogue and config: nothing is copied or re-initialised."""
        config = unwrap_missrec(missrec).config
        with torch.device("meta"):  # the throw-away base the constructor builds costs no memory
            head = cls(config)
        head.missrec = missrec
        head.config = config
        return head

    @property
    def base(self) -> MISSRecModel:
        """The [`MISSRecModel`] itself (inside PEFT's wrapper, when `missrec` is a `PeftModel`)."""
        return unwrap_missrec(self.missrec)

    def reusing_weight_tables(self) -> contextlib.AbstractContextManager:
        """[`MISSRecModel.reusing_weight_tables`] of the base (for evaluation loops)."""
        return self.base.reusing_weight_tables()

    def build_item_index(self, kind: str = "exact", **options) -> MISSRecItemIndex:
        """[`MISSRecModel.build_item_index`] of the base (with its active adapter, if any)."""
        return self.base.build_item_index(kind, **options)


class MISSRecForSequentialRecommendation(_MISSRecHead):
    """
    MISSRec with its fine-tuning objective (the full-catalogue cross-entropy) and exact top-k recommendation.

    ```python
    model = MISSRecForSequentialRecommendation(MISSRecConfig())
    model.missrec.set_catalogue(text_features=text, image_features=image)  # [N, 512] each
    model.missrec.discover_interests()  # a training step: before every epoch (see InterestDiscoveryCallback)
    out = model(item_seq, labels=targets)  # out.loss, out.scores [B, N + 1]
    top = model.recommend(item_seq, top_k=10)  # top.item_ids [B, 10], top.scores [B, 10]
    ```
    """

    def forward(
        self,
        item_seq: torch.Tensor,
        lengths: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        candidate_ids: torch.Tensor | None = None,
        candidate_log_q: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> MISSRecSequentialRecommendationOutput | tuple:
        """
        Args:
            item_seq: `[B, L]` long, left-aligned histories (0 = padding, most recent last).
            lengths: `[B]` items per history (default: counted).
            labels: `[B]` next item ids. With them the output carries the loss.
            candidate_ids: `[C]` sorted distinct item ids, holding every label: the sampled softmax (for large
                catalogues). Items are scored, and the loss taken, among these only, and only their embeddings
                are computed. None: the full catalogue.
            candidate_log_q: `[C]` the log of each candidate's expected count in a batch's candidate set (the
                logQ correction of [`sampled_cross_entropy`]); required with `candidate_ids`.
            return_dict: return a `ModelOutput` (default) or a tuple.

        Returns:
            [`MISSRecSequentialRecommendationOutput`] (`scores` `[B, num_items + 1]`, or `[B, C]` over the
            candidates).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        base = self.base
        sampled = candidate_ids is not None
        if sampled and (labels is None or candidate_log_q is None):
            raise ValueError("candidate_ids trains the sampled softmax: give labels and candidate_log_q too")
        if sampled:
            validate_candidates(candidate_ids, candidate_log_q, self.config.num_items)
        catalogue, projections = (None, None) if sampled else base._tables_for_forward()
        seq, diversity = base._encode(
            item_seq, lengths, catalogue=catalogue, with_diversity=labels is not None, interest_projections=projections
        )
        raw = base.score_items(seq, candidate_ids, catalogue=catalogue)

        def to_columns(item_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Where items land among the scored columns, and whether they are there at all."""
            if not sampled:
                return item_ids, torch.ones_like(item_ids, dtype=torch.bool)
            return candidate_columns(candidate_ids, item_ids)

        offsets = None
        if base.repeat_bias is not None:
            rows, items, values = base.repeat_bias(item_seq, lengths)
            item_columns, inside = to_columns(items)
            offsets = (rows[inside], item_columns[inside], values[inside])
        scores = raw if offsets is None else add_history_offsets(raw, offsets)
        loss = None
        if labels is not None:
            labels = validate_labels(labels, len(item_seq), self.config.num_items)
            targets, candidate = to_columns(labels)
            if not candidate.all():
                raise ValueError(f"candidate_ids must hold every label; missing: {labels[~candidate][:5].tolist()}")
            smoothing = self.config.label_smoothing

            def cross_entropy(logits: torch.Tensor, excluded: torch.Tensor | None = None) -> torch.Tensor:
                if not sampled:
                    return catalogue_cross_entropy(logits, targets, smoothing, excluded)
                return sampled_cross_entropy(logits, targets, candidate_log_q, smoothing, excluded)

            if self.config.exclude_history_in_loss:  # train as you serve: the history gets no probability mass
                excluded = history_mask(item_seq, raw.shape[1], keep=targets, candidate_ids=candidate_ids)
                ranking = cross_entropy(raw, excluded)
                if offsets is not None:
                    # The repeat offsets alone still learn, on the paper's whole softmax, how far a history's own
                    # items rank (what the official protocol ranks): the model's scores are held fixed there.
                    ranking = ranking + cross_entropy(add_history_offsets(raw.detach(), offsets))
            else:
                ranking = cross_entropy(scores)
            loss = ranking + self.config.diversity_loss_weight * diversity
        output = MISSRecSequentialRecommendationOutput(
            loss=loss, scores=scores, sequence_embeddings=seq, diversity_loss=diversity
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def recommend(
        self,
        item_seq: torch.Tensor,
        lengths: torch.Tensor | None = None,
        *,
        top_k: int = 10,
        exclude_history: bool = True,
        candidates: torch.Tensor | None = None,
        new_items: dict[str, FeatureTable] | None = None,
        index: MISSRecItemIndex | None = None,
        check_inputs: bool = True,
    ) -> MISSRecRecommendationOutput:
        """The top-`top_k` items of every history, ranked by the scores `forward` gives: exactly, from the weights
        as they are, or by `index`.

        Args:
            item_seq: `[B, L]` long, left-aligned histories (0 = padding, most recent last); the whole history, of
                which the encoder reads the `max_seq_length` most recent items.
            lengths: `[B]` items per history (default: counted).
            top_k: how many items per history.
            exclude_history: never return an item of the (whole) history.
            candidates: `[C]` long catalogue item ids: rank only these (default: the whole catalogue).
            new_items: items that are not in the catalogue, ranked beside it from their features alone (inductive
                models): `{"text_features": [n, dt], "image_features": [n, di]}`; their ids are `N + 1 .. N + n`.
            index: a [`MISSRecItemIndex`] of this model ([`build_item_index`]), reused across calls (exact or
                approximate); without it each call builds an exact one (the whole catalogue's item embeddings).
            check_inputs: False skips validating `item_seq` (for a caller that built it from ids it has checked,
                with exact `lengths`: the serving pipeline).

        Returns:
            [`MISSRecRecommendationOutput`] (`scores` `[B, top_k]`, `item_ids` `[B, top_k]`, best first). A row with
            fewer than `top_k` candidates outside its history ends in item id 0 (padding) with score `-inf`.
        """
        base = self.base
        num_items = self.config.num_items
        new = None
        if new_items is not None:
            if self.config.id_mode != "inductive":
                raise ValueError(
                    "new items are scored from their features alone, which needs an inductive model "
                    f"(this one has id_mode={self.config.id_mode!r})"
                )
            new = ItemIndex.from_embeddings(base, *base.embed_new_items(**new_items))
        if candidates is not None:
            candidates = torch.as_tensor(candidates, dtype=torch.long, device=base.device).unique()
            if len(candidates) and (candidates.min() < 1 or candidates.max() > num_items):
                raise ValueError(f"candidates must be item ids in [1, {num_items}]")
        num_candidates = (num_items if candidates is None else len(candidates)) + (0 if new is None else new.num_items)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_candidates:
            raise ValueError(f"top_k={top_k!r} must be an integer in [1, {num_candidates}] (the candidates)")
        if index is None:
            index = base.build_item_index()
        else:
            index.check(base)
        item_seq = item_seq.to(base.device)
        lengths = None if lengths is None else lengths.to(base.device)
        seq = base.embed_sequences(item_seq, lengths, check_inputs=check_inputs, **index.tables)
        excluded = offsets = None
        if exclude_history:
            rows, ids = history_items(item_seq)
            excluded = (rows, ids - 1)
        elif base.repeat_bias is not None:  # (excluded items need no offset)
            rows, ids, values = base.repeat_bias(item_seq, lengths)
            offsets = (rows, ids - 1, values)
        parts = []
        if candidates is None or len(candidates):
            k = min(top_k, num_items if candidates is None else len(candidates))
            allowed = None if candidates is None else candidates - 1
            values, rows_found = index.top_k(seq, k, allowed, excluded, offsets)
            parts.append((values, rows_found + 1))
        if new is not None:
            values, rows_found = new.top_k(seq, min(top_k, new.num_items))
            parts.append((values, rows_found + 1 + num_items))
        values, found = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
        if len(parts) > 1:
            best = values.topk(top_k, dim=1)
            values, found = best.values, found.gather(1, best.indices)
        # Where the history leaves fewer than top_k candidates, the row ends in padding, not in excluded items.
        found = found.masked_fill(values == float("-inf"), 0)
        return MISSRecRecommendationOutput(scores=values, item_ids=found)


class MISSRecForPreTraining(_MISSRecHead):
    """
    MISSRec with its pre-training objective: the in-batch sequence→item contrastive loss, λ times the
    sequence→augmented-sequence loss and γ times the diversity regulariser.

    The other targets of the batch are the negatives; a target that occurs twice in the batch is not counted as its
    own negative.
    """

    def forward(
        self,
        item_seq: torch.Tensor,
        labels: torch.Tensor,
        augmented_item_seq: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
        augmented_lengths: torch.Tensor | None = None,
        augmented_text_features: torch.Tensor | None = None,
        label_log_q: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> MISSRecPreTrainingOutput | tuple:
        """
        Args:
            item_seq: `[B, L]` histories; labels: `[B]` their next items; lengths: `[B]`.
            augmented_item_seq: `[B, L']` the augmented view (e.g. item drop); augmented_lengths: `[B]`. Required
                with the sequence->sequence term; ignored (not encoded) when `config.seq_seq_loss_weight` is 0.
            augmented_text_features: `[B, L', text_feature_dim]` alternative text of the augmented view (word drop).
            label_log_q: `[B]` the log of each label's share of the training targets: subtracted from the in-batch
                logits of the sequence->item loss (its logQ correction), as the batch's other targets, its
                negatives, are drawn by popularity. None: the paper's uncorrected loss.
            return_dict: return a `ModelOutput` (default) or a tuple.

        Returns:
            [`MISSRecPreTrainingOutput`] (`scores` `[B, B]` in-batch, uncorrected). As a tuple (`return_dict=False`)
            it holds the fields that are not None: without the sequence->sequence term, no `seq_seq_loss`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        base, cfg = self.base, self.config
        seq, diversity = base._encode(item_seq, lengths)
        if cfg.seq_seq_loss_weight:  # without its term the augmented view is not encoded: half a step's cost
            if augmented_item_seq is None:
                raise ValueError("config.seq_seq_loss_weight > 0: the sequence->sequence term needs augmented_item_seq")
            seq_aug, diversity_aug = base._encode(augmented_item_seq, augmented_lengths, augmented_text_features)
            diversity = diversity + diversity_aug
        labels = validate_labels(labels, len(item_seq), cfg.num_items)
        targets = torch.arange(len(labels), device=labels.device)
        scores = base.score_items(seq, labels)
        duplicate = (labels[:, None] == labels[None]) & (targets[:, None] != targets[None])
        scores = scores.masked_fill(duplicate, torch.finfo(scores.dtype).min)
        if label_log_q is not None and label_log_q.shape != labels.shape:
            raise ValueError(f"label_log_q has shape {tuple(label_log_q.shape)}; expected {tuple(labels.shape)}")
        logits = scores if label_log_q is None else scores - label_log_q.to(scores.dtype)[None, :]
        seq_item = F.cross_entropy(logits, targets)
        loss, seq_seq = seq_item, None
        if cfg.seq_seq_loss_weight:
            seq_seq = F.cross_entropy(seq @ seq_aug.T / base.score_temperature(), targets)
            loss = loss + cfg.seq_seq_loss_weight * seq_seq
        loss = loss + cfg.diversity_loss_weight * diversity
        output = MISSRecPreTrainingOutput(
            loss=loss,
            scores=scores,
            sequence_embeddings=seq,
            seq_item_loss=seq_item,
            seq_seq_loss=seq_seq,
            diversity_loss=diversity,
        )
        return output if return_dict else output.to_tuple()


MISSRecConfig.register_for_auto_class()
MISSRecModel.register_for_auto_class("AutoModel")
MISSRecForPreTraining.register_for_auto_class("AutoModelForPreTraining")
# Not an auto class of transformers (which `register_for_auto_class` checks): `modeling_missrec.auto` defines it.
MISSRecForSequentialRecommendation._auto_class = "AutoModelForSequentialRecommendation"
