"""One run per output folder: a lock file naming its owner, so that a second run into the same `output_dir` is
refused instead of interleaving its log, checkpoints and model with the first's.

The lock is `<output_dir>/.missrec-run.lock`, a JSON line with the owner's host, pid and start time. It is created
with its content in one step (written aside, then hard-linked into place, which fails if the name exists), so a
reader never sees it empty. A lock whose owner is gone (same host, no such process) is stale: it is replaced,
with a warning. A lock from another host cannot be checked, and is only ever removed by hand.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_FILE = ".missrec-run.lock"


class OutputDirInUseError(FileExistsError):
    """Another live run holds the output folder (its lock file exists)."""


def _owner_alive(owner: dict) -> bool:
    """Whether the lock's owner may still run (always True for another host's, which cannot be checked)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def _create(lock: Path, content: str) -> bool:
    """Create `lock` holding `content` unless it exists; returns whether it was created."""
    aside = lock.with_name(f"{lock.name}.{os.getpid()}.tmp")
    aside.write_text(content)
    try:
        os.link(aside, lock)
        return True
    except FileExistsError:
        return False
    finally:
        aside.unlink()


@contextmanager
def locked_output_dir(output_dir: str | os.PathLike, holder: bool = True) -> Iterator[None]:
    """Hold `output_dir` for the duration of a run; the folder is created if needed.

    Args:
        output_dir: the run's output folder.
        holder: whether this process takes the lock (the main process of a multi-process launch); the others
            run inside it.

    Raises:
        OutputDirInUseError: another live run holds the folder (its host, pid and start time named).
    """
    if not holder:
        yield
        return
    lock = Path(output_dir) / LOCK_FILE
    lock.parent.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": started}
    while not _create(lock, json.dumps(mine)):
        try:
            owner = json.loads(lock.read_text())
        except FileNotFoundError:  # released between our attempt and this read
            continue
        except ValueError:
            owner = {}
        if owner and _owner_alive(owner):
            raise OutputDirInUseError(
                f"{output_dir} is in use by another run (process {owner.get('pid')} on {owner.get('host')}, "
                f"started {owner.get('started')}): wait for it, choose another --output_dir, or, if no such run "
                f"is alive, delete {lock}"
            )
        logger.warning("%s: removing the stale lock of a run that is gone (%s)", output_dir, owner or "unreadable")
        _remove_if_holding(lock, owner)
    try:
        yield
    finally:
        _remove_if_holding(lock, mine)


def _remove_if_holding(lock: Path, owner: dict) -> None:
    """Remove `lock` if it still names `owner` (not a lock another run took in the meantime)."""
    try:
        current = json.loads(lock.read_text())
    except FileNotFoundError:
        return
    except ValueError:
        current = {}
    if current == owner:
        lock.unlink(missing_ok=True)
