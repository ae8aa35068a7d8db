"""greedyhash_unsup: the loss, value and gradient, against a per-pair, per-entry re-computation from
docs/methods.md (greedyhash_unsup): the straight-through sign passes dL/db to h unchanged."""
from __future__ import annotations

import pytest
import torch

from hybridhash.errors import DataError
from hybridhash.methods import create_method

from .harness import MethodSuite
from .unsup_naive import assert_close, naive_halves_term


class TestGreedyHashUnsup(MethodSuite):
    name = "greedyhash_unsup"


def naive_greedyhash_unsup(h, x, alpha):
    """(loss, dL/dh): b = sign(h) entry by entry (0 stays 0); the pair term of b plus alpha times the
    mean over entries of ||h| - 1|^3; dL/dh = dL/db (straight through) + the cubic term's gradient."""
    B, K = h.shape
    b = torch.tensor([[(v > 0) - (v < 0) for v in row] for row in h.tolist()], dtype=h.dtype, requires_grad=True)
    pair = naive_halves_term(b, x)
    (grad_b,) = torch.autograd.grad(pair, b)
    leaf = h.detach().clone().requires_grad_(True)
    cubic = sum(abs(abs(leaf[i, k]) - 1) ** 3 for i in range(B) for k in range(K)) / (B * K)
    (grad_cubic,) = torch.autograd.grad(cubic, leaf)
    return (pair + alpha * cubic).detach(), grad_b + alpha * grad_cubic


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,K,d,alpha", [(6, 8, 5, 0.1), (8, 16, 12, 0.1), (4, 8, 3, 1.5)])
def test_greedyhash_unsup_value_and_gradient_match_the_formula(dtype, B, K, d, alpha):
    g = torch.Generator().manual_seed(B * 17 + K)
    h = (1.5 * torch.randn(B, K, generator=g, dtype=torch.float64)).to(dtype)
    h[0, 0] = 0.0  # sign 0 stays 0, as the published code takes it
    h.requires_grad_(True)
    x = torch.randn(B, d, generator=g, dtype=torch.float64).to(dtype)
    method = create_method("greedyhash_unsup", bits=K, n_class=1, num_train=1, alpha=alpha)
    value = method.loss(h, x)
    (grad,) = torch.autograd.grad(value, h)
    want_value, want_grad = naive_greedyhash_unsup(h.detach(), x, alpha)
    assert_close(value, grad, want_value, want_grad, dtype)


def test_an_odd_batch_is_refused_in_one_line():
    method = create_method("greedyhash_unsup", bits=8, n_class=1, num_train=1)
    with pytest.raises(DataError, match="greedyhash_unsup: .* even number of rows, got 3"):
        method.loss(torch.randn(3, 8), torch.randn(3, 3))


def test_published_settings():
    m = create_method("greedyhash_unsup", bits=16, n_class=10, num_train=50000)
    d = m.defaults
    assert (m.config.alpha, m.trains_on, m.even_batch, m.family) == (0.1, "targets", True, "unsupervised")
    assert (d.optimizer, d.lr, d.momentum, d.weight_decay, d.batch_size, d.epochs, d.lr_step_epochs) == (
        "sgd", 1e-4, 0.9, 5e-4, 64, 200, 30)
