"""scikit-learn's bundled 8x8 digits (1797 images, 10 classes) as an in-memory pool; no download."""
from __future__ import annotations

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
