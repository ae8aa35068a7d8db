"""Retrieval metrics on binary codes (SPEC.md section 7): Hamming ranking, mAP@K, tie-aware mAP,
precision-recall over Hamming radius, precision@N and precision within a radius.

Conventions shared by every function here:

- Codes are either +-1 arrays ``(n, bits)`` (any numeric dtype, or bool with True for +1) or
  packed ``uint8`` arrays ``(n, ceil(bits / 8))`` in ``np.packbits`` order (a +1 is a set bit,
  the first code bit is the most significant bit of the first byte). A ``uint8`` array is always
  read as packed. torch tensors are accepted and read on the CPU.
- Labels are class ids ``(n,)`` (single-label) or 0/1 multi-hot ``(n, C)``; a database item is
  relevant to a query when they share at least one label. Queries and database use the same kind.
- The database is ranked by Hamming distance, ties by database index (a stable ranking), so every
  figure is deterministic. Work is done on chunks of queries at a time, so memory stays bounded
  by ``chunk_size * len(database)`` whatever the number of queries; chunks run on
  ``num_threads`` threads and the results do not depend on either setting.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch

from .codes import to_numpy, distance_dtype, pack_bits, pack_pm1, unpack_codes, xor_popcount
from .codes import pack_pm1 as pack_codes  # the strict +-1 reader, under the name this module exports
from .codes import popcount as _popcount  # noqa: F401  (kept for callers of the old private names)
from .codes import popcount_swar as _popcount_swar  # noqa: F401
from .codes import words as _words
from .errors import ConfigError, DataError, IndexMismatchError
from .runtime import usable_cores

__all__ = [
    "pack_codes",
    "unpack_codes",
    "hamming_distances",
    "average_precisions",
    "mean_average_precision",
    "tie_aware_average_precisions",
    "tie_aware_mean_average_precision",
    "precision_recall_by_radius",
    "precision_at_n",
    "precision_within_radius",
]

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


# ----------------------------------------------------------------------------------------------
# mAP


def average_precisions(
    query_codes,
    database_codes,
    query_labels,
    database_labels,
    topk: int | None = None,
    *,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> np.ndarray:
    """AP@K of every query: float64 (nq,).

    Args:
        query_codes: (nq, bits) +-1 or packed uint8 (nq, bytes).
        database_codes: (ndb, bits) +-1 or packed uint8 (ndb, bytes).
        query_labels: (nq,) class ids or (nq, C) multi-hot.
        database_labels: (ndb,) class ids or (ndb, C) multi-hot.
        topk: K, the length of the ranked list scored; None for the whole database (all of it:
            the original evaluation code's "-1" dropped the last item), and a K larger than the
            database is the whole database.
        chunk_size: queries per chunk (default: about 4 M query-item cells per chunk).
        num_threads: threads over chunks (default: the usable cores, at most 8).

    Returns:
        AP = (1/R) sum_{r=1..R} r / rank_r over the R relevant items of the top K of the stable
        ranking (distance, then database index); 0 when R = 0.
    """
    task = _Task(query_codes, database_codes, query_labels, database_labels, chunk_size, num_threads)
    k = task.topk(topk)
    parts = task.map(lambda s, e: _average_precision_rows(*task.ranked_hits(s, e, k), e - s))
    return np.concatenate(parts) if parts else np.zeros(0)


def mean_average_precision(
    query_codes,
    database_codes,
    query_labels,
    database_labels,
    topk: int | None = None,
    *,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> float:
    """mAP@K: the mean of :func:`average_precisions` over all queries (those with AP 0 included)."""
    ap = average_precisions(
        query_codes, database_codes, query_labels, database_labels, topk, chunk_size=chunk_size, num_threads=num_threads
    )
    if ap.size == 0:
        raise DataError("query_codes is empty")
    return float(ap.mean())


# ----------------------------------------------------------------------------------------------
# tie-aware mAP


def _harmonic(n: int) -> np.ndarray:
    """H[i] = 1 + 1/2 + ... + 1/i for i in 0..n: float64 (n + 1,)."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64))])


def _log_comb(n: np.ndarray, r: np.ndarray) -> np.ndarray:
    n = torch.from_numpy(np.asarray(n, np.float64))
    r = torch.from_numpy(np.asarray(r, np.float64))
    return (torch.lgamma(n + 1) - torch.lgamma(r + 1) - torch.lgamma(n - r + 1)).numpy()


def _tie_aware_rows(everything: np.ndarray, relevant: np.ndarray, k: int, harmonic: np.ndarray) -> np.ndarray:
    """Expected AP@k over random orders inside equal-distance groups: float64 (qc,).

    everything, relevant: (qc, levels) items and relevant items at each distance.

    A position p (1-based) of a group of n items, m relevant, placed after N items of which R are
    relevant, is relevant with probability m/n and then has r = R + 1 + (p-1)(m-1)/(n-1) relevant
    items up to it on average; summing r/(N+p) over p uses harmonic numbers. The group that the
    cut at k splits holds X relevant items in its first q = k - N places, X hypergeometric; the
    AP is averaged over X because R in 1/R depends on it.
    """
    n = everything.astype(np.float64)
    m = relevant.astype(np.float64)
    before = np.cumsum(everything, axis=1) - everything  # N: items at smaller distances
    rel_before = np.cumsum(m, axis=1) - m  # R
    # group where the top-k list ends: the first whose end reaches k
    cut = np.argmax(before + everything >= k, axis=1)  # (qc,)
    rows = np.arange(n.shape[0])
    h1 = harmonic[before + everything] - harmonic[before]  # sum_p 1/(N+p)
    h2 = n - (before + 1) * h1  # sum_p (p-1)/(N+p)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(n > 0, m / n, 0.0)
        pair = np.where(n > 1, (m - 1) / (n - 1), 0.0)
    expected = share * ((rel_before + 1) * h1 + pair * h2)  # (qc, levels), whole groups
    full = np.arange(n.shape[1])[None, :] < cut[:, None]
    s_before = np.where(full, expected, 0.0).sum(axis=1)  # (qc,)

    N, R = before[rows, cut], rel_before[rows, cut]
    nb, mb = everything[rows, cut], relevant[rows, cut]
    q = k - N  # places of the cut group inside the list, 1..nb
    h1 = harmonic[N + q] - harmonic[N]
    h2 = q - (N + 1) * h1
    lo = np.maximum(0, q - (nb - mb))
    hi = np.minimum(mb, q)
    x = lo[:, None] + np.arange(int((hi - lo).max()) + 1)[None, :]  # (qc, width)
    valid = x <= hi[:, None]
    x = np.minimum(x, hi[:, None])
    logp = _log_comb(mb[:, None], x) + _log_comb((nb - mb)[:, None], q[:, None] - x) - _log_comb(nb, q)[:, None]
    p = np.where(valid, np.exp(logp), 0.0)
    # sequential sums (cumsum) so that the zero padding to the chunk's widest row changes no bit
    p /= np.cumsum(p, axis=1)[:, -1:]  # removes the rounding of the log-gamma terms
    qf = q[:, None].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pair = np.where(qf > 1, (x - 1) / (qf - 1), 0.0)
        within = (x / qf) * ((R[:, None] + 1) * h1[:, None] + pair * h2[:, None])
        denom = R[:, None] + x
        ap = np.where(denom > 0, (s_before[:, None] + within) / denom, 0.0)
    return np.cumsum(p * ap, axis=1)[:, -1]


def tie_aware_average_precisions(
    query_codes,
    database_codes,
    query_labels,
    database_labels,
    topk: int | None = None,
    *,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> np.ndarray:
    """Tie-aware AP@K of every query (He et al., CVPR 2018): float64 (nq,).

    The expectation of the AP@K of :func:`average_precisions` when the items of each group of
    equal Hamming distance are put in uniformly random order instead of index order. With
    topk=None it is He et al.'s tie-aware AP. With a K that cuts a group, the list holds a random
    subset of that group, so R (the relevant items in the top K) is random too; the figure is the
    exact expectation of AP@K = (1/R) sum r / rank_r (0 when R = 0) over those orders, computed in
    closed form from the per-distance counts (no sampling, no sort). Arguments as in
    :func:`average_precisions`.
    """
    task = _Task(query_codes, database_codes, query_labels, database_labels, chunk_size, num_threads)
    k = task.topk(topk)
    harmonic = _harmonic(task.ndb)
    parts = task.map(lambda s, e: _tie_aware_rows(*task.histograms(s, e), k, harmonic))
    return np.concatenate(parts) if parts else np.zeros(0)


def tie_aware_mean_average_precision(
    query_codes,
    database_codes,
    query_labels,
    database_labels,
    topk: int | None = None,
    *,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> float:
    """Mean of :func:`tie_aware_average_precisions` over all queries."""
    ap = tie_aware_average_precisions(
        query_codes, database_codes, query_labels, database_labels, topk, chunk_size=chunk_size, num_threads=num_threads
    )
    if ap.size == 0:
        raise DataError("query_codes is empty")
    return float(ap.mean())


# ----------------------------------------------------------------------------------------------
# curves


def precision_recall_by_radius(
    query_codes,
    database_codes,
    query_labels,
    database_labels,
    *,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall of Hamming-ball retrieval at every radius.

    Returns:
        radius int64 (bits + 1,) = 0..bits (bits: the +-1 width, or 8 * bytes for packed codes),
        precision float64 (bits + 1,), recall float64 (bits + 1,): at radius r, the mean over all
        queries of (relevant items within r) / (items within r) and of (relevant items within r)
        / (relevant items in the database). A query that retrieves nothing within r counts
        precision 0, and one with no relevant item in the database counts recall 0, so every
        query weighs the same at every radius.
    """
    task = _Task(query_codes, database_codes, query_labels, database_labels, chunk_size, num_threads)
    if task.nq == 0:
        raise DataError("query_codes is empty")
    bits = task.codes.bits

    def chunk(s: int, e: int) -> tuple[np.ndarray, np.ndarray]:
        everything, relevant = task.histograms(s, e)
        within = np.cumsum(everything, axis=1)[:, : bits + 1]  # (qc, bits + 1)
        hits = np.cumsum(relevant, axis=1)[:, : bits + 1]
        total = relevant.sum(axis=1, keepdims=True)  # (qc, 1)
        precision = np.where(within > 0, hits / np.maximum(within, 1), 0.0)
        recall = np.where(total > 0, hits / np.maximum(total, 1), 0.0)
        return precision.sum(axis=0), recall.sum(axis=0)

    parts = task.map(chunk)
    precision = np.sum([p for p, _ in parts], axis=0) / task.nq
    recall = np.sum([r for _, r in parts], axis=0) / task.nq
    return np.arange(bits + 1), precision, recall


def precision_at_n(
    query_codes,
    database_codes,
    query_labels,
    database_labels,
    ns: int | Sequence[int],
    *,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> np.ndarray:
    """Precision of the first N items of the stable Hamming ranking, mean over queries.

    Args:
        ns: one N or a sequence of them, each in 1..len(database).

    Returns:
        float64 (len(ns),) (a 1-element array for a single N): mean over queries of
        (relevant items among the first N) / N.
    """
    task = _Task(query_codes, database_codes, query_labels, database_labels, chunk_size, num_threads)
    if task.nq == 0:
        raise DataError("query_codes is empty")
    ns_arr = np.atleast_1d(np.asarray(ns))
    if ns_arr.ndim != 1 or ns_arr.size == 0 or not np.issubdtype(ns_arr.dtype, np.integer):
        raise ConfigError(f"ns must be a positive integer or a sequence of them, got {ns!r}")
    if ns_arr.min() < 1 or ns_arr.max() > task.ndb:
        raise ConfigError(f"ns must lie in 1..{task.ndb} (the database size), got {ns_arr.min()}..{ns_arr.max()}")
    k = int(ns_arr.max())

    def chunk(s: int, e: int) -> np.ndarray:
        _, rank = task.ranked_hits(s, e, k)
        return np.searchsorted(np.sort(rank), ns_arr)  # hits ranked before each N, all queries

    return np.sum(task.map(chunk), axis=0) / (task.nq * ns_arr.astype(np.float64))


def precision_within_radius(
    query_codes,
    database_codes,
    query_labels,
    database_labels,
    radius: int = 2,
    *,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> float:
    """Mean over queries of the precision of the items within Hamming distance ``radius``
    (2 in the literature); a query with nothing within the radius counts 0, as in
    :func:`precision_recall_by_radius`."""
    if not isinstance(radius, (int, np.integer)) or isinstance(radius, bool) or radius < 0:
        raise ConfigError(f"radius must be a non-negative integer, got {radius!r}")
    _, precision, _ = precision_recall_by_radius(
        query_codes, database_codes, query_labels, database_labels, chunk_size=chunk_size, num_threads=num_threads
    )
    return float(precision[min(int(radius), precision.size - 1)])
