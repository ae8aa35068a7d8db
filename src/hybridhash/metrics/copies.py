"""A retrieval score that needs no labels: find each image's augmented copy.

For n validation images with codes ``originals`` and the codes of one augmented copy of each
(``copies``, row i a copy of image i), each copy is a query against the n originals and only its own
original is relevant. The score is the tie-aware mAP of those queries (He et al.'s expectation over
random orders of equal distances), so a model that maps everything to one code scores the chance
level (about ln(n)/n) rather than 1, and ties never favour the lower index. With one relevant item,
AP is 1/rank, so the score is the expected mean reciprocal rank of the original.

It measures what a hash must do without labels: keep an image near its own variations and apart
from other images. With labels, the true validation mAP is recorded beside it, so how well the one
follows the other can be checked (their rank correlation over the epochs of a run).
"""
from __future__ import annotations

import numpy as np

from .ranking import tie_aware_average_precisions


def copy_retrieval_map(originals, copies, *, num_threads: int | None = None) -> float:
    """Tie-aware mAP of finding each copy's original: ``originals``, ``copies`` codes (n, bits)
    (+-1 or packed uint8, as every metric here), row i of ``copies`` an augmented copy of row i."""
    n = len(originals)
    if n != len(copies):
        from ..errors import DataError
        raise DataError(f"copy retrieval: {len(copies)} copies for {n} originals")
    if n == 0:
        return 0.0
    ids = np.arange(n, dtype=np.int64)  # each copy is relevant to its own original only
    return float(tie_aware_average_precisions(copies, originals, ids, ids, None, num_threads=num_threads).mean())


def chance_level(n: int) -> float:
    """The score of codes that carry no information (all equal): the mean of 1/rank over a uniformly
    random rank in 1..n, H_n / n."""
    return float(np.sum(1.0 / np.arange(1, n + 1)) / n) if n else 0.0


def average_ranks(values) -> np.ndarray:
    """Ranks 1..n of ``values`` (n,), tied values sharing the mean of the ranks they span, float64."""
    v = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)  # distinct values, ascending
    last = np.cumsum(counts)  # the highest rank each distinct value spans
    return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def spearman(a, b) -> float | None:
    """Spearman's rank correlation of two equal-length sequences: the Pearson correlation of their
    :func:`average_ranks`. None when it is undefined (fewer than 2 pairs, or one side all tied)."""
    if len(a) != len(b):
        from ..errors import DataError
        raise DataError(f"spearman: {len(a)} values against {len(b)}")
    if len(a) < 2:
        return None
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return None if denominator == 0 else float((ra * rb).sum() / denominator)
