"""Crash-safe file writing shared by the data pipeline (features, MISSRec files, exports)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call `write(binary file)` on a temporary file next to `path`, then move it into place.

    A reader never sees half a file, and a failed write leaves no temporary file behind.

    Returns:
        `path` as a `Path`.
    """
    path = Path(path)
    file = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with file:
            write(file)
        os.replace(file.name, path)
    except BaseException:
        Path(file.name).unlink(missing_ok=True)
        raise
    return path
