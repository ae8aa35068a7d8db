"""LCDSH: its loss, value and gradient, against a pair-by-pair re-computation from docs/methods.md."""
from __future__ import annotations

import pytest
import torch

from hybridhash.methods import create_method

from .harness import MethodSuite, assert_matches_naive, labels, naive_autograd, sign, sim


def naive_lcdsh(h, y, lam=3.0):
    """h rows of 0-d leaves, y rows of floats; pairs (i, j) of the batch, the diagonal included."""
    B = len(h)
    likelihood, codes = 0, 0
    for i in range(B):
        for j in range(B):
            s = 2 * sim(y[i], y[j]) - 1
            theta = (0.5 * sum(a * b for a, b in zip(h[i], h[j]))).clamp(-50, 50)
            theta_b = 0.5 * sum(sign(a.item()) * sign(b.item()) for a, b in zip(h[i], h[j]))
            likelihood = likelihood + torch.log1p(torch.exp(-s * theta))
            codes = codes + (torch.sigmoid(theta) - torch.sigmoid(torch.tensor(theta_b, dtype=torch.float64))) ** 2
    return likelihood / B ** 2 + lam * codes / B ** 2


class TestLCDSH(MethodSuite):
    name = "lcdsh"


@pytest.mark.parametrize("B,K,kind,scale", [(5, 8, "single", 1.0), (6, 16, "multi", 1.5), (1, 8, "single", 1.0),
                                            (2, 8, "multi", 1.0), (4, 8, "same", 1.0), (4, 16, "single", 20.0)])
def test_lcdsh_value_and_gradient_match_the_pairs(B, K, kind, scale):
    """20: theta beyond the clamp for some pairs (their gradient 0 there)."""
    g = torch.Generator().manual_seed(B * 31 + K)
    C = 3
    h = scale * torch.randn(B, K, generator=g, dtype=torch.float64)
    y = torch.eye(C, dtype=torch.float64)[[1] * B] if kind == "same" else labels(kind, B, C, g)
    lam = 3.0 if B != 6 else 0.7
    method = create_method("lcdsh", bits=K, n_class=C, num_train=B, lam=lam)
    h.requires_grad_(True)
    value = method.loss(h, y, torch.arange(B))
    value.backward()
    want, grads = naive_autograd(lambda rows: naive_lcdsh(rows, y.tolist(), lam), h.detach())
    assert_matches_naive(value.item(), [h.grad], want, grads)


def test_lcdsh_published_settings():
    m = create_method("lcdsh", bits=48, n_class=10, num_train=50)
    assert m.scratch_lr_scale == 0.1  # the scratch recipe's rate, 2e-3, is ten times too high for it
    d = m.defaults
    assert m.config.lam == 3.0 and m.family == "symmetric" and m.activation == "none"
    assert (d.optimizer, d.lr, d.weight_decay, d.batch_size, d.epochs) == ("rmsprop", 1e-5, 1e-5, 128, 350)
