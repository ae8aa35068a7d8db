"""DSDH: both variants' losses and gradients against naive loops, the W step (ridge regression solved
by hand) and the discrete cyclic sweep against naive loops, the variants' defaults, the state through
a checkpoint, and the hooks through the trainer (a resumed run equals the uninterrupted one)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from hybridhash.methods import create_method

from .harness import L, MethodSuite, dot, labels, mean, numeric_gradient, sign, sim, softplus
from .trainer_run import train_briefly


def naive_solve(A, rhs):
    """x with A x = rhs (A (K, K), rhs (K, C)) by Gauss-Jordan elimination with partial pivoting."""
    K = len(A)
    M = [list(A[i]) + list(rhs[i]) for i in range(K)]
    for col in range(K):
        pivot = max(range(col, K), key=lambda r: abs(M[r][col]))
        M[col], M[pivot] = M[pivot], M[col]
        M[col] = [x / M[col][col] for x in M[col]]
        for r in range(K):
            if r != col:
                f = M[r][col]
                M[r] = [a - f * b for a, b in zip(M[r], M[col])]
    return [row[K:] for row in M]


def naive_update(B, Y, U, mu, nu, eta, rounds):
    """``rounds`` times: W = (B^T B + nu/mu I)^-1 B^T Y, then for each bit k in order
    B[i][k] = sign(P[i][k] - sum_{j != k} B[i][j] (W_j . W_k)), P = Y W^T + eta/mu U."""
    n, K, C = len(B), len(B[0]), len(Y[0])
    B = [list(r) for r in B]
    for _ in range(rounds):
        A = [[sum(B[i][a] * B[i][b] for i in range(n)) + (nu / mu) * (a == b) for b in range(K)] for a in range(K)]
        rhs = [[sum(B[i][a] * Y[i][c] for i in range(n)) for c in range(C)] for a in range(K)]
        W = naive_solve(A, rhs)
        P = [[dot(Y[i], W[k]) + eta / mu * U[i][k] for k in range(K)] for i in range(n)]
        for k in range(K):
            for i in range(n):
                B[i][k] = sign(P[i][k] - sum(B[i][j] * dot(W[j], W[k]) for j in range(K) if j != k))
    return B, W


def naive_dsdh(h, U, y, Y, codes, W, variant, mu, nu, eta):
    """codes: Bd of the batch's rows (B, K); Y: the labels the similarity is taken against."""
    terms = []
    for i in range(len(h)):
        for j in range(len(U)):
            theta = 0.5 * dot(h[i], U[j])
            if variant == "paper":
                theta = min(max(theta, -100.0), 50.0)
            terms.append(softplus(theta) - sim(y[i], Y[j]) * theta)
    K, C = len(h[0]), len(y[0])
    if variant == "paper":
        return mean(terms) + eta * mean((codes[i][k] - h[i][k]) ** 2 for i in range(len(h)) for k in range(K))
    fit = mean((y[i][c] - sum(codes[i][k] * W[k][c] for k in range(K))) ** 2 for i in range(len(h)) for c in range(C))
    return mean(terms) + mu * fit + nu * mean(w ** 2 for row in W for w in row)


class TestDSDH(MethodSuite):
    name = "dsdh"


def _steps(g, n, K, C, kind, count):
    return [(2 * torch.randn(4, K, generator=g, dtype=torch.float64), labels(kind, 4, C, g),
             torch.randperm(n, generator=g)[:4]) for _ in range(count)]


def _check_step(method, h, y, index, U, Y, variant, c):
    h = h.clone().requires_grad_()
    got = method.loss(h, y, index)
    got.backward()
    codes, W = L(method.codes[index]), L(method.W)
    f = lambda rows: naive_dsdh(rows, U, L(y), Y, codes, W, variant, c.mu, c.nu, c.eta)  # noqa: E731
    assert got.item() == pytest.approx(f(L(h)), rel=1e-5)
    want = numeric_gradient(f, L(h))
    assert h.grad.flatten().tolist() == pytest.approx([x for r in want for x in r], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_dsdh_deephash_updates_before_each_epoch_and_its_discrete_terms_carry_no_gradient(kind):
    g = torch.Generator().manual_seed(11)
    n, K, C = 10, 6, 4
    method = create_method("dsdh", bits=K, n_class=C, num_train=n, variant="deephash")
    c = method.config
    method.on_epoch_start(0, 0)  # zero banks: W = 0 and Bd stays 0
    assert not method.W.any() and not method.codes.any()
    U, Y = [[0.0] * K for _ in range(n)], [[0.0] * C for _ in range(n)]
    for h, y, index in _steps(g, n, K, C, kind, 3):
        method.loss(h, y, index)
        for r, i in enumerate(index.tolist()):
            U[i], Y[i] = L(h[r].float()), L(y[r])
    method.on_epoch_start(1, 3)
    B, W = naive_update([[0.0] * K for _ in range(n)], Y, U, c.mu, c.nu, c.eta, c.dcc_iter)
    assert method.codes.tolist() == B  # unwritten rows stay 0: sign(0)
    assert method.W.flatten().tolist() == pytest.approx([x for r in W for x in r], rel=1e-5, abs=1e-7)
    h, y, index = _steps(g, n, K, C, kind, 1)[0]
    for r, i in enumerate(index.tolist()):
        U[i], Y[i] = L(h[r].float()), L(y[r])
    _check_step(method, h, y, index, U, Y, "deephash", c)


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_dsdh_paper_couples_the_codes_and_updates_after_each_epoch(kind):
    g = torch.Generator().manual_seed(12)
    n, K, C = 10, 6, 4
    labels_all = labels(kind, n, C, g)
    method = create_method("dsdh", bits=K, n_class=C, num_train=n)
    c = method.config
    method.prepare(labels_all, torch.Generator().manual_seed(0))
    start = L(method.codes)
    assert {x for r in start for x in r} == {-1.0, 1.0}
    U = [[0.0] * K for _ in range(n)]
    Y = L(labels_all)  # the similarity is taken against every training image's labels
    for h, _, index in _steps(g, n, K, C, kind, 2):
        y = labels_all[index]
        for r, i in enumerate(index.tolist()):
            U[i] = L(h[r].float())
        _check_step(method, h, y, index, U, Y, "paper", c)
    method.on_epoch_end(0)
    B, W = naive_update(start, Y, U, c.mu, c.nu, c.eta, c.dcc_iter)
    assert method.codes.tolist() == B
    assert method.W.flatten().tolist() == pytest.approx([x for r in W for x in r], rel=1e-5, abs=1e-7)
    h, _, index = _steps(g, n, K, C, kind, 1)[0]
    for r, i in enumerate(index.tolist()):
        U[i] = L(h[r].float())
    _check_step(method, h, labels_all[index], index, U, Y, "paper", c)


def test_dsdh_variants_take_their_own_defaults():
    paper = create_method("dsdh", bits=48, n_class=10, num_train=100)
    assert paper.config.to_dict() == {"variant": "paper", "mu": 0.01, "nu": 1.0, "eta": 0.01, "dcc_iter": 1,
                                      "pairs": "bank"}
    deephash = create_method("dsdh", bits=48, n_class=10, num_train=100, variant="deephash")
    assert deephash.config.to_dict() == {"variant": "deephash", "mu": 1.0, "nu": 1.0, "eta": 55.0, "dcc_iter": 10,
                                         "pairs": "bank"}
    assert create_method("dsdh", bits=8, n_class=2, num_train=4, variant="deephash", eta=3).config.eta == 3.0
    for m, batch in ((paper, 128), (deephash, 64)):
        d = m.defaults
        assert (d.optimizer, d.lr, d.weight_decay, d.batch_size, d.epochs) == ("rmsprop", 1e-5, 1e-5, batch, 150)
    assert "deephash" in type(deephash).table_note(deephash.config, {}, {}, 100, "cell.json")
    batch = create_method("dsdh", bits=8, n_class=2, num_train=4, pairs="batch").config
    assert "pairs inside the mini-batch" in type(deephash).table_note(batch, {}, {}, 4, "cell.json")
    assert type(deephash).fit_schedule({}, "scratch", 30, 450) == ({"pairs": "batch"}, 30)


def test_dsdh_in_batch_pairs_keep_writing_the_bank_for_the_code_update():
    g = torch.Generator().manual_seed(6)
    n, K, C = 8, 4, 3
    labels_all = labels("multi", n, C, g)
    method = create_method("dsdh", bits=K, n_class=C, num_train=n, pairs="batch")
    method.prepare(labels_all, torch.Generator().manual_seed(1))
    index = torch.tensor([1, 4, 6])
    h = (2 * torch.randn(3, K, generator=g, dtype=torch.float64)).requires_grad_()
    y = labels_all[index]
    got = method.loss(h, y, index)
    got.backward()
    codes, c = L(method.codes[index]), method.config
    f = lambda rows: naive_dsdh(rows, rows, L(y), L(y), codes, None, "paper", c.mu, c.nu, c.eta)  # noqa: E731
    assert got.item() == pytest.approx(f(L(h)), rel=1e-6)
    assert h.grad.flatten().tolist() == pytest.approx([x for r in numeric_gradient(f, L(h)) for x in r],
                                                      rel=1e-5, abs=1e-6)
    assert torch.equal(method.bank.U[index], h.detach().float())


def test_dsdh_deephash_state_round_trips_through_a_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(4)
    n, K, C = 8, 6, 3
    make = lambda: create_method("dsdh", bits=K, n_class=C, num_train=n, variant="deephash")  # noqa: E731
    method = make()
    method.on_epoch_start(0, 0)
    for h, y, index in _steps(g, n, K, C, "single", 3):
        method.loss(h, y, index)
    method.on_epoch_end(0)
    save_file(method.state_tensors(), tmp_path / "s.safetensors")
    again = make()
    again.load_state_tensors(load_file(tmp_path / "s.safetensors"))
    assert set(again.state_tensors()) == {"bank.U", "bank.Y", "codes", "W", "prepared"}
    for m in (method, again):
        m.on_epoch_start(1, 3)
    assert torch.equal(method.codes, again.codes) and torch.equal(method.W, again.W) and method.W.any()
    h, y, index = _steps(g, n, K, C, "single", 1)[0]
    assert method.loss(h, y, index).item() == again.loss(h, y, index).item()


@pytest.mark.parametrize("variant", ["paper", "deephash"])
def test_dsdh_resumed_through_the_trainer_equals_the_uninterrupted_run(tmp_path, variant):
    params = {"method_params": {"variant": variant, "pairs": "bank"}}
    _, straight, record = train_briefly("dsdh", tmp_path / "straight", **params)
    assert record["facts"] == {"variant": variant}
    train_briefly("dsdh", tmp_path / "cut", stop_after_epochs=1, **params)
    _, resumed, _ = train_briefly("dsdh", tmp_path / "cut", resume=True, **params)
    assert straight["W"].any() and set(straight["codes"].unique().tolist()) <= {-1.0, 0.0, 1.0}
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
