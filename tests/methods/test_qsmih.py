"""QSMIH: its loss, value and gradient, against a pair-by-pair re-computation from docs/methods.md."""
from __future__ import annotations

import pytest
import torch

from hybridhash.methods import create_method

from .harness import MethodSuite, assert_matches_naive, labels, naive_autograd, sim


def naive_qsmih(h, y, alpha=0.01, square_clamp=True):
    """h rows of 0-d leaves, y rows of floats; pairs (i, j) of the batch, the diagonal included."""
    B, K = len(h), len(h[0])
    u = []
    for row in h:
        norm = torch.sqrt(sum(x * x for x in row))
        u.append([x / (norm + 1e-8) for x in row])
    D = [[sim(y[i], y[j]) for j in range(B)] for i in range(B)]
    r = sum(map(sum, D)) / B ** 2
    mutual = 0
    for i in range(B):
        for j in range(B):
            P = (sum(a * b for a, b in zip(u[i], u[j])) + 1) / 2
            mutual = mutual + ((D[i][j] * P - 1) ** 2 + r * P ** 2 if square_clamp else r * P - D[i][j] * P)
    reg = sum(abs(abs(x) - 1) for row in u for x in row)
    return mutual / B ** 2 + alpha * reg / (B * K)


class TestQSMIH(MethodSuite):
    name = "qsmih"


@pytest.mark.parametrize("square_clamp", [True, False])
@pytest.mark.parametrize("B,K,kind", [(5, 8, "single"), (6, 16, "multi"), (1, 8, "single"), (2, 8, "multi"),
                                      (4, 8, "same"), (3, 8, "none")])
def test_qsmih_value_and_gradient_match_the_pairs(B, K, kind, square_clamp):
    """"none": rows without labels, so no pair is similar (r = 0)."""
    g = torch.Generator().manual_seed(B * 17 + K)
    C = 3
    h = 1.5 * torch.randn(B, K, generator=g, dtype=torch.float64)
    y = {"same": torch.eye(C, dtype=torch.float64)[[2] * B],
         "none": torch.zeros(B, C, dtype=torch.float64)}.get(kind)
    y = labels(kind, B, C, g) if y is None else y
    alpha = 0.01 if B != 6 else 0.3
    method = create_method("qsmih", bits=K, n_class=C, num_train=B, alpha=alpha, square_clamp=square_clamp)
    h.requires_grad_(True)
    value = method.loss(h, y, torch.arange(B))
    value.backward()
    want, grads = naive_autograd(lambda rows: naive_qsmih(rows, y.tolist(), alpha, square_clamp), h.detach())
    assert_matches_naive(value.item(), [h.grad], want, grads)


def test_qsmih_zero_rows_have_a_zero_gradient_not_nan():
    method = create_method("qsmih", bits=8, n_class=2, num_train=3)
    h = torch.zeros(3, 8, requires_grad=True)
    method.loss(h, torch.eye(2)[[0, 0, 1]], torch.arange(3)).backward()
    assert torch.equal(h.grad, torch.zeros(3, 8))


def test_qsmih_published_settings():
    m = create_method("qsmih", bits=48, n_class=10, num_train=50)
    assert m.scratch_lr_scale == 0.1  # the scratch recipe's rate, 2e-3, is ten times too high for it
    d = m.defaults
    assert (m.config.alpha, m.config.square_clamp, m.family) == (0.01, True, "symmetric")
    assert (d.optimizer, d.lr, d.weight_decay, d.batch_size, d.epochs) == ("rmsprop", 1e-5, 1e-5, 64, 150)
