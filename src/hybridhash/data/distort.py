"""Seeded distortions of in-memory grey images, for derived protocols such as ``digits_hard``.

Each image is resampled bilinearly to ``size`` x ``size`` px through an affine map about its centre,
then gets a blank square and integer noise (:class:`~hybridhash.data.protocols.Distortion` names the
parameters). The draws come from the split seed's own stream (``STREAM_DISTORT``), one set of
parameters per image of the whole pool in row order, so an image's distortion does not depend on
which set it lands in.

Reproducible to the bit on any machine: every random number is an integer (parameters on a grid of
1/``GRID``, positions, noise), the rotation is built from its half-angle tangent (cos = (1 - t^2) /
(1 + t^2), sin = 2t / (1 + t^2): no trigonometric function whose last bit depends on the maths
library), and the resampling uses only float64 element-wise +, -, *, / and floor, each exactly rounded
by IEEE 754 whatever the vector width or thread count; the result is rounded to uint8.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np

from .protocols import Distortion
from .sets import ArrayPool
from .splits import rng_for

STREAM_DISTORT = 2  # beside splits.STREAM_SPLIT and STREAM_VAL under one seed
GRID = 1000  # parameters are multiples of 1/GRID


def _grid_limit(value: float) -> int:
    return int(round(value * GRID))


def draw_params(n: int, d: Distortion, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Parameters of ``n`` images, drawn in a fixed order.

    Returns float64 (n,) ``t`` (tangent of half the rotation angle), ``scale``, ``shear``, ``tx``,
    ``ty`` (source pixels), and int64 (n,) ``oy``, ``ox`` (top-left corner of the blank square) and
    int64 (n, size, size) ``noise``.
    """
    def uniform(limit: int) -> np.ndarray:
        return rng.integers(-limit, limit + 1, n).astype(np.float64) / GRID

    t = uniform(_grid_limit(math.tan(math.radians(d.rotation) / 2)))
    scale = 1.0 + uniform(_grid_limit(d.scale))
    shear = uniform(_grid_limit(d.shear))
    tx, ty = uniform(_grid_limit(d.shift)), uniform(_grid_limit(d.shift))
    room = d.size - d.occlusion + 1  # corners that keep the square inside the image
    oy, ox = rng.integers(0, room, n), rng.integers(0, room, n)
    noise = rng.integers(-d.noise, d.noise + 1, (n, d.size, d.size))
    return dict(t=t, scale=scale, shear=shear, tx=tx, ty=ty, oy=oy, ox=ox, noise=noise)


def inverse_maps(t, scale, shear) -> np.ndarray:
    """float64 (n, 2, 2): for each image the inverse of A = scale * R * [[1, shear], [0, 1]], R the
    rotation whose half-angle tangent is ``t``; A sends a source point (x right, y down, about the
    centre) to its output position, so the output samples the source at A^-1 (p - shift)."""
    t, scale, shear = (np.asarray(v, dtype=np.float64) for v in (t, scale, shear))
    c = (1.0 - t * t) / (1.0 + t * t)
    s = (2.0 * t) / (1.0 + t * t)
    # [[1, -shear], [0, 1]] @ R(-angle) / scale, with R(-angle) = [[c, s], [-s, c]]
    m = np.empty(t.shape + (2, 2))
    m[..., 0, 0] = (c + shear * s) / scale
    m[..., 0, 1] = (s - shear * c) / scale
    m[..., 1, 0] = (-s) / scale
    m[..., 1, 1] = c / scale
    return m


def resample(images: np.ndarray, inverse: np.ndarray, shift: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resampling through affine maps; zero outside the source.

    Args:
        images: grey (n, h, h), any real dtype.
        inverse: float64 (n, 2, 2), as :func:`inverse_maps` gives.
        shift: float64 (n, 2): (tx, ty) in source pixels.
        size: output edge; output pixel (i, j) has its centre at ((j + 0.5) h / size, (i + 0.5) h / size)
            in source pixel units.

    Returns:
        float64 (n, size, size), not rounded.
    """
    n, h = images.shape[0], images.shape[1]
    half = h / 2.0
    centres = (np.arange(size, dtype=np.float64) + 0.5) * h / size - half  # (size,)
    px = centres[None, None, :] - shift[:, 0, None, None]  # (n, 1, size)
    py = centres[None, :, None] - shift[:, 1, None, None]  # (n, size, 1)
    m = inverse
    # source position in pixel-index coordinates (pixel k covers [k, k + 1), centre k + 0.5)
    u = (m[:, 0, 0, None, None] * px + m[:, 0, 1, None, None] * py) + (half - 0.5)  # (n, size, size)
    v = (m[:, 1, 0, None, None] * px + m[:, 1, 1, None, None] * py) + (half - 0.5)
    x0, y0 = np.floor(u), np.floor(v)
    a, b = u - x0, v - y0
    # one pixel of zeros around the source; any index outside it lands on that border
    padded = np.zeros((n, h + 2, h + 2))
    padded[:, 1:-1, 1:-1] = images
    flat = padded.reshape(n, -1)
    row = np.arange(n)[:, None, None]

    def at(yy, xx):
        yi = np.clip(yy, -1, h).astype(np.int64) + 1
        xi = np.clip(xx, -1, h).astype(np.int64) + 1
        return flat[row, yi * (h + 2) + xi]

    top = (1.0 - a) * at(y0, x0) + a * at(y0, x0 + 1)
    bottom = (1.0 - a) * at(y0 + 1, x0) + a * at(y0 + 1, x0 + 1)
    return (1.0 - b) * top + b * bottom


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Round half up and clip to 0..255."""
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def upscale(grey: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, size, size): the undistorted images at ``size`` px, resampled as the distorted ones."""
    n = grey.shape[0]
    identity = np.broadcast_to(np.eye(2), (n, 2, 2))
    return to_uint8(resample(grey, identity, np.zeros((n, 2)), size))


def distort(grey: np.ndarray, d: Distortion, seed: int) -> np.ndarray:
    """uint8 (n, size, size): ``grey`` (n, h, h) under the distortion ``d`` drawn with ``seed``."""
    p = draw_params(grey.shape[0], d, rng_for(seed, STREAM_DISTORT))
    warped = resample(grey, inverse_maps(p["t"], p["scale"], p["shear"]), np.stack([p["tx"], p["ty"]], 1), d.size)
    out = to_uint8(warped).astype(np.int64)
    if d.occlusion > 0:
        span = np.arange(d.size)
        rows = (span[None, :] >= p["oy"][:, None]) & (span[None, :] < p["oy"][:, None] + d.occlusion)  # (n, size)
        cols = (span[None, :] >= p["ox"][:, None]) & (span[None, :] < p["ox"][:, None] + d.occlusion)
        out[rows[:, :, None] & cols[:, None, :]] = 0
    return np.clip(out + p["noise"], 0, 255).astype(np.uint8)


def distorted_pools(pool: ArrayPool, d: Distortion, seed: int, names: Tuple[str, str]) -> Tuple[ArrayPool, ArrayPool]:
    """The clean and the distorted copy of a grey in-memory pool at ``d.size`` px, same rows and labels.

    Returns (clean, distorted), named ``names``; images uint8 (N, size, size, 3).
    """
    grey = pool.images[..., 0]  # (N, h, h): the three channels are equal

    def rgb(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.repeat(x[..., None], 3, axis=-1))

    clean = ArrayPool(names[0], rgb(upscale(grey, d.size)), pool.labels, pool.class_names)
    distorted = ArrayPool(names[1], rgb(distort(grey, d, seed)), pool.labels, pool.class_names)
    return clean, distorted
