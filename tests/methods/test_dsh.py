"""DSH: its loss against a naive loop, over a bank written by hand and over in-batch pairs."""
from __future__ import annotations

import pytest
import torch

from hybridhash.methods import create_method

from . import bank_checks
from .harness import L, MethodSuite, labels, mean, sim


def naive_dsh(h, U, y, Y, alpha=0.1):
    m = 2 * len(h[0])
    terms = []
    for i in range(len(h)):
        for j in range(len(U)):
            dist = sum((a - b) ** 2 for a, b in zip(h[i], U[j]))
            s = sim(y[i], Y[j])
            terms.append(0.5 * s * dist + 0.5 * (1 - s) * max(m - dist, 0.0))
    return mean(terms) + alpha * mean(abs(abs(x) - 1) for row in h for x in row)


class TestDSH(MethodSuite):
    name = "dsh"


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_dsh_matches_naive_loop_over_two_steps(K, kind):
    bank_checks.matches_naive_over_two_steps("dsh", naive_dsh, K, kind)


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_dsh_in_batch_pairs_match_naive_loop(K, kind):
    """pairs="batch": the paper's online pairs inside the mini-batch (the diagonal included)."""
    g = torch.Generator().manual_seed(40 + K)
    h = (2 * torch.randn(6, K, generator=g, dtype=torch.float64)).requires_grad_()
    y = labels(kind, 6, 3, g)
    method = create_method("dsh", bits=K, n_class=3, num_train=10, pairs="batch")
    got = method.loss(h, y, torch.arange(6))
    assert got.item() == pytest.approx(naive_dsh(L(h), L(h), L(y), L(y), 0.1), rel=1e-5, abs=1e-6)
    got.backward()
    assert torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
    assert not method.bank.U.any()  # the bank is not used


def test_gathered_rows_fill_the_bank_loss_stays_local():
    bank_checks.gathered_rows_fill_the_bank("dsh")


def test_runs_saved_with_the_earlier_state_keys_still_load():
    bank_checks.earlier_state_keys_still_load("dsh")
