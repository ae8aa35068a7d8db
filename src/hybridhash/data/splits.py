"""Seeded draws of query / train / validation rows, and a compact text form for recorded rows.

All draws use :class:`numpy.random.Generator` streams derived from one seed, one stream per
purpose, so changing the validation fraction never changes which images are queries.
Returned rows are sorted ascending: a set lists its images in the data's own order, so ties in a
Hamming ranking are broken by that order rather than by class.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from ..errors import DataError
from .protocols import Count

# stream ids under one seed
STREAM_SPLIT = 0
STREAM_VAL = 1


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """Generator for one purpose (``STREAM_SPLIT``, ``STREAM_VAL``) under ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), stream])


def resolve_count(size: Count, available: int, what: str) -> int:
    """Turn a per-class size (int count, or float fraction of ``available``) into a count.

    Fractions round half up: 0.1 of 45 images is 5 (4.5 rounds up), so small classes still
    contribute.
    """
    if isinstance(size, bool):
        raise DataError(f"{what} size must be a count or a fraction, got {size!r}")
    if isinstance(size, (int, np.integer)):
        if size < 0:
            raise DataError(f"{what} size must be >= 0, got {size}")
        return int(size)
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise DataError(f"{what} fraction must be in [0, 1), got {size}")
        return int(math.floor(size * available + 0.5))
    raise DataError(f"{what} size must be a count or a fraction, got {size!r}")


def split_per_class(classes: np.ndarray, n_class: int, query: Count, train: Optional[Count],
                    rng: np.random.Generator, *, where: str = "data"
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw queries and training images class by class.

    Args:
        classes: int (N,) class id of every image, in [0, n_class).
        query, train: per-class sizes (count or fraction). Train is taken from the images left after
            the queries (a fraction is of those); ``train=None`` takes all of them.
        rng: consumed class by class in class order.
        where: names the data in error messages.

    Returns:
        (query_rows, train_rows, rest_rows), each int64 sorted; together a partition of range(N).
    """
    parts = ([], [], [])
    for c in range(n_class):
        idx = rng.permutation(np.flatnonzero(classes == c))
        n = idx.size
        nq = resolve_count(query, n, "query")
        nt = n - nq if train is None else resolve_count(train, n - nq, "train")
        if nq + nt > n:
            raise DataError(
                f"{where}: class {c} has {n} images, the protocol needs {nq} query + {nt} train; "
                f"pass smaller per-class sizes (sizes=dict(query=..., train=...)) for a smaller data set")
        parts[0].append(idx[:nq])
        parts[1].append(idx[nq:nq + nt])
        parts[2].append(idx[nq + nt:])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64)
                 for p in parts)


def draw_val(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Pick validation rows among training rows.

    Args:
        labels: float (n, n_class) multi-hot labels of the training set.
        fraction: share of the training set to hold out, in [0, 1).

    Returns:
        int64 (m,) sorted positions within the training set. Single-label data is stratified
        (the fraction of every class, rounded half up); multi-label data is drawn uniformly.
        A fraction above 0 that rounds to no image at all (small data: 0.1 of 4 images per class)
        still holds out one image, from the largest class, when some class has 2 or more (so no
        class loses its only training image); multi-label data needs 2 images for that.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {fraction!r}")
    n = labels.shape[0]
    if fraction == 0.0 or n == 0:
        return np.zeros(0, np.int64)
    single = bool(np.all(labels.sum(1) == 1))
    if single:
        classes = labels.argmax(1)
        picks, perms = [], []
        for c in range(labels.shape[1]):
            idx = rng.permutation(np.flatnonzero(classes == c))
            perms.append(idx)
            picks.append(idx[:resolve_count(float(fraction), idx.size, "val")])
        rows = np.concatenate(picks)
        largest = int(np.argmax([p.size for p in perms]))  # the first of the largest classes
        if rows.size == 0 and perms[largest].size >= 2:
            rows = perms[largest][:1]
    else:
        perm = rng.permutation(n)
        rows = perm[:max(resolve_count(float(fraction), n, "val"), 1 if n >= 2 else 0)]
    return np.sort(rows).astype(np.int64)


def encode_rows(rows: np.ndarray) -> str:
    """Sorted unique rows as text ranges: ``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return ""
    if np.any(np.diff(rows) <= 0) or rows[0] < 0:
        raise ValueError("rows must be sorted, unique and non-negative")
    breaks = np.flatnonzero(np.diff(rows) != 1)
    starts = np.concatenate([[0], breaks + 1])
    stops = np.concatenate([breaks, [rows.size - 1]])
    return ",".join(str(rows[a]) if a == b else f"{rows[a]}-{rows[b]}" for a, b in zip(starts, stops))


def decode_rows(text: str, size: int, what: str = "rows") -> np.ndarray:
    """Inverse of :func:`encode_rows`; checks every row lies in ``range(size)`` and order is strict."""
    if not isinstance(text, str):
        raise DataError(f"{what}: expected a string of row ranges, got {type(text).__name__}")
    if not text:
        return np.zeros(0, np.int64)
    ranges = []
    try:
        for part in text.split(","):
            a, sep, b = part.partition("-")
            lo, hi = int(a), int(b) if sep else int(a)
            if hi < lo:
                raise ValueError(part)
            ranges.append((lo, hi))
    except ValueError:
        raise DataError(f"{what}: malformed row range {part!r}") from None
    # checked before anything is expanded: ascending ranges inside range(size) hold at most size rows
    last = -1
    for lo, hi in ranges:
        if lo <= last or hi >= size:
            raise DataError(f"{what}: rows out of order or outside 0..{size - 1}")
        last = hi
    return np.concatenate([np.arange(lo, hi + 1, dtype=np.int64) for lo, hi in ranges])
