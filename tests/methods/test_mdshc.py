"""MDSHC: the shared method checks, its loss (value and gradient) against a per-item re-computation
written from its definition (docs/mdshc.md), the centers made from the seed and saved with the run, the pair
term's switch, the head and the facts a run records."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hybridhash.errors import ConfigError
from hybridhash.methods import create_method

from .harness import L, MethodSuite, labels
from .mdshc_naive import gv_target, naive_mdshc_loss


class TestMDSHC(MethodSuite):
    name = "mdshc"

    def params(self, test, n):
        return {"pair_start_epoch": 0}  # the pair term on from the start, so every check covers it


def _scalars(u):
    """Rows of scalar float64 tensors that require a gradient (the naive loss differentiates these)."""
    return [[x.clone().requires_grad_(True) for x in row] for row in u.double()]


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("pair", [False, True])
@pytest.mark.parametrize("scale", [1.0, 6.0])
def test_the_loss_matches_the_per_item_formula(kind, pair, scale):
    g = torch.Generator().manual_seed(11)
    B, K, C, n = 5, 8, 4, 9
    method = create_method("mdshc", bits=K, n_class=C, num_train=n, seed=3, beta=0.7, lam=0.3,
                           pair_start_epoch=0 if pair else 9)
    y_train = labels(kind, n, C, g)
    # earlier batches fill part of the bank (rows never written stay zero with no label)
    for rows in (torch.tensor([6, 7]), torch.tensor([2, 8])):
        method.loss(torch.randn(2, K, generator=g, dtype=torch.float64), y_train[rows], rows)
    index = torch.tensor([0, 1, 2, 3, 4])
    h = (scale * torch.randn(B, K, generator=g, dtype=torch.float64)).requires_grad_(True)
    got = method.loss(h, y_train[index], index)
    got.backward()
    # the bank as the comparison sees it: the batch written first (u detached)
    U, Y = method.bank.U.double().clone(), method.bank.Y.double().clone()
    U[index], Y[index] = torch.tanh(h.detach()), y_train[index]
    hs = _scalars(h.detach())
    u = [[torch.tanh(x) for x in row] for row in hs]
    want = naive_mdshc_loss(u, L(y_train[index]), L(method.centers), L(U), L(Y), 0.7, 0.3, pair)
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-9)
    naive_grad = torch.tensor([[x.grad.item() for x in row] for row in hs], dtype=torch.float64)
    torch.testing.assert_close(h.grad, naive_grad, rtol=1e-5, atol=1e-9)


def test_the_center_term_stays_finite_where_a_probability_reaches_one():
    # at 128 bits sqrt(K) = 11.3: a code on its center gives p = 1 - 1e-9, past float32's 1 - 6e-8
    K = 128
    method = create_method("mdshc", bits=K, n_class=2, num_train=2, seed=0)
    h = (30 * method.centers[[0, 0]]).requires_grad_(True)  # (2, K) saturated on center 0
    y = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # labelled with the other class, and unlabelled
    value = method.loss(h, y, torch.arange(2))
    value.backward()
    z0, z1 = math.sqrt(K), math.sqrt(K) * float(method.centers[0] @ method.centers[1]) / K  # cosines 1 and c0.c1/K
    lse = max(z0, z1) + math.log1p(math.exp(-abs(z0 - z1)))
    log_p0, log_p1 = z0 - lse, z1 - lse  # with two classes 1 - p0 = p1
    assert math.exp(log_p0) > 1 - 1e-8
    want = -((log_p1 + log_p1) + (log_p1 + log_p0)) / 4  # row 0: y (0, 1); row 1: no label
    assert torch.isfinite(value) and torch.isfinite(h.grad).all()
    assert value.item() == pytest.approx(want, rel=1e-5)


def test_the_centers_come_from_the_seed_and_reach_the_target():
    a = create_method("mdshc", bits=48, n_class=10, num_train=4, seed=4)
    b = create_method("mdshc", bits=48, n_class=10, num_train=4, seed=4)
    c = create_method("mdshc", bits=48, n_class=10, num_train=4, seed=5)
    assert torch.equal(a.centers, b.centers) and not torch.equal(a.centers, c.centers)
    G = a.centers.numpy()
    assert set(np.unique(G)) == {-1.0, 1.0} and G.shape == (10, 48)
    low = min(int(np.sum(G[i] != G[j])) for i in range(10) for j in range(i + 1, 10))
    facts = a.facts()
    assert facts["center_target"] == gv_target(48, 10) and facts["min_center_distance"] == low >= gv_target(48, 10)
    assert facts["center_target_reached"] and facts["center_sweeps"] >= 1 and facts["centers"] == "random"
    assert "detached" in facts["bank"] and "rules 1-5" in facts["center_generator"]


def test_the_centers_are_saved_with_the_run_and_not_made_again(tmp_path, monkeypatch):
    method = create_method("mdshc", bits=16, n_class=6, num_train=5, seed=2)
    method.prepare(torch.eye(6)[:5])
    save_file(method.state_tensors(), tmp_path / "state.safetensors")
    again = create_method("mdshc", bits=16, n_class=6, num_train=5, seed=9)  # another seed: restored, not made

    def refuse(*args, **kwargs):
        raise AssertionError("the centers were made again")

    monkeypatch.setattr("hybridhash.methods.mdshc.generate_centers", refuse)
    again.load_state_tensors(load_file(tmp_path / "state.safetensors"))
    again.prepare(torch.eye(6)[:5])
    assert torch.equal(again.centers, method.centers)
    assert again.facts()["center_sweeps"] == method.facts()["center_sweeps"]


def test_the_pair_term_switches_on_at_its_epoch():
    g = torch.Generator().manual_seed(0)
    method = create_method("mdshc", bits=8, n_class=3, num_train=6, seed=0, pair_start_epoch=2)
    y = torch.eye(3)[[0, 0, 1, 1, 2, 2]]
    h = torch.randn(6, 8, generator=g)
    values = []
    for epoch in range(4):
        method.on_epoch_start(epoch, 0)
        values.append(method.loss(h, y, torch.arange(6)).item())
    assert values[0] == values[1] and values[2] == values[3] and values[2] > values[1]
    assert bool(method.pair_active)


def test_the_head_is_linear_then_batch_norm():
    head = create_method("mdshc", bits=12, n_class=1, num_train=1).make_head(20)
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d"]
    assert head(torch.randn(4, 20)).shape == (4, 12)


def test_one_class_cannot_train():
    method = create_method("mdshc", bits=8, n_class=1, num_train=2)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        method.loss(torch.randn(2, 8), torch.ones(2, 1), torch.arange(2))
