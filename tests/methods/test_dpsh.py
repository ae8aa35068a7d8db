"""DPSH: its loss against a naive loop over a bank written by hand, and the bank's checks."""
from __future__ import annotations

import pytest

from . import bank_checks
from .harness import MethodSuite, dot, mean, sign, sim, softplus


def naive_dpsh(h, U, y, Y, eta=0.1):
    terms = []
    for i in range(len(h)):
        for j in range(len(U)):
            theta = 0.5 * dot(h[i], U[j])
            terms.append(softplus(theta) - sim(y[i], Y[j]) * theta)
    return mean(terms) + eta * mean((x - sign(x)) ** 2 for row in h for x in row)


class TestDPSH(MethodSuite):
    name = "dpsh"


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_dpsh_matches_naive_loop_over_two_steps(K, kind):
    bank_checks.matches_naive_over_two_steps("dpsh", naive_dpsh, K, kind)


def test_gathered_rows_fill_the_bank_loss_stays_local():
    bank_checks.gathered_rows_fill_the_bank("dpsh")


def test_runs_saved_with_the_earlier_state_keys_still_load():
    bank_checks.earlier_state_keys_still_load("dpsh")
