"""Naive re-computations shared by the tests of the methods that train on target features: the
pair term of the batch's two halves, written per pair and per bit with scalar tensor operations (so
that autograd differentiates the formula as written, not the implementation), and the check of a
loss's value and gradient against such a reference (docs/methods.md, bihalf)."""
from __future__ import annotations

import pytest
import torch

EPS = 1e-8  # the norms' clamp of the cosines


def naive_cos(a, b):
    """cos(a, b) = a.b / (max(|a|, eps) max(|b|, eps)) of two rows (sequences of scalar tensors or floats)."""
    dot = sum(x * y for x, y in zip(a, b))
    na = sum(x * x for x in a) ** 0.5
    nb = sum(y * y for y in b) ** 0.5
    return dot / (max(na, EPS) * max(nb, EPS))


def naive_halves_term(b, x):
    """mean over i < B/2 of (cos(b_i, b_{i+B/2}) - cos(x_i, x_{i+B/2}))^2, pair by pair; b (B, K) a
    tensor (possibly requiring grad), x (B, d) constants."""
    half = len(b) // 2
    terms = []
    for i in range(half):
        cb = naive_cos([b[i, k] for k in range(b.shape[1])], [b[i + half, k] for k in range(b.shape[1])])
        cx = naive_cos([float(v) for v in x[i]], [float(v) for v in x[i + half]])
        terms.append((cb - cx) ** 2)
    return sum(terms) / half


def assert_close(got_value, got_grad, want_value, want_grad, dtype):
    """Value and gradient agree to the precision of ``dtype``."""
    rel = 1e-5 if dtype == torch.float32 else 1e-10
    assert got_value.dtype == dtype
    assert got_value.item() == pytest.approx(want_value.item(), rel=rel, abs=rel)
    torch.testing.assert_close(got_grad, want_grad.to(dtype), rtol=rel * 10, atol=rel)
