"""Graded relevance over a Hamming ranking: ACG@K, NDCG@K and weighted mAP@K (WAP), where an
item's relevance r is the number of labels it shares with the query (DSRH, Zhao et al., CVPR 2015),
and tie-aware ACG/NDCG, their expectation over the orders of equal distances.

For a query, r_i is the relevance of the item at rank i of the stable ranking (distance, then
database index) and k = min(topk, database size) (the whole database for topk=None):

- ACG@k = (1/k) sum_{i<=k} r_i;
- NDCG@k = DCG@k / IDCG@k, DCG@k = sum_{i<=k} (2^r_i - 1) / ln(1 + i), IDCG@k the same sum over
  the k largest r of the whole database in decreasing order; 0 when IDCG@k = 0;
- WAP@k = (1/N_k) sum_{i<=k, r_i>0} ACG@i, N_k = #{i <= k: r_i > 0}; 0 when N_k = 0 (with r
  replaced by [r > 0] it is AP@k).

Each mean is over every query, those scoring 0 included. Class ids (single-label) give r in {0, 1}.
"""
from __future__ import annotations

from typing import Dict, Iterable

import numpy as np

from ..errors import ConfigError, DataError
from .ranking import _mean_of
from .ranking_core import _Task

STABLE = ("acg", "ndcg", "wap")
TIE_AWARE = ("acg_tie_aware", "ndcg_tie_aware")


class _Graded:
    """One call's ranking task, list length k and rank discounts, scored a chunk of queries at a time."""

    def __init__(self, task: _Task, topk) -> None:
        self.task = task
        self.k = task.list_length(topk)
        # 1 / ln(1 + i) for ranks i = 1..k; the log's base cancels in NDCG
        self.discount = 1.0 / np.log1p(np.arange(1, self.k + 1, dtype=np.float64))  # (k,)
        self.cum_discount = np.concatenate([[0.0], np.cumsum(self.discount)])  # (k + 1,)

    def _dcg(self, r: np.ndarray, gain: np.ndarray) -> np.ndarray:
        """sum_i gain[r_i] / ln(1 + i) of ranked relevances r (qc, k): float64 (qc,)."""
        return (gain[r] * self.discount).sum(axis=1)

    def rows(self, start: int, stop: int, wanted: frozenset) -> Dict[str, np.ndarray]:
        """The ``wanted`` figures (names of STABLE and TIE_AWARE) of queries [start, stop): float64 (qc,) each."""
        task, k, qc = self.task, self.k, stop - start
        out: Dict[str, np.ndarray] = {}
        # NDCG's ideal list and the per-distance sums need every item's relevance
        shared = task.labels.shared(start, stop) if wanted - {"acg", "wap"} else None  # (qc, ndb)
        if wanted & set(STABLE):
            _, ids = task.codes.database.topk(task.codes.query[start:stop], k, distances=False)  # (qc, k)
            if shared is not None:
                r = np.take_along_axis(shared, ids, axis=1).astype(np.int64)
            else:
                r = task.labels.shared_pairs(np.repeat(np.arange(start, stop), k), ids.ravel()).reshape(qc, k)
            if "acg" in wanted:
                out["acg"] = r.sum(axis=1) / k
            if "wap" in wanted:
                out["wap"] = _weighted_ap(r)
        if shared is None:
            return out
        gain = np.exp2(np.arange(int(shared.max()) + 1, dtype=np.float64)) - 1.0  # 2^r - 1 for r = 0..max
        # the k largest relevances in decreasing order (a stable sort of small unsigned ints is a radix sort)
        ideal = self._dcg(np.sort(shared, axis=1, kind="stable")[:, : -k - 1 : -1].astype(np.int64), gain)
        if "ndcg" in wanted:
            out["ndcg"] = _ratio(self._dcg(r, gain), ideal)
        if wanted & set(TIE_AWARE):
            acg, dcg = self._tie_aware(start, stop, shared, gain)
            out["acg_tie_aware"] = acg
            out["ndcg_tie_aware"] = _ratio(dcg, ideal)
        return out

    def _tie_aware(self, start: int, stop: int, shared: np.ndarray, gain: np.ndarray) -> tuple:
        """Expected ACG@k and DCG@k over uniformly random orders inside equal-distance groups: (qc,) each.

        A group of n items after N others fills places N+1..N+n, of which those up to k count; in
        a random order every place holds each of its items with probability 1/n, so each counted
        place gets the group's mean relevance (mean gain for DCG).
        """
        qc, levels, k = stop - start, self.task.codes.levels, self.k
        keys = self.task.distance_keys(start, stop)
        size = qc * levels
        n = np.bincount(keys, minlength=size).reshape(qc, levels)
        flat = shared.ravel()
        sum_r = np.bincount(keys, weights=flat, minlength=size).reshape(qc, levels)
        sum_gain = np.bincount(keys, weights=gain[flat], minlength=size).reshape(qc, levels)
        before = np.cumsum(n, axis=1) - n
        lo, hi = np.minimum(before, k), np.minimum(before + n, k)  # the group's places inside the top k
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_r = np.where(n > 0, sum_r / n, 0.0)
            mean_gain = np.where(n > 0, sum_gain / n, 0.0)
        acg = (mean_r * (hi - lo)).sum(axis=1) / k
        dcg = (mean_gain * (self.cum_discount[hi] - self.cum_discount[lo])).sum(axis=1)
        return acg, dcg


def _ratio(dcg: np.ndarray, ideal: np.ndarray) -> np.ndarray:
    return np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0)


def _weighted_ap(r: np.ndarray) -> np.ndarray:
    """WAP of ranked relevances r int64 (qc, k): float64 (qc,)."""
    acg_at = np.cumsum(r, axis=1) / np.arange(1, r.shape[1] + 1)  # ACG@i for every i
    hit = r > 0
    hits = hit.sum(axis=1)
    return np.where(hits > 0, np.where(hit, acg_at, 0.0).sum(axis=1) / np.maximum(hits, 1), 0.0)


def _scores(args, topk, wanted: Iterable[str], chunk_size, num_threads) -> Dict[str, np.ndarray]:
    task = _Task(*args, chunk_size, num_threads)
    graded = _Graded(task, topk)
    wanted = frozenset(wanted)
    parts = task.map(lambda s, e: graded.rows(s, e, wanted))
    return {name: np.concatenate([p[name] for p in parts]) if parts else np.zeros(0) for name in wanted}


def _per_query(public: str, name: str, doc: str):
    """The per-query function ``public`` of the figure ``name``."""

    def per_query(query_codes, database_codes, query_labels, database_labels, topk: int | None = None, *,
                  chunk_size: int | None = None, num_threads: int | None = None) -> np.ndarray:
        args = (query_codes, database_codes, query_labels, database_labels)
        return _scores(args, topk, (name,), chunk_size, num_threads)[name]

    per_query.__name__ = per_query.__qualname__ = public
    per_query.__doc__ = (f"{doc}: float64 (nq,). Arguments as in :func:`hybridhash.metrics.average_precisions`; "
                         "the definitions in the module docstring.")
    return per_query


def _mean(per_query, public: str):
    mean = _mean_of(per_query, f"The mean of :func:`{per_query.__name__}` over all queries, those scoring 0 included.")
    mean.__name__ = mean.__qualname__ = public
    return mean


acgs = _per_query("acgs", "acg", "ACG@K of every query over the stable ranking")
ndcgs = _per_query("ndcgs", "ndcg", "NDCG@K of every query over the stable ranking")
weighted_average_precisions = _per_query("weighted_average_precisions", "wap",
                                         "Weighted AP@K (WAP) of every query over the stable ranking")
tie_aware_acgs = _per_query("tie_aware_acgs", "acg_tie_aware",
                            "ACG@K of every query, expected over uniformly random orders of equal distances")
tie_aware_ndcgs = _per_query("tie_aware_ndcgs", "ndcg_tie_aware",
                             "NDCG@K of every query: DCG@K expected over uniformly random orders of equal "
                             "distances, over IDCG@K")
mean_acg = _mean(acgs, "mean_acg")
mean_ndcg = _mean(ndcgs, "mean_ndcg")
weighted_mean_average_precision = _mean(weighted_average_precisions, "weighted_mean_average_precision")
tie_aware_mean_acg = _mean(tie_aware_acgs, "tie_aware_mean_acg")
tie_aware_mean_ndcg = _mean(tie_aware_ndcgs, "tie_aware_mean_ndcg")


def graded_scores(query_codes, database_codes, query_labels, database_labels, topk: int | None = None, *,
                  tie_aware: bool = True, chunk_size: int | None = None,
                  num_threads: int | None = None) -> Dict[str, float]:
    """ACG@K, NDCG@K and WAP@K (and with ``tie_aware`` their tie-aware ACG and NDCG) in one pass
    over the database: {"acg", "ndcg", "wap"[, "acg_tie_aware", "ndcg_tie_aware"]} -> the mean over
    queries. Arguments as in :func:`hybridhash.metrics.mean_average_precision`."""
    if not isinstance(tie_aware, bool):
        raise ConfigError(f"tie_aware must be True or False, got {tie_aware!r}")
    args = (query_codes, database_codes, query_labels, database_labels)
    names = STABLE + (TIE_AWARE if tie_aware else ())
    per_query = _scores(args, topk, names, chunk_size, num_threads)
    if per_query["acg"].size == 0:
        raise DataError("query_codes is empty")
    return {name: float(per_query[name].mean()) for name in names}
