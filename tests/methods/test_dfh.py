"""DFH: its loss and gradient, its target codes and its 200-step center update against naive loops
(the centers' gradient by central differences), the overflow the reference turns into NaN, gathered
rows, and a run through the trainer."""
from __future__ import annotations

import pytest
import torch

from hybridhash.methods import create_method

from .harness import L, MethodSuite, dot, labels, mean, numeric_gradient, sign, sim, softplus
from .trainer_run import train_briefly


def naive_targets(h, y, V, mu):
    """b_ik = sign(mu sum_c y_ic sign(V_kc) + h_ik)."""
    K, C = len(V), len(V[0])
    return [[sign(mu * sum(y[i][c] * sign(V[k][c]) for c in range(C)) + h[i][k]) for k in range(K)]
            for i in range(len(h))]


def naive_center_loss(V, y, b, frozen_sign, vul, nta):
    K, C = len(V), len(V[0])
    fit = mean((sum(V[k][c] * y[i][c] for c in range(C)) - b[i][k]) ** 2 for k in range(K) for i in range(len(y)))
    sep = mean((sum(V[k][c] * V[k][d] for k in range(K)) - K * (2 * (c == d) - 1)) ** 2
               for c in range(C) for d in range(C))
    quant = mean((V[k][c] - frozen_sign[k][c]) ** 2 for k in range(K) for c in range(C))
    return fit + vul * sep + nta * quant


def naive_centers(V, y, b, vul=1.0, nta=1.0, steps=200, lr=0.03):
    for i in range(steps):
        size = lr * 0.1 ** ((i >= 149) + (i >= 179))  # 0.03, then 0.003 from step 149, 0.0003 from 179
        frozen = [[sign(x) for x in row] for row in V]
        grad = numeric_gradient(lambda W: naive_center_loss(W, y, b, frozen, vul, nta), V)
        V = [[v - size * g for v, g in zip(vr, gr)] for vr, gr in zip(V, grad)]
    return V


def naive_dfh(h, U, y, Y, b, m=3.0, eta=0.5):
    terms = []
    for i in range(len(h)):
        for j in range(len(U)):
            theta = min(max(0.5 * dot(h[i], U[j]), -100.0), 50.0)
            s = sim(y[i], Y[j])
            terms.append((1 - s) * softplus(m + theta) + s * softplus(m - theta))
    return mean(terms) + eta * mean((b[i][k] - h[i][k]) ** 2 for i in range(len(h)) for k in range(len(h[0])))


class TestDFH(MethodSuite):
    name = "dfh"

    def params(self, test, n):
        return {"center_steps": 20}  # the suite's many steps; the naive checks below run all 200


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("m", [3.0, 0.0])
def test_dfh_loss_gradient_and_centers_match_naive_loops(kind, m):
    g = torch.Generator().manual_seed(7 + int(m))
    n, K, C, B = 6, 4, 3, 3
    method = create_method("dfh", bits=K, n_class=C, num_train=n, m=m).double()
    V0 = torch.randn(K, C, generator=g, dtype=torch.float64)
    method.V.copy_(V0)
    first = (2 * torch.randn(B, K, generator=g, dtype=torch.float64), labels(kind, B, C, g), torch.tensor([0, 1, 2]))
    method.loss(*first)
    V1 = naive_centers(L(V0), L(first[1]), naive_targets(L(first[0]), L(first[1]), L(V0), 0.1))
    assert method.V.flatten().tolist() == pytest.approx([x for r in V1 for x in r], rel=1e-5, abs=1e-6)
    h, y = 2 * torch.randn(B, K, generator=g, dtype=torch.float64), labels(kind, B, C, g)
    index = torch.tensor([2, 3, 4])
    h.requires_grad_()
    got = method.loss(h, y, index)
    got.backward()
    U = [[0.0] * K for _ in range(n)]
    Y = [[0.0] * C for _ in range(n)]
    for hh, yy, ii in (first, (h.detach(), y, index)):
        for r, i in enumerate(ii.tolist()):
            U[i], Y[i] = L(hh[r]), L(yy[r])
    b = naive_targets(L(h), L(y), V1, 0.1)  # the centers before this step's update
    assert got.item() == pytest.approx(naive_dfh(L(h), U, L(y), Y, b, m), rel=1e-5)
    want = numeric_gradient(lambda rows: naive_dfh(rows, U, L(y), Y, b, m), L(h))
    assert h.grad.flatten().tolist() == pytest.approx([x for r in want for x in r], rel=1e-5, abs=1e-6)
    V2 = naive_centers(V1, L(y), b)
    assert method.V.flatten().tolist() == pytest.approx([x for r in V2 for x in r], rel=1e-5, abs=1e-6)


def test_dfh_in_batch_pairs_match_naive_loop_and_leave_the_bank_alone():
    g = torch.Generator().manual_seed(9)
    K, C = 4, 3
    method = create_method("dfh", bits=K, n_class=C, num_train=6, pairs="batch").double()
    method.V.copy_(torch.randn(K, C, generator=g, dtype=torch.float64))
    V0 = L(method.V)
    h = (2 * torch.randn(4, K, generator=g, dtype=torch.float64)).requires_grad_()
    y = labels("multi", 4, C, g)
    got = method.loss(h, y, torch.arange(4))
    got.backward()
    b = naive_targets(L(h), L(y), V0, 0.1)
    f = lambda rows: naive_dfh(rows, rows, L(y), L(y), b)  # noqa: E731  (both sides of a pair carry the gradient)
    assert got.item() == pytest.approx(f(L(h)), rel=1e-6)
    assert h.grad.flatten().tolist() == pytest.approx([x for r in numeric_gradient(f, L(h)) for x in r],
                                                      rel=1e-5, abs=1e-6)
    assert not method.bank.U.any() and not torch.equal(method.V, torch.tensor(V0, dtype=torch.float64))


def test_dfh_stays_finite_where_the_reference_overflows():
    """A similar pair with 0.5 h.U < -85: log(1 + exp(m - theta)) is inf, and 0 * inf NaN, in the reference."""
    method = create_method("dfh", bits=8, n_class=2, num_train=2)
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    method.loss(torch.full((1, 8), 30.0), y[:1], torch.tensor([0]))
    h = torch.full((1, 8), -30.0, requires_grad=True)  # theta = 0.5 * 8 * -900, clamped to -100
    value = method.loss(h, y[1:], torch.tensor([1]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(h.grad).all()
    U = L(method.bank.U)
    b = L(torch.sign(0.1 * y[1:] @ torch.sign(method.V).t() + h.detach()))  # V changed after b was taken,
    # but the sign of a -30 output does not depend on it
    assert value.item() == pytest.approx(naive_dfh(L(h), U, L(y[1:]), L(y), b), rel=1e-6)


def test_dfh_centers_follow_every_ranks_rows():
    g = torch.Generator().manual_seed(2)
    n, K, C = 8, 8, 3
    h_all, y_all = torch.randn(6, K, generator=g), labels("single", 6, C, g).float()
    idx_all = torch.randperm(n, generator=g)[:6]
    whole = create_method("dfh", bits=K, n_class=C, num_train=n)
    whole.loss(h_all, y_all, idx_all)
    ranks = [create_method("dfh", bits=K, n_class=C, num_train=n) for _ in range(2)]
    values = [m.loss(h_all[3 * r:3 * r + 3], y_all[3 * r:3 * r + 3], idx_all[3 * r:3 * r + 3],
                     gathered=(h_all, y_all, idx_all)) for r, m in enumerate(ranks)]
    assert torch.equal(ranks[0].V, ranks[1].V) and torch.equal(ranks[0].V, whole.V) and whole.V.abs().sum() > 0
    assert all(torch.isfinite(v) for v in values)


def test_dfh_published_settings_are_the_reference_ones():
    method = create_method("dfh", bits=48, n_class=10, num_train=100)
    assert method.config.to_dict() == {"m": 3.0, "mu": 0.1, "vul": 1.0, "nta": 1.0, "eta": 0.5,
                                       "center_steps": 200, "center_lr": 0.03, "pairs": "bank"}
    d = method.defaults
    assert (d.optimizer, d.lr, d.weight_decay, d.batch_size, d.epochs) == ("rmsprop", 1e-5, 1e-5, 64, 150)
    assert set(method.state_tensors()) == {"bank.U", "bank.Y", "V"}


def test_dfh_trains_through_the_loop_and_saves_its_centers(tmp_path):
    _, state, record = train_briefly("dfh", tmp_path / "run", method_params={"center_steps": 50, "pairs": "bank"})
    assert record["method"] == "dfh"
    assert state["V"].shape == (16, 10) and state["V"].abs().sum() > 0 and state["bank.U"].abs().sum(1).gt(0).all()
