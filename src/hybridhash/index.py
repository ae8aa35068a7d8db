"""Hamming-distance index over binary hash codes, on faiss's binary indexes.

Codes are packed ``uint8 (n, bits/8)`` in ``np.packbits`` order (faiss binary indexes take exactly
this), or +-1 arrays ``(n, bits)`` where a value >= 0 is bit 1. ``bits`` is a multiple of 8, up to 256.

Kinds:

- ``"flat"`` (default): exact, ``faiss.IndexBinaryFlat``. Ties are broken by id (smallest first), so
  the result equals a brute-force ranking by ``(distance, id)``. faiss's heap search scans each
  query's database in id order and its heap orders equal distances by id, so the ``k`` kept items
  are the ``k`` smallest ``(distance, id)`` pairs; the tests check this against brute force on
  heavily tied codes.
- ``"ivf"``: sub-linear, approximate, ``faiss.IndexBinaryIVF`` (binary k-means cells, ``nprobe``
  of them scanned per query). Trained on the first ``add`` (or an explicit ``train``).

``search`` returns ``(distances int32 (n, k), ids int64 (n, k))``; ids count from 0 in insertion
order, or are the caller's own after :func:`hybridhash.index_ids.add_with_ids` or
:func:`~hybridhash.index_ids.remove_ids` (a collection's item ids after an update; a flat index
then keeps its codes in a ``faiss.IndexBinaryIDMap``, in increasing id order, so ties stay by id);
slots with no item hold id ``EMPTY_ID`` (-1) and distance ``EMPTY_DISTANCE`` (int32 max, faiss's
convention). Rows are sorted by ``(distance, id)`` for every kind.

``save(path)`` writes the faiss index file and a JSON sidecar ``<path>.json`` (kind, bits, params,
count, optional model fingerprint, optional ``codes_sha256`` of the packed codes it was built from);
``HashIndex.load`` checks the sidecar against the file and against the caller's expected bit
length, fingerprint and codes digest.
"""
from __future__ import annotations

import errno
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
import logging
from typing import Any, Callable, Dict, Optional, Tuple, Union

import faiss
import numpy as np

from .codes import as_packed, check_bits, rank_rows  # as_packed: the lenient reader, packed or values of any sign
from .errors import ConfigError, DataError, IndexMismatchError
from .fileio import atomic_path, read_json
from .environment import usable_cores
from .limits import K_CAP

_log = logging.getLogger(__name__)

__all__ = ["HashIndex", "KINDS", "EMPTY_ID", "EMPTY_DISTANCE", "K_CAP", "check_k"]

EMPTY_ID = -1
EMPTY_DISTANCE = int(np.iinfo(np.int32).max)  # faiss fills empty heap slots with this
MANIFEST_FORMAT = "hybridhash-index"
MANIFEST_VERSION = 1

# Per-kind parameters and their defaults; None means "chosen from the data at training time".
KINDS: Dict[str, Dict[str, Any]] = {
    "flat": {},
    "ivf": {"nlist": None, "nprobe": 8},
}
_FAISS_TYPES = {"flat": "IndexBinaryFlat", "ivf": "IndexBinaryIVF"}
_MAPPED_TYPES = {"flat": "IndexBinaryIDMap", "ivf": "IndexBinaryIVF"}  # holding ids the caller chose
_TRAIN_POINTS_PER_LIST = 256  # k-means sample per cell, as faiss's own default cap
_CHUNK_MIN, _CHUNK_MAX = 16, 256  # queries per worker task


class StaleIndexError(IndexMismatchError):
    """A saved index built from other codes than the ones it is loaded for (its ``codes_sha256`` differs)."""


def check_k(k: Any, name: str = "k", allow_zero: bool = False) -> int:
    """``k`` as an int in ``0 or 1 .. K_CAP``, or ConfigError naming ``name``."""
    low = 0 if allow_zero else 1
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not low <= k <= K_CAP:
        kind = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{name} must be a {kind} integer of at most {K_CAP}, got {k!r}")
    return int(k)


@lru_cache(maxsize=None)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hashindex")


def _single_threaded(fn: Callable[[], Any]) -> Any:
    # Parallelism comes from our own workers, each running faiss on one core: OpenMP's barriers
    # stall badly on a machine shared with other jobs, while whole chunks per thread balance.
    faiss.omp_set_num_threads(1)
    return fn()


def _serial(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with faiss on one core in the calling thread, restoring its OpenMP setting."""
    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return fn()
    finally:
        faiss.omp_set_num_threads(prev)


class HashIndex:
    """A searchable collection of binary codes (see the module docstring for kinds and conventions).

    Args:
        bits: code length, a multiple of 8 up to 256.
        kind: ``"flat"`` (exact) or ``"ivf"`` (sub-linear, approximate).
        fingerprint: optional fingerprint of the model that made the codes, saved in the sidecar.
        threads: worker threads for search and ivf add, each running faiss on one core (default:
            all cores available to the process). ivf training (k-means) runs on one core.
        **params: kind parameters. ``ivf``: ``nlist`` (cells; default chosen at training as the
            power of two nearest ``sqrt(n) / 4``), ``nprobe`` (cells scanned per query, default 8).

    Searches may run from several threads at once; ``add`` must not overlap a search.
    """

    def __init__(self, bits: int, kind: str = "flat", *, fingerprint: Optional[str] = None,
                 threads: Optional[int] = None, **params: Any) -> None:
        self.bits = check_bits(bits)
        if kind not in KINDS:
            raise ConfigError(f"unknown index kind {kind!r}; known: {', '.join(KINDS)}")
        unknown = sorted(set(params) - set(KINDS[kind]))
        if unknown:
            known = ", ".join(KINDS[kind]) or "none"
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for a {kind} index; known: {known}")
        self.kind = kind
        self.params: Dict[str, Any] = {**KINDS[kind], **params}
        for name in ("nlist", "nprobe"):
            value = self.params.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.fingerprint = fingerprint
        # sha256 of the packed codes added, when the caller knows it (a collection's codes_sha256)
        self.codes_sha256: Optional[str] = None
        if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {threads!r}")
        self.threads = int(threads) if threads is not None else usable_cores()
        self._index: Any = faiss.IndexBinaryFlat(self.bits) if kind == "flat" else None
        # ids chosen by the caller (hybridhash.index_ids) rather than 0..ntotal-1 in insertion order
        self.mapped = False
        # ivf: the ids below this were in the index when its cells were trained (the drift measure)
        self.trained_next_id: Optional[int] = None

    # ------------------------------------------------------------------ size
    @property
    def code_size(self) -> int:
        return self.bits // 8

    @property
    def ntotal(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def is_trained(self) -> bool:
        return self._index is not None and bool(self._index.is_trained)

    def memory_bytes(self) -> int:
        """Bytes held by the index's code and id arrays (allocator slack not counted)."""
        if self._index is None:
            return 0
        if self.kind == "flat":
            if self.mapped:  # codes + int64 ids
                return int(faiss.downcast_IndexBinary(self._index.index).xb.size()) + 8 * self.ntotal
            return int(self._index.xb.size())  # exactly ntotal * bits/8
        ivf = self._index
        sizes = sum(int(ivf.invlists.list_size(i)) for i in range(ivf.nlist))
        return sizes * (self.code_size + 8) + int(ivf.nlist) * self.code_size  # codes + int64 ids + centroids

    # ------------------------------------------------------------------ threads
    def _chunked(self, fn: Callable[[int, int], Any], n: int, chunk: int) -> list:
        """``fn(start, stop)`` over ``range(0, n, chunk)`` on the worker pool, results in order."""
        starts = range(0, n, chunk)
        if self.threads == 1 or len(starts) == 1:
            return [_serial(lambda: fn(s, min(s + chunk, n))) for s in starts]
        return list(_pool(self.threads).map(lambda s: _single_threaded(lambda: fn(s, min(s + chunk, n))), starts))

    # ------------------------------------------------------------------ build
    def _auto_nlist(self, n: int) -> int:
        target = max(1.0, math.sqrt(n) / 4)
        return int(2 ** round(math.log2(target)))

    def train(self, codes: Any) -> None:
        """Train an ``ivf`` index's cells on ``codes`` ``(n, bits/8)`` or ``(n, bits)`` (a random
        sample of at most 256 codes per cell is used). A no-op for ``flat``."""
        x = as_packed(codes, self.bits)
        if self.kind == "flat":
            return
        if self.is_trained:
            raise ConfigError("this ivf index is already trained")
        n = x.shape[0]
        nlist = self.params["nlist"] or self._auto_nlist(n)
        if n < nlist:
            raise ConfigError(f"an ivf index with nlist={nlist} needs at least {nlist} codes to train, got {n}")
        if n > _TRAIN_POINTS_PER_LIST * nlist:
            pick = np.random.default_rng(0).choice(n, _TRAIN_POINTS_PER_LIST * nlist, replace=False)
            x = x[np.sort(pick)]
        index = faiss.index_binary_factory(self.bits, f"BIVF{nlist}")
        index.cp.min_points_per_centroid = 1  # small sets are fine; silences faiss's warning
        index.nprobe = int(self.params["nprobe"])
        _serial(lambda: index.train(x))  # k-means on one core (see _single_threaded)
        self._index = index
        self.params["nlist"] = int(nlist)

    def add(self, codes: Any) -> None:
        """Append codes ``(n, bits/8)`` packed or ``(n, bits)`` +-1; they get ids ntotal..ntotal+n-1.

        An untrained ``ivf`` index is first trained on these codes.
        """
        x = as_packed(codes, self.bits)
        if x.shape[0] == 0:
            return
        if self.mapped:
            raise ConfigError("this index holds ids chosen by the caller: add codes with "
                              "hybridhash.index_ids.add_with_ids")
        if not self.is_trained:
            self.train(x)
        if self.kind == "flat":
            self._index.add(x)  # a copy, nothing to parallelize
            return
        self._add_ivf(x, None)

    def _add_ivf(self, x: np.ndarray, ids: Optional[np.ndarray]) -> None:
        """Add packed codes (n, bits/8) to the trained ivf index, with ids int64 (n,) or ntotal..ntotal+n-1."""
        # the costly part of an ivf add is finding each code's cell: spread it over the workers
        quantizer = self._index.quantizer
        cells = np.concatenate(self._chunked(lambda a, b: quantizer.search(x[a:b], 1)[1][:, 0], len(x), 65536))
        cells = np.ascontiguousarray(cells, dtype=np.int64)  # (n,)
        self._index.add_core(len(x), faiss.swig_ptr(x), None if ids is None else faiss.swig_ptr(ids),
                             faiss.swig_ptr(cells))
        if self.trained_next_id is None:  # the add that trained the cells
            self.trained_next_id = int(self.ntotal if ids is None else ids.max() + 1)

    # ------------------------------------------------------------------ search
    @property
    def nprobe(self) -> int:
        """Cells scanned per query (``ivf`` only); settable."""
        if self.kind != "ivf":
            raise ConfigError(f"nprobe applies to ivf indexes, not {self.kind}")
        return int(self.params["nprobe"])

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.kind != "ivf":
            raise ConfigError(f"nprobe applies to ivf indexes, not {self.kind}")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"nprobe must be a positive integer, got {value!r}")
        self.params["nprobe"] = int(value)
        if self._index is not None:
            self._index.nprobe = int(value)

    def search(self, codes: Any, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest codes by Hamming distance.

        Args:
            codes: queries, packed ``(n, bits/8)`` or +-1 ``(n, bits)``.
            k: results per query, 0..``K_CAP`` (it may exceed ntotal: the rest are empty slots;
                callers that want no padding pass ``min(k, ntotal)``).

        Returns:
            ``(distances int32 (n, k), ids int64 (n, k))``, each row sorted by ``(distance, id)``;
            empty slots hold ``EMPTY_ID`` and ``EMPTY_DISTANCE``. Exact with ties by id for ``flat``.

        Raises:
            ConfigError: k negative, not an integer, or over ``K_CAP`` (the result is allocated
                before searching: an unbounded k would be an unbounded allocation).
        """
        k = check_k(k, allow_zero=True)
        q = as_packed(codes, self.bits)
        n = q.shape[0]
        dist = np.full((n, k), EMPTY_DISTANCE, dtype=np.int32)
        ids = np.full((n, k), EMPTY_ID, dtype=np.int64)
        kk = min(k, self.ntotal)  # faiss never has more than ntotal to give
        if n == 0 or kk == 0:
            return dist, ids
        index = self._index
        chunk = min(_CHUNK_MAX, max(_CHUNK_MIN, -(-n // (4 * self.threads))))
        parts = self._chunked(lambda a, b: index.search(q[a:b], kk), n, chunk)
        d = np.concatenate([p[0] for p in parts])  # (n, kk)
        i = np.concatenate([p[1] for p in parts])
        d[i < 0] = EMPTY_DISTANCE
        dist[:, :kk], ids[:, :kk] = rank_rows(d, i)  # (distance, id) per row; flat is already in this order
        return dist, ids

    # ------------------------------------------------------------------ persistence
    @staticmethod
    def manifest_path(path: str | os.PathLike) -> Path:
        """The JSON sidecar beside an index file: ``<path>.json``."""
        path = Path(path)
        return path.with_name(path.name + ".json")

    def save(self, path: str | os.PathLike, fingerprint: Optional[str] = None,
             codes_sha256: Optional[str] = None) -> None:
        """Write the faiss index to ``path`` and its sidecar to ``<path>.json``, each atomically.

        ``fingerprint`` (default: the index's own) names the model that made the codes;
        ``codes_sha256`` (default: the index's own) binds the index to exactly those codes.
        Both are written to temporary files first, so a failed write (a full disk) leaves the old
        pair as it was and no partial file; then the old sidecar goes, the index file is replaced
        and the new sidecar follows, so a new index file is never described by an old sidecar.
        """
        if fingerprint is not None:
            self.fingerprint = fingerprint
        if codes_sha256 is not None:
            self.codes_sha256 = codes_sha256
        index = self._index if self._index is not None else faiss.IndexBinaryFlat(self.bits)
        path = Path(path)
        mpath = self.manifest_path(path)
        if (os.path.lexists(path) or os.path.lexists(mpath)) and not _saved_here(mpath):
            raise DataError(f"{path} or {mpath.name} beside it exists and is not an index hybridhash saved; "
                            f"move it away or save the index elsewhere (--out)")
        with atomic_path(mpath) as tmp_side:
            with atomic_path(path) as tmp:
                try:
                    faiss.write_index_binary(index, str(tmp))
                except RuntimeError as e:  # faiss reports a failed write (e.g. a full disk) this way
                    reason = str(e).strip().splitlines()[-1] if str(e).strip() else "write failed"
                    raise OSError(errno.EIO, f"cannot write the index ({reason[:160]})", str(path)) from None
                self._write_sidecar(tmp_side)
                mpath.unlink(missing_ok=True)
            # the index file is in place here; the sidecar replaces nothing older on leaving

    def _write_sidecar(self, tmp: Path) -> None:
        tmp.write_text(json.dumps({
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "kind": self.kind,
            "bits": self.bits,
            "params": self.params,
            "count": self.ntotal,
            "trained": self._index is not None,
            "fingerprint": self.fingerprint,
            "codes_sha256": self.codes_sha256,
            "ids": "chosen" if self.mapped else "sequential",
            "trained_next_id": self.trained_next_id,
            "faiss_version": faiss.__version__,
        }, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, expect_bits: Optional[int] = None,
             expect_fingerprint: Optional[str] = None, threads: Optional[int] = None,
             expect_codes_sha256: Optional[str] = None) -> "HashIndex":
        """Read an index written by :meth:`save`.

        Raises:
            IndexMismatchError: the index holds codes of another bit length than ``expect_bits``,
                or was recorded with another model fingerprint than ``expect_fingerprint`` (an
                index saved without a fingerprint cannot be checked and is accepted), or was built
                from other codes than those of digest ``expect_codes_sha256`` (an index saved without
                a digest cannot be bound to its codes and is refused too).
            DataError: a missing or corrupt index file or sidecar, or the two disagree.
        """
        path = Path(path)
        mpath = cls.manifest_path(path)
        if not path.is_file():
            raise DataError(f"index file not found: {path}")
        if not mpath.is_file():
            raise DataError(f"index manifest not found: {mpath} (HashIndex.save writes it beside the index)")
        try:
            m = read_json(mpath)
            kind, bits, count, params = m["kind"], int(m["bits"]), int(m["count"]), dict(m["params"])
            fingerprint = m.get("fingerprint")
            codes_sha256 = m.get("codes_sha256")
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise DataError(f"index manifest {mpath} is malformed ({type(e).__name__}: {e})") from None
        if m.get("format") != MANIFEST_FORMAT or kind not in KINDS:
            raise DataError(f"{mpath} is not a hybridhash index manifest (format {m.get('format')!r}, kind {kind!r})")
        if expect_bits is not None and bits != int(expect_bits):
            raise IndexMismatchError(f"index {path} holds {bits}-bit codes, expected {int(expect_bits)}-bit codes")
        if expect_fingerprint is not None and fingerprint is not None and fingerprint != expect_fingerprint:
            raise IndexMismatchError(f"index {path} was built from model {fingerprint}, "
                                     f"expected model {expect_fingerprint}")
        if expect_codes_sha256 is not None and codes_sha256 != expect_codes_sha256:
            what = ("codes it does not record" if codes_sha256 is None
                    else f"other codes (sha256 {str(codes_sha256)[:12]})")
            raise StaleIndexError(f"index {path} was built from {what}, not these codes "
                                     f"(sha256 {expect_codes_sha256[:12]}); rebuild it with `hybridhash index`")
        try:
            index = faiss.read_index_binary(str(path))  # already the concrete class
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
            raise DataError(f"cannot read faiss index {path}: corrupt or not a binary index ({reason[:160]})") from None
        trained = bool(m.get("trained", True))
        mapped = m.get("ids") == "chosen"
        expected_type = (_MAPPED_TYPES if mapped else _FAISS_TYPES)[kind] if trained \
            else "IndexBinaryFlat"  # untrained: empty placeholder
        if type(index).__name__ != expected_type or index.d != bits or index.ntotal != count:
            raise DataError(f"index file {path} disagrees with its manifest: file holds {index.ntotal} "
                            f"{index.d}-bit codes in a {type(index).__name__}, manifest says {count} "
                            f"{bits}-bit codes in a {kind} index")
        obj = cls(bits, kind, fingerprint=fingerprint, threads=threads, **params)
        obj.codes_sha256 = codes_sha256
        obj.mapped = mapped and trained
        # an ivf index saved before this was recorded: every id it held counts as trained on
        nxt = m.get("trained_next_id", count if kind == "ivf" and trained else None)
        obj.trained_next_id = int(nxt) if isinstance(nxt, int) and not isinstance(nxt, bool) else None
        if not trained:
            return obj
        if kind == "ivf":
            index.nprobe = int(obj.params["nprobe"])
        obj._index = index
        return obj

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.params.items())
        return f"HashIndex(bits={self.bits}, kind={self.kind!r}, ntotal={self.ntotal}{extra})"


def _saved_here(mpath: Path) -> bool:
    """True when ``mpath`` is the sidecar of an index this project saved (so the pair may be replaced)."""
    try:
        m = read_json(mpath)
    except (OSError, ValueError, UnicodeDecodeError, DataError):
        return False
    return isinstance(m, dict) and m.get("format") == MANIFEST_FORMAT


def remove_saved_index(path: Union[str, os.PathLike], keep_sha256: Optional[str] = None,
                       why: str = "it was built from other codes") -> bool:
    """Remove the index saved at ``path`` (file and sidecar), unless it was built from the codes of
    digest ``keep_sha256``; ``why`` is logged. Only an index whose sidecar is this project's is touched (never a file
    the project did not write). Returns whether one was removed."""
    path = Path(path)
    side = HashIndex.manifest_path(path)
    if not _saved_here(side):
        return False
    if keep_sha256 is not None and read_json(side).get("codes_sha256") == keep_sha256:
        return False
    path.unlink(missing_ok=True)
    side.unlink(missing_ok=True)
    _log.info("removed %s: %s", path, why)
    return True
