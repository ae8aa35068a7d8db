"""DHN: its loss and gradient against a naive loop over a bank written by hand, in-batch pairs, the
bank's checks, and a run through the trainer."""
from __future__ import annotations

import math

import pytest
import torch

from hybridhash.methods import create_method

from . import bank_checks
from .harness import L, MethodSuite, dot, labels, mean, numeric_gradient, sim, softplus
from .trainer_run import train_briefly


def naive_dhn(h, U, y, Y, alpha=0.1):
    terms = []
    for i in range(len(h)):
        for j in range(len(U)):
            theta = 0.5 * dot(h[i], U[j])
            terms.append(softplus(theta) - sim(y[i], Y[j]) * theta)
    return mean(terms) + alpha * mean(math.log(math.cosh(abs(x) - 1)) for row in h for x in row)


class TestDHN(MethodSuite):
    name = "dhn"


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_dhn_value_and_gradient_match_naive_loop_over_two_steps(K, kind):
    bank_checks.matches_naive_value_and_gradient("dhn", naive_dhn, K, kind)


def test_dhn_in_batch_pairs_match_naive_loop():
    g = torch.Generator().manual_seed(5)
    h = (2 * torch.randn(6, 8, generator=g, dtype=torch.float64)).requires_grad_()
    y = labels("multi", 6, 3, g)
    method = create_method("dhn", bits=8, n_class=3, num_train=10, pairs="batch")
    got = method.loss(h, y, torch.arange(6))
    got.backward()
    # both sides of each pair are the batch's outputs, so the gradient flows through both
    assert got.item() == pytest.approx(naive_dhn(L(h), L(h), L(y), L(y)), rel=1e-5)
    want = numeric_gradient(lambda rows: naive_dhn(rows, rows, L(y), L(y)), L(h))
    assert h.grad.flatten().tolist() == pytest.approx([x for r in want for x in r], rel=1e-5, abs=1e-7)
    assert not method.bank.U.any()


def test_dhn_saturated_outputs_stay_finite():
    method = create_method("dhn", bits=8, n_class=2, num_train=4)
    h = torch.tensor([[1e4] * 8, [-1e4] * 8]).requires_grad_()
    value = method.loss(h, torch.eye(2), torch.tensor([0, 1]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(h.grad).all()


def test_dhn_published_settings_are_the_reference_ones():
    method = create_method("dhn", bits=48, n_class=10, num_train=100)
    assert method.config.to_dict() == {"alpha": 0.1, "pairs": "bank"}
    d = method.defaults
    assert (d.optimizer, d.lr, d.weight_decay, d.batch_size, d.epochs) == ("rmsprop", 1e-5, 1e-5, 128, 90)


def test_gathered_rows_fill_the_bank_loss_stays_local():
    bank_checks.gathered_rows_fill_the_bank("dhn")


def test_dhn_trains_through_the_loop(tmp_path):
    _, state, record = train_briefly("dhn", tmp_path / "run", method_params={"pairs": "bank"})
    assert record["method"] == "dhn" and record["family"] == "symmetric"
    assert state["bank.U"].abs().sum(1).gt(0).all()  # every training row written
