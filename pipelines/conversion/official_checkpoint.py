"""Import a checkpoint saved by the official MISSRec code (`gimpong/MM23-MISSRec`) into [`MISSRecModel`].

The official trainers (RecBole) save `torch.save({"config": <RecBole Config>, "state_dict": ..., ...})`. This
module reads such a file without RecBole installed, maps its `nn.Transformer` weights onto this repository's
attention blocks (the packed q/k/v input projection is split in three), and carries the catalogue features and
interest tables of a fine-tuned checkpoint over. RecBole numbers items in order of first appearance in a
domain's benchmark files; [`recbole_item_order`] recomputes that order, so that the imported model uses this
repository's item ids (`item2index` + 1) and can be evaluated, served or fine-tuned here.

    python -m modeling_missrec.pipelines.conversion.official_checkpoint saved/MISSRec-Nov-24-2026_12-10-35.pth \\
        --output converted/ --data_dir ../shared/data/amazon-scientific-mm --domain Scientific --evaluate

An official checkpoint is a pickle. It is read with an allow-list ([`ALLOWED_GLOBALS`]: tensor rebuilders, dtypes,
devices, plain containers) and inert stand-ins for RecBole's and the official code's classes ([`STAND_IN_MODULES`]);
a pickle naming anything else (`os.system`, `builtins.eval`, ...) is refused with [`UnsafeCheckpointError`] before
it runs.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import logging
import os
import pickle
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ...configuration_missrec import MISSRecConfig
from ...modeling_missrec import MISSRecModel
from ..data.missrec_files import INTER_HEADER, SPLIT_FILES, _path, _rows


class _RecBoleObject:
    """Stands in for a pickled RecBole object (its config, its enums): keeps what was pickled, needs no RecBole."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state) -> None:
        self.state = state


# The only real globals an official checkpoint's pickle may name: the tensor and storage rebuilders `torch.save`
# writes, dtypes and devices (RecBole's config holds `torch.device`), plain containers and numpy scalars (as
# torch's own `weights_only` loading allows them). Each builds data and calls nothing a pickle could steer.
_STORAGES = ("Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
ALLOWED_GLOBALS = frozenset(
    {("torch._utils", name) for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter")}
    | {("torch._utils", "_rebuild_parameter_with_state"), ("torch._tensor", "_rebuild_from_type_v2")}
    | {("torch", f"{kind}Storage") for kind in _STORAGES}
    | {("torch", dtype) for dtype in _DTYPES}
    | {("torch", "device"), ("torch", "Size"), ("torch", "Tensor"), ("torch.nn.parameter", "Parameter")}
    | {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset")}
    # numpy scalars (a fine-tuned checkpoint's `best_valid_score` is an np.float64) and the bytes they carry
    | {(f"numpy.{core}.multiarray", "scalar") for core in ("core", "_core")}
    | {("numpy", "dtype"), ("_codecs", "encode")}
)
# Modules whose classes are replaced by inert stand-ins: RecBole's (its config, its enums), PyYAML's (the config
# keeps `yaml_loader = yaml.FullLoader`) and the official repository's own top-level modules (its config names the
# model class, `missrec.MISSRec`). A stand-in only keeps the arguments and state it is given, so no name under
# these modules can run code.
STAND_IN_MODULES = frozenset(
    {"recbole", "yaml", "missrec", "data", "trainer", "utils", "model_utils", "cluster_utils", "torchpq"}
    | {"finetune", "ddp_finetune", "ddp_pretrain"}
)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint's pickle names a global that no official MISSRec checkpoint holds."""


class _Unpickler(pickle.Unpickler):
    """Rebuilds tensors and RecBole's objects (as stand-ins); refuses every other global a pickle names."""

    def find_class(self, module: str, name: str):
        # torch.save's protocol 2 writes Python 2 names (`__builtin__.set`): read them as Python 3's.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module.split(".")[0] in STAND_IN_MODULES:
            return type(name, (_RecBoleObject,), {"__module__": module})
        raise UnsafeCheckpointError(
            f"refused to load the global {module}.{name}: an official MISSRec checkpoint holds only tensors, "
            "containers and RecBole objects, and loading this name could run code (see docs/security.md)"
        )


logger = logging.getLogger(__name__)
_PICKLE = SimpleNamespace(Unpickler=_Unpickler, load=lambda f, **kw: _Unpickler(f, **kw).load(), __name__="pickle")


def read_official_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights and the run's settings of an official MISSRec checkpoint.

    Returns:
        `(state_dict, settings)`: the model's tensors under the official names, and RecBole's final config as a
        dict (`{}` when the file carries none).
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE)
    except UnsafeCheckpointError as error:
        raise UnsafeCheckpointError(f"{path}: {error}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a checkpoint of the official MISSRec code (no 'state_dict' entry)")
    config = checkpoint.get("config")
    state = getattr(config, "state", None)
    settings = state.get("final_config_dict", {}) if isinstance(state, dict) else {}
    return dict(checkpoint["state_dict"]), dict(settings)


def recbole_item_order(data_dir: str | os.PathLike, domain: str) -> np.ndarray:
    """`[N]` this repository's item ids (`item2index` index + 1) in RecBole's id order (RecBole ids 1..N).

    RecBole remaps a domain's item tokens by first appearance over the target column of the train, valid and
    test files, then over their history column.
    """
    targets, histories = [], []
    for split in SPLIT_FILES.values():
        for _, (_, history, target) in _rows(_path(data_dir, domain, split), 3, header=INTER_HEADER):
            targets.append(target)
            histories.extend(history.split())
    order = dict.fromkeys(targets + histories)
    return np.array([int(token) + 1 for token in order], dtype=np.int64)


def _layer_count(state: dict[str, torch.Tensor], stack: str) -> int:
    pattern = re.compile(rf"trm_model\.{stack}\.layers\.(\d+)\.")
    return len({m.group(1) for key in state if (m := pattern.match(key))})


REQUIRED = ("position_embedding.weight", "LayerNorm.weight", "trm_model.encoder.layers.0.linear1.weight")


def official_config(state: dict[str, torch.Tensor], settings: dict) -> MISSRecConfig:
    """The [`MISSRecConfig`] of an official checkpoint: sizes from its tensors, the rest from its settings."""
    missing = [key for key in REQUIRED if key not in state]
    if missing or not ("text_adaptor.weight" in state or "img_adaptor.weight" in state):
        raise ValueError(
            f"not a MISSRec model (model={getattr(settings.get('model'), '__name__', settings.get('model'))!r}): "
            f"it lacks {missing or ['text_adaptor.weight or img_adaptor.weight']}"
        )
    if "n_heads" not in settings:
        raise ValueError("the checkpoint carries no RecBole config with n_heads: the attention heads are unknown")
    if settings.get("seq_mm_fusion", "add") != "add":
        raise ValueError(
            f"seq_mm_fusion={settings['seq_mm_fusion']!r}: only 'add' converts exactly (the official 'contextual' "
            "model reads its output from the text token, this repository's from the mean of the last item's tokens)"
        )
    positions = state["position_embedding.weight"]
    text, image = "text_adaptor.weight" in state, "img_adaptor.weight" in state
    transductive = settings.get("train_stage") == "transductive_ft" and settings.get("id_type", "id") != "none"
    interest_table = state.get("interest_embeddings")
    catalogue = state.get("plm_embedding.weight", state.get("img_embedding.weight"))  # absent when pre-trained
    return MISSRecConfig(
        text_feature_dim=state["text_adaptor.weight"].shape[1] if text else 512,
        image_feature_dim=state["img_adaptor.weight"].shape[1] if image else 512,
        modalities="both" if text and image else "text" if text else "image",
        id_mode="transductive" if transductive else "inductive",
        num_items=0 if catalogue is None else len(catalogue) - 1,
        num_interests=0 if interest_table is None else len(interest_table) - 1,
        seq_mm_fusion="add",
        item_mm_fusion=settings.get("item_mm_fusion", "dynamic_shared"),
        interest_ratio=settings.get("interest_ratio", 0.5),
        knn_local_ratio=settings.get("knn_local_ratio", 0.1),
        hidden_size=positions.shape[1],
        num_encoder_layers=_layer_count(state, "encoder"),
        num_decoder_layers=_layer_count(state, "decoder"),
        num_attention_heads=settings["n_heads"],
        intermediate_size=state["trm_model.encoder.layers.0.linear1.weight"].shape[0],
        hidden_dropout_prob=settings.get("hidden_dropout_prob", 0.5),
        attention_probs_dropout_prob=settings.get("hidden_dropout_prob", 0.5),  # nn.Transformer has one dropout
        hidden_act=settings.get("hidden_act", "gelu"),
        layer_norm_eps=settings.get("layer_norm_eps", 1e-12),
        initializer_range=settings.get("initializer_range", 0.02),
        max_seq_length=positions.shape[0],
        score_temperature=settings.get("temperature", 0.07),
        seq_seq_loss_weight=settings.get("lambda", 1e-3),
        diversity_loss_weight=settings.get("gamma", 1e-4),
    )


def _attention(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    weights, biases = state[f"{prefix}.in_proj_weight"].chunk(3), state[f"{prefix}.in_proj_bias"].chunk(3)
    out = {f"block.{n}_proj.weight": w for n, w in zip("qkv", weights)}
    out |= {f"block.{n}_proj.bias": b for n, b in zip("qkv", biases)}
    out |= {f"block.o_proj.{p}": state[f"{prefix}.out_proj.{p}"] for p in ("weight", "bias")}
    return out


def _sublayer(state: dict, layer: str, official: str, norm: str) -> dict[str, torch.Tensor]:
    """One residual sublayer (`official`: an attention module name, or None for the feed-forward block)."""
    if official is None:
        pairs = (("linear1", "fc1"), ("linear2", "fc2"))
        out = {f"block.{new}.{p}": state[f"{layer}.{old}.{p}"] for old, new in pairs for p in ("weight", "bias")}
    else:
        out = _attention(state, f"{layer}.{official}")
    return out | {f"LayerNorm.{p}": state[f"{layer}.{norm}.{p}"] for p in ("weight", "bias")}


def convert_state_dict(state: dict[str, torch.Tensor], config: MISSRecConfig) -> dict[str, torch.Tensor]:
    """The official tensors under this repository's names (catalogue rows in RecBole's id order)."""
    ours = {
        "position_embeddings.weight": state["position_embedding.weight"],
        "LayerNorm.weight": state["LayerNorm.weight"],
        "LayerNorm.bias": state["LayerNorm.bias"],
    }
    for theirs, modality in (("text", "text"), ("img", "image")):
        if modality in config.modality_names:
            ours |= {f"{modality}_adaptor.{p}": state[f"{theirs}_adaptor.{p}"] for p in ("weight", "bias")}
    sublayers = {
        "encoder": [("self_attn", "self_attention", "norm1"), (None, "feed_forward", "norm2")],
        "decoder": [
            ("self_attn", "self_attention", "norm1"),
            ("multihead_attn", "cross_attention", "norm2"),
            (None, "feed_forward", "norm3"),
        ],
    }
    for stack, parts in sublayers.items():
        for i in range(getattr(config, f"num_{stack}_layers")):
            layer = f"trm_model.{stack}.layers.{i}"
            for official, name, norm in parts:
                converted = _sublayer(state, layer, official, norm)
                ours |= {f"{stack}.{i}.{name}.{key}": value for key, value in converted.items()}
        ours |= {f"{stack}_norm.{p}": state[f"trm_model.{stack}.norm.{p}"] for p in ("weight", "bias")}
    if "fusion_factor" in state and len(config.modality_names) > 1 and config.item_mm_fusion != "static":
        ours["item_fusion.weight"] = state["fusion_factor"].reshape(-1)
    if config.id_mode == "transductive":
        ours["item_id_embeddings.weight"] = state["item_embedding.weight"]
    if config.num_items:
        for theirs, modality in (("plm", "text"), ("img", "image")):
            if modality in config.modality_names:
                features = state[f"{theirs}_embedding.weight"]
                ours[f"{modality}_features"] = features
                empty = state.get(f"{theirs}_embedding_empty_mask", features.sum(-1) == 0)  # the official test
                ours[f"{modality}_present"] = ~empty
                ours[f"{modality}_interest_ids"] = state[f"{theirs}_interest_lookup_table"]
    if config.num_interests:
        ours["interest_centroids"] = state["interest_embeddings"]
    return ours


def _reorder_items(state: dict[str, torch.Tensor], item_ids: torch.Tensor) -> None:
    """Move every per-item row from RecBole id r (1..N) to this repository's id `item_ids[r - 1]`, in place."""
    source = torch.zeros(len(item_ids) + 1, dtype=torch.long)  # our id -> RecBole id (row 0: padding)
    source[item_ids] = torch.arange(1, len(item_ids) + 1)
    per_item = ("_features", "_present", "_interest_ids", "item_id_embeddings.weight")
    for key, value in state.items():
        if key.endswith(per_item) or (key == "item_fusion.weight" and len(value) == len(source)):
            state[key] = value[source]


def load_official_checkpoint(path: str | os.PathLike, item_ids: Sequence[int] | None = None) -> MISSRecModel:
    """A [`MISSRecModel`] holding the weights (and, for a fine-tuned checkpoint, the catalogue and interests) of
    an official MISSRec checkpoint, in eval mode.

    Args:
        path: a `.pth` file saved by the official code's trainers.
        item_ids: `[N]` this repository's id of each RecBole item id 1..N (from [`recbole_item_order`]); None
            keeps RecBole's ids. Pre-training checkpoints hold no catalogue: give the model one with
            `set_catalogue`.
    """
    state, settings = read_official_checkpoint(path)
    config = official_config(state, settings)
    converted = convert_state_dict(state, config)
    if item_ids is not None:
        item_ids = torch.as_tensor(np.asarray(item_ids), dtype=torch.long)
        if config.num_items == 0:
            raise ValueError(f"{path} holds no catalogue (a pre-training checkpoint): there are no items to reorder")
        if sorted(item_ids.tolist()) != list(range(1, config.num_items + 1)):
            raise ValueError(f"item_ids must be a permutation of 1..{config.num_items} (the checkpoint's items)")
        _reorder_items(converted, item_ids)
    model = MISSRecModel(config)
    expected = model.state_dict()
    catalogue = {k for k in expected if k.endswith(("_features", "_present", "_interest_ids"))}
    missing = sorted(set(expected) - set(converted) - catalogue - {"interest_centroids"})
    if missing:
        raise ValueError(f"{path} lacks the tensors for {missing}")
    unexpected = model.load_state_dict(converted, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"{path}: converted tensors {unexpected} have no place in MISSRecModel")
    absent = {m: int((~getattr(model, f"{m}_present")[1:]).sum()) for m in model.modality_names}
    if any(absent.values()):
        logger.warning(
            "%s: items without a modality (%s) score differently here: this model leaves the absent modality out, "
            "the official one adds the adaptor's bias and fuses its logit",
            path,
            ", ".join(f"{m}: {n}" for m, n in absent.items() if n),
        )
    return model.eval()


def _evaluate(model: MISSRecModel, data_dir: str, domain: str, cutoffs: list[int]) -> None:
    from ..data.collator import SequenceCollator, catalogue_features
    from ..data.loading import load_domain
    from ..evaluation.full_ranking import evaluate_ranking

    data = load_domain(domain, data_dir=data_dir)
    features = catalogue_features(data.items)
    for modality in model.modality_names:
        if not torch.equal(getattr(model, f"{modality}_features")[1:], features[f"{modality}_features"]):
            raise ValueError(f"the checkpoint's {modality} features are not those of {domain} in {data_dir}")
    header = " | ".join(f"HR@{k} | NDCG@{k}" for k in cutoffs)
    print(f"| split | {header} |\n|---|{'---|---|' * len(cutoffs)}")
    for split in ("validation", "test"):
        collator = SequenceCollator(data.sequences[split], model.config.max_seq_length)
        metrics = evaluate_ranking(model, collator, ks=cutoffs, progress=True)["official"]
        values = " | ".join(f"{metrics[f'hr@{k}']:.4f} | {metrics[f'ndcg@{k}']:.4f}" for k in cutoffs)
        print(f"| {split} | {values} |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .pth file saved by the official MISSRec code")
    parser.add_argument("--output", help="save the model here (save_pretrained: a remote-code folder)")
    parser.add_argument("--data_dir", help="folder of the domain's MISSRec-format files, to use its item ids")
    parser.add_argument("--domain", help="the domain's file prefix (e.g. Scientific)")
    parser.add_argument("--evaluate", action="store_true", help="print validation and test metrics (needs --domain)")
    parser.add_argument("--metrics_at", type=int, nargs="+", default=[10, 11, 50, 51], help="cut-offs K")
    args = parser.parse_args(argv)
    if (args.data_dir is None) != (args.domain is None) or (args.evaluate and args.domain is None):
        parser.error("--data_dir and --domain go together, and --evaluate needs them")
    order = None if args.domain is None else recbole_item_order(args.data_dir, args.domain)
    model = load_official_checkpoint(args.checkpoint, order)
    print(f"{args.checkpoint}: {model.config.id_mode} MISSRec, {model.num_parameters():,} parameters, "
          f"{model.config.num_items} items, {model.config.num_interests} interests", file=sys.stderr)  # fmt: skip
    if args.evaluate:
        _evaluate(model, args.data_dir, args.domain, args.metrics_at)
    if args.output:
        model.save_pretrained(args.output)
        print(f"saved to {Path(args.output).resolve()}", file=sys.stderr)


if __name__ == "__main__":
    main()
