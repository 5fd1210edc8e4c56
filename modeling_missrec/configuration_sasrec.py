"""SASRec baseline configuration."""

from __future__ import annotations

from transformers import PretrainedConfig

from .configuration_missrec import ACTIVATIONS, _check_choice, _check_int, _check_positive


class SASRecConfig(PretrainedConfig):
    r"""
    Configuration of a [`SASRecModel`]: the ID-only self-attentive sequential recommender of Kang & McAuley
    (ICDM 2018), as implemented in RecBole and used as the main ID-only baseline of the MISSRec paper. The
    defaults are RecBole's SASRec defaults.

    Args:
        num_items (`int`, *optional*, defaults to 0):
            Size of the item catalogue (item ids are `1..num_items`, 0 is padding). It fixes the shape of the
            item embedding table `[num_items + 1, hidden_size]`.
        hidden_size (`int`, *optional*, defaults to 64):
            Width of the item and position embeddings and of the Transformer.
        num_hidden_layers (`int`, *optional*, defaults to 2):
            Number of causal self-attention Transformer layers.
        num_attention_heads (`int`, *optional*, defaults to 2):
            Attention heads; must divide `hidden_size`.
        intermediate_size (`int`, *optional*, defaults to 256):
            Width of the feed-forward layers.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.5):
            Dropout on the input embeddings and on the residual branches.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.5):
            Dropout on the attention probabilities.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Feed-forward activation: `"gelu"`, `"relu"`, `"silu"` or `"tanh"`.
        layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            LayerNorm epsilon.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal weight initialisation.
        max_seq_length (`int`, *optional*, defaults to 50):
            Longest history the model reads (number of learned positions); longer histories keep their most
            recent items.
        exclude_history_in_loss (`bool`, *optional*, defaults to `False`):
            Train as you serve: leave the items of each training history other than its target out of the softmax
            (RecBole: `False`), the rule MISSRec's config attribute of the same name sets.
    """

    model_type = "sasrec"

    def __init__(
        self,
        num_items: int = 0,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 2,
        intermediate_size: int = 256,
        hidden_dropout_prob: float = 0.5,
        attention_probs_dropout_prob: float = 0.5,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        max_seq_length: int = 50,
        exclude_history_in_loss: bool = False,
        **kwargs,
    ):
        _check_int("num_items", num_items, 0)
        _check_int("hidden_size", hidden_size, 1)
        _check_int("num_hidden_layers", num_hidden_layers, 1)
        _check_int("num_attention_heads", num_attention_heads, 1)
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_attention_heads={num_attention_heads}")
        _check_int("intermediate_size", intermediate_size, 1)
        for name, p in (
            ("hidden_dropout_prob", hidden_dropout_prob),
            ("attention_probs_dropout_prob", attention_probs_dropout_prob),
        ):
            _check_positive(name, p, allow_zero=True)
            if not 0 <= p < 1:
                raise ValueError(f"{name}={p!r} must be in [0, 1)")
        _check_choice("hidden_act", hidden_act, ACTIVATIONS)
        _check_positive("layer_norm_eps", layer_norm_eps)
        _check_positive("initializer_range", initializer_range)
        _check_int("max_seq_length", max_seq_length, 1)
        if not isinstance(exclude_history_in_loss, bool):
            raise ValueError(f"exclude_history_in_loss={exclude_history_in_loss!r} must be True or False")

        self.num_items = num_items
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.max_seq_length = max_seq_length
        self.exclude_history_in_loss = exclude_history_in_loss
        super().__init__(**kwargs)
