"""CNNH: stage 1's coordinate descent and stage 2's regression onto its codes."""
from __future__ import annotations

import pytest
import torch

from hybridhash.methods import create_method
from hybridhash.methods.cnnh import cnnh_stage_one

from .harness import L, MethodSuite, labels, mean


class TestCNNH(MethodSuite):
    name = "cnnh"

    def params(self, test, n):
        return {"sweeps": 2 if test == "steps" else 1}  # stage 1 costs n^2 bits per sweep


def test_cnnh_stage_two_matches_naive_mean():
    g = torch.Generator().manual_seed(0)
    n, K, C = 8, 8, 3
    y = labels("single", n, C, g)
    method = create_method("cnnh", bits=K, n_class=C, num_train=n, sweeps=2)
    method.prepare(y, g)
    H = L(method.H)
    assert all(v in (-1.0, 1.0) for row in H for v in row)
    h, idx = torch.randn(4, K, generator=g, dtype=torch.float64), torch.tensor([7, 0, 3, 3])
    got = method.loss(h, y[idx], idx).item()
    expected = mean((a - b) ** 2 for i, row in zip(idx.tolist(), L(h)) for a, b in zip(row, H[i]))
    assert got == pytest.approx(expected, rel=1e-6)


def test_cnnh_stage_one_lowers_the_reconstruction_error():
    g = torch.Generator().manual_seed(3)
    n, K = 10, 8
    y = labels("multi", n, 3, g)
    S = 2 * (y @ y.t() > 0).double() - 1
    H, errors = cnnh_stage_one(S, K, sweeps=3, generator=torch.Generator().manual_seed(4))
    H0 = 2 * torch.rand(n, K, generator=torch.Generator().manual_seed(4), dtype=torch.float64) - 1
    start = (H0 @ H0.t() - K * S).pow(2).mean().item()
    end = (H @ H.t() - K * S).pow(2).mean().item()
    assert errors[0] == pytest.approx(start) and errors[-1] == pytest.approx(end)  # L was tracked exactly
    assert end < 0.5 * start
    assert all(b <= a for a, b in zip(errors, errors[1:]))  # no sweep raises it
    assert H.abs().max() <= 1 + 1e-12
