"""One run per output folder: a lock file naming its owner, so that a second run into the same `output_dir` is
refused instead of interleaving its log, checkpoints and model with the first's.

The lock is `<output_dir>/.missrec-run.lock`, a JSON line with the owner's host, pid and start time. It is created
with its content in one step (written aside, then hard-linked into place, which fails if the name exists), so a
reader never sees it empty. A lock whose owner is gone (same host, no such process, or this process's own pid) is
stale: it is replaced, with a warning. A lock from another host cannot be checked, and is only ever removed by
hand. A run resuming from another run's folder holds that folder too, since resuming finishes its interrupted
saves.
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
WRITING_SECONDS = 10.0


class OutputDirInUseError(FileExistsError):
    """Another live run holds the output folder (its lock file exists)."""


def _owner_alive(owner: dict) -> bool:
    """Whether the lock's owner may still run: another host's cannot be checked (True); on this host, a pid that
    is gone, or is this very process (a restarted container reuses pids), is not alive."""
    if owner.get("host") != socket.gethostname():
        return True
    if owner.get("pid") == os.getpid():
        return False
    try:
        os.kill(int(owner["pid"]), 0)
    except (ProcessLookupError, KeyError, TypeError, ValueError):
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def _create(lock: Path, content: str) -> bool:
    """Create `lock` holding `content` unless it exists; returns whether it was created.

    The content is written aside and hard-linked into place, so the lock is never seen empty. On a file system
    without hard links the lock is created exclusively and written after (an empty lock younger than
    `WRITING_SECONDS` then counts as one being written)."""
    aside = lock.with_name(f"{lock.name}.{os.getpid()}.tmp")
    aside.write_text(content)
    try:
        os.link(aside, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as file:
            file.write(content)
        return True
    finally:
        aside.unlink(missing_ok=True)


def _read_owner(lock: Path) -> dict | None:
    """The owner a lock names (`{}` when unreadable or empty), None when the lock is gone."""
    try:
        owner = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _being_written(lock: Path) -> bool:
    try:
        return time.time() - lock.stat().st_mtime < WRITING_SECONDS
    except FileNotFoundError:
        return False


def _take_stale(lock: Path, owner: dict) -> None:
    """Remove the stale `lock` naming `owner`. It is renamed away first (one rename wins when several runs find
    it stale at once); if what was renamed is not that lock (another run took the folder meanwhile), it is put
    back."""
    aside = lock.with_name(f"{lock.name}.stale.{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    if _read_owner(aside) != owner:
        try:
            os.link(aside, lock)
        except OSError:
            pass
    aside.unlink(missing_ok=True)


def launcher_rank() -> int:
    """This process's rank as the launcher set it (torchrun's `RANK`, or MPI's), 0 without a launcher. Read from
    the environment: Accelerate's state must first be built by the run's `Accelerator`."""
    for variable in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return 0


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
        owner = _read_owner(lock)
        if owner is None:  # released between our attempt and this read
            continue
        if (owner and _owner_alive(owner)) or (not owner and _being_written(lock)):
            raise OutputDirInUseError(
                f"{output_dir} is in use by another run (process {owner.get('pid')} on {owner.get('host')}, "
                f"started {owner.get('started')}): wait for it, choose another --output_dir, or, if no such run "
                f"is alive, delete {lock}"
            )
        logger.warning("%s: removing the stale lock of a run that is gone (%s)", output_dir, owner or "unreadable")
        _take_stale(lock, owner)
    try:
        yield
    finally:
        _remove_if_holding(lock, mine)


def _remove_if_holding(lock: Path, owner: dict) -> None:
    """Remove `lock` if it still names `owner` (not a lock another run took in the meantime)."""
    if _read_owner(lock) == owner:
        lock.unlink(missing_ok=True)
