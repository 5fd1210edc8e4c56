"""Reading the data's text files: UTF-8, and an encoding error names the file and the line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


def _first_undecodable_line(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(line number, column, byte) of the first byte of `path` that is not UTF-8 (all 1-based but the byte), or
    None when every line decodes."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return lineno, error.start + 1, raw[error.start]
    return None


@contextmanager
def open_utf8(path: str | os.PathLike) -> Iterator[TextIO]:
    """`open(path, encoding="utf-8")`; a byte that is not UTF-8 raises a `ValueError` naming the file, line and
    column (where Python's `UnicodeDecodeError` names neither file nor line)."""
    with open(path, encoding="utf-8") as f:
        try:
            yield f
        except UnicodeDecodeError:
            where = _first_undecodable_line(path)
            if where is None:  # not this file's bytes
                raise
            lineno, column, byte = where
            raise ValueError(
                f"{path}:{lineno}: byte 0x{byte:02x} at column {column} is not UTF-8: save the file as UTF-8 "
                "(e.g. `iconv -f latin1 -t utf-8`)"
            ) from None
