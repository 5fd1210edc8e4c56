"""MISSRec model configuration."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig
from transformers.pipelines import PIPELINE_REGISTRY

MODALITIES = ("text", "image", "both")
ID_MODES = ("inductive", "transductive")
ITEM_ID_INITS = ("random", "content")
SEQ_MM_FUSIONS = ("add", "contextual")
ITEM_MM_FUSIONS = ("static", "dynamic_shared", "dynamic_instance")
INTEREST_METHODS = ("kmeans", "dpc_knn", "none")
KMEANS_INITS = ("k-means++", "random")
ACTIVATIONS = ("gelu", "relu", "silu", "tanh")


# The config fields that describe the catalogue a model holds (set by its catalogue methods alone, through
# `MISSRecModel._describe_catalogue`); every other field describes the architecture.
CATALOGUE_FIELDS = ("num_items", "num_interests", "id_mode", "modalities", "text_feature_dim", "image_feature_dim")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


class MISSRecConfig(PretrainedConfig):
    r"""
    Configuration of a [`MISSRecModel`]: the multi-modal interest-aware sequential recommender of
    Wang et al., ACM MM 2023. The defaults are the paper's hyper-parameters (`missrec-base`).

    Args:
        text_feature_dim (`int`, *optional*, defaults to 512):
            Width of the per-item text feature (CLIP text: 512, MiniLM: 384).
        image_feature_dim (`int`, *optional*, defaults to 512):
            Width of the per-item image feature (CLIP image: 512).
        modalities (`str`, *optional*, defaults to `"both"`):
            Which item modalities the model reads: `"text"`, `"image"` or `"both"`.
        id_mode (`str`, *optional*, defaults to `"inductive"`):
            `"inductive"`: items are represented by their features only, so items never seen in training
            can be scored. `"transductive"`: adds a learned item-id embedding to the decoder input and an
            id logit to the item score.
        num_items (`int`, *optional*, defaults to 0):
            Size of the item catalogue held in the model (item ids are `1..num_items`, 0 is padding).
            Set by [`MISSRecModel.set_catalogue`] / `extend_catalogue`; it fixes the shapes of the catalogue
            buffers.
        num_interests (`int`, *optional*, defaults to 0):
            Number of interest clusters currently held (0 until [`MISSRecModel.discover_interests`] runs; set by
            it and by `set_interest_tables`).

        `num_items`, `num_interests`, `id_mode` (`add_item_id_embeddings`), `modalities` and the feature widths
        (`add_modality`) describe the catalogue a model holds: after construction only those `MISSRecModel`
        methods change them (through one writer, `_describe_catalogue`), so a saved config always describes the
        buffers saved beside it. Do not edit them on a model's config by hand.
        seq_mm_fusion (`str`, *optional*, defaults to `"add"`):
            How a history item's modalities enter the decoder: `"add"` sums them into one token,
            `"contextual"` keeps one token per modality.
        item_mm_fusion (`str`, *optional*, defaults to `"dynamic_shared"`):
            How per-modality candidate logits are fused: `"static"` (mean), `"dynamic_shared"` (softmax
            weights with one learned temperature) or `"dynamic_instance"` (one learned temperature per item).
        interest_method (`str`, *optional*, defaults to `"kmeans"`):
            Clustering used for interest discovery: `"kmeans"` or `"dpc_knn"`; `"none"` switches the interest
            tokens off: discovery clusters nothing (`num_interests` 0), every history's encoder reads the one
            all-zero padding token, so the decoder's cross-attention adds the same vector to every history and
            the sequence representation comes from the history's items alone.
        interest_ratio (`float`, *optional*, defaults to 0.5):
            Number of interests as a fraction of the number of item-modality vectors (paper: 0.02 for
            pre-training, 0.5 for fine-tuning).
        knn_local_ratio (`float`, *optional*, defaults to 0.1):
            DPC-KNN only: neighbourhood size for the local density, as a fraction of the vectors.
        kmeans_init (`str`, *optional*, defaults to `"random"`):
            k-means initialisation, `"k-means++"` or `"random"` (seeded sample of the vectors).
        kmeans_max_iter (`int`, *optional*, defaults to 1):
            Maximum Lloyd iterations. The defaults, `kmeans_init="random", kmeans_max_iter=1`, are the one-step
            clustering of the official code, which recommended better than k-means++ run to convergence
            (`"k-means++"`, 30) on Amazon Scientific and costs less per epoch.
        kmeans_tol (`float`, *optional*, defaults to 1e-4):
            Stop when the relative decrease of the k-means inertia falls below this value.
        interest_seed (`int`, *optional*, defaults to 0):
            Seed of the clustering initialisation.
        hidden_size (`int`, *optional*, defaults to 300):
            Width of the adapted embeddings and of the Transformer.
        num_encoder_layers (`int`, *optional*, defaults to 1):
            Layers of the contextual (interest) encoder.
        num_decoder_layers (`int`, *optional*, defaults to 1):
            Layers of the interest-aware decoder.
        num_attention_heads (`int`, *optional*, defaults to 4):
            Attention heads; must divide `hidden_size`.
        intermediate_size (`int`, *optional*, defaults to 256):
            Width of the feed-forward layers.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.5):
            Dropout on embeddings and residual branches.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.5):
            Dropout on attention probabilities.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Feed-forward activation: `"gelu"`, `"relu"`, `"silu"` or `"tanh"`.
        layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            LayerNorm epsilon.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal weight initialisation.
        max_seq_length (`int`, *optional*, defaults to 50):
            Longest history the model reads; longer histories keep their most recent items.
        score_temperature (`float`, *optional*, defaults to 0.07):
            Logits are cosine similarities divided by this temperature (with `learn_score_temperature`, its
            starting value).
        learn_score_temperature (`bool`, *optional*, defaults to `False`):
            Learn the score temperature in training (the paper: fixed), in log space from `score_temperature`, as
            CLIP learns its logit scale ([`MISSRecScoreTemperature`]; never below 0.01). A softmax over a large
            catalogue needs sharper logits than one over a small catalogue, so a fixed value suits only catalogues
            of the size it was chosen on.
        seq_seq_loss_weight (`float`, *optional*, defaults to 1e-3):
            λ, the weight of the sequence-sequence contrastive term in pre-training. 0 drops the term, and with it
            the encoding of the augmented view, which halves the cost of a pre-training step.
        diversity_loss_weight (`float`, *optional*, defaults to 1e-4):
            γ, the weight of the interest diversity regulariser.
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing of the fine-tuning cross-entropy over the catalogue, in [0, 1) (the paper: 0). The
            smoothed mass is spread over the real items only, not the padding column.
        item_id_init (`str`, *optional*, defaults to `"random"`):
            Transductive mode: how training starts the item-id embeddings. `"random"` (the paper): normal(0,
            `initializer_range`). `"content"`: each item's id starts in the direction of its content (the mean of
            its L2-normalised adapted modality embeddings, at a random row's norm), so that an item the training
            data rarely shows is not scored by a random direction ([`MISSRecModel.init_item_ids_from_content`];
            the training script applies it to ids it creates, never to ids a pre-trained model learned).
        learned_id_weight (`bool`, *optional*, defaults to `False`):
            Transductive mode: learn how much the item-id logit counts beside the fused content logit, one share
            `a` for the model (`a * s_id + (1 - a) * fused`, starting at the paper's fixed 1/3: `(s_id + 2 *
            fused) / 3`), so that a domain whose ids are noise (rarely seen items) can lean on content.
        exclude_history_in_loss (`bool`, *optional*, defaults to `False`):
            Train as you serve: leave the items of each training history other than its target out of the
            fine-tuning softmax, as `recommend(exclude_history=True)` and the pipeline leave them out of a
            recommendation (the paper: `False`, every catalogue item competes). Only the items the model reads
            (`max_seq_length` most recent) are left out. The repeat offsets (`repeat_bias`), which only matter where
            the history is ranked too, still learn on the whole softmax, with the model's scores held fixed.
        repeat_bias (`bool`, *optional*, defaults to `False`):
            Learn a logit offset for the items a history already holds, one per recency position
            ([`MISSRecRepeatBias`]; the paper: none, a history's own items score like any other). The offsets start
            at 0 and are learned from the training targets, so they follow how often the domain's users take an
            item again.
    """

    model_type = "missrec"

    def __init__(
        self,
        text_feature_dim: int = 512,
        image_feature_dim: int = 512,
        modalities: str = "both",
        id_mode: str = "inductive",
        num_items: int = 0,
        num_interests: int = 0,
        seq_mm_fusion: str = "add",
        item_mm_fusion: str = "dynamic_shared",
        interest_method: str = "kmeans",
        interest_ratio: float = 0.5,
        knn_local_ratio: float = 0.1,
        kmeans_init: str = "random",
        kmeans_max_iter: int = 1,
        kmeans_tol: float = 1e-4,
        interest_seed: int = 0,
        hidden_size: int = 300,
        num_encoder_layers: int = 1,
        num_decoder_layers: int = 1,
        num_attention_heads: int = 4,
        intermediate_size: int = 256,
        hidden_dropout_prob: float = 0.5,
        attention_probs_dropout_prob: float = 0.5,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        max_seq_length: int = 50,
        score_temperature: float = 0.07,
        learn_score_temperature: bool = False,
        seq_seq_loss_weight: float = 1e-3,
        diversity_loss_weight: float = 1e-4,
        label_smoothing: float = 0.0,
        item_id_init: str = "random",
        learned_id_weight: bool = False,
        exclude_history_in_loss: bool = False,
        repeat_bias: bool = False,
        **kwargs,
    ):
        _check_int("text_feature_dim", text_feature_dim, 1)
        _check_int("image_feature_dim", image_feature_dim, 1)
        _check_choice("modalities", modalities, MODALITIES)
        _check_choice("id_mode", id_mode, ID_MODES)
        _check_choice("item_id_init", item_id_init, ITEM_ID_INITS)
        _check_int("num_items", num_items, 0)
        _check_int("num_interests", num_interests, 0)
        _check_choice("seq_mm_fusion", seq_mm_fusion, SEQ_MM_FUSIONS)
        _check_choice("item_mm_fusion", item_mm_fusion, ITEM_MM_FUSIONS)
        _check_choice("interest_method", interest_method, INTEREST_METHODS)
        if not 0 < interest_ratio <= 1:
            raise ValueError(f"interest_ratio={interest_ratio!r} must be in (0, 1]")
        if not 0 < knn_local_ratio <= 1:
            raise ValueError(f"knn_local_ratio={knn_local_ratio!r} must be in (0, 1]")
        _check_choice("kmeans_init", kmeans_init, KMEANS_INITS)
        _check_int("kmeans_max_iter", kmeans_max_iter, 1)
        _check_positive("kmeans_tol", kmeans_tol, allow_zero=True)
        _check_int("interest_seed", interest_seed, 0)
        _check_int("hidden_size", hidden_size, 1)
        _check_int("num_encoder_layers", num_encoder_layers, 1)
        _check_int("num_decoder_layers", num_decoder_layers, 1)
        _check_int("num_attention_heads", num_attention_heads, 1)
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_attention_heads={num_attention_heads}")
        _check_int("intermediate_size", intermediate_size, 1)
        for name, p in (
            ("hidden_dropout_prob", hidden_dropout_prob),
            ("attention_probs_dropout_prob", attention_probs_dropout_prob),
        ):
            if not 0 <= p < 1:
                raise ValueError(f"{name}={p!r} must be in [0, 1)")
        _check_choice("hidden_act", hidden_act, ACTIVATIONS)
        _check_positive("layer_norm_eps", layer_norm_eps)
        _check_positive("initializer_range", initializer_range)
        _check_int("max_seq_length", max_seq_length, 1)
        _check_positive("score_temperature", score_temperature)
        if not isinstance(learn_score_temperature, bool):
            raise ValueError(f"learn_score_temperature={learn_score_temperature!r} must be True or False")
        _check_positive("seq_seq_loss_weight", seq_seq_loss_weight, allow_zero=True)
        _check_positive("diversity_loss_weight", diversity_loss_weight, allow_zero=True)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
        if not isinstance(learned_id_weight, bool):
            raise ValueError(f"learned_id_weight={learned_id_weight!r} must be True or False")
        if not isinstance(exclude_history_in_loss, bool):
            raise ValueError(f"exclude_history_in_loss={exclude_history_in_loss!r} must be True or False")
        if not isinstance(repeat_bias, bool):
            raise ValueError(f"repeat_bias={repeat_bias!r} must be True or False")

        self.text_feature_dim = text_feature_dim
        self.image_feature_dim = image_feature_dim
        self.modalities = modalities
        self.id_mode = id_mode
        self.num_items = num_items
        self.num_interests = num_interests
        self.seq_mm_fusion = seq_mm_fusion
        self.item_mm_fusion = item_mm_fusion
        self.interest_method = interest_method
        self.interest_ratio = interest_ratio
        self.knn_local_ratio = knn_local_ratio
        self.kmeans_init = kmeans_init
        self.kmeans_max_iter = kmeans_max_iter
        self.kmeans_tol = kmeans_tol
        self.interest_seed = interest_seed
        self.hidden_size = hidden_size
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.max_seq_length = max_seq_length
        self.score_temperature = score_temperature
        self.learn_score_temperature = learn_score_temperature
        self.seq_seq_loss_weight = seq_seq_loss_weight
        self.label_smoothing = label_smoothing
        self.exclude_history_in_loss = exclude_history_in_loss
        self.item_id_init = item_id_init
        self.learned_id_weight = learned_id_weight
        self.repeat_bias = repeat_bias
        self.diversity_loss_weight = diversity_loss_weight
        super().__init__(**kwargs)

    @property
    def custom_pipelines(self) -> dict[str, Any]:
        """The pipeline tasks whose code is saved with the model (`pipe.save_pretrained` writes them), less those
        this process has registered already: with missrec-hf installed (`import modeling_missrec` registers
        `"sequential-recommendation"`), `pipeline(task, model=folder)` then takes the installed pipeline and, as
        `AutoModel.from_pretrained(folder)`, needs no `trust_remote_code`. Saved configs keep every task."""
        registered = set(PIPELINE_REGISTRY.get_supported_tasks())
        return {task: info for task, info in self._saved_pipelines.items() if task not in registered}

    @custom_pipelines.setter
    def custom_pipelines(self, value: dict[str, Any] | None) -> None:
        self.__dict__["_saved_pipelines"] = dict(value or {})

    @property
    def _saved_pipelines(self) -> dict[str, Any]:
        return self.__dict__.get("_saved_pipelines", {})

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        saved = output.pop("_saved_pipelines", None)
        if saved:
            output["custom_pipelines"] = saved
        return output

    @property
    def modality_names(self) -> tuple[str, ...]:
        """The modalities the model reads, in a fixed order (`("text", "image")` for `"both"`)."""
        return ("text", "image") if self.modalities == "both" else (self.modalities,)

    def feature_dim(self, modality: str) -> int:
        """Width of the raw feature of `modality` (`"text"` or `"image"`)."""
        return self.text_feature_dim if modality == "text" else self.image_feature_dim
