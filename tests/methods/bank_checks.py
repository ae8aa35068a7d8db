"""Checks shared by the bank methods (DPSH, DSH, DHN, DBDH, IDHN, ISDH): the batch against a bank
written by hand over two steps (value, and gradient against central differences of the naive loop),
gathered rows, and the state of runs saved before the bank was its own module."""
from __future__ import annotations

import pytest
import torch

from hybridhash.methods import create_method

from .harness import L, labels, numeric_gradient


def bank_after(steps, n, K, C, activation=lambda x: x):
    """The bank a bank method holds after ``steps`` [(h, y, index)], built by hand: ``activation``
    of each raw output (a Python float; DPSH and DSH store them as they are)."""
    U, Y = [[0.0] * K for _ in range(n)], [[0.0] * C for _ in range(n)]
    for h, y, index in steps:
        for row, i in enumerate(index.tolist()):
            U[i] = [float(torch.tensor(activation(x), dtype=torch.float32)) for x in L(h[row])]
            Y[i] = L(y[row])
    return U, Y


def matches_naive_over_two_steps(name, naive, K, kind):
    g = torch.Generator().manual_seed(K + (kind == "multi"))
    n, C = 10, 4
    steps = [(2 * torch.randn(5, K, generator=g, dtype=torch.float64), labels(kind, 5, C, g),
              torch.randperm(n, generator=g)[:5]) for _ in range(2)]
    method = create_method(name, bits=K, n_class=C, num_train=n)
    for step in steps:
        got = method.loss(*step).item()
    U, Y = bank_after(steps, n, K, C)
    h, y, _ = steps[-1]
    assert got == pytest.approx(naive(L(h), U, L(y), Y), rel=1e-5, abs=1e-6), name


def matches_naive_value_and_gradient(name, naive, K, kind, activation=lambda x: x, spread=2.0, **hparams):
    """Two steps of method ``name`` (a bank of n = 10 rows); the second step's loss and its gradient
    with respect to h against ``naive(h, U, Y_rows...)`` and its central differences, the bank held
    fixed as the method holds it (written, detached, before the loss)."""
    g = torch.Generator().manual_seed(3 * K + (kind == "multi"))
    n, C = 10, 4
    steps = [(spread * torch.randn(5, K, generator=g, dtype=torch.float64), labels(kind, 5, C, g),
              torch.randperm(n, generator=g)[:5]) for _ in range(2)]
    method = create_method(name, bits=K, n_class=C, num_train=n, **hparams)
    method.loss(*steps[0])
    h, y, index = steps[1]
    h = h.clone().requires_grad_()
    got = method.loss(h, y, index)
    got.backward()
    U, Y = bank_after(steps, n, K, C, activation)
    want = naive(L(h), U, L(y), Y)
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6), name
    grad = numeric_gradient(lambda rows: naive(rows, U, L(y), Y), L(h))
    flat = [x for row in grad for x in row]
    assert h.grad.flatten().tolist() == pytest.approx(flat, rel=1e-5, abs=1e-6), name


def gathered_rows_fill_the_bank(name):
    g = torch.Generator().manual_seed(2)
    n, K, C = 10, 8, 3
    h_all, y_all, idx_all = torch.randn(6, K, generator=g), labels("single", 6, C, g).float(), torch.randperm(n, generator=g)[:6]
    m = create_method(name, bits=K, n_class=C, num_train=n)
    local = create_method(name, bits=K, n_class=C, num_train=n)
    got = m.loss(h_all[3:], y_all[3:], idx_all[3:], gathered=(h_all, y_all, idx_all))
    local.loss(h_all[:3], y_all[:3], idx_all[:3])  # the same bank, written batch by batch
    assert got.item() == pytest.approx(local.loss(h_all[3:], y_all[3:], idx_all[3:]).item(), rel=1e-6), name


def earlier_state_keys_still_load(name):
    n, K, C = 6, 8, 2
    method = create_method(name, bits=K, n_class=C, num_train=n)
    U, Y = torch.randn(n, K), torch.eye(C)[torch.arange(n) % C]
    method.load_state_tensors({"U": U, "Y": Y})  # as runs saved them when U and Y were the method's own
    assert torch.equal(method.bank.U, U) and torch.equal(method.bank.Y, Y)
    assert set(method.state_tensors()) == {"bank.U", "bank.Y"}
