"""One writer per directory (a run directory, a code collection).

The lock is an ``flock`` on ``DIR/.hybridhash.lock``, which holds who took it (pid, start time,
command). The kernel drops an ``flock`` when its process ends, however it ends (kill -9
included), so a lock left by a dead process never blocks: the next writer takes it at once and
rewrites the owner. The file itself stays; it is the project's own and harmless.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import DataError, HybridHashError
from .fileio import loads_json

LOCK_NAME = ".hybridhash.lock"


class LockedError(HybridHashError):
    """Another process is writing the same directory."""


def _ours(text: str) -> bool:
    """Whether ``text`` is empty or a record this module wrote (so truncating it loses nothing)."""
    if not text.strip():
        return True
    try:
        info = json.loads(text)
    except ValueError:
        return False
    return isinstance(info, dict) and set(info) == {"pid", "started", "command"}


def _owner(handle) -> str:
    try:
        handle.seek(0)
        info = loads_json(handle.read() or "{}", str(handle.name))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return f"pid {int(info['pid'])}, started {started}"
    except (ValueError, KeyError, TypeError, OverflowError, DataError):
        return "owner unknown"


@contextmanager
def exclusive(directory: str | os.PathLike, what: str = "directory") -> Iterator[Path]:
    """Hold the writer's lock on ``directory`` (created if missing) for the ``with`` block.

    Raises :class:`LockedError` at once, naming the other process, when one holds it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise LockedError(f"{path} is not a lock file of hybridhash; move it away, or write this {what} elsewhere")
    handle = open(path, "a+", encoding="utf-8", errors="replace")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{directory} is being written by another process ({_owner(handle)}): "
                              f"wait for it to finish, or write this {what} elsewhere") from None
        handle.seek(0)
        if not _ours(handle.read(4096)):
            raise LockedError(f"{path} is not a lock file of hybridhash; move it away, "
                              f"or write this {what} elsewhere")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "started": time.time(),
                                 "command": " ".join(sys.argv[:3])}))
        handle.flush()
        yield path
    finally:
        handle.close()  # closing drops the flock
