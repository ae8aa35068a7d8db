"""Retrieval metrics on binary codes: Hamming ranking, mAP@K, tie-aware mAP, precision-recall over
Hamming radius, precision@N and precision within a radius, and for multi-label data ACG@K, NDCG@K and
weighted mAP@K (defined in docs/faithfulness.md, "Metrics").

Conventions shared by every function here:

- Codes are either +-1 arrays ``(n, bits)`` (any numeric dtype, or bool with True for +1) or
  packed ``uint8`` arrays ``(n, ceil(bits / 8))`` in ``np.packbits`` order (a +1 is a set bit,
  the first code bit is the most significant bit of the first byte). A ``uint8`` array is always
  read as packed. torch tensors are accepted and read on the CPU.
- Labels are class ids ``(n,)`` (single-label) or 0/1 multi-hot ``(n, C)``; a database item is
  relevant to a query when they share at least one label (the graded metrics count the labels
  shared). Queries and database use the same kind.
- The database is ranked by Hamming distance, ties by database index (a stable ranking), so every
  figure is deterministic. Work is done on chunks of queries at a time, so memory stays bounded
  by ``chunk_size * len(database)`` whatever the number of queries; chunks run on
  ``num_threads`` threads and the results do not depend on either setting.

Modules: :mod:`.ranking_core` (shared machinery), :mod:`.ranking` (mAP, tie-aware mAP),
:mod:`.curves` (PR by radius, precision@N, precision within a radius), :mod:`.graded` (ACG, NDCG,
WAP, tie-aware ACG and NDCG), :mod:`.copies` (a score that needs no labels: each augmented copy's
original retrieved); the code format itself (packing, Hamming distances, the exact top k) is
:mod:`hybridhash.codes`, re-exported here in part.
"""
from __future__ import annotations

from ..codes import hamming_distances, pack_pm1, unpack_codes
from .copies import copy_retrieval_map, spearman
from .curves import precision_at_n, precision_recall_by_radius, precision_within_radius
from .graded import (acgs, graded_scores, mean_acg, mean_ndcg, ndcgs, tie_aware_acgs, tie_aware_mean_acg,
                     tie_aware_mean_ndcg, tie_aware_ndcgs, weighted_average_precisions,
                     weighted_mean_average_precision)
from .ranking import (average_precisions, mean_average_precision, tie_aware_average_precisions,
                      tie_aware_mean_average_precision)

__all__ = [
    "pack_pm1",
    "unpack_codes",
    "hamming_distances",
    "average_precisions",
    "mean_average_precision",
    "tie_aware_average_precisions",
    "tie_aware_mean_average_precision",
    "precision_recall_by_radius",
    "precision_at_n",
    "precision_within_radius",
    "copy_retrieval_map", "spearman",
    "acgs", "ndcgs", "weighted_average_precisions", "tie_aware_acgs", "tie_aware_ndcgs",
    "mean_acg", "mean_ndcg", "weighted_mean_average_precision", "tie_aware_mean_acg", "tie_aware_mean_ndcg",
    "graded_scores",
]
