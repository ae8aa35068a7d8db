"""The on-disk code collection: packed codes, paths, labels and item ids of an encoded image set,
in generations.

Layout of a collection directory ``CODES/``::

    manifest.json        format "hybridhash-codes", bits, model fingerprint, preprocessing, count,
                         generation, next_id, codes_sha256, files, ...: the one switch (see below)
    codes.npy            uint8 (n, bits/8), packed in np.packbits order; row r holds item ids[r]
    paths.txt            the image paths relative to the image root, one per line (UTF-8)
    paths.offsets.npy    int64 (n + 1,) byte offsets of each line in paths.txt
    labels.npy           int64 (n,) class ids, or uint8 (n, C) multi-hot (only when labels are known)
    classes.json         the C class names (only when labels are known)
    skipped.json         [{"path", "reason"}] images that could not be encoded
    files.stat.npy       int64 (n, 2) size and mtime_ns of each item's file when it was encoded
    ids.npy              int64 (n,) the item ids of the rows, strictly increasing (only after an update)
    index.faiss(.json)   the saved index (``hybridhash index``), bound to codes and ids by their digest
    shards/              the encoder's resumable shards (see :mod:`hybridhash.app.encode`)

**Generations.** A fresh encode writes generation 0, its files at the top level as above. An update
(:mod:`hybridhash.generations`) writes generation N+1 whole into ``gen-0000{N+1}/`` beside
generation N, its index included, and then replaces ``manifest.json`` atomically: that one rename is
the switch. Until it, every reader opens generation N; after it, N's files are removed (only the
names a collection's files have). A reader that opened N keeps its memory maps and descriptor, so
it answers from N until it opens the new generation (:meth:`Collection.is_current`,
:meth:`hybridhash.retrieval.Retriever.refresh`); one that read the manifest just before a switch
and finds N's files gone opens again.

**Item ids.** The ids users see (search results, ``/items/{id}``, ``--json``) are the rows of
generation 0. An update keeps the id of every image that did not change, gives new and changed
images ids from the manifest's ``next_id`` (above the largest ever given, so an id is never reused
for another image), and keeps the rows in increasing id order (``ids.npy``), so an id's row is a
binary search away and ties by id stay ties by row. A collection without ``ids.npy`` has ids 0..n-1.

``manifest.json`` is written last, so a directory with a manifest holds a complete collection. The
manifest's ``format`` marks the directory as this project's, and ``files`` lists the files the
project wrote there (only those are ever removed or replaced).
Codes and offsets are memory-mapped; a path is read from disk only when a result needs it.
"""
from __future__ import annotations

import os
import re
import stat as stat_mod
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .collection_check import check_fields, check_ids, check_offsets, manifest_int as _manifest_int
from .collection_files import (CLASSES, CODES, IDS, LABELS, OFFSETS, PATHS, SKIPPED, STATS,  # noqa: F401
                               codes_digest, save_npy, save_npz, write_generation_files, write_paths)
from .errors import DataError
from .fileio import atomic_path, loads_json, read_json, write_json  # noqa: F401  (atomic_path re-exported)

FORMAT = "hybridhash-codes"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"  # saved beside the generation's files by `hybridhash index`
SHARDS = "shards"
GENERATION_DIR = re.compile(r"gen-(\d{5,})")
# every file name a collection can hold in a generation (the index is handled on its own)
OWN_FILES = (CODES, PATHS, OFFSETS, LABELS, CLASSES, SKIPPED, STATS, IDS, MANIFEST)
# label kinds a manifest may name
LABEL_KINDS = ("class", "multi-hot")
_OPEN_TRIES = 3  # a generation switch between reading the manifest and opening the files: open again

PathLike = Union[str, os.PathLike]


def generation_dir(directory: PathLike, generation: int) -> Path:
    """Where the files of ``generation`` live: the collection directory itself for 0, else ``gen-NNNNN/``."""
    return Path(directory) if generation == 0 else Path(directory) / f"gen-{int(generation):05d}"


def write_collection(directory: PathLike, manifest: Dict[str, Any], codes: np.ndarray, paths: Sequence[str],
                     labels: Optional[np.ndarray] = None, classes: Optional[List[str]] = None,
                     skipped: Sequence[Dict[str, str]] = (), stats: Optional[np.ndarray] = None) -> "Collection":
    """Write generation 0 of a collection (a fresh encode), the manifest last, and open it.

    ``codes`` uint8 (n, bits/8); ``paths`` n relative paths; ``labels`` int64 (n,) or uint8 (n, C);
    ``stats`` int64 (n, 2) size and mtime_ns of each file when it was encoded, or None.
    ``manifest`` gets ``format``, ``version``, ``generation``, ``next_id``, ``count``, ``codes_sha256``
    and ``files`` filled in.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # a reader must never pair an old manifest with new files
    (directory / MANIFEST).unlink(missing_ok=True)
    files = write_generation_files(directory, codes, paths, labels, classes, skipped, stats)
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n = int(codes.shape[0])
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, **manifest, "generation": 0, "next_id": n, "count": n,
                "codes_sha256": codes_digest(codes), "files": files + [MANIFEST]}
    write_json(directory / MANIFEST, manifest)
    return Collection(directory)


def _manifest_identity(mpath: Path) -> Optional[Tuple[int, int, int]]:
    """(inode, mtime_ns, size) of the manifest: an atomic replace changes the inode; None when absent."""
    try:
        st = os.stat(mpath)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _read_manifest(directory: Path) -> Tuple[Dict[str, Any], Tuple[int, int, int]]:
    """The parsed manifest of ``directory`` and the identity of the very file read; DataError otherwise."""
    mpath = directory / MANIFEST
    try:
        with open(mpath, "rb") as f:
            st = os.fstat(f.fileno())
            text = f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        if (directory / SHARDS).is_dir():
            raise DataError(f"{directory}: encoding has not finished (shards but no {MANIFEST}); "
                            f"run the same encode command again to resume it") from None
        raise DataError(f"{directory}: not a code collection (no {MANIFEST})") from None
    try:
        m = loads_json(text, str(mpath))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{mpath}: not valid JSON ({err})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{mpath}: not a {FORMAT} manifest")
    if m.get("version") != FORMAT_VERSION:
        raise DataError(f"{mpath}: format version {m.get('version')}, this hybridhash reads {FORMAT_VERSION}")
    return m, (st.st_ino, st.st_mtime_ns, st.st_size)


class Collection:
    """One generation of a code collection, opened read-only.

    Attributes:
        directory: the collection directory.
        manifest: the parsed ``manifest.json``.
        bits, count, fingerprint: code length, number of items, model fingerprint.
        generation: the generation opened (0 for a fresh encode); ``files_dir`` where its files are.
        next_id: the id the next new image will get (every id given so far is below it).
        root: the image root (absolute) that item paths are relative to.
        codes: uint8 (count, bits/8), memory-mapped; row r is item ``ids[r]``.
        ids: int64 (count,) strictly increasing item ids, memory-mapped; None when the ids are the rows.
        labels: int64 (count,) class ids, uint8 (count, C) multi-hot, or None; memory-mapped.
        classes: class names (list of str) or None.

    Methods taking an item id (``path``, ``label``, ``served_path``, ...) take the id users see.
    """

    def __init__(self, directory: PathLike, root: Optional[PathLike] = None):
        self.directory = Path(directory)
        self._fd: Optional[int] = None
        for attempt in range(_OPEN_TRIES):
            m, self._identity = _read_manifest(self.directory)
            try:
                self._open(m, root)
                return
            except DataError:
                self.close()
                if attempt + 1 == _OPEN_TRIES or _manifest_identity(self.directory / MANIFEST) == self._identity:
                    raise

    def _open(self, m: Dict[str, Any], root: Optional[PathLike]) -> None:
        mpath = self.directory / MANIFEST
        self.manifest: Dict[str, Any] = m
        self.bits = _manifest_int(mpath, m, "bits", 1)
        self.count = _manifest_int(mpath, m, "count", 0)
        check_fields(mpath, m)
        self.generation: int = m.get("generation") or 0
        self.files_dir = generation_dir(self.directory, self.generation)
        self.next_id: int = m["next_id"] if m.get("next_id") is not None else self.count
        self.fingerprint: Optional[str] = m.get("fingerprint")
        if root is None and not isinstance(m.get("image_root"), str):
            raise DataError(f"{mpath}: no image_root (where the item paths start); pass the image root explicitly "
                            f"or encode the images again")
        self.root = Path(root if root is not None else m["image_root"]).resolve()
        self._digest: Optional[str] = None
        files = m.get("files") or []

        nbytes = (self.bits + 7) // 8
        self.codes = self._load(CODES, np.uint8, None)  # (n, bits/8)
        if self.codes.ndim != 2 or tuple(self.codes.shape) != (self.count, nbytes):
            raise DataError(f"{mpath}: says {self.count} codes of {self.bits} bits ({nbytes} bytes each), "
                            f"{self.files_dir / CODES} holds shape {tuple(self.codes.shape)}; the manifest does not "
                            f"match the collection, encode the images again")
        self._offsets = self._load(OFFSETS, np.int64, None)  # (n + 1,)
        self._paths_file = self.files_dir / PATHS
        if not self._paths_file.is_file():
            raise DataError(f"{self._paths_file}: missing")
        check_offsets(mpath, self._paths_file, self.files_dir / OFFSETS, self._offsets, self.count)
        self.ids: Optional[np.ndarray] = self._load(IDS, np.int64, (self.count,)) if IDS in files else None
        check_ids(mpath, self.files_dir / IDS, self.ids, self.count, self.next_id)
        self.labels: Optional[np.ndarray] = None
        self.classes: Optional[List[str]] = None
        if m.get("labels") in LABEL_KINDS:
            self.labels = self._load(LABELS, None, None)
            if self.labels.ndim == 0 or self.labels.shape[0] != self.count:
                raise DataError(f"{mpath}: says {self.count} items, {self.files_dir / LABELS} has shape "
                                f"{tuple(self.labels.shape)}; encode the images again")
            try:
                self.classes = [str(c) for c in read_json(self.files_dir / CLASSES)]
            except (OSError, ValueError, TypeError) as err:
                raise DataError(f"{self.files_dir / CLASSES}: unreadable ({err})") from None
        elif m.get("labels") is not None:
            raise DataError(f"{mpath}: labels {m.get('labels')!r}, expected one of {', '.join(LABEL_KINDS)} or null")
        # (n, 2) size, mtime_ns at encoding; mapped now, so a reader of this generation keeps them after a switch
        self._stats: Optional[np.ndarray] = None
        if STATS in files and (self.files_dir / STATS).is_file():
            self._stats = self._load(STATS, np.int64, (self.count, 2))
        # one descriptor read with pread: no shared file position, so path() is thread-safe
        self._fd = os.open(self._paths_file, os.O_RDONLY)

    def _load(self, name: str, dtype, shape) -> np.ndarray:
        path = self.files_dir / name
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
    @staticmethod
    def current_generation(directory: PathLike) -> Optional[int]:
        """The generation the manifest of ``directory`` names now (one small read); None without a
        manifest of this project. Cheaper still: :meth:`is_current` on an open collection."""
        m = read_manifest(directory)
        gen = None if m is None else m.get("generation", 0)
        return gen if isinstance(gen, int) and not isinstance(gen, bool) and gen >= 0 else None

    def is_current(self) -> bool:
        """Whether the manifest is still the very file this collection was opened from (one ``stat``):
        False once an update switched generations (or the collection was encoded again)."""
        return _manifest_identity(self.directory / MANIFEST) == self._identity

    @property
    def index_path(self) -> Path:
        """Where ``hybridhash index`` saves this generation's index."""
        return self.files_dir / INDEX_FILE

    @property
    def item_ids(self) -> np.ndarray:
        """int64 (count,): the item id of each row."""
        return np.asarray(self.ids) if self.ids is not None else np.arange(self.count, dtype=np.int64)

    def row(self, item_id: int) -> int:
        """The row of item ``item_id``; IndexError when this generation holds no such item."""
        i = int(item_id)
        if self.ids is None:
            if 0 <= i < self.count:
                return i
        else:
            r = int(np.searchsorted(self.ids, i))
            if r < self.count and int(self.ids[r]) == i:
                return r
        raise IndexError(f"no item {i} in generation {self.generation} of {self.directory} ({self.count} items)")

    def has_id(self, item_id: int) -> bool:
        """Whether this generation holds item ``item_id``."""
        try:
            self.row(item_id)
        except (IndexError, ValueError, TypeError, OverflowError):
            return False
        return True

    def all_paths(self) -> List[str]:
        """Every item's path, in row order (paths.txt read whole)."""
        if self._fd is None:
            raise DataError(f"{self.directory}: collection is closed")
        size = int(self._offsets[-1])
        return os.pread(self._fd, size, 0).decode("utf-8").split("\n")[:-1] if size else []

    def all_stats(self) -> Optional[np.ndarray]:
        """int64 (count, 2) size and mtime_ns of every item's file when it was encoded; None if not recorded."""
        return None if self._stats is None else np.asarray(self._stats)

    @property
    def checkpoint(self) -> Optional[str]:
        return self.manifest.get("checkpoint")

    @property
    def preprocess(self) -> Optional[Dict[str, Any]]:
        return self.manifest.get("preprocess")

    @property
    def skipped(self) -> List[Dict[str, str]]:
        """The images the encoder could not read: ``[{"path", "reason"}]``."""
        path = self.files_dir / SKIPPED
        return read_json(path) if path.is_file() else []

    def __len__(self) -> int:
        return self.count

    def path(self, i: int) -> str:
        """The image path of item ``i``, relative to the image root (read from disk, not cached)."""
        r = self.row(i)
        start, end = int(self._offsets[r]), int(self._offsets[r + 1])
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
        """Hex sha256 of the codes as stored and of their ids (see :func:`codes_digest`), computed once."""
        if self._digest is None:
            self._digest = codes_digest(self.codes, self.ids)
        return self._digest

    def encoded_stat(self, i: int) -> Optional[Tuple[int, int]]:
        """(size, mtime_ns) of item ``i``'s file when it was encoded; None for collections without them."""
        r = self.row(i)
        if self._stats is None:
            return None
        return int(self._stats[r, 0]), int(self._stats[r, 1])

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
        r = self.row(i)
        if self.labels is None:
            return []
        row = self.labels[r]
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
                f"generation={self.generation}, labels={self.manifest.get('labels')})")


def index_path(directory: Union[str, os.PathLike]) -> Path:
    """Where ``hybridhash index`` saves the index of the collection in ``directory`` (in its current
    generation's files; the top level for generation 0 or without a manifest)."""
    return generation_dir(directory, Collection.current_generation(directory) or 0) / INDEX_FILE


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
