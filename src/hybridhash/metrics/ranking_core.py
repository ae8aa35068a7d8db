"""The machinery every metric shares: codes and labels checked against each other, chunks of
queries mapped over threads, the relevant items among each query's exact top K (the search itself,
ties by index, is :meth:`hybridhash.codes.PackedDatabase.topk`)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import numpy as np

from ..codes import PackedDatabase, pack_bits, popcount, read_pair, to_numpy
from ..codes import words as _words
from ..errors import ConfigError, DataError, IndexMismatchError
from ..environment import usable_cores

# query-by-database cells per chunk: ~4 M keeps a chunk's buffers in tens of MB
_CHUNK_CELLS = 1 << 22

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------
# codes (the format and the search live in hybridhash.codes)


class _Codes:
    """Query codes as uint64 words and the database laid out for search, checked against each other."""

    def __init__(self, query_codes, database_codes) -> None:
        qp, dp, self.bits = read_pair(query_codes, database_codes, ("query_codes", "database_codes"))
        self.nq, self.ndb = qp.shape[0], dp.shape[0]
        self.query = _words(qp)  # (nq, W)
        self.database = PackedDatabase(dp)
        self.levels = self.database.levels  # distance values 0..8 * nbytes

    def distances(self, start: int, stop: int) -> np.ndarray:
        """Hamming distances of queries [start, stop) to the database: (stop - start, ndb), uint8
        (uint16 beyond 255 bits)."""
        return self.database.distances(self.query[start:stop])


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
            dtype = np.uint16 if self.database.shape[1] * 128 < 1 << 16 else np.uint32
            self._label_counts = popcount(self.database).sum(axis=1, dtype=dtype)  # (ndb,) labels of each item
            self._label_space = PackedDatabase(self.database.view(np.uint8))  # laid out for xor, as codes are
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

    def shared_pairs(self, query_rows: np.ndarray, database_rows: np.ndarray) -> np.ndarray:
        """Labels shared by (query_rows[i], database_rows[i]) pairs: int64 (n,) (class ids: 0 or 1)."""
        if not self.multilabel:
            return (self.query[query_rows] == self.database[database_rows]).astype(np.int64)
        both = self.query[query_rows] & self.database[database_rows]  # (n, W)
        return popcount(both).sum(axis=1, dtype=np.int64)

    def shared(self, start: int, stop: int) -> np.ndarray:
        """Labels queries [start, stop) share with every database item: (stop - start, ndb) uint16
        (uint32 past 32767 classes; class ids: 0 or 1)."""
        if not self.multilabel:
            return (self.query[start:stop, None] == self.database[None, :]).astype(np.uint16)
        # |a & b| = (|a| + |b| - |a xor b|) / 2, so the tiled popcount of xor of the codes serves
        q = self.query[start:stop]
        counts = self._label_counts
        out = np.add(popcount(q).sum(axis=1, dtype=counts.dtype)[:, None], counts[None, :])  # (qc, ndb)
        out -= self._label_space.distances(q)
        out >>= 1
        return out


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

    def list_length(self, topk) -> int:
        """The length of the ranked list scored: ``topk`` checked, capped at the database; None: all of it."""
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
        qc, ndb = stop - start, self.ndb
        _, ids = self.codes.database.topk(self.codes.query[start:stop], k, distances=False)  # (qc, min(k, ndb))
        kk = ids.shape[1]
        if kk == ndb:  # the whole ranking: every pair's relevance, gathered in rank order (a 1-D gather)
            ids += (np.arange(qc) * ndb)[:, None]  # flat positions, in place: ids is ours
            ranked = self.labels.matrix(start, stop).ravel()[ids]
        else:
            ranked = self.labels.pairs(np.repeat(np.arange(start, stop), kk), ids.ravel())
        flat = np.flatnonzero(ranked)
        rows = flat // kk
        return rows, flat - rows * kk

    def distance_keys(self, start: int, stop: int) -> np.ndarray:
        """row * levels + distance of every (query, item) pair of queries [start, stop), the bin of
        a per-query histogram over distance: intp ((stop - start) * ndb,), rows in query order."""
        D = self.codes.distances(start, stop)  # (qc, ndb)
        keys = (np.arange(stop - start, dtype=np.intp) * self.codes.levels)[:, None] + D  # (qc, ndb)
        return keys.ravel()

    def histograms(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Items and relevant items at each distance 0..8 * nbytes: int64 (stop - start, levels) each."""
        qc, levels = stop - start, self.codes.levels
        keys = self.distance_keys(start, stop)
        everything = np.bincount(keys, minlength=qc * levels).reshape(qc, levels)
        relevant = np.bincount(keys[self.labels.matrix(start, stop).ravel()], minlength=qc * levels)
        return everything, relevant.reshape(qc, levels)


def _average_precision_rows(rows: np.ndarray, rank: np.ndarray, qc: int) -> np.ndarray:
    """AP of qc queries from their hits (as returned by ``_Task.ranked_hits``): float64 (qc,).

    The i-th hit of a row at 0-based rank p adds i / (p + 1); the sum is divided by the row's hit
    count, and a row with no hit scores 0.
    """
    hits = np.bincount(rows, minlength=qc)
    nth = np.arange(rows.size) - (np.cumsum(hits) - hits)[rows] + 1
    total = np.bincount(rows, weights=nth / (rank + 1), minlength=qc)
    return np.where(hits > 0, total / np.maximum(hits, 1), 0.0)

