"""Re-encode the item text of a MISSRec-format folder with another text encoder (e.g. the sentence encoder).

The released MISSRec/UniSRec folders carry CLIP text features (`feat1CLS`, 512-d) and the item text itself
(`<D>.text`). A text encoder that suits item text better, or the encoder a model was pre-trained with, needs
features of its own: `reencode_text_features` writes a copy of the folder whose `feat1CLS` holds them, with the
interactions, indices and text unchanged and, unless dropped, the image features as given.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ...utils_missrec import write_atomically
from .feature_extraction import extract_catalogue_text_features
from .missrec_files import FEATURE_FILES, SPLIT_FILES, WIDTHS_FILE, read_missrec_folder, write_feature_widths


def reencode_text_features(
    folder: str | os.PathLike,
    domain: str,
    output_dir: str | os.PathLike,
    *,
    text_encoder: str = "sentence",
    text_model: str | None = None,
    keep_images: bool = True,
    batch_size: int = 64,
    device=None,
    progress: bool = True,
) -> Path:
    """Write `output_dir/<domain>.*`: the domain of `folder` with its text features re-extracted from `<D>.text`.

    Args:
        folder, domain: the MISSRec-format folder and its file prefix.
        output_dir: where the copy goes (created; must not be `folder`).
        text_encoder, text_model: the encoder (`"sentence"`: the offline all-MiniLM-L6-v2 by default; `"clip"`).
        keep_images: copy `feat3CLS` (the image features); False makes a text-only domain.
        batch_size, device, progress: for the encoder.

    Items without text (absent from `<D>.text`) get an all-zero row (a missing modality). The alternative text
    view `feat2CLS` is not copied: it belongs to the old encoder.

    Returns:
        The output folder.
    """
    source, output = Path(folder), Path(output_dir)
    if output.resolve() == source.resolve():
        raise ValueError(f"output_dir {output} is the input folder: re-encoded files go into a new folder")
    data = read_missrec_folder(source, domain)
    if not (source / f"{domain}.text").is_file():
        raise FileNotFoundError(f"missing {source / f'{domain}.text'}: the item text to re-encode")
    output.mkdir(parents=True, exist_ok=True)
    suffixes = ["item2index", "user2index", "text", *SPLIT_FILES.values()]
    if keep_images and "image_features" in data.features:
        suffixes.append(FEATURE_FILES["image_features"])
    for suffix in suffixes:
        shutil.copyfile(source / f"{domain}.{suffix}", output / f"{domain}.{suffix}")
    for suffix in FEATURE_FILES.values():  # a feature file left from an earlier copy with other settings
        if suffix not in suffixes:
            (output / f"{domain}.{suffix}").unlink(missing_ok=True)
    table = extract_catalogue_text_features(
        data.texts,
        text_encoder=text_encoder,
        text_model=text_model,
        batch_size=batch_size,
        device=device,
        feature_dir=output / ".feature_shards",
        progress=progress,
    ).astype("<f4", copy=False)
    write_atomically(output / f"{domain}.{FEATURE_FILES['text_features']}", table.tofile)
    widths = {FEATURE_FILES["text_features"]: table.shape[1]}
    if FEATURE_FILES["image_features"] in suffixes:
        widths[FEATURE_FILES["image_features"]] = data.features["image_features"].shape[1]
    (output / f"{domain}.{WIDTHS_FILE}").unlink(missing_ok=True)  # an earlier copy's record
    write_feature_widths(output, domain, widths)
    shutil.rmtree(output / ".feature_shards", ignore_errors=True)
    return output
