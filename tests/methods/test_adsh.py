"""ADSH: its loss and its V update against naive loops, samples per outer iteration, gathered rows."""
from __future__ import annotations

import math

import pytest
import torch

from hybridhash.errors import DataError
from hybridhash.methods import create_method
from hybridhash.methods.adsh import adsh_update_v, iterations_for, soft_similarity

from .harness import L, MethodSuite, dot, labels, sign, sim


def naive_adsh(h, y, index, V, labels, r, gamma):
    n, K = len(V), len(h[0])
    total = 0.0
    for i in range(len(h)):
        u = [math.tanh(x) for x in h[i]]
        for j in range(n):
            s = sim(y[i], labels[j]) * (1 + r) - r
            total += (dot(u, V[j]) - K * s) ** 2
        total += gamma * sum((v - a) ** 2 for v, a in zip(V[index[i]], u))
    return total / (n * len(h))


class TestADSH(MethodSuite):
    name = "adsh"

    def params(self, test, n):
        return {"resume": {"num_samples": 8, "epochs_per_iteration": 1},
                "steps": {"num_samples": n, "epochs_per_iteration": 1}}.get(test, {})

    def warm_up(self, method, model, X, Y, g):
        """One outer iteration so that V holds codes; then training goes on against that fixed V."""
        rows = method.epoch_rows(0, g)
        method.loss(model(X[rows]), Y[rows], rows)
        method.on_epoch_end(0)
        return method.epoch_rows(1, g)


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_adsh_loss_matches_naive_loop(K, kind):
    g = torch.Generator().manual_seed(K + 11)
    n, C = 10, 5
    y_all = labels(kind, n, C, g)
    method = create_method("adsh", bits=K, n_class=C, num_train=n, num_samples=6, epochs_per_iteration=1)
    method.prepare(y_all, g)
    method.V.copy_(torch.randint(0, 2, (n, K), generator=g).float() * 2 - 1)  # a V as after an update
    rows = method.epoch_rows(0, g)
    assert len(set(rows.tolist())) == 6
    sample = L(y_all[rows])
    S = [[sim(a, b) for b in L(y_all)] for a in sample]
    S1 = sum(map(sum, S))
    r = S1 / max(6 * n - S1, 1)  # all-similar: S~ = 1 whatever r is
    idx = rows[:4]
    h = torch.randn(4, K, generator=g, dtype=torch.float64)
    got = method.loss(h, y_all[idx], idx).item()
    assert got == pytest.approx(naive_adsh(L(h), L(y_all[idx]), idx.tolist(), L(method.V), L(y_all), r, 200.0), rel=1e-5)


@pytest.mark.parametrize("scale", [1.0, 0.1, 0.03])  # smaller S~: the V[:, not k] term decides more signs
def test_adsh_v_update_matches_naive_column_formula(scale):
    g = torch.Generator().manual_seed(5)
    n, m, K, gamma = 9, 5, 8, 3.0 * scale
    Y = labels("multi", n, 3, g).float()
    sample = torch.randperm(n, generator=g)[:m]
    S_soft = scale * soft_similarity(Y[sample], Y)[0]
    U = torch.tanh(torch.randn(m, K, generator=g))
    U_bar = torch.zeros(n, K)
    U_bar[sample] = U
    V0 = torch.randint(0, 2, (n, K), generator=g).float() * 2 - 1
    got = adsh_update_v(V0, U, S_soft, U_bar, gamma)
    # naive: Q and each column element by element, columns in order, V updated in place
    V, Uu, Ss, Ub = L(V0), L(U), L(S_soft), L(U_bar)
    Q = [[-2 * K * sum(Ss[a][i] * Uu[a][k] for a in range(m)) - 2 * gamma * Ub[i][k] for k in range(K)] for i in range(n)]
    for k in range(K):
        rest = [j for j in range(K) if j != k]
        w = {j: sum(Uu[a][j] * Uu[a][k] for a in range(m)) for j in rest}  # U[:, not k]^T U[:, k]
        for i in range(n):
            V[i][k] = -sign(2 * sum(V[i][j] * w[j] for j in rest) + Q[i][k])
    assert got.tolist() == V


def test_adsh_samples_per_outer_iteration_and_updates_v_at_its_end():
    n, K, C = 10, 8, 3
    g = torch.Generator().manual_seed(0)
    y = labels("single", n, C, g).float()
    method = create_method("adsh", bits=K, n_class=C, num_train=n, num_samples=4, epochs_per_iteration=2)
    method.prepare(y, g)
    first = method.epoch_rows(0, g)
    assert torch.equal(method.epoch_rows(1, g), first)  # same outer iteration
    h = torch.randn(4, K, generator=g)
    method.loss(h, y[first], first)
    method.on_epoch_end(0)
    assert not method.V.any()  # not the last epoch of the outer iteration
    method.on_epoch_end(1)
    S_soft, _ = soft_similarity(y[first], y)
    U_bar = torch.zeros(n, K)
    U_bar[first] = torch.tanh(h)
    assert torch.equal(method.V, adsh_update_v(torch.zeros(n, K), torch.tanh(h), S_soft, U_bar, 200.0))
    assert set(method.learned_codes().unique().tolist()) <= {-1.0, 1.0}
    second = method.epoch_rows(2, g)
    assert not torch.equal(second, first) and not method.U_bar.any()
    outside = torch.tensor(sorted(set(range(n)) - set(second.tolist()))[:1])
    with pytest.raises(DataError, match="outside this outer iteration"):
        method.loss(torch.zeros(1, K), y[outside], outside)
    assert iterations_for(image_steps=150 * 5000, num_train=5000) == 125
    assert iterations_for(image_steps=100, num_train=10, num_samples=2000, epochs_per_iteration=3) == 3


def test_adsh_gathered_rows_keep_every_rank_identical():
    n, K, C = 10, 8, 3
    y = labels("single", n, C, torch.Generator().manual_seed(1)).float()
    ranks = [create_method("adsh", bits=K, n_class=C, num_train=n, num_samples=6, epochs_per_iteration=1) for _ in range(2)]
    samples = []
    for m in ranks:
        m.prepare(y)
        samples.append(m.epoch_rows(0, torch.Generator().manual_seed(5)))  # same seed on every rank
    assert torch.equal(samples[0], samples[1])
    h_all = torch.randn(6, K, generator=torch.Generator().manual_seed(2))
    idx_all = samples[0]
    for r, m in enumerate(ranks):  # rank r holds half of the rows
        part = slice(3 * r, 3 * r + 3)
        m.loss(h_all[part], y[idx_all[part]], idx_all[part], gathered=(h_all, y[idx_all], idx_all))
        m.on_epoch_end(0)
    assert torch.equal(ranks[0].U_bar, ranks[1].U_bar) and ranks[0].U_bar[idx_all].abs().sum() > 0
    assert torch.equal(ranks[0].V, ranks[1].V) and ranks[0].V.abs().sum() > 0


def test_adsh_fits_its_iterations_to_the_image_steps_of_a_scratch_run():
    # 30 passes over 450 images = 13500 image-steps = 10 iterations x 3 passes over a 450-image sample
    cls = type(create_method("adsh", bits=8, n_class=2, num_train=4))
    assert cls.fit_schedule({}, "scratch", 30, 450) == ({"iterations": 10}, 30)
    assert cls.fit_schedule({"iterations": 4}, "scratch", 30, 450) == ({"iterations": 4}, 12)
    assert cls.fit_schedule({}, "original", 30, 450) == ({}, 150)
