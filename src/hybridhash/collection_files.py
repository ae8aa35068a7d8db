"""The files of one generation of a code collection, written atomically: numpy arrays, ``paths.txt``
with its byte offsets, and the digest that binds an index to exactly these codes (and ids)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .fileio import atomic_path, write_json

PathLike = Union[str, os.PathLike]

CODES = "codes.npy"
PATHS = "paths.txt"
OFFSETS = "paths.offsets.npy"
LABELS = "labels.npy"
CLASSES = "classes.json"
SKIPPED = "skipped.json"
STATS = "files.stat.npy"
IDS = "ids.npy"


def save_npy(path: PathLike, array: np.ndarray) -> None:
    """``np.save`` through a file object (so no ``.npy`` is appended to the temporary name), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def save_npz(path: PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` of ``arrays`` through a file object, atomically (a full disk leaves no partial file)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_paths(directory: PathLike, paths: Sequence[str]) -> None:
    """Write ``paths.txt`` and its byte offsets ``paths.offsets.npy`` (int64 (n + 1,))."""
    directory = Path(directory)
    lines = [p.encode("utf-8") + b"\n" for p in paths]
    offsets = np.zeros(len(lines) + 1, dtype=np.int64)
    if lines:
        np.cumsum([len(b) for b in lines], out=offsets[1:])
    with atomic_path(directory / PATHS) as tmp, open(tmp, "wb") as f:
        f.write(b"".join(lines))
    save_npy(directory / OFFSETS, offsets)


def codes_digest(codes: np.ndarray, ids: Optional[np.ndarray] = None) -> str:
    """Hex sha256 of packed codes uint8 (n, bits/8), row after row, then of the item ids int64 (n,)
    when the rows carry ids other than their positions: what an index is bound to."""
    h = hashlib.sha256()
    h.update(f"{tuple(codes.shape)}:".encode())
    step = max(1, (1 << 24) // max(1, codes.shape[1] if codes.ndim == 2 else 1))  # ~16 MB at a time
    for s in range(0, codes.shape[0], step):
        h.update(np.ascontiguousarray(codes[s:s + step], dtype=np.uint8).tobytes())
    if ids is not None:
        h.update(b"ids:")
        h.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    return h.hexdigest()


def write_generation_files(directory: PathLike, codes: np.ndarray, paths: Sequence[str],
                           labels: Optional[np.ndarray] = None, classes: Optional[List[str]] = None,
                           skipped: Sequence[Dict[str, Any]] = (), stats: Optional[np.ndarray] = None,
                           ids: Optional[np.ndarray] = None) -> List[str]:
    """Write the data files of one generation into ``directory`` (no manifest); returns their names.

    ``codes`` uint8 (n, bits/8); ``paths`` n relative paths; ``labels`` int64 (n,) or uint8 (n, C);
    ``stats`` int64 (n, 2) size and mtime_ns of each file when it was encoded; ``ids`` int64 (n,)
    strictly increasing item ids (None: the ids are the rows).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = int(codes.shape[0])
    if len(paths) != n or (labels is not None and labels.shape[0] != n) \
            or (stats is not None and stats.shape != (n, 2)) or (ids is not None and ids.shape != (n,)):
        raise ValueError(f"{n} codes, {len(paths)} paths, {None if labels is None else labels.shape[0]} labels, "
                         f"{None if stats is None else stats.shape} stats, {None if ids is None else ids.shape} ids")
    save_npy(directory / CODES, codes.astype(np.uint8, copy=False))
    write_paths(directory, paths)
    for name in (LABELS, CLASSES, STATS, IDS):
        (directory / name).unlink(missing_ok=True)
    if labels is not None:
        save_npy(directory / LABELS, labels)
        write_json(directory / CLASSES, list(classes or []))
    write_json(directory / SKIPPED, list(skipped))
    if stats is not None:
        save_npy(directory / STATS, stats.astype(np.int64, copy=False))
    if ids is not None:
        save_npy(directory / IDS, ids.astype(np.int64, copy=False))
    return [CODES, PATHS, OFFSETS, SKIPPED] + ([LABELS, CLASSES] if labels is not None else []) \
        + ([STATS] if stats is not None else []) + ([IDS] if ids is not None else [])
