"""The seeded distortion of derived protocols: resampling against per-pixel loops and exact cases,
the blank square and the noise, determinism per seed, and the pixels pinned across machines."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from hybridhash.data.distort import (STREAM_DISTORT, distort, draw_params, inverse_maps, resample, to_uint8,
                                     upscale)
from hybridhash.data.protocols import Distortion
from hybridhash.data.splits import rng_for


def naive_resample(src, t, scale, shear, tx, ty, size):
    """One output pixel at a time, from the forward map built with trigonometry and a generic inverse."""
    h = src.shape[0]
    angle = 2 * math.atan(t)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    forward = scale * rot @ np.array([[1.0, shear], [0.0, 1.0]])
    inv = np.linalg.inv(forward)
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            p = np.array([(j + 0.5) * h / size - h / 2 - tx, (i + 0.5) * h / size - h / 2 - ty])
            qx, qy = inv @ p
            u, v = qx + h / 2 - 0.5, qy + h / 2 - 0.5
            x0, y0 = math.floor(u), math.floor(v)
            total = 0.0
            for yy, wy in ((y0, 1 - (v - y0)), (y0 + 1, v - y0)):
                for xx, wx in ((x0, 1 - (u - x0)), (x0 + 1, u - x0)):
                    if 0 <= yy < h and 0 <= xx < h:
                        total += wy * wx * src[yy, xx]
            out[i, j] = total
    return out


def test_resample_matches_a_per_pixel_loop():
    rng = np.random.default_rng(5)
    src = rng.integers(0, 256, (3, 8, 8)).astype(np.float64)
    t, scale, shear = np.array([0.3, -0.17, 0.0]), np.array([1.1, 0.85, 1.0]), np.array([0.2, -0.25, 0.1])
    shift = np.array([[0.5, -0.75], [-1.0, 0.25], [0.0, 0.0]])
    got = resample(src, inverse_maps(t, scale, shear), shift, 20)
    for n in range(3):
        want = naive_resample(src[n], t[n], scale[n], shear[n], shift[n, 0], shift[n, 1], 20)
        np.testing.assert_allclose(got[n], want, rtol=0, atol=1e-9)


def test_exact_cases_identity_quarter_turn_and_shift():
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (2, 8, 8)).astype(np.uint8)
    assert np.array_equal(upscale(grey, 8), grey)  # sampling at the pixel centres
    zero = np.zeros(2)
    quarter = resample(grey, inverse_maps(np.ones(2), np.ones(2), zero), np.zeros((2, 2)), 8)  # t = tan(45 deg)
    # x right, y down: a positive angle turns the picture clockwise on screen
    assert np.array_equal(to_uint8(quarter), np.rot90(grey, k=-1, axes=(1, 2)))
    moved = resample(grey, inverse_maps(zero, np.ones(2), zero), np.array([[1.0, 0.0], [0.0, -2.0]]), 8)
    want0 = np.zeros((8, 8), np.uint8)
    want0[:, 1:] = grey[0][:, :-1]  # one pixel right
    want1 = np.zeros((8, 8), np.uint8)
    want1[:-2] = grey[1][2:]  # two pixels up
    assert np.array_equal(to_uint8(moved[0]), want0) and np.array_equal(to_uint8(moved[1]), want1)


def test_upscale_keeps_a_flat_image_flat_inside_and_blends_the_border():
    grey = np.full((1, 8, 8), 200, np.uint8)
    up = upscale(grey, 32)
    assert np.all(up[0, 2:-2, 2:-2] == 200)  # away from the border bilinear weights sum to 1
    assert up[0, 0, 0] < 200  # the outermost half pixel blends with the zeros outside


def test_square_and_noise_follow_the_drawn_parameters():
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (6, 8, 8)).astype(np.uint8)
    d = Distortion(size=16, occlusion=5, noise=20)
    p = draw_params(6, d, rng_for(3, STREAM_DISTORT))
    warped = to_uint8(resample(grey, inverse_maps(p["t"], p["scale"], p["shear"]),
                               np.stack([p["tx"], p["ty"]], 1), 16)).astype(int)
    got = distort(grey, d, seed=3)
    for n in range(6):
        want = warped[n].copy()
        want[p["oy"][n]:p["oy"][n] + 5, p["ox"][n]:p["ox"][n] + 5] = 0
        want = np.clip(want + p["noise"][n], 0, 255)
        assert np.array_equal(got[n], want)
        assert 0 <= p["oy"][n] <= 11 and 0 <= p["ox"][n] <= 11
    assert p["noise"].min() >= -20 and p["noise"].max() <= 20 and p["noise"].min() < 0 < p["noise"].max()
    # parameters on their grid, within their limits
    assert np.all(np.abs(p["scale"] - 1) <= d.scale + 1e-12) and np.all(np.abs(p["shear"]) <= d.shear + 1e-12)
    assert np.all(np.abs(2 * np.degrees(np.arctan(p["t"]))) <= d.rotation + 0.1)
    assert np.all(np.abs(p["tx"]) <= d.shift) and np.allclose(p["tx"] * 1000, np.round(p["tx"] * 1000))
    quiet = distort(grey, Distortion(size=16, occlusion=0, noise=0), seed=3)
    assert np.array_equal(quiet, warped)  # the same draws give the same warp without square and noise


def test_same_seed_same_pixels_other_seed_other_pixels():
    grey = np.random.default_rng(0).integers(0, 256, (20, 8, 8)).astype(np.uint8)
    d = Distortion()
    a, b, c = distort(grey, d, 7), distort(grey, d, 7), distort(grey, d, 8)
    assert a.shape == (20, 32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert all(not np.array_equal(a[n], c[n]) for n in range(20))


def test_resampling_does_not_depend_on_the_batch():
    rng = np.random.default_rng(4)
    grey = rng.integers(0, 256, (9, 8, 8)).astype(np.float64)
    p = draw_params(9, Distortion(), rng_for(0, STREAM_DISTORT))
    m, shift = inverse_maps(p["t"], p["scale"], p["shear"]), np.stack([p["tx"], p["ty"]], 1)
    whole = resample(grey, m, shift, 32)
    parts = np.concatenate([resample(grey[:4], m[:4], shift[:4], 32), resample(grey[4:], m[4:], shift[4:], 32)])
    assert np.array_equal(whole, parts)  # bit for bit


def test_pixels_are_pinned_across_machines():
    """A fixture of the distorted pixels of a fixed input: the same on any machine and thread count.
    A change of numpy's integer stream or of the resampling shows here (and as a split record's
    fingerprint mismatch)."""
    grey = (np.arange(4 * 64).reshape(4, 8, 8) * 37 % 256).astype(np.uint8)
    digest = hashlib.sha256(distort(grey, Distortion(), 0).tobytes()).hexdigest()
    assert digest == PINNED


PINNED = "44a7db1826d58c363caa2dcc71591e63f73f32973e6febb45e622cbfbbf9d778"  # numpy 2 PCG64, float64 IEEE 754


def test_bad_seed_is_a_data_error():
    from hybridhash.errors import DataError
    with pytest.raises(DataError, match="seed"):
        distort(np.zeros((1, 8, 8), np.uint8), Distortion(), -1)
