"""Curves and point figures: precision-recall over Hamming radius, precision@N, precision within a radius."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .ranking_core import _Task

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
