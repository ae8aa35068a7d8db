"""The on-disk code collection: packed codes, paths and labels of an encoded image set.

Layout of a collection directory ``CODES/``::

    manifest.json        format "hybridhash-codes", bits, model fingerprint, preprocessing, count, ...
    codes.npy            uint8 (n, bits/8), packed in np.packbits order; row i is item id i
    paths.txt            the image paths relative to the image root, one per line (UTF-8)
    paths.offsets.npy    int64 (n + 1,) byte offsets of each line in paths.txt
    labels.npy           int64 (n,) class ids, or uint8 (n, C) multi-hot (only when labels are known)
    classes.json         the C class names (only when labels are known)
    skipped.json         [{"path", "reason"}] images that could not be encoded
    shards/              the encoder's resumable shards (see :mod:`hybridhash.encode`)

``manifest.json`` is written last, so a directory with a manifest holds a complete collection.
Codes and offsets are memory-mapped; a path is read from disk only when a result needs it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .errors import DataError
from .fileio import atomic_path, read_json, write_json

FORMAT = "hybridhash-codes"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CODES = "codes.npy"
PATHS = "paths.txt"
OFFSETS = "paths.offsets.npy"
LABELS = "labels.npy"
CLASSES = "classes.json"
SKIPPED = "skipped.json"
SHARDS = "shards"
# label kinds a manifest may name
LABEL_KINDS = ("class", "multi-hot")

PathLike = Union[str, os.PathLike]


def save_npy(path: PathLike, array: np.ndarray) -> None:
    """``np.save`` through a file object (so no ``.npy`` is appended to the temporary name), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def write_paths(directory: PathLike, paths: Sequence[str]) -> None:
    """Write ``paths.txt`` and its byte offsets ``paths.offsets.npy`` (int64 (n + 1,))."""
    directory = Path(directory)
    offsets = np.zeros(len(paths) + 1, dtype=np.int64)
    with atomic_path(directory / PATHS) as tmp, open(tmp, "wb") as f:
        pos = 0
        for i, p in enumerate(paths):
            line = p.encode("utf-8") + b"\n"
            f.write(line)
            pos += len(line)
            offsets[i + 1] = pos
    save_npy(directory / OFFSETS, offsets)


def write_collection(directory: PathLike, manifest: Dict[str, Any], codes: np.ndarray, paths: Sequence[str],
                     labels: Optional[np.ndarray] = None, classes: Optional[List[str]] = None,
                     skipped: Sequence[Dict[str, str]] = ()) -> "Collection":
    """Write the merged files of a collection, the manifest last, and open it.

    ``codes`` uint8 (n, bits/8); ``paths`` n relative paths; ``labels`` int64 (n,) or uint8 (n, C).
    ``manifest`` gets ``format``, ``version`` and ``count`` filled in.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = int(codes.shape[0])
    if len(paths) != n or (labels is not None and labels.shape[0] != n):
        raise ValueError(f"{n} codes, {len(paths)} paths, {None if labels is None else labels.shape[0]} labels")
    # a reader must never pair an old manifest with new files
    (directory / MANIFEST).unlink(missing_ok=True)
    save_npy(directory / CODES, codes.astype(np.uint8, copy=False))
    write_paths(directory, paths)
    for name in (LABELS, CLASSES):
        (directory / name).unlink(missing_ok=True)
    if labels is not None:
        save_npy(directory / LABELS, labels)
        write_json(directory / CLASSES, list(classes or []))
    write_json(directory / SKIPPED, list(skipped))
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, **manifest, "count": n}
    write_json(directory / MANIFEST, manifest)
    return Collection(directory)


class Collection:
    """A merged code collection, opened read-only.

    Attributes:
        directory: the collection directory.
        manifest: the parsed ``manifest.json``.
        bits, count, fingerprint: code length, number of items, model fingerprint.
        root: the image root (absolute) that item paths are relative to.
        codes: uint8 (count, bits/8), memory-mapped.
        labels: int64 (count,) class ids, uint8 (count, C) multi-hot, or None; memory-mapped.
        classes: class names (list of str) or None.
    """

    def __init__(self, directory: PathLike, root: Optional[PathLike] = None):
        self.directory = Path(directory)
        mpath = self.directory / MANIFEST
        if not mpath.is_file():
            if (self.directory / SHARDS).is_dir():
                raise DataError(f"{self.directory}: encoding has not finished (shards but no {MANIFEST}); "
                                f"run the same encode command again to resume it")
            raise DataError(f"{self.directory}: not a code collection (no {MANIFEST})")
        try:
            m = read_json(mpath)
        except ValueError as err:
            raise DataError(f"{mpath}: not valid JSON ({err})") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise DataError(f"{mpath}: not a {FORMAT} manifest")
        if m.get("version") != FORMAT_VERSION:
            raise DataError(f"{mpath}: format version {m.get('version')}, this hybridhash reads {FORMAT_VERSION}")
        self.manifest: Dict[str, Any] = m
        self.bits = int(m["bits"])
        self.count = int(m["count"])
        self.fingerprint: Optional[str] = m.get("fingerprint")
        self.root = Path(root if root is not None else m["image_root"]).resolve()

        self.codes = self._load(CODES, np.uint8, (self.count, (self.bits + 7) // 8))  # (n, bits/8)
        self._offsets = self._load(OFFSETS, np.int64, (self.count + 1,))  # (n + 1,)
        self.labels: Optional[np.ndarray] = None
        self.classes: Optional[List[str]] = None
        if m.get("labels") in LABEL_KINDS:
            self.labels = self._load(LABELS, None, None)
            if self.labels.shape[0] != self.count:
                raise DataError(f"{self.directory / LABELS}: {self.labels.shape[0]} rows, the manifest says {self.count}")
            self.classes = [str(c) for c in read_json(self.directory / CLASSES)]
        self._paths_file = self.directory / PATHS
        if not self._paths_file.is_file():
            raise DataError(f"{self._paths_file}: missing")
        # one descriptor read with pread: no shared file position, so path() is thread-safe
        self._fd: Optional[int] = os.open(self._paths_file, os.O_RDONLY)

    def _load(self, name: str, dtype, shape) -> np.ndarray:
        path = self.directory / name
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"{path}: missing") from None
        except ValueError as err:
            raise DataError(f"{path}: not a numpy array file ({err})") from None
        if dtype is not None and arr.dtype != dtype:
            raise DataError(f"{path}: dtype {arr.dtype}, expected {np.dtype(dtype)}")
        if shape is not None and tuple(arr.shape) != tuple(shape):
            raise DataError(f"{path}: shape {tuple(arr.shape)}, the manifest implies {tuple(shape)}")
        return arr

    # ------------------------------------------------------------------------------------------
    @property
    def checkpoint(self) -> Optional[str]:
        return self.manifest.get("checkpoint")

    @property
    def preprocess(self) -> Optional[Dict[str, Any]]:
        return self.manifest.get("preprocess")

    @property
    def skipped(self) -> List[Dict[str, str]]:
        """The images the encoder could not read: ``[{"path", "reason"}]``."""
        path = self.directory / SKIPPED
        return read_json(path) if path.is_file() else []

    def __len__(self) -> int:
        return self.count

    def _check_id(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.count:
            raise IndexError(f"item id {i} is outside this collection of {self.count}")
        return i

    def path(self, i: int) -> str:
        """The image path of item ``i``, relative to the image root (read from disk, not cached)."""
        i = self._check_id(i)
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        if self._fd is None:
            raise DataError(f"{self.directory}: collection is closed")
        data = os.pread(self._fd, end - start, start)
        return data.decode("utf-8").rstrip("\n")

    def abspath(self, i: int) -> Path:
        """The absolute path of item ``i``'s image; DataError if it would resolve outside the image root."""
        rel = self.path(i)
        full = (self.root / rel).resolve()
        if not full.is_relative_to(self.root):
            raise DataError(f"item {i}: {rel!r} resolves outside the image root {self.root}")
        return full

    def label_ids(self, i: int) -> List[int]:
        """Class ids of item ``i`` (one for class labels, any number for multi-hot); [] if unknown."""
        i = self._check_id(i)
        if self.labels is None:
            return []
        row = self.labels[i]
        if self.labels.ndim == 1:
            return [int(row)]
        return [int(c) for c in np.flatnonzero(row)]

    def label(self, i: int) -> Optional[str]:
        """Item ``i``'s class name(s) joined by ``", "``, or None when the collection has no labels."""
        if self.labels is None:
            return None
        names = self.classes or []
        return ", ".join(names[c] if c < len(names) else str(c) for c in self.label_ids(i))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __repr__(self) -> str:
        return (f"Collection({str(self.directory)!r}, count={self.count}, bits={self.bits}, "
                f"labels={self.manifest.get('labels')})")


def open_collection(directory: PathLike, root: Optional[PathLike] = None) -> Collection:
    """Open the collection in ``directory``; ``root`` overrides the image root (a moved image folder)."""
    return Collection(directory, root=root)


def is_collection(directory: PathLike) -> bool:
    return (Path(directory) / MANIFEST).is_file()
