"""bihalf: the bi-half layer (exactly half +1 per bit, ties by row, its backward) and the loss, value
and gradient, against a per-pair re-computation from docs/methods.md (bihalf)."""
from __future__ import annotations

import pytest
import torch

from hybridhash.errors import DataError
from hybridhash.methods import create_method
from hybridhash.methods.bihalf import bi_half

from .harness import MethodSuite
from .unsup_naive import assert_close, naive_halves_term


class TestBiHalf(MethodSuite):
    name = "bihalf"


def naive_bi_half(h):
    """b (B, K) +-1 of h (B, K), bit by bit: row i gets +1 when fewer than floor(B/2) rows rank above
    it, a row ranking above when its value is larger, or equal and earlier."""
    B, K = h.shape
    b = torch.empty(B, K, dtype=h.dtype)
    for k in range(K):
        for i in range(B):
            above = sum(1 for j in range(B) if h[j, k] > h[i, k] or (h[j, k] == h[i, k] and j < i))
            b[i, k] = 1.0 if above < B // 2 else -1.0
    return b


def naive_bihalf(h, x, gamma):
    """(loss, dL/dh) as written: the pair term of the bi-half codes, and its gradient with respect to
    b (autograd of the per-pair formula) plus gamma (h - b) / (B K), element by element."""
    B, K = h.shape
    b = naive_bi_half(h.detach()).requires_grad_(True)
    value = naive_halves_term(b, x)
    (grad_b,) = torch.autograd.grad(value, b)
    grad = torch.empty(B, K, dtype=h.dtype)
    for i in range(B):
        for k in range(K):
            grad[i, k] = grad_b[i, k] + gamma * (h[i, k] - b[i, k]) / (B * K)
    return value.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,K,d,gamma", [(6, 8, 5, 6.0), (8, 16, 12, 6.0), (4, 8, 3, 2.5)])
def test_bihalf_value_and_gradient_match_the_formula(dtype, B, K, d, gamma):
    g = torch.Generator().manual_seed(B * 31 + K)
    h = torch.randn(B, K, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    x = torch.randn(B, d, generator=g, dtype=torch.float64).to(dtype)
    method = create_method("bihalf", bits=K, n_class=1, num_train=1, gamma=gamma)
    value = method.loss(h, x)
    (grad,) = torch.autograd.grad(value, h)
    want_value, want_grad = naive_bihalf(h.detach(), x, gamma)
    assert_close(value, grad, want_value, want_grad, dtype)


@pytest.mark.parametrize("B", [2, 5, 6, 9])
def test_bi_half_gives_each_bit_exactly_half_plus_ones(B):
    g = torch.Generator().manual_seed(B)
    h = torch.randn(B, 7, generator=g)
    h[:, 3] = 0.5  # one column all tied
    h[: B // 2 + 1, 4] = -1.0  # and one with a tie across the boundary
    b = bi_half(h)
    assert set(b.unique().tolist()) <= {-1.0, 1.0}
    assert b.eq(1).sum(0).tolist() == [B // 2] * 7
    assert torch.equal(b, naive_bi_half(h))  # the largest values, ties to the earlier rows
    assert b[: B // 2, 3].eq(1).all() and b[B // 2:, 3].eq(-1).all()


def test_bi_half_backward_is_the_incoming_gradient_plus_the_pull_to_b():
    g = torch.Generator().manual_seed(3)
    B, K, gamma = 6, 5, 6.0
    h = torch.randn(B, K, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(B, K, generator=g, dtype=torch.float64)  # dL/db of L = sum(w b)
    b = bi_half(h, gamma)
    (grad,) = torch.autograd.grad((w * b).sum(), h)
    want = torch.tensor([[w[i, k].item() + gamma * (h[i, k].item() - b[i, k].item()) / (B * K)
                          for k in range(K)] for i in range(B)], dtype=torch.float64)
    torch.testing.assert_close(grad, want, rtol=0, atol=1e-15)


def test_an_odd_batch_or_mismatched_targets_are_refused_in_one_line():
    method = create_method("bihalf", bits=8, n_class=1, num_train=1)
    with pytest.raises(DataError, match="bihalf: the batch pairs its first half with its second, so it needs an "
                                        "even number of rows, got 5"):
        method.loss(torch.randn(5, 8), torch.randn(5, 3))
    with pytest.raises(DataError, match=r"bihalf: x must be a float tensor \(4, d\).*got \(3, 3\)"):
        method.loss(torch.randn(4, 8), torch.randn(3, 3))
    with pytest.raises(DataError, match=r"bihalf: h must be a float tensor \(B, 8\), got \(4, 6\)"):
        method.loss(torch.randn(4, 6), torch.randn(4, 3))
    with pytest.raises(DataError, match="x must be a float tensor"):
        method.loss(torch.randn(4, 8), torch.ones(4, 3, dtype=torch.long))


def test_targets_are_constants_and_codes_at_test_time_are_sign_h():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 8, generator=g, requires_grad=True)
    x = torch.randn(4, 3, generator=g, requires_grad=True)
    create_method("bihalf", bits=8, n_class=1, num_train=1).loss(h, x).backward()
    assert x.grad is None and h.grad is not None
    # the method declares no activation: the project's codes sign(h) are its test-time codes
    assert create_method("bihalf", bits=8, n_class=1, num_train=1).activation == "none"


def test_published_settings():
    m = create_method("bihalf", bits=64, n_class=10, num_train=50000)
    d = m.defaults
    assert (m.config.gamma, m.trains_on, m.even_batch) == (6.0, "targets", True)
    assert (d.optimizer, d.lr, d.momentum, d.weight_decay, d.batch_size, d.epochs) == ("sgd", 1e-4, 0.9, 5e-4, 64, 200)
    assert [d.lr_at(e) for e in (0, 29, 30, 60)] == pytest.approx([1e-4, 1e-4, 1e-5, 1e-6])
