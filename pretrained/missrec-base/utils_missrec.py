"""Helpers shared by the files that travel with a saved model (the model, its pipeline and its served files).

Hub remote code like its users: it imports only the standard library and torch, so `save_pretrained` can copy
it next to the weights and a folder loads where this package is not installed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from torch import nn


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call `write(binary file)` on a temporary file next to `path` (its folder created if needed), then move it
    into place.

    A reader never sees half a file, and a failed write leaves no temporary file behind. The file gets the mode an
    ordinary `open(path, "w")` gives (0666 less the umask), not the temporary file's private 0600: exported
    folders are meant to be read by others.

    Returns:
        `path` as a `Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    file = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with file:
            write(file)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(file.name, 0o666 & ~umask)
        os.replace(file.name, path)
    except BaseException:
        Path(file.name).unlink(missing_ok=True)
        raise
    return path


def unwrap_missrec(model: nn.Module) -> nn.Module:
    """The MISSRec base model (`MISSRecModel`) inside `model`: itself, a head's `missrec`, or the base of a
    `PeftModel` around either.

    It goes by what the objects hold rather than by class, so it unwraps the package's classes and the copies a
    saved folder's remote code defines alike.

    Raises:
        ValueError: `model` holds no MISSRec base model (e.g. a SASRec model).
    """
    for _ in range(3):
        if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "missrec", None), nn.Module):
            model = model.missrec
        else:
            break
    if not hasattr(model, "discover_interests"):  # what a MISSRec base has and other models (SASRec) lack
        raise ValueError(f"{type(model).__name__} is not a MISSRec model")
    return model
