"""DPN: its loss, value and gradient, against a row-by-row re-computation from docs/methods.md; the
targets drawn from the generator in prepare and kept by a restored state; the multi-label rule decided
by the labels; the adaptive update after each epoch against a loop over a bank written by hand."""
from __future__ import annotations

import math

import pytest
import torch

from hybridhash.errors import ConfigError
from hybridhash.methods import create_method

from .harness import MethodSuite, assert_matches_naive, labels, naive_autograd, sign


def naive_targets(y, T, fill, multilabel):
    """Per row: T[first largest label] for one label (on a single-label set), else the sign of the sum
    of its labels' rows, a 0 taken from fill."""
    out = []
    for row in y:
        if sum(row) > 1 or multilabel:
            total = [sum(row[c] * T[c][k] for c in range(len(T))) for k in range(len(fill))]
            out.append([sign(v) if v else fill[k] for k, v in enumerate(total)])
        else:
            out.append(list(T[max(range(len(row)), key=lambda c: (row[c], -c))]))
    return out


def naive_dpn(h, t, m=1.0):
    B, K = len(h), len(h[0])
    return sum(torch.clamp(m - h[i][k] * t[i][k], min=0) for i in range(B) for k in range(K)) / (B * K)


class TestDPN(MethodSuite):
    name = "dpn"

    def params(self, test, n):
        # the adaptive variant keeps a bank; its state must round-trip too
        return {"resume": {"adaptive": True}}.get(test, {})


@pytest.mark.parametrize("train_kind", ["single", "multi"])
@pytest.mark.parametrize("B,K,kind,m", [(5, 8, "single", 1.0), (6, 16, "multi", 0.5), (1, 8, "single", 1.0),
                                        (2, 8, "multi", 1.0), (4, 8, "same", 1.0), (3, 8, "none", 2.0)])
def test_dpn_value_and_gradient_match_the_rows(B, K, kind, m, train_kind):
    """train_kind: the training set prepare sees (a row with several labels in it, or not)."""
    g = torch.Generator().manual_seed(B * 19 + K)
    C = 4
    h = 1.5 * torch.randn(B, K, generator=g, dtype=torch.float64)
    y = {"same": torch.eye(C, dtype=torch.float64)[[1] * B], "none": torch.zeros(B, C, dtype=torch.float64)}.get(kind)
    y = labels(kind, B, C, g) if y is None else y
    method = create_method("dpn", bits=K, n_class=C, num_train=B, m=m)
    method.prepare(labels(train_kind, 10, C, g).float() if train_kind == "multi" else torch.eye(C), g)
    if kind == "multi":
        y[0] = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)  # two targets: their sum has zeros
    t = naive_targets(y.tolist(), method.T.tolist(), method.fill.tolist(), train_kind == "multi")
    if kind == "multi":
        assert any(a != b for a, b in zip(method.T[0].tolist(), method.T[1].tolist()))
    h.requires_grad_(True)
    value = method.loss(h, y, torch.arange(B))
    value.backward()
    want, grads = naive_autograd(lambda rows: naive_dpn(rows, t, m), h.detach())
    assert_matches_naive(value.item(), [h.grad], want, grads)


@pytest.mark.parametrize("K,p", [(16, 0.5), (48, 0.5), (12, 0.3), (8, 0.0)])
def test_targets_are_drawn_from_the_generator_with_floor_pk_minus_ones(K, p):
    a, b, c = (create_method("dpn", bits=K, n_class=5, num_train=3, p=p) for _ in range(3))
    for method, seed in ((a, 1), (b, 1), (c, 2)):
        method.prepare(torch.eye(5)[:3], torch.Generator().manual_seed(seed))
    assert torch.equal(a.T, b.T) and torch.equal(a.fill, b.fill)
    assert p == 0 or not torch.equal(a.T, c.T)
    assert all(row.count(-1.0) == math.floor(p * K) and row.count(1.0) == K - math.floor(p * K) for row in a.T.tolist())
    assert set(a.fill.tolist()) <= {-1.0, 1.0}
    assert a.facts()["min_target_distance"] == min(
        sum(x != z for x, z in zip(a.T[i].tolist(), a.T[j].tolist())) for i in range(5) for j in range(i + 1, 5))


def test_a_restored_state_keeps_its_targets_and_the_loss_needs_them():
    a = create_method("dpn", bits=16, n_class=3, num_train=4)
    with pytest.raises(ConfigError, match="dpn: call prepare"):
        a.loss(torch.zeros(1, 16), torch.eye(3)[:1], torch.tensor([0]))
    a.prepare(torch.eye(3), torch.Generator().manual_seed(4))
    b = create_method("dpn", bits=16, n_class=3, num_train=4)
    b.load_state_tensors(a.state_tensors())
    b.prepare(torch.eye(3), torch.Generator().manual_seed(5))  # a fresh-run hook after a resume draws nothing
    assert torch.equal(a.T, b.T) and torch.equal(a.fill, b.fill)
    assert "bank.U" not in a.state_tensors() and create_method("dpn", bits=16, n_class=3, num_train=4).facts() == {}
    with pytest.raises(ConfigError, match="p must be between 0 and 1"):
        create_method("dpn", bits=16, n_class=3, num_train=4, p=1.5)


def test_the_adaptive_update_is_the_sign_of_the_labels_times_the_ternary_bank():
    g = torch.Generator().manual_seed(8)
    n, K, C, m = 7, 8, 3, 0.6
    method = create_method("dpn", bits=K, n_class=C, num_train=n, m=m, adaptive=True)
    y_train = labels("multi", n, C, g).float()
    method.prepare(y_train, g)
    U, Y = [[0.0] * K for _ in range(n)], [[0.0] * C for _ in range(n)]
    for rows in ([0, 2, 4], [1, 3, 5]):  # row 6 is never written: a zero row of the bank
        idx = torch.tensor(rows)
        h = 1.2 * torch.randn(3, K, generator=g)
        method.loss(h, y_train[idx], idx)
        for r, i in enumerate(rows):
            U[i], Y[i] = h[r].tolist(), y_train[i].tolist()
    method.on_epoch_end(0)
    tern = [[sign(v) if abs(v) > m else 0 for v in row] for row in U]
    want = [[sign(sum(Y[i][c] * tern[i][k] for i in range(n))) for k in range(K)] for c in range(C)]
    assert method.T.tolist() == want
    fixed = create_method("dpn", bits=K, n_class=C, num_train=n)
    fixed.prepare(y_train, torch.Generator().manual_seed(1))
    before = fixed.T.clone()
    fixed.on_epoch_end(0)
    assert torch.equal(fixed.T, before)


def test_gathered_rows_fill_the_adaptive_bank():
    g = torch.Generator().manual_seed(2)
    n, K, C = 8, 8, 3
    h, y, idx = torch.randn(6, K, generator=g), torch.eye(C)[torch.arange(6) % C], torch.randperm(n, generator=g)[:6]
    a = create_method("dpn", bits=K, n_class=C, num_train=n, adaptive=True)
    a.prepare(torch.eye(C)[torch.arange(n) % C], torch.Generator().manual_seed(0))
    a.loss(h[3:], y[3:], idx[3:], gathered=(h, y, idx))
    assert torch.equal(a.bank.U[idx], h) and torch.equal(a.bank.Y[idx], y)


def test_dpn_published_settings():
    m = create_method("dpn", bits=48, n_class=10, num_train=50)
    d = m.defaults
    assert (m.config.m, m.config.p, m.config.adaptive, m.family) == (1.0, 0.5, False, "central")
    assert (d.optimizer, d.lr, d.weight_decay, d.batch_size, d.epochs) == ("rmsprop", 1e-5, 1e-5, 32, 150)
