"""IDHN: its loss and gradient against a naive loop over a bank of softsign outputs written by hand
(soft similarity of multi-label rows), the official scale, in-batch pairs, and a run through the
trainer."""
from __future__ import annotations

import pytest
import torch

from hybridhash.methods import create_method

from . import bank_checks
from .harness import L, MethodSuite, cosine, dot, labels, mean, numeric_gradient, softplus, softsign


def naive_idhn(h, U, y, Y, alpha=0.5, gamma=0.1, lam=0.1, scale="deephash"):
    K = len(h[0])
    u = [[softsign(x) for x in row] for row in h]
    terms = []
    for i in range(len(u)):
        for j in range(len(U)):
            s = cosine(y[i], Y[j])
            p = dot(u[i], U[j])
            theta = alpha * p if scale == "deephash" else 5 * p / K
            if s > 0.99 or s < 0.01:
                terms.append(softplus(theta) - s * theta)
            elif scale == "deephash":
                terms.append(gamma * (theta - K * (2 * s - 1)) ** 2)
            else:  # the authors' K ((p + K) / 2K - s)^2
                terms.append(gamma * K * ((p + K) / (2 * K) - s) ** 2)
    return mean(terms) + lam * mean(abs(abs(x) - 1) for row in u for x in row)


class TestIDHN(MethodSuite):
    name = "idhn"


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("scale", ["deephash", "official"])
def test_idhn_value_and_gradient_match_naive_loop_over_two_steps(K, kind, scale):
    bank_checks.matches_naive_value_and_gradient(
        "idhn", lambda h, U, y, Y: naive_idhn(h, U, y, Y, scale=scale), K, kind, activation=softsign, scale=scale)


def test_idhn_soft_pairs_of_multi_label_rows_take_the_squared_error():
    # rows sharing one of two labels: cosine 0.5, neither near 0 nor near 1
    y = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]], dtype=torch.float64)
    h = torch.tensor([[0.5, -1.0, 2.0, 0.1], [-0.3, 0.7, 1.2, -2.0]], dtype=torch.float64, requires_grad=True)
    method = create_method("idhn", bits=4, n_class=3, num_train=2, pairs="batch")
    got = method.loss(h, y, torch.tensor([0, 1]))
    got.backward()
    assert got.item() == pytest.approx(naive_idhn(L(h), [[softsign(x) for x in r] for r in L(h)], L(y), L(y)),
                                       rel=1e-6)
    # in-batch pairs: both sides of a pair carry the gradient
    want = numeric_gradient(lambda rows: naive_idhn(rows, [[softsign(x) for x in r] for r in rows], L(y), L(y)), L(h))
    assert h.grad.flatten().tolist() == pytest.approx([x for r in want for x in r], rel=1e-5, abs=1e-7)


def test_idhn_multi_label_in_batch_matches_naive_loop():
    g = torch.Generator().manual_seed(3)
    h = (2 * torch.randn(6, 8, generator=g, dtype=torch.float64)).requires_grad_()
    y = labels("multi", 6, 4, g)
    got = create_method("idhn", bits=8, n_class=4, num_train=6, pairs="batch").loss(h, y, torch.arange(6))
    u = [[softsign(x) for x in r] for r in L(h)]
    assert got.item() == pytest.approx(naive_idhn(L(h), u, L(y), L(y)), rel=1e-6)


def test_idhn_published_settings_are_the_reference_ones():
    method = create_method("idhn", bits=48, n_class=10, num_train=100)
    assert method.config.to_dict() == {"alpha": 0.5, "gamma": 0.1, "lam": 0.1, "pairs": "bank", "scale": "deephash"}
    d = method.defaults
    assert (d.optimizer, d.lr, d.weight_decay, d.batch_size, d.epochs) == ("rmsprop", 1e-5, 1e-5, 128, 150)


def test_gathered_rows_fill_the_bank_loss_stays_local():
    bank_checks.gathered_rows_fill_the_bank("idhn")


def test_idhn_trains_through_the_loop(tmp_path):
    from .trainer_run import train_briefly

    _, state, record = train_briefly("idhn", tmp_path / "run", method_params={"pairs": "bank"})
    assert record["method"] == "idhn" and record["config"]["scale"] == "deephash"
    assert state["bank.U"].abs().max() < 1 and state["bank.U"].abs().sum(1).gt(0).all()
