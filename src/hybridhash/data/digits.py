"""scikit-learn's bundled 8x8 digits (1797 images, 10 classes) as an in-memory pool; no download.

Also the pools of the protocols derived from them (``digits_hard``: :mod:`.distort`)."""
from __future__ import annotations

from typing import Dict

import numpy as np

from .sets import ArrayPool


def digits_pool() -> ArrayPool:
    """All 1797 digits: images uint8 (1797, 8, 8, 3), grey values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    images = np.repeat(grey[..., None], 3, axis=-1)  # (N, 8, 8, 3)
    labels = np.eye(10, dtype=np.float32)[bunch.target]  # (N, 10)
    return ArrayPool("digits", np.ascontiguousarray(images), labels, [str(c) for c in range(10)])


# the pools of a derived protocol (digits_hard): the clean images its classes are drawn from and
# train on, and their distorted copies its queries, database and val come from
CLEAN, DISTORTED = "digits_clean", "digits_distorted"


def digits_pools(distortion=None, seed: int = 0) -> Dict[str, ArrayPool]:
    """{pool name: pool}: the digits alone, or with a :class:`~hybridhash.data.protocols.Distortion`
    the clean pool (first: the one a split is drawn from) and the distorted one drawn with ``seed``."""
    pool = digits_pool()
    if distortion is None:
        return {pool.name: pool}
    from .distort import distorted_pools
    clean, distorted = distorted_pools(pool, distortion, seed, (CLEAN, DISTORTED))
    return {CLEAN: clean, DISTORTED: distorted}
