"""The helpers the remote-code files share (`utils_missrec`)."""

from __future__ import annotations

import os
import stat

import pytest

from modeling_missrec import SASRecConfig, SASRecModel, unwrap_missrec
from modeling_missrec.utils_missrec import write_atomically


def test_atomic_writes_give_files_an_ordinary_mode_and_leave_nothing_behind(tmp_path):
    """Issue 35, defect 12: a written file is readable by others (0666 less the umask), not the temporary
    file's 0600; a failed write leaves the old file and no temporary file."""
    umask = os.umask(0o022)
    try:
        path = write_atomically(tmp_path / "sub" / "item_metadata.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_bytes() == b"{}"

    def failing(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, failing)
    assert path.read_bytes() == b"{}" and [p.name for p in path.parent.iterdir()] == ["item_metadata.json"]


def test_unwrap_names_a_model_that_is_not_missrec():
    with pytest.raises(ValueError, match="SASRecModel is not a MISSRec model"):
        unwrap_missrec(SASRecModel(SASRecConfig(num_items=5)))
