"""The on-disk code collection: packed codes, paths and labels of an encoded image set.

Layout of a collection directory ``CODES/``::

    manifest.json        format "hybridhash-codes", bits, model fingerprint, preprocessing, count, ...
    codes.npy            uint8 (n, bits/8), packed in np.packbits order; row i is item id i
    paths.txt            the image paths relative to the image root, one per line (UTF-8)
    paths.offsets.npy    int64 (n + 1,) byte offsets of each line in paths.txt
    labels.npy           int64 (n,) class ids, or uint8 (n, C) multi-hot (only when labels are known)
    classes.json         the C class names (only when labels are known)
    skipped.json         [{"path", "reason"}] images that could not be encoded
    files.stat.npy       int64 (n, 2) size and mtime_ns of each item's file when it was encoded
    shards/              the encoder's resumable shards (see :mod:`hybridhash.app.encode`)

``manifest.json`` is written last, so a directory with a manifest holds a complete collection. The
manifest's ``format`` marks the directory as this project's, and ``files`` lists the files the
project wrote there (only those are ever removed or replaced).
Codes and offsets are memory-mapped; a path is read from disk only when a result needs it.
"""
from __future__ import annotations

import hashlib
import os
import stat as stat_mod
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .collection_check import check_fields, check_paths_file, manifest_int as _manifest_int
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
INDEX_FILE = "index.faiss"  # saved beside the manifest by `hybridhash index`
STATS = "files.stat.npy"
SHARDS = "shards"
# every file name a collection can hold at its top level (the index is handled on its own)
OWN_FILES = (CODES, PATHS, OFFSETS, LABELS, CLASSES, SKIPPED, STATS, MANIFEST)
# label kinds a manifest may name
LABEL_KINDS = ("class", "multi-hot")

PathLike = Union[str, os.PathLike]


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
                     skipped: Sequence[Dict[str, str]] = (), stats: Optional[np.ndarray] = None) -> "Collection":
    """Write the merged files of a collection, the manifest last, and open it.

    ``codes`` uint8 (n, bits/8); ``paths`` n relative paths; ``labels`` int64 (n,) or uint8 (n, C);
    ``stats`` int64 (n, 2) size and mtime_ns of each file when it was encoded, or None.
    ``manifest`` gets ``format``, ``version``, ``count``, ``codes_sha256`` and ``files`` filled in.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = int(codes.shape[0])
    if len(paths) != n or (labels is not None and labels.shape[0] != n) \
            or (stats is not None and stats.shape != (n, 2)):
        raise ValueError(f"{n} codes, {len(paths)} paths, {None if labels is None else labels.shape[0]} labels, "
                         f"{None if stats is None else stats.shape} stats")
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
    (directory / STATS).unlink(missing_ok=True)
    if stats is not None:
        save_npy(directory / STATS, stats.astype(np.int64, copy=False))
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    files = [CODES, PATHS, OFFSETS, SKIPPED] + ([LABELS, CLASSES] if labels is not None else []) \
        + ([STATS] if stats is not None else [])
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, **manifest, "count": n,
                "codes_sha256": codes_digest(codes), "files": files + [MANIFEST]}
    write_json(directory / MANIFEST, manifest)
    return Collection(directory)


def codes_digest(codes: np.ndarray) -> str:
    """Hex sha256 of packed codes uint8 (n, bits/8), row after row: what an index is bound to."""
    h = hashlib.sha256()
    h.update(f"{tuple(codes.shape)}:".encode())
    step = max(1, (1 << 24) // max(1, codes.shape[1] if codes.ndim == 2 else 1))  # ~16 MB at a time
    for s in range(0, codes.shape[0], step):
        h.update(np.ascontiguousarray(codes[s:s + step], dtype=np.uint8).tobytes())
    return h.hexdigest()


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
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"{mpath}: not valid JSON ({err})") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise DataError(f"{mpath}: not a {FORMAT} manifest")
        if m.get("version") != FORMAT_VERSION:
            raise DataError(f"{mpath}: format version {m.get('version')}, this hybridhash reads {FORMAT_VERSION}")
        self.manifest: Dict[str, Any] = m
        self.bits = _manifest_int(mpath, m, "bits", 1)
        self.count = _manifest_int(mpath, m, "count", 0)
        check_fields(mpath, m)
        self.fingerprint: Optional[str] = m.get("fingerprint")
        if root is None and not isinstance(m.get("image_root"), str):
            raise DataError(f"{mpath}: no image_root (where the item paths start); pass the image root explicitly "
                            f"or encode the images again")
        self.root = Path(root if root is not None else m["image_root"]).resolve()
        self._digest: Optional[str] = None

        nbytes = (self.bits + 7) // 8
        self.codes = self._load(CODES, np.uint8, None)  # (n, bits/8)
        if self.codes.ndim != 2 or tuple(self.codes.shape) != (self.count, nbytes):
            raise DataError(f"{mpath}: says {self.count} codes of {self.bits} bits ({nbytes} bytes each), "
                            f"{self.directory / CODES} holds shape {tuple(self.codes.shape)}; the manifest does not "
                            f"match the collection, encode the images again")
        self._offsets = self._load(OFFSETS, np.int64, None)  # (n + 1,)
        self._paths_file = self.directory / PATHS
        if not self._paths_file.is_file():
            raise DataError(f"{self._paths_file}: missing")
        self._check_offsets(mpath)
        self.labels: Optional[np.ndarray] = None
        self.classes: Optional[List[str]] = None
        if m.get("labels") in LABEL_KINDS:
            self.labels = self._load(LABELS, None, None)
            if self.labels.ndim == 0 or self.labels.shape[0] != self.count:
                raise DataError(f"{mpath}: says {self.count} items, {self.directory / LABELS} has shape "
                                f"{tuple(self.labels.shape)}; encode the images again")
            try:
                self.classes = [str(c) for c in read_json(self.directory / CLASSES)]
            except (OSError, ValueError, TypeError) as err:
                raise DataError(f"{self.directory / CLASSES}: unreadable ({err})") from None
        elif m.get("labels") is not None:
            raise DataError(f"{mpath}: labels {m.get('labels')!r}, expected one of {', '.join(LABEL_KINDS)} or null")
        self._stats: Optional[np.ndarray] = None  # (n, 2) size, mtime_ns at encoding; loaded when needed
        # one descriptor read with pread: no shared file position, so path() is thread-safe
        self._fd: Optional[int] = os.open(self._paths_file, os.O_RDONLY)

    def _check_offsets(self, mpath: Path) -> None:
        """paths.offsets.npy must be (count + 1,), start at 0, never decrease and end at the size of
        paths.txt; then the lines themselves (:func:`~hybridhash.collection_check.check_paths_file`)."""
        off = self._offsets
        size = self._paths_file.stat().st_size
        why = None
        if off.ndim != 1 or off.shape[0] != self.count + 1:
            why = f"{self.directory / OFFSETS} has shape {tuple(off.shape)}, expected ({self.count + 1},)"
        elif int(off[0]) != 0 or int(off[-1]) != size:
            why = (f"{self.directory / OFFSETS} spans bytes {int(off[0])}..{int(off[-1])} of "
                   f"{self.directory / PATHS}, which has {size}")
        elif self.count and bool((np.diff(off) < 1).any()):
            why = f"{self.directory / OFFSETS} is not increasing"
        if why:
            raise DataError(f"{mpath}: says {self.count} items, but {why}; encode the images again")
        if self.count:
            check_paths_file(self._paths_file, self.directory / OFFSETS, np.asarray(off))

    def _load(self, name: str, dtype, shape) -> np.ndarray:
        path = self.directory / name
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"{path}: missing") from None
        except (ValueError, OSError, EOFError) as err:
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

    @property
    def codes_sha256(self) -> str:
        """Hex sha256 of the codes as stored (see :func:`codes_digest`), computed once."""
        if self._digest is None:
            self._digest = codes_digest(self.codes)
        return self._digest

    def encoded_stat(self, i: int) -> Optional[Tuple[int, int]]:
        """(size, mtime_ns) of item ``i``'s file when it was encoded; None for collections without them."""
        i = self._check_id(i)
        if self._stats is None:
            path = self.directory / STATS
            if STATS not in (self.manifest.get("files") or []) or not path.is_file():
                return None
            arr = self._load(STATS, np.int64, (self.count, 2))
            self._stats = arr
        return int(self._stats[i, 0]), int(self._stats[i, 1])

    def served_path(self, i: int) -> Path:
        """The file of item ``i`` to hand out, read through symbolic links; DataError if it must not be served.

        The listed path must stay inside the image root as written (no ``..``, not absolute). When
        it resolves inside the root it is served; when a symbolic link takes it outside, it is served
        only if it is the very file that was encoded (same size and mtime as recorded then), so an
        item can never stand for a file the collection did not list and encode.
        """
        rel = self.path(i)
        parts = PurePosixPath(rel).parts
        if not rel or rel.startswith("/") or ".." in parts:
            raise DataError(f"item {i}: {rel!r} leaves the image root {self.root}")
        full = (self.root / rel).resolve()
        if full.is_relative_to(self.root):
            return full
        recorded = self.encoded_stat(i)
        try:
            st = os.stat(full)
        except OSError:
            st = None
        if recorded is None or st is None or not stat_mod.S_ISREG(st.st_mode) \
                or (st.st_size, st.st_mtime_ns) != recorded:
            raise DataError(f"item {i}: {rel!r} resolves outside the image root {self.root} "
                            f"to a file that is not the one encoded")
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


def index_path(directory: Union[str, os.PathLike]) -> Path:
    """Where ``hybridhash index`` saves the index of the collection in ``directory``."""
    return Path(directory) / INDEX_FILE


def open_collection(directory: PathLike, root: Optional[PathLike] = None) -> Collection:
    """Open the collection in ``directory``; ``root`` overrides the image root (a moved image folder)."""
    return Collection(directory, root=root)


def read_manifest(directory: PathLike) -> Optional[Dict[str, Any]]:
    """The manifest of the collection in ``directory`` if this project wrote it, else None.

    A manifest is the project's when it is a JSON object with ``"format": "hybridhash-codes"``
    (every manifest this project has written carries it); anyone else's ``manifest.json`` is not.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        m = read_json(path)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return m if isinstance(m, dict) and m.get("format") == FORMAT else None


def written_files(manifest: Dict[str, Any]) -> List[str]:
    """Names of the files a project manifest says its collection consists of (the manifest last).

    Only the collection's own file names count: a hand-edited manifest that lists other files
    cannot make the project remove them. Manifests written before ``files`` was recorded: the
    files such a collection always had.
    """
    files = manifest.get("files")
    if isinstance(files, list):
        return [f for f in OWN_FILES if f in files and f != MANIFEST] + [MANIFEST]
    base = [CODES, PATHS, OFFSETS, SKIPPED]
    if manifest.get("labels") in LABEL_KINDS:
        base += [LABELS, CLASSES]
    return base + [MANIFEST]


def is_collection(directory: PathLike) -> bool:
    """True when ``directory`` holds a collection manifest this project wrote."""
    return read_manifest(directory) is not None
