"""Deep-hashing methods: each loss against a naive per-pair (per-triplet) loop written from
METHODS.md, edge cases, the hooks (HashNet beta, CNNH stage 1, ADSH's V update, CSQ centers), the
registry and resumable state."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hybridhash.errors import CheckpointMismatchError, ConfigError, DataError
from hybridhash.methods import create_method, list_methods
from hybridhash.methods.adsh import adsh_update_v, iterations_for, soft_similarity
from hybridhash.methods.cnnh import cnnh_stage_one
from hybridhash.methods.csq import hash_centers
from hybridhash.methods.dnnh import DivideAndEncode
from hybridhash.methods.hashnet import continuation_beta

DATA = Path(__file__).parent / "data"
ALL = ["adsh", "cnnh", "csq", "dch", "dnnh", "dpsh", "dsh", "dtsh", "hashnet", "hybridhash"]


# ---------------------------------------------------------------- naive references (python floats)
def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def sim(a, b):
    return 1.0 if dot(a, b) > 0 else 0.0


def softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def sign(x):
    return (x > 0) - (x < 0)


def mean(values):
    values = list(values)
    return sum(values) / len(values)


def naive_weighted_likelihood(u, U, y, Y, alpha):
    pairs = [(i, j) for i in range(len(u)) for j in range(len(U))]
    s = {p: sim(y[p[0]], Y[p[1]]) for p in pairs}
    S = len(pairs)
    S1 = sum(s.values())
    total = 0.0
    for i, j in pairs:
        d = alpha * dot(u[i], U[j])
        w = S / S1 if s[i, j] else S / (S - S1)
        total += w * (softplus(d) - s[i, j] * d)
    return total / S


def naive_hashnet(h, y, alpha, beta):
    u = [[math.tanh(beta * x) for x in row] for row in h]
    return naive_weighted_likelihood(u, u, y, y, alpha)


def naive_dpsh(h, U, y, Y, eta):
    terms = []
    for i in range(len(h)):
        for j in range(len(U)):
            theta = 0.5 * dot(h[i], U[j])
            terms.append(softplus(theta) - sim(y[i], Y[j]) * theta)
    return mean(terms) + eta * mean((x - sign(x)) ** 2 for row in h for x in row)


def naive_dsh(h, U, y, Y, alpha):
    m = 2 * len(h[0])
    terms = []
    for i in range(len(h)):
        for j in range(len(U)):
            dist = sum((a - b) ** 2 for a, b in zip(h[i], U[j]))
            s = sim(y[i], Y[j])
            terms.append(0.5 * s * dist + 0.5 * (1 - s) * max(m - dist, 0.0))
    return mean(terms) + alpha * mean(abs(abs(x) - 1) for row in h for x in row)


def naive_cauchy_d(a, b):
    K = len(a)
    cos = dot(a, b) / max(math.sqrt(dot(a, a)) * math.sqrt(dot(b, b)), 1e-4)
    return K / 2 * (1 - min(cos, 0.99))


def naive_dch(h, y, gamma, lam):
    B = len(h)
    s = [[sim(y[i], y[j]) for j in range(B)] for i in range(B)]
    S1 = sum(map(sum, s))
    S0 = B * B - S1
    terms = []
    for i in range(B):
        for j in range(B):
            w = (B * B / S1 if s[i][j] else B * B / S0) if S1 and S0 else 1.0
            d = naive_cauchy_d(h[i], h[j])
            terms.append(w * (s[i][j] * math.log(d / gamma) + math.log(1 + gamma / d)))
    q = [math.log(1 + naive_cauchy_d([abs(x) for x in row], [1.0] * len(row)) / gamma) for row in h]
    return mean(terms) + lam * mean(q)


def naive_dtsh(h, y, alpha, lam):
    B = len(h)
    anchors = []
    for a in range(B):
        pos = [p for p in range(B) if sim(y[a], y[p])]
        neg = [n for n in range(B) if not sim(y[a], y[n])]
        if pos and neg:
            ts = [min(max(dot(h[a], h[p]) - dot(h[a], h[n]) - alpha, -100.0), 50.0) for p in pos for n in neg]
            anchors.append(mean(softplus(-t) for t in ts))
    triplet = mean(anchors) if anchors else 0.0
    return triplet + lam * mean((x - sign(x)) ** 2 for row in h for x in row)


def naive_dnnh(h, y, margin):
    u = [[1 / (1 + math.exp(-x)) for x in row] for row in h]
    B = len(u)
    d2 = lambda a, b: sum((p - q) ** 2 for p, q in zip(u[a], u[b]))  # noqa: E731
    terms = [max(0.0, margin - (d2(a, n) - d2(a, p)))
             for a in range(B) for p in range(B) for n in range(B)
             if sim(y[a], y[p]) and not sim(y[a], y[n])]
    return mean(terms) if terms else 0.0


def naive_csq(h, y, centers, fill, lam):
    total_bce, total_q, count = 0.0, 0.0, 0
    for i in range(len(h)):
        csum = [sum(y[i][c] * centers[c][k] for c in range(len(centers))) for k in range(len(h[i]))]
        center = [1.0 if v > 0 else -1.0 if v < 0 else fill[k] for k, v in enumerate(csum)]
        for x, c in zip(h[i], center):
            p, t = (math.tanh(x) + 1) / 2, (c + 1) / 2
            total_bce += -(t * math.log(p) + (1 - t) * math.log(1 - p))
            total_q += (abs(math.tanh(x)) - 1) ** 2
            count += 1
    return total_bce / count + lam * total_q / count


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


# ---------------------------------------------------------------- data
def labels(kind, B, C, g):
    if kind == "single":
        return torch.eye(C, dtype=torch.float64)[torch.randint(0, C, (B,), generator=g)]
    y = (torch.rand(B, C, generator=g) < 0.4).double()
    y[torch.arange(B), torch.randint(0, C, (B,), generator=g)] = 1.0  # every item has a label
    return y


def L(t):
    return t.double().tolist()


def bank_after(method_name, steps, n, K, C):
    """The bank a bank method holds after ``steps`` [(h, y, index)], built by hand."""
    U, Y = torch.zeros(n, K), torch.zeros(n, C)
    for h, y, index in steps:
        for row, i in enumerate(index.tolist()):
            U[i] = h[row].float()  # DPSH and DSH store raw outputs (no activation)
            Y[i] = y[row].float()
    return L(U), L(Y)


# ---------------------------------------------------------------- the fixtures of hybridhash.losses
@pytest.mark.parametrize("name", ["loss_singlelabel", "loss_multilabel"])
def test_hybridhash_method_reproduces_the_loss_fixtures(name):
    meta = json.loads((DATA / f"{name}.json").read_text())
    t = load_file(DATA / f"{name}.safetensors")
    method = create_method("hybridhash", bits=meta["bit"], n_class=meta["n_class"], num_train=meta["num_train"],
                           alpha=meta["alpha"])
    for s in range(meta["steps"]):
        h = torch.atanh(t[f"step{s}.u"].double())  # the fixture holds tanh outputs; the method takes raw h
        value = method.loss(h, t[f"step{s}.y"], t[f"step{s}.index"])
        assert abs(value.item() - t["losses"][s].item()) <= meta["tolerance_abs"], s


# ---------------------------------------------------------------- each loss against its naive loop
@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_bank_methods_match_naive_loops_over_two_steps(K, kind):
    g = torch.Generator().manual_seed(K + (kind == "multi"))
    n, C = 10, 4
    steps = [(2 * torch.randn(5, K, generator=g, dtype=torch.float64), labels(kind, 5, C, g),
              torch.randperm(n, generator=g)[:5]) for _ in range(2)]
    for name, naive, kw in (("dpsh", naive_dpsh, {"eta": 0.1}), ("dsh", naive_dsh, {"alpha": 0.1})):
        method = create_method(name, bits=K, n_class=C, num_train=n)
        for step in steps:
            got = method.loss(*step).item()
        U, Y = bank_after(name, steps, n, K, C)
        h, y, _ = steps[-1]
        assert got == pytest.approx(naive(L(h), U, L(y), Y, *kw.values()), rel=1e-5, abs=1e-6), name


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


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_hybridhash_matches_naive_loop(K, kind):
    g = torch.Generator().manual_seed(20 + K)
    n, C = 9, 3
    h, y, idx = torch.randn(6, K, generator=g, dtype=torch.float64), labels(kind, 6, C, g), torch.randperm(n, generator=g)[:6]
    got = create_method("hybridhash", bits=K, n_class=C, num_train=n).loss(h, y, idx).item()
    U, Y = torch.zeros(n, K), torch.zeros(n, C)
    U[idx], Y[idx] = torch.tanh(h).float(), y.float()
    assert got == pytest.approx(naive_weighted_likelihood(L(torch.tanh(h)), L(U), L(y), L(Y), 0.5), rel=1e-5)


IN_BATCH = {
    "hashnet": lambda h, y: naive_hashnet(h, y, 0.1, 1.0),
    "dch": lambda h, y: naive_dch(h, y, 20.0, 0.1),
    "dtsh": lambda h, y: naive_dtsh(h, y, 5.0, 1.0),
    "dnnh": lambda h, y: naive_dnnh(h, y, 1.0),
}


@pytest.mark.parametrize("name", sorted(IN_BATCH))
@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_in_batch_methods_match_naive_loops(name, K, kind):
    g = torch.Generator().manual_seed(K * 7 + len(name))
    C = 3
    scale = 0.3 if name == "dtsh" else 1.5  # dtsh: keep some triplets inside its margin
    h, y = scale * torch.randn(6, K, generator=g, dtype=torch.float64), labels(kind, 6, C, g)
    got = create_method(name, bits=K, n_class=C, num_train=6).loss(h, y, torch.arange(6)).item()
    assert got == pytest.approx(IN_BATCH[name](L(h), L(y)), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("K", [8, 16])
def test_hashnet_uses_its_beta(K):
    g = torch.Generator().manual_seed(K)
    h, y = torch.randn(5, K, generator=g, dtype=torch.float64), labels("multi", 5, 3, g)
    method = create_method("hashnet", bits=K, n_class=3, num_train=5)
    method.on_epoch_start(45, 0)  # beta = sqrt(3)
    got = method.loss(h, y, torch.arange(5)).item()
    assert got == pytest.approx(naive_hashnet(L(h), L(y), 0.1, math.sqrt(3)), rel=1e-5)


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_csq_matches_naive_loop(K, kind):
    g = torch.Generator().manual_seed(K + 3)
    C = 4
    h, y = torch.randn(6, K, generator=g, dtype=torch.float64), labels(kind, 6, C, g)
    if kind == "multi":
        y[0] = torch.tensor([1.0, 1.0, 0.0, 0.0])  # two Hadamard rows: half the entries cancel to 0
    method = create_method("csq", bits=K, n_class=C, num_train=6)
    got = method.loss(h, y, torch.arange(6)).item()
    assert got == pytest.approx(naive_csq(L(h), L(y), L(method.centers), L(method.fill), 1e-4), rel=1e-5)


def test_cnnh_stage_two_matches_naive_mean():
    g = torch.Generator().manual_seed(0)
    n, K, C = 8, 8, 3
    y = labels("single", n, C, g)
    method = create_method("cnnh", bits=K, n_class=C, num_train=n, sweeps=2)
    method.prepare(y, g)
    H = L(method.H)
    assert all(v in (-1.0, 1.0) for row in H for v in row)
    h, idx = torch.randn(4, K, generator=g, dtype=torch.float64), torch.tensor([7, 0, 3, 3])
    got = method.loss(h, y[idx], idx).item()
    expected = mean((a - b) ** 2 for i, row in zip(idx.tolist(), L(h)) for a, b in zip(row, H[i]))
    assert got == pytest.approx(expected, rel=1e-6)


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


# ---------------------------------------------------------------- edge cases
EDGE = {
    "no_dissimilar_pair": lambda g, B, C: torch.eye(C)[[0] * B],
    "no_similar_pair": lambda g, B, C: torch.zeros(B, C),  # unlabelled items share no label, not even with themselves
    "distinct_labels": lambda g, B, C: torch.eye(C)[:B],
    "multi_label": lambda g, B, C: labels("multi", B, C, g).float(),
}


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("case", sorted(EDGE) + ["single_item"])
def test_edge_cases_are_finite_with_finite_gradients(name, case):
    g = torch.Generator().manual_seed(1)
    n, K, C = 8, 16, 5
    B = 1 if case == "single_item" else 4
    y = EDGE["multi_label" if case == "single_item" else case](g, B, C)
    y_train = torch.cat([y, torch.eye(C)[torch.randint(0, C, (n - B,), generator=g)]])
    method = create_method(name, bits=K, n_class=C, num_train=n, **({"sweeps": 1} if name == "cnnh" else {}))
    method.prepare(y_train, g)
    rows = method.epoch_rows(0, g)
    index = torch.arange(B) if rows is None else rows[:B]
    for scale in (1.0, 30.0):  # 30: saturated tanh / sigmoid
        h = (scale * torch.randn(B, K, generator=g)).requires_grad_(True)
        value = method.loss(h, y_train[index], index)
        value.backward()
        assert torch.isfinite(value), (case, scale)
        assert torch.isfinite(h.grad).all(), (case, scale)


# ---------------------------------------------------------------- registry-driven
def test_registry_lists_every_method():
    assert list_methods() == ALL
    assert list_methods("d*") == ["dch", "dnnh", "dpsh", "dsh", "dtsh"]


def _run_steps(method, y_train, g, steps, K):
    values = []
    for s in range(steps):
        rows = method.epoch_rows(0, g)
        rows = torch.arange(len(y_train)) if rows is None else rows
        idx = rows[(torch.arange(3) + 3 * s) % len(rows)]
        h = torch.randn(3, K, generator=g, requires_grad=True)
        value = method.loss(h, y_train[idx], idx)
        value.backward()
        values.append((value, h.grad))
    return values


@pytest.mark.parametrize("name", ALL)
def test_every_method_trains_and_resumes_exactly(name, tmp_path):
    n, K, C = 12, 16, 4
    g = torch.Generator().manual_seed(0)
    y_train = torch.eye(C)[torch.randint(0, C, (n,), generator=g)]
    hp = {"sweeps": 1} if name == "cnnh" else {"num_samples": 8, "epochs_per_iteration": 1} if name == "adsh" else {}
    method = create_method(name, bits=K, n_class=C, num_train=n, **hp)
    assert method.name == name and method.family in ("symmetric", "asymmetric", "central")
    assert method.defaults.optimizer in ("rmsprop", "adam") and method.defaults.lr > 0
    method.prepare(y_train, g)
    method.on_epoch_start(0, 0)
    for value, grad in _run_steps(method, y_train, g, 2, K):
        assert torch.isfinite(value) and grad is not None and torch.isfinite(grad).all()
    method.on_epoch_end(0)  # ADSH: V update
    method.on_epoch_start(1, 2)
    save_file(method.state_tensors(), tmp_path / "state.safetensors")
    again = create_method(name, bits=K, n_class=C, num_train=n, **hp)
    again.load_state_tensors(load_file(tmp_path / "state.safetensors"))
    again.prepare(y_train, torch.Generator().manual_seed(99))  # a restored CNNH does not redo stage 1
    ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = _run_steps(method, y_train, ga, 2, K)
    b = _run_steps(again, y_train, gb, 2, K)
    for (va, _), (vb, _) in zip(a, b):
        assert va.item() == vb.item()
    # config round trip through JSON
    assert type(method.config).from_dict(json.loads(json.dumps(method.config.to_dict())), name) == method.config


def test_bad_names_and_hyper_parameters_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown method 'nope'; known: adsh, cnnh"):
        create_method("nope", bits=16, n_class=2, num_train=4)
    with pytest.raises(ConfigError, match="unknown hyper-parameter 'alhpa' for dsh; valid: alpha, margin_factor"):
        create_method("dsh", bits=16, n_class=2, num_train=4, alhpa=1.0)
    with pytest.raises(ConfigError, match="schedule must be one of epoch, iteration"):
        create_method("hashnet", bits=16, n_class=2, num_train=4, schedule="linear")
    with pytest.raises(ConfigError, match="gamma must be like 200.0"):
        create_method("adsh", bits=16, n_class=2, num_train=4, gamma="big")
    with pytest.raises(ConfigError, match="num_samples must be > 0"):
        create_method("adsh", bits=16, n_class=2, num_train=4, num_samples=0)
    with pytest.raises(ConfigError, match="bits must be a positive integer"):
        create_method("dpsh", bits=0, n_class=2, num_train=4)
    with pytest.raises(ConfigError, match="bank_rows 3 is smaller"):
        create_method("hybridhash", bits=16, n_class=2, num_train=4, bank_rows=3)
    method = create_method("dsh", bits=16, n_class=2, num_train=4)
    with pytest.raises(DataError, match="index holds rows outside"):
        method.loss(torch.zeros(2, 16), torch.zeros(2, 2), torch.tensor([0, 4]))
    with pytest.raises(DataError, match=r"h must be \(B, 16\)"):
        method.loss(torch.zeros(2, 8), torch.zeros(2, 2), torch.tensor([0, 1]))
    with pytest.raises(CheckpointMismatchError, match="shape"):
        create_method("dsh", bits=16, n_class=2, num_train=5).load_state_tensors(method.state_tensors())
    with pytest.raises(ConfigError, match="prepare"):
        create_method("cnnh", bits=16, n_class=2, num_train=4).loss(torch.zeros(1, 16), torch.zeros(1, 2), torch.tensor([0]))


def test_published_defaults_are_the_keyword_defaults():
    assert create_method("dsh", bits=64, n_class=10, num_train=5000).config.to_dict() == {
        "alpha": 0.1, "margin_factor": 2.0, "pairs": "bank"}  # the bank, as DeepHash-pytorch
    assert create_method("hashnet", bits=64, n_class=10, num_train=50).config.alpha == 0.1
    adsh = create_method("adsh", bits=64, n_class=10, num_train=5000)
    assert (adsh.config.gamma, adsh.config.num_samples, adsh.config.epochs_per_iteration, adsh.config.iterations) == (200.0, 2000, 3, 50)
    assert adsh.defaults.epochs == adsh.total_epochs == 150 and adsh.defaults.optimizer == "adam"
    assert create_method("adsh", bits=8, n_class=2, num_train=50, iterations=4).total_epochs == 12
    assert create_method("hybridhash", bits=64, n_class=10, num_train=50).defaults.lr == 2.5e-5
    assert create_method("cnnh", bits=8, n_class=2, num_train=5).defaults.optimizer == "adam"


# ---------------------------------------------------------------- hooks
def test_hashnet_beta_schedules():
    assert [continuation_beta(e, 0) for e in (0, 19, 20, 39, 40, 100)] == pytest.approx(
        [1.0, 1.0, math.sqrt(2), math.sqrt(2), math.sqrt(3), math.sqrt(6)])
    it = [continuation_beta(0, s, "iteration") for s in (0, 199, 200, 399, 400, 1000)]
    assert it == pytest.approx([1.0, 1.0, math.sqrt(2.0), math.sqrt(2.0), math.sqrt(3.0), math.sqrt(6.0)])
    method = create_method("hashnet", bits=8, n_class=2, num_train=4, schedule="iteration")
    method.on_epoch_start(3, 450)
    assert float(method.beta) == pytest.approx(math.sqrt(3.0))
    method.on_step(650)
    assert float(method.beta) == pytest.approx(math.sqrt(4.0))
    per_epoch = create_method("hashnet", bits=8, n_class=2, num_train=4)
    per_epoch.on_epoch_start(20, 10_000)
    per_epoch.on_step(10_000)  # ignored by the epoch schedule
    assert float(per_epoch.beta) == pytest.approx(math.sqrt(2.0))
    h = torch.full((1, 8), 0.5)
    assert torch.allclose(per_epoch.activate(h), torch.tanh(math.sqrt(2.0) * h))


def test_cnnh_stage_one_lowers_the_reconstruction_error():
    g = torch.Generator().manual_seed(3)
    n, K = 10, 8
    y = labels("multi", n, 3, g)
    S = 2 * (y @ y.t() > 0).double() - 1
    H, errors = cnnh_stage_one(S, K, sweeps=3, generator=torch.Generator().manual_seed(4))
    H0 = 2 * torch.rand(n, K, generator=torch.Generator().manual_seed(4), dtype=torch.float64) - 1
    start = (H0 @ H0.t() - K * S).pow(2).mean().item()
    end = (H @ H.t() - K * S).pow(2).mean().item()
    assert errors[0] == pytest.approx(start) and errors[-1] == pytest.approx(end)  # L was tracked exactly
    assert end < 0.5 * start
    assert all(b <= a for a, b in zip(errors, errors[1:]))  # no sweep raises it
    assert H.abs().max() <= 1 + 1e-12


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


@pytest.mark.parametrize("K", [16, 32, 64])
def test_csq_uses_hadamard_rows_when_they_exist(K):
    C = 2 * K if K == 16 else 10
    c = create_method("csq", bits=K, n_class=C, num_train=4).centers
    H = torch.ones(1, 1)
    while H.shape[0] < K:  # Sylvester's construction, written out
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)])
    assert torch.equal(c[: min(C, K)], H[: min(C, K)])
    top = c[: min(C, K)]
    assert set(c.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(top @ top.t(), K * torch.eye(len(top)))  # orthogonal rows: distance K/2
    if C > K:
        assert torch.equal(c[K:], -c[: C - K])


def test_csq_at_48_bits_draws_balanced_far_centers():
    method = create_method("csq", bits=48, n_class=10, num_train=4, seed=3)
    c = method.centers.tolist()
    assert all(row.count(-1.0) == 24 for row in c)
    dists = [sum(a != b for a, b in zip(c[i], c[j])) for i in range(10) for j in range(i + 1, 10)]
    assert min(dists) > 12 and method.min_center_distance == min(dists)
    assert method.mean_center_distance == pytest.approx(mean(dists))
    assert torch.equal(hash_centers(10, 48, seed=3), method.centers)  # reproducible from the seed
    assert not torch.equal(hash_centers(10, 48, seed=4), method.centers)


def test_gathered_rows_fill_the_bank_loss_stays_local():
    g = torch.Generator().manual_seed(2)
    n, K, C = 10, 8, 3
    h_all, y_all, idx_all = torch.randn(6, K, generator=g), labels("single", 6, C, g).float(), torch.randperm(n, generator=g)[:6]
    for name in ("dpsh", "dsh", "hybridhash"):
        m = create_method(name, bits=K, n_class=C, num_train=n)
        local = create_method(name, bits=K, n_class=C, num_train=n)
        got = m.loss(h_all[3:], y_all[3:], idx_all[3:], gathered=(h_all, y_all, idx_all))
        local.loss(h_all[:3], y_all[:3], idx_all[:3])  # the same bank, written batch by batch
        assert got.item() == pytest.approx(local.loss(h_all[3:], y_all[3:], idx_all[3:]).item(), rel=1e-6), name


# ---------------------------------------------------------------- learning on separable data
@pytest.mark.parametrize("name", ALL)
def test_a_few_steps_lower_each_loss(name):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n, D, K, C = 24, 12, 16, 3
    cls = torch.arange(n) % C
    X = 3 * torch.eye(C, D)[cls] + 0.3 * torch.randn(n, D, generator=g)
    Y = torch.eye(C)[cls]
    hp = {"sweeps": 2} if name == "cnnh" else {"num_samples": n, "epochs_per_iteration": 1} if name == "adsh" else {}
    method = create_method(name, bits=K, n_class=C, num_train=n, **hp)
    model = torch.nn.Linear(D, K)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    method.prepare(Y, g)
    rows = torch.arange(n)
    if name == "adsh":  # one outer iteration so V holds codes, then train against that fixed V
        rows = method.epoch_rows(0, g)
        method.loss(model(X[rows]), Y[rows], rows)
        method.on_epoch_end(0)
        rows = method.epoch_rows(1, g)

    def full_loss():
        return method.loss(model(X[rows]), Y[rows], rows)

    with torch.no_grad():
        before = full_loss().item()
    for _ in range(30):
        opt.zero_grad()
        full_loss().backward()
        opt.step()
    with torch.no_grad():
        after = full_loss().item()
    assert after < before, (before, after)


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


@pytest.mark.parametrize("name", ALL)
def test_half_precision_outputs_give_a_float32_loss(name):
    n, K, C = 6, 8, 2
    y = torch.eye(C)[torch.arange(n) % C]
    method = create_method(name, bits=K, n_class=C, num_train=n, **({"sweeps": 1} if name == "cnnh" else {}))
    method.prepare(y, torch.Generator().manual_seed(0))
    rows = method.epoch_rows(0, torch.Generator().manual_seed(0))
    idx = torch.arange(3) if rows is None else rows[:3]
    h = torch.randn(3, K, generator=torch.Generator().manual_seed(1))
    low = method.loss(h.half(), y[idx], idx)
    assert low.dtype == torch.float32 and torch.isfinite(low)


def test_divide_and_encode_maps_each_slice_to_one_unit():
    head = create_method("dnnh", bits=4, n_class=2, num_train=2, head="divide_encode").make_head(10)
    assert isinstance(head, DivideAndEncode) and head.sizes == [3, 3, 2, 2]
    assert create_method("dnnh", bits=4, n_class=2, num_train=2).make_head(10) is None
    x = torch.randn(2, 10, requires_grad=True)
    out = head(x)
    assert out.shape == (2, 4)
    out[:, 2].sum().backward()  # unit 2 sees features 6 and 7 only
    assert x.grad[:, [6, 7]].abs().sum() > 0 and x.grad[:, :6].abs().sum() == 0 and x.grad[:, 8:].abs().sum() == 0
    with pytest.raises(ConfigError, match="at least 4 features"):
        DivideAndEncode(3, 4)
