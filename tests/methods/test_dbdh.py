"""DBDH: its loss and gradient against a naive loop over a bank of clamped outputs written by hand,
the balance term's two powers, and a run through the trainer."""
from __future__ import annotations

import pytest
import torch

from hybridhash.errors import ConfigError
from hybridhash.methods import create_method

from . import bank_checks
from .harness import MethodSuite, dot, mean, sim, softplus
from .trainer_run import train_briefly


def clamp(x):
    return max(-1.0, min(1.0, x))


def naive_dbdh(h, U, y, Y, alpha=0.1, p=2):
    u = [[clamp(x) for x in row] for row in h]
    terms = []
    for i in range(len(u)):
        for j in range(len(U)):
            theta = 0.5 * dot(u[i], U[j])
            terms.append(softplus(theta) - sim(y[i], Y[j]) * theta)
    balance = mean(abs(mean(row)) ** p for row in u)  # each code's mean bit
    return mean(terms) + alpha * balance


class TestDBDH(MethodSuite):
    name = "dbdh"


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("p", [1, 2])
def test_dbdh_value_and_gradient_match_naive_loop_over_two_steps(K, kind, p):
    # spread 0.8: most outputs inside [-1, 1], some clamped (their gradient is 0 there)
    bank_checks.matches_naive_value_and_gradient(
        "dbdh", lambda h, U, y, Y: naive_dbdh(h, U, y, Y, 0.1, p), K, kind, activation=clamp, spread=0.8, p=p)


def test_dbdh_bank_holds_clamped_outputs_and_saturated_ones_have_no_gradient():
    method = create_method("dbdh", bits=4, n_class=2, num_train=3)
    h = torch.tensor([[3.0, -0.5, 0.25, -7.0], [0.1, 0.2, -2.0, 1.5]], requires_grad=True)
    method.loss(h, torch.eye(2), torch.tensor([2, 0])).backward()
    assert torch.equal(method.bank.U, torch.tensor([[0.1, 0.2, -1.0, 1.0], [0.0] * 4, [1.0, -0.5, 0.25, -1.0]]))
    assert (h.grad[h.abs() > 1] == 0).all() and (h.grad[h.abs() < 1] != 0).all()


def test_dbdh_published_settings_are_the_reference_ones():
    method = create_method("dbdh", bits=48, n_class=10, num_train=100)
    assert method.config.to_dict() == {"alpha": 0.1, "p": 2, "pairs": "bank"}
    d = method.defaults
    assert (d.optimizer, d.lr, d.weight_decay, d.batch_size, d.epochs) == ("rmsprop", 1e-5, 1e-5, 128, 150)
    assert [d.lr_at(e) for e in (0, 49, 50, 100)] == pytest.approx([1e-5, 1e-5, 1e-6, 1e-7])
    with pytest.raises(ConfigError, match="p must be 1 or 2"):
        create_method("dbdh", bits=8, n_class=2, num_train=4, p=3)


def test_gathered_rows_fill_the_bank_loss_stays_local():
    bank_checks.gathered_rows_fill_the_bank("dbdh")


def test_dbdh_trains_through_the_loop(tmp_path):
    _, state, record = train_briefly("dbdh", tmp_path / "run", method_params={"pairs": "bank"})
    assert record["method"] == "dbdh" and record["config"]["p"] == 2
    assert state["bank.U"].abs().max() <= 1 and state["bank.U"].abs().sum(1).gt(0).all()
