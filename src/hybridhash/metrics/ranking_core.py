"""The machinery every metric shares: codes and labels checked against each other, chunks of
queries mapped over threads, exact top-K candidates by Hamming distance (ties by index)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import numpy as np

from ..codes import to_numpy, distance_dtype, pack_bits, pack_pm1, xor_popcount
from ..codes import words as _words
from ..errors import ConfigError, DataError, IndexMismatchError
from ..runtime import usable_cores

# query-by-database cells per chunk: ~4 M keeps a chunk's buffers in tens of MB
_CHUNK_CELLS = 1 << 22
# database columns sampled to guess the top-K distance threshold
_SAMPLE_COLS = 8192

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------
# codes (the format itself lives in hybridhash.codes)


def _as_packed(name: str, codes) -> tuple[np.ndarray, int | None]:
    """Codes -> (packed uint8 (n, nbytes), bits known from a +-1 width or None)."""
    arr = to_numpy(name, codes)
    if arr.ndim != 2:
        raise DataError(f"{name} must be 2-D (n, bits) or packed (n, bytes), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr), None
    return pack_pm1(arr, name), arr.shape[1]


class _Codes:
    """Query and database codes as uint64 words, checked against each other."""

    def __init__(self, query_codes, database_codes) -> None:
        qp, qbits = _as_packed("query_codes", query_codes)
        dp, dbits = _as_packed("database_codes", database_codes)
        if qp.shape[1] != dp.shape[1] or (qbits and dbits and qbits != dbits):
            qdesc = f"{qbits} bits" if qbits else f"{qp.shape[1]} packed bytes"
            ddesc = f"{dbits} bits" if dbits else f"{dp.shape[1]} packed bytes"
            raise IndexMismatchError(f"query_codes have {qdesc} but database_codes have {ddesc}")
        self.bits = qbits or dbits or 8 * qp.shape[1]
        self.nq, self.ndb = qp.shape[0], dp.shape[0]
        self.query = _words(qp)  # (nq, W)
        self.database_t = np.ascontiguousarray(_words(dp).T)  # (W, ndb), one row per word
        # Hamming distances range over 0..8 * nbytes; keep them in the smallest unsigned type
        self.dtype = distance_dtype(qp.shape[1])
        self.levels = 8 * qp.shape[1] + 1  # distance values 0..8 * nbytes
        self._samples: dict[int, np.ndarray] = {}

    def distances(
        self, start: int, stop: int, threshold: np.ndarray | None = None, step: int = 1
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Hamming distances of queries [start, stop) to the database.

        Args:
            threshold: optional (stop - start,) per-query distances; the mask D <= threshold is
                then built tile by tile while the distances are still in cache.
            step: take every step-th database item only (a sample).

        Returns:
            D (stop - start, ceil(ndb / step)) uint8 (uint16 beyond 255 bits), and with a
            threshold also the bool mask of the same shape.
        """
        q = self.query[start:stop]  # (qc, W)
        database = self.database_t if step == 1 else self._sampled(step)  # (W, n)
        qc, n = q.shape[0], database.shape[1]
        out = np.empty((qc, n), self.dtype)
        mask = None if threshold is None else np.empty((qc, n), np.bool_)
        limit = None if threshold is None else threshold.astype(self.dtype)[:, None]  # (qc, 1)
        xor_popcount(q, database, out, limit, mask)
        return out if mask is None else (out, mask)

    def _sampled(self, step: int) -> np.ndarray:
        if step not in self._samples:
            self._samples[step] = np.ascontiguousarray(self.database_t[:, ::step])  # (W, ndb / step)
        return self._samples[step]


def hamming_distances(query_codes, database_codes) -> np.ndarray:
    """Hamming distances, int32 (nq, ndb), from +-1 or packed codes (popcount of xor)."""
    codes = _Codes(query_codes, database_codes)
    return codes.distances(0, codes.nq).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# labels


class _Labels:
    """Query and database labels, as int64 class ids or as multi-hot bit sets in uint64 words."""

    def __init__(self, query_labels, database_labels, nq: int, ndb: int) -> None:
        q = to_numpy("query_labels", query_labels)
        d = to_numpy("database_labels", database_labels)
        checks = (("query_labels", q, nq, "query_codes"), ("database_labels", d, ndb, "database_codes"))
        for name, arr, n, codes in checks:
            if arr.ndim not in (1, 2):
                raise DataError(f"{name} must be class ids (n,) or multi-hot (n, C), got shape {arr.shape}")
            if arr.shape[0] != n:
                raise DataError(f"{name} has {arr.shape[0]} rows but {codes} has {n}")
        if q.ndim != d.ndim:
            raise DataError("query_labels and database_labels must both be class ids or both multi-hot")
        self.multilabel = q.ndim == 2
        if self.multilabel:
            if q.shape[1] != d.shape[1]:
                raise DataError(f"query_labels have {q.shape[1]} classes but database_labels have {d.shape[1]}")
            self.query = self._pack("query_labels", q)  # (nq, W)
            self.database = self._pack("database_labels", d)  # (ndb, W)
        else:
            for name, arr in (("query_labels", q), ("database_labels", d)):
                if not np.issubdtype(arr.dtype, np.integer):
                    raise DataError(f"{name} class ids must be integers, got dtype {arr.dtype}")
            self.query = q.astype(np.int64)  # (nq,)
            self.database = d.astype(np.int64)  # (ndb,)

    @staticmethod
    def _pack(name: str, arr: np.ndarray) -> np.ndarray:
        if arr.dtype != np.bool_:
            if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
                raise DataError(f"{name} must be numeric 0/1, got dtype {arr.dtype}")
            ones = arr == 1
            if not np.all(ones | (arr == 0)):
                raise DataError(f"{name} multi-hot entries must be 0 or 1")
            arr = ones
        return _words(pack_bits(arr))

    def pairs(self, query_rows: np.ndarray, database_rows: np.ndarray) -> np.ndarray:
        """Relevance of (query_rows[i], database_rows[i]) pairs: bool (n,)."""
        if not self.multilabel:
            return self.query[query_rows] == self.database[database_rows]
        shared = self.query[query_rows] & self.database[database_rows]  # (n, W)
        return np.any(shared != 0, axis=1)

    def matrix(self, start: int, stop: int) -> np.ndarray:
        """Relevance of queries [start, stop) to every database item: bool (stop - start, ndb)."""
        if not self.multilabel:
            return self.query[start:stop, None] == self.database[None, :]
        q = self.query[start:stop]
        rel = np.zeros((q.shape[0], self.database.shape[0]), np.bool_)
        for w in range(q.shape[1]):
            rel |= (q[:, w, None] & self.database[None, :, w]) != 0
        return rel


# ----------------------------------------------------------------------------------------------
# shared machinery


def _check_positive(name: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")


class _Task:
    """Validated inputs of one metric call and the chunked map over queries."""

    def __init__(self, query_codes, database_codes, query_labels, database_labels, chunk_size, num_threads) -> None:
        _check_positive("chunk_size", chunk_size)
        _check_positive("num_threads", num_threads)
        self.codes = _Codes(query_codes, database_codes)
        self.labels = _Labels(query_labels, database_labels, self.codes.nq, self.codes.ndb)
        if self.codes.ndb == 0:
            raise DataError("database_codes is empty")
        self.nq, self.ndb = self.codes.nq, self.codes.ndb
        self.chunk_size = int(chunk_size or max(1, _CHUNK_CELLS // self.ndb))
        self.num_threads = int(num_threads or min(8, usable_cores()))

    def topk(self, topk) -> int:
        _check_positive("topk", topk)
        return self.ndb if topk is None else min(int(topk), self.ndb)

    def map(self, fn: Callable[[int, int], T]) -> list[T]:
        """fn over query chunks [start, stop), results in query order."""
        bounds = [(s, min(s + self.chunk_size, self.nq)) for s in range(0, self.nq, self.chunk_size)]
        if self.num_threads == 1 or len(bounds) <= 1:
            return [fn(s, e) for s, e in bounds]
        # numpy releases the GIL inside its loops, so threads over chunks use several cores
        with ThreadPoolExecutor(min(self.num_threads, len(bounds))) as pool:
            return list(pool.map(lambda b: fn(*b), bounds))

    def ranked_hits(self, start: int, stop: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Relevant items among the first k of the stable Hamming ranking of queries [start, stop).

        Returns:
            rows int64 (h,): the query of each hit, counted from ``start``;
            rank int64 (h,): its 0-based rank. Sorted by row, then rank.
        """
        qc, ndb, levels = stop - start, self.ndb, self.codes.levels
        if k >= ndb:
            D = self.codes.distances(start, stop)  # (qc, ndb)
            order = np.argsort(D, axis=1, kind="stable")  # radix sort on small unsigned ints
            order += (np.arange(qc) * ndb)[:, None]  # flat positions: a 1-D gather beats take_along_axis
            ranked = self.labels.matrix(start, stop).ravel()[order]  # (qc, ndb) relevance in rank order
            flat = np.flatnonzero(ranked)
            rows = flat // ndb
            return rows, flat - rows * ndb
        step = max(1, ndb // _SAMPLE_COLS)
        if step == 1:  # small database: the threshold from all distances is exact
            D = self.codes.distances(start, stop)  # (qc, ndb)
            t = _threshold(D, k, ndb, levels)
            mask = None
        else:
            t = _threshold(self.codes.distances(start, stop, step=step), k, ndb, levels)
            D, mask = self.codes.distances(start, stop, threshold=t)  # (qc, ndb) each
        rows, cols = _candidates(D, k, t, mask)  # every row's top k are among them
        key = rows * levels + D.ravel()[rows * ndb + cols]
        # sort by (query, distance); stability keeps database index order inside a distance
        key = key.astype(np.uint16 if qc * levels <= 1 << 16 else np.int64)
        order = np.argsort(key, kind="stable")
        rows, cols = rows[order], cols[order]
        per_row = np.bincount(rows, minlength=qc)
        rank = np.arange(rows.size) - (np.cumsum(per_row) - per_row)[rows]  # 0-based
        keep = rank < k
        rows, cols, rank = rows[keep], cols[keep], rank[keep]
        hit = self.labels.pairs(rows + start, cols)
        return rows[hit], rank[hit]

    def histograms(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Items and relevant items at each distance 0..8 * nbytes: int64 (stop - start, levels) each."""
        D = self.codes.distances(start, stop)  # (qc, ndb)
        qc = stop - start
        levels = self.codes.levels
        keys = (np.arange(qc, dtype=np.intp) * levels)[:, None] + D  # (qc, ndb)
        keys = keys.ravel()
        everything = np.bincount(keys, minlength=qc * levels).reshape(qc, levels)
        relevant = np.bincount(keys[self.labels.matrix(start, stop).ravel()], minlength=qc * levels)
        return everything, relevant.reshape(qc, levels)


def _threshold(sample: np.ndarray, k: int, ndb: int, levels: int) -> np.ndarray:
    """Per-row distance t meant to keep at least k of ndb items, from distances to a sample.

    Args:
        sample: (qc, ns) distances to every (ndb / ns)-th database item (all of them when ns = ndb).

    Returns:
        (qc,) thresholds in sample's dtype: exact (the k-th smallest distance) when the sample is
        the whole database, else a little high (two standard deviations) so few rows fall short.
    """
    qc, ns = sample.shape
    keys = (np.arange(qc, dtype=np.intp) * levels)[:, None] + sample
    hist = np.bincount(keys.ravel(), minlength=qc * levels).reshape(qc, levels)
    need = k * ns / ndb
    if ns < ndb:
        need = min(need + 2.0 * np.sqrt(need), ns)
    return np.argmax(np.cumsum(hist, axis=1) >= need, axis=1).astype(sample.dtype)


def _candidates(
    D: np.ndarray, k: int, t: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cells (row, col) with D[row, col] <= t[row], t raised on rows that keep fewer than k.

    The result holds every row's k nearest items whatever the first t; a good t only saves work.

    Args:
        D: (qc, ndb) distances; t: (qc,) first thresholds; mask: D <= t if already computed.

    Returns:
        rows, cols: int64 (n,), each row's cols increasing.
    """
    qc, ndb = D.shape
    t = t.copy()
    todo = np.arange(qc)
    found_rows, found_cols = [], []
    while todo.size:
        if todo.size < qc:
            sub = D[todo] <= t[todo, None]
        elif mask is None:
            sub = D <= t[:, None]
        else:
            sub, mask = mask, None  # the caller's mask holds for the first pass only
        flat = np.flatnonzero(sub)
        r = flat // ndb
        c = flat - r * ndb
        enough = np.bincount(r, minlength=todo.size) >= k
        keep = enough[r]
        found_rows.append(todo[r[keep]])
        found_cols.append(c[keep])
        todo = todo[~enough]
        t[todo] += 1  # never past the largest distance, where a row holds all ndb >= k items
    return np.concatenate(found_rows), np.concatenate(found_cols)


def _average_precision_rows(rows: np.ndarray, rank: np.ndarray, qc: int) -> np.ndarray:
    """AP of qc queries from their hits (as returned by ``_Task.ranked_hits``): float64 (qc,).

    The i-th hit of a row at 0-based rank p adds i / (p + 1); the sum is divided by the row's hit
    count, and a row with no hit scores 0.
    """
    hits = np.bincount(rows, minlength=qc)
    nth = np.arange(rows.size) - (np.cumsum(hits) - hits)[rows] + 1
    total = np.bincount(rows, weights=nth / (rank + 1), minlength=qc)
    return np.where(hits > 0, total / np.maximum(hits, 1), 0.0)

