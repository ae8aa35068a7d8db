"""HashNet: its weighted likelihood against a naive loop, at beta 1 and at a scheduled beta."""
from __future__ import annotations

import math

import pytest
import torch

from hybridhash.methods import create_method
from hybridhash.methods.hashnet import continuation_beta

from . import in_batch
from .harness import L, MethodSuite, labels, naive_weighted_likelihood


def naive_hashnet(h, y, alpha=0.1, beta=1.0):
    u = [[math.tanh(beta * x) for x in row] for row in h]
    return naive_weighted_likelihood(u, u, y, y, alpha)


class TestHashNet(MethodSuite):
    name = "hashnet"


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_hashnet_matches_naive_loop(K, kind):
    in_batch.matches_naive("hashnet", naive_hashnet, K, kind)


@pytest.mark.parametrize("K", [8, 16])
def test_hashnet_uses_its_beta(K):
    g = torch.Generator().manual_seed(K)
    h, y = torch.randn(5, K, generator=g, dtype=torch.float64), labels("multi", 5, 3, g)
    method = create_method("hashnet", bits=K, n_class=3, num_train=5)
    method.on_epoch_start(45, 0)  # beta = sqrt(3)
    got = method.loss(h, y, torch.arange(5)).item()
    assert got == pytest.approx(naive_hashnet(L(h), L(y), 0.1, math.sqrt(3)), rel=1e-5)


def test_hashnet_beta_schedules():
    assert [continuation_beta(e, 0) for e in (0, 19, 20, 39, 40, 100)] == pytest.approx(
        [1.0, 1.0, math.sqrt(2), math.sqrt(2), math.sqrt(3), math.sqrt(6)])
    it = [continuation_beta(0, s, "iteration") for s in (0, 199, 200, 399, 400, 1000)]
    assert it == pytest.approx([1.0, 1.0, math.sqrt(2.0), math.sqrt(2.0), math.sqrt(3.0), math.sqrt(6.0)])
    method = create_method("hashnet", bits=8, n_class=2, num_train=4, schedule="iteration")
    method.on_epoch_start(3, 450)
    assert float(method.beta) == pytest.approx(math.sqrt(3.0))
    method.on_step(650)
    assert float(method.beta) == pytest.approx(math.sqrt(4.0))
    per_epoch = create_method("hashnet", bits=8, n_class=2, num_train=4)
    per_epoch.on_epoch_start(20, 10_000)
    per_epoch.on_step(10_000)  # ignored by the epoch schedule
    assert float(per_epoch.beta) == pytest.approx(math.sqrt(2.0))
    h = torch.full((1, 8), 0.5)
    assert torch.allclose(per_epoch.activate(h), torch.tanh(math.sqrt(2.0) * h))
