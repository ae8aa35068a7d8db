"""ISDH: its loss and gradient against a naive loop over a bank of softsign outputs written by hand
(soft similarity of multi-label rows), the official scale, and a run through the trainer."""
from __future__ import annotations

import math

import pytest
import torch

from hybridhash.methods import create_method

from . import bank_checks
from .harness import L, MethodSuite, cosine, mean, numeric_gradient, softplus, softsign


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def naive_isdh(h, U, y, Y, alpha=0.5, gamma=10.0, lam=0.1, scale="deephash"):
    K = len(h[0])
    u = [[softsign(x) for x in row] for row in h]
    terms = []
    for i in range(len(u)):
        for j in range(len(U)):
            s = cosine(y[i], Y[j])
            theta = sum(a * b for a, b in zip(u[i], U[j])) * (alpha if scale == "deephash" else 5 / K)
            if s > 0.99 or s < 0.01:
                terms.append(gamma * (softplus(theta) - s * theta))
            else:
                terms.append((s - sigmoid(theta)) ** 2)
    return mean(terms) + lam * mean(abs(abs(x) - 1) for row in u for x in row)


class TestISDH(MethodSuite):
    name = "isdh"


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("scale", ["deephash", "official"])
def test_isdh_value_and_gradient_match_naive_loop_over_two_steps(K, kind, scale):
    bank_checks.matches_naive_value_and_gradient(
        "isdh", lambda h, U, y, Y: naive_isdh(h, U, y, Y, scale=scale), K, kind, activation=softsign, scale=scale)


def test_isdh_soft_pairs_in_batch_match_naive_loop():
    y = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    h = torch.tensor([[0.5, -1.0, 2.0, 0.1], [-0.3, 0.7, 1.2, -2.0], [3.0, 0.2, -0.4, 0.9]],
                     dtype=torch.float64, requires_grad=True)
    got = create_method("isdh", bits=4, n_class=3, num_train=3, pairs="batch").loss(h, y, torch.arange(3))
    got.backward()

    def naive(rows):
        return naive_isdh(rows, [[softsign(x) for x in r] for r in rows], L(y), L(y))

    assert got.item() == pytest.approx(naive(L(h)), rel=1e-6)
    assert h.grad.flatten().tolist() == pytest.approx([x for r in numeric_gradient(naive, L(h)) for x in r],
                                                      rel=1e-5, abs=1e-7)


def test_isdh_published_settings_are_the_reference_ones():
    method = create_method("isdh", bits=48, n_class=10, num_train=100)
    assert method.config.to_dict() == {"alpha": 0.5, "gamma": 10.0, "lam": 0.1, "pairs": "bank", "scale": "deephash"}
    d = method.defaults
    assert (d.optimizer, d.lr, d.weight_decay, d.batch_size, d.epochs) == ("rmsprop", 1e-5, 1e-5, 128, 150)


def test_gathered_rows_fill_the_bank_loss_stays_local():
    bank_checks.gathered_rows_fill_the_bank("isdh")


def test_isdh_trains_through_the_loop(tmp_path):
    from .trainer_run import train_briefly

    _, state, record = train_briefly("isdh", tmp_path / "run", method_params={"pairs": "bank"})
    assert record["method"] == "isdh" and record["config"]["gamma"] == 10.0
    assert state["bank.U"].abs().max() < 1 and state["bank.U"].abs().sum(1).gt(0).all()
