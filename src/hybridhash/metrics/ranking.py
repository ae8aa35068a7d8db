"""mAP@K over a Hamming ranking (ties by database index) and tie-aware mAP (He et al., CVPR 2018)."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from .ranking_core import _average_precision_rows, _Task

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
    k = task.list_length(topk)
    parts = task.map(lambda s, e: _average_precision_rows(*task.ranked_hits(s, e, k), e - s))
    return np.concatenate(parts) if parts else np.zeros(0)


def _mean_of(per_query, doc: str):
    """The mean over all queries of the per-query metric ``per_query`` (same arguments)."""

    def mean(query_codes, database_codes, query_labels, database_labels, topk: int | None = None, *,
             chunk_size: int | None = None, num_threads: int | None = None) -> float:
        ap = per_query(query_codes, database_codes, query_labels, database_labels, topk,
                       chunk_size=chunk_size, num_threads=num_threads)
        if ap.size == 0:
            raise DataError("query_codes is empty")
        return float(ap.mean())

    mean.__doc__ = doc
    return mean


mean_average_precision = _mean_of(
    average_precisions, "mAP@K: the mean of :func:`average_precisions` over all queries (those with AP 0 included).")
mean_average_precision.__name__ = "mean_average_precision"


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
    k = task.list_length(topk)
    harmonic = _harmonic(task.ndb)
    parts = task.map(lambda s, e: _tie_aware_rows(*task.histograms(s, e), k, harmonic))
    return np.concatenate(parts) if parts else np.zeros(0)


tie_aware_mean_average_precision = _mean_of(
    tie_aware_average_precisions, "Mean of :func:`tie_aware_average_precisions` over all queries.")
tie_aware_mean_average_precision.__name__ = "tie_aware_mean_average_precision"
