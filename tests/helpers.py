"""What the tests share: tiny MISSRec models on a small random catalogue, random histories, loading saved folders
in a fresh interpreter that cannot import this package, and a tiny CLIP for offline feature extraction.

Pytest fixtures live in `conftest.py`; everything a test imports lives here (`from helpers import ...`).
"""

from __future__ import annotations

import importlib
import json
import os
import string
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from modeling_missrec.configuration import parse_recipe_args
from modeling_missrec.pipelines.training import run_training
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

from modeling_missrec import MISSRecConfig, MISSRecForPreTraining, MISSRecForSequentialRecommendation, MISSRecModel

REPO = Path(__file__).resolve().parents[1]  # the repository root
SHARED_DATA = REPO.parent / "shared" / "data"  # the real data beside the repository (tests skip without it)
FIXTURES = REPO / "tests" / "fixtures"
FEATURE_DIM = 16


def run_train(argv: list[str]) -> dict:
    """What `python train.py ARGV` runs, in this process (the script itself is argument parsing only): the run's
    results, as written to its `metrics.json`."""
    return run_training(parse_recipe_args(argv))


def tiny_config(**overrides) -> MISSRecConfig:
    """A small config (no dropout, so outputs are deterministic) with `overrides` applied."""
    values = dict(
        text_feature_dim=FEATURE_DIM,
        image_feature_dim=FEATURE_DIM,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_seq_length=12,
        interest_ratio=0.3,
    )
    values.update(overrides)
    return MISSRecConfig(**values)


def tiny_model(num_items: int = 40, seed: int = 0, **overrides) -> MISSRecModel:
    """A tiny model with a random catalogue of `num_items` items and discovered interests, in eval mode."""
    torch.manual_seed(seed)
    model = MISSRecModel(tiny_config(**overrides))
    generator = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(num_items, FEATURE_DIM, generator=generator) for m in ("text", "image")}
    model.set_catalogue(**{f"{m}_features": features[m] for m in model.config.modality_names})
    model.discover_interests()
    return model.eval()


def rec(model: torch.nn.Module) -> MISSRecForSequentialRecommendation:
    """`model` (a `MISSRecModel`, or a `PeftModel` of one) as its recommendation head, sharing its weights."""
    return MISSRecForSequentialRecommendation.from_base(model)


def pretraining(model: torch.nn.Module) -> MISSRecForPreTraining:
    """`model` as its pre-training head, sharing its weights."""
    return MISSRecForPreTraining.from_base(model)


def random_histories(batch: int, length: int, num_items: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned `[batch, length]` histories with random lengths in `1..length`, and the lengths."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    items = torch.randint(1, num_items + 1, (batch, length), generator=generator)
    return items * (torch.arange(length) < lengths[:, None]), lengths


def fine_tune_lora_adapter(base: MISSRecModel, folder, num_items: int, lr: float) -> torch.nn.Module:
    """`base` fine-tuned for three Adam steps (learning rate `lr`) through a rank-4 LoRA adapter on random
    histories of items `1..num_items`, the adapter saved with its catalogue into `folder`; the `PeftModel`, in eval
    mode."""
    from modeling_missrec.pipelines.training.finetuning import apply_finetuning_strategy

    from modeling_missrec.served_files_missrec import save_catalogue

    adapted = apply_finetuning_strategy(base, "lora", lora_rank=4).train()
    optimizer = torch.optim.Adam([p for p in adapted.parameters() if p.requires_grad], lr=lr)
    for step in range(3):
        items, lengths = random_histories(16, 8, num_items, seed=step)
        rec(adapted)(item_seq=items, lengths=lengths, labels=torch.arange(1, 17)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    adapted.eval()
    adapted.save_pretrained(folder)
    save_catalogue(folder, adapted)
    return adapted


def official_transformer(model: MISSRecModel) -> torch.nn.Transformer:
    """torch's `nn.Transformer` as the official model builds it, holding `model`'s weights."""
    cfg = model.config
    official = torch.nn.Transformer(
        d_model=cfg.hidden_size,
        nhead=cfg.num_attention_heads,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dim_feedforward=cfg.intermediate_size,
        dropout=0.0,
        activation="gelu",
        layer_norm_eps=cfg.layer_norm_eps,
        batch_first=True,
    ).eval()

    def attention(theirs: torch.nn.MultiheadAttention, ours) -> None:
        projections = (ours.block.q_proj, ours.block.k_proj, ours.block.v_proj)
        theirs.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
        theirs.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
        theirs.out_proj.load_state_dict(ours.block.o_proj.state_dict())

    def feed_forward(theirs, ours) -> None:
        theirs.linear1.load_state_dict(ours.block.fc1.state_dict())
        theirs.linear2.load_state_dict(ours.block.fc2.state_dict())

    with torch.no_grad():
        encoder, decoder = official.encoder.layers[0], official.decoder.layers[0]
        attention(encoder.self_attn, model.encoder[0].self_attention)
        feed_forward(encoder, model.encoder[0].feed_forward)
        encoder.norm1.load_state_dict(model.encoder[0].self_attention.LayerNorm.state_dict())
        encoder.norm2.load_state_dict(model.encoder[0].feed_forward.LayerNorm.state_dict())
        attention(decoder.self_attn, model.decoder[0].self_attention)
        attention(decoder.multihead_attn, model.decoder[0].cross_attention)
        feed_forward(decoder, model.decoder[0].feed_forward)
        sublayers = ("self_attention", "cross_attention", "feed_forward")
        for norm, sublayer in zip((decoder.norm1, decoder.norm2, decoder.norm3), sublayers):
            norm.load_state_dict(getattr(model.decoder[0], sublayer).LayerNorm.state_dict())
        official.encoder.norm.load_state_dict(model.encoder_norm.state_dict())
        official.decoder.norm.load_state_dict(model.decoder_norm.state_dict())
    return official


# The first lines of every fresh-process script: imports of the `modeling_missrec` package fail in the child,
# so everything must come from the saved folder.
WITHOUT_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_missrec" or name.startswith("modeling_missrec."):
                raise ImportError("the package must not be needed: " + name)

    sys.meta_path.insert(0, Block())
    """
)

RUN_WITHOUT_PACKAGE = WITHOUT_PACKAGE + textwrap.dedent(
    """
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    folder, model_type, auto_class, inputs, out = sys.argv[1:6]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert config.model_type == model_type, config.model_type
    if hasattr(transformers, auto_class):  # AutoModel, AutoModelForPreTraining
        model = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True)
    else:  # an Auto class transformers does not have: the class its auto_map entry names, from the folder
        model = get_class_from_dynamic_module(config.auto_map[auto_class], folder).from_pretrained(folder)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        output = model.eval()(**torch.load(inputs))
    torch.save({"class": type(model).__name__, **{k: v for k, v in output.items() if torch.is_tensor(v)}}, out)
    """
)


def fresh_env(tmp_path: Path) -> dict[str, str]:
    """Offline, with an empty `HF_HOME` under `tmp_path` and no `PYTHONPATH`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TRANSFORMERS_VERBOSITY="error")
    env.pop("PYTHONPATH", None)
    return env


def run_script_without_package(code: str, tmp_path: Path, *args: str) -> str:
    """Run the script `code` (with `args`) offline in a fresh interpreter that cannot import this package, from
    `tmp_path`; its stdout. A failing script fails the test with its stderr."""
    script = tmp_path / "script_without_package.py"
    script.write_text(WITHOUT_PACKAGE + code)
    command = [sys.executable, str(script), *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=fresh_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def run_without_package(
    folder: Path, model_type: str, inputs: dict[str, torch.Tensor], tmp_path: Path, auto_class: str = "AutoModel"
) -> dict:
    """Load `folder` with `auto_class` (`trust_remote_code=True`) in a fresh process and run `model(**inputs)`:
    the output's tensors by field, and the loaded class's name under `"class"`."""
    torch.save(inputs, tmp_path / "inputs.pt")
    script = tmp_path / "load.py"
    script.write_text(RUN_WITHOUT_PACKAGE)
    command = [sys.executable, str(script), str(folder), model_type, auto_class, str(tmp_path / "inputs.pt")]
    # cwd is not the repository: nothing is importable from the working directory.
    subprocess.run([*command, str(tmp_path / "output.pt")], check=True, cwd=tmp_path, env=fresh_env(tmp_path))
    return torch.load(tmp_path / "output.pt")


def save_tiny_clip(folder: str | Path, *, projection_dim: int = 16, seed: int = 0) -> str:
    """Save a tiny `CLIPModel` (2 layers, width 32, 32x32 images) with its tokenizer and image processor.

    The tokenizer is a character-level BPE (no merges) over lowercase letters, digits and some punctuation;
    other characters map to the unknown token. Returns the folder as a string, for `from_pretrained`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    characters = list(string.ascii_lowercase + string.digits + ".,&-'/()+:;!?%$#")
    vocab = ["<|startoftext|>", "<|endoftext|>", *characters, *(c + "</w>" for c in characters)]
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    layers = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(
            **layers, vocab_size=len(vocab), max_position_embeddings=40, bos_token_id=0, eos_token_id=1, pad_token_id=1
        ),
        vision_config=dict(**layers, image_size=32, patch_size=8),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    return str(folder)


_HOLD_FOLDER = """
import sys, time
from modeling_missrec.pipelines.training.output_lock import locked_output_dir
with locked_output_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(300)
"""


@contextmanager
def held_by_another_run(folder: str | Path) -> Iterator[int]:
    """Hold `folder`'s run lock in another process while the block runs; yields that process's pid."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_FOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def write_atomic_files(folder: Path, name: str = "Shop") -> dict:
    """RecBole atomic files with the cases the reader must handle, and what it should make of them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = [f"i{k}" for k in range(40)]
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    histories = {}
    for u in range(30):
        history = list(rng.choice(items[:30], size=int(rng.integers(4, 12)), replace=False))
        histories[f"u{u}"] = history
        times = np.arange(len(history)) * 10.0
        order = rng.permutation(len(history))  # lines out of time order: the reader sorts them
        lines += [f"u{u}\t{history[k]}\t5\t{times[k]:.0f}" for k in order]
    lines += ["short\ti1\t3\t1", "short\ti2\t3\t2"]  # 2 interactions: dropped and counted
    lines += ["tie\ti3\t1\t7", "tie\ti4\t1\t7", "tie\ti5\t1\t7", "tie\ti6\t1\t3"]  # ties keep the file order
    histories["tie"] = ["i6", "i3", "i4", "i5"]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    item_lines = ["item_id:token\ttitle:token_seq\tcategories:token_seq\tprice:float"]
    for k, item in enumerate(items):
        title = "" if item == "i7" else f"Product  {k}"
        categories = "" if item == "i7" else f"Category {k % 5}"
        item_lines.append(f"{item}\t{title}\t{categories}\t{k}.5")
    (folder / f"{name}.item").write_text("\n".join(item_lines) + "\n")
    return {"histories": histories, "folder": folder, "name": name}


def import_bench_module(monkeypatch, name: str):
    """A module of `bench/` (scripts, not a package), imported with `bench/` on `sys.path` for this test only."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    return importlib.import_module(name)
