"""Reading the data's text files: UTF-8, and an encoding error names the file and the line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


def _first_undecodable_line(path: str | os.PathLike) -> tuple[int, int, int]:
    """(line number, column, byte) of the first byte of `path` that is not UTF-8 (all 1-based but the byte)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return lineno, error.start + 1, raw[error.start]
    raise AssertionError(f"{path} decodes as UTF-8 line by line")  # only called after a decoding error


@contextmanager
def open_utf8(path: str | os.PathLike) -> Iterator[TextIO]:
    """`open(path, encoding="utf-8")`; a byte that is not UTF-8 raises a `ValueError` naming the file, line and
    column (where Python's `UnicodeDecodeError` names neither file nor line)."""
    with open(path, encoding="utf-8") as f:
        try:
            yield f
        except UnicodeDecodeError:
            lineno, column, byte = _first_undecodable_line(path)
            raise ValueError(
                f"{path}:{lineno}: byte 0x{byte:02x} at column {column} is not UTF-8: save the file as UTF-8 "
                "(e.g. `iconv -f latin1 -t utf-8`)"
            ) from None
