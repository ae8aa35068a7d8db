"""Atomic writes and guarded JSON reads: a file is either the old one or the complete new one,
never half written, and it keeps the mode a user would expect (the umask, or the replaced file's)."""
from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import DataError


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux ``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only portable way; set straight back
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The mode a new file at ``path`` gets: the replaced file's, else what ``open`` would give."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file lives in the same directory so ``os.replace`` is atomic. ``mkstemp``
    creates it 0600; it is given the replaced file's mode, or the umask's, before the rename.
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _mode_for(path))
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def disk_full(what: str | os.PathLike, kept: str) -> Iterator[None]:
    """Turn a full disk (or quota) while writing ``what`` into a one-line DataError saying what was kept."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(f"no space left on device while writing {err.filename or what}: "
                            f"free space and rerun; {kept}") from None
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file`` atomically; its own error for a failed write (a full disk)
    becomes the ``OSError`` it stands for, naming ``path``, so callers see one kind of failure."""
    import re

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as err:
            found = re.search(r"os error (\d+)", str(err))
            code = int(found.group(1)) if found else errno.EIO
            raise OSError(code, os.strerror(code), str(path)) from None


def loads_json(text: str | bytes, what: str) -> Any:
    """``json.loads`` that turns a document nested past Python's recursion limit into a
    :class:`DataError` naming ``what`` (the parser itself recurses, so depth is the attack)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise DataError(f"{what}: JSON nested too deeply to read; is this the right file?") from None


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's value; ``ValueError`` (bad JSON) passes through for the caller to word."""
    return loads_json(Path(path).read_text(), str(path))
