"""What every method's test file shares: naive references in Python floats, label generators, and
``MethodSuite``, the checks every method must pass (edge cases, a few training steps, state round
trip, half precision), run by subclassing it as ``Test<Method>`` with ``name`` set in
``tests/methods/test_<name>.py``. Each method is fed what it declares it trains on (``feed``): the
labels of the batch, target features, or a second view's outputs; a kind the harness does not know
fails the suite."""
from __future__ import annotations

import inspect
import json
import math
from typing import Any, Dict

import pytest
import torch
from safetensors.torch import load_file, save_file

from hybridhash.errors import DataError
from hybridhash.methods import TRAINS_ON, UnsupervisedMethod, create_method, method_class
from hybridhash.methods.base import FAMILIES


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


def softsign(x):
    return x / (1 + abs(x))


def cosine(a, b):
    """The soft similarity of IDHN and ISDH: a . b / (|a| |b| + 1e-5)."""
    return dot(a, b) / (math.sqrt(dot(a, a)) * math.sqrt(dot(b, b)) + 1e-5)


def numeric_gradient(f, h, eps=1e-6):
    """d f / d h of a function of a list of rows h (Python floats), by central differences."""
    grad = []
    for i, row in enumerate(h):
        grad.append([])
        for k in range(len(row)):
            up = [list(r) for r in h]
            down = [list(r) for r in h]
            up[i][k] += eps
            down[i][k] -= eps
            grad[i].append((f(up) - f(down)) / (2 * eps))
    return grad


def naive_weighted_likelihood(u, U, y, Y, alpha):
    """HybridHash's and HashNet's weighted pairwise likelihood, pair by pair (docs/methods.md)."""
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


def naive_autograd(naive, *tensors):
    """(value, grads) of ``naive(*rows)``: each tensor (R, K) becomes a list of R lists of 0-d float64
    leaves, which ``naive`` combines entry by entry into a 0-d tensor; grads[t] (R, K) is d value /
    d entry by autograd through those loops (0 where an entry does not reach the value)."""
    rows = [[[torch.tensor(float(x), dtype=torch.float64, requires_grad=True) for x in row] for row in t.tolist()]
            for t in tensors]
    value = naive(*rows)
    value.backward()
    grads = [torch.tensor([[0.0 if x.grad is None else x.grad.item() for x in row] for row in r], dtype=torch.float64)
             for r in rows]
    return value.item(), grads


def assert_matches_naive(value, grads, naive_value, naive_grads, rel=1e-5, abs_=1e-7):
    """A loss and its gradients against :func:`naive_autograd`'s, within ``rel`` (and ``abs_``)."""
    assert value == pytest.approx(naive_value, rel=rel, abs=abs_)
    for got, want in zip(grads, naive_grads):
        assert torch.allclose(got.double(), want, rtol=rel, atol=abs_), (got, want)


# ---------------------------------------------------------------- data
def labels(kind, B, C, g):
    if kind == "single":
        return torch.eye(C, dtype=torch.float64)[torch.randint(0, C, (B,), generator=g)]
    y = (torch.rand(B, C, generator=g) < 0.4).double()
    y[torch.arange(B), torch.randint(0, C, (B,), generator=g)] = 1.0  # every item has a label
    return y


def L(t):
    return t.double().tolist()


EDGE = {
    "no_dissimilar_pair": lambda g, B, C: torch.eye(C)[[0] * B],
    "no_similar_pair": lambda g, B, C: torch.zeros(B, C),  # unlabelled items share no label, not even with themselves
    "distinct_labels": lambda g, B, C: torch.eye(C)[:B],
    "multi_label": lambda g, B, C: labels("multi", B, C, g).float(),
}


# ---------------------------------------------------------------- feeding a method what it trains on
TARGET_DIM = 12  # width of the target features the harness draws


def feed(method, h, y, index, g):
    """The arguments of ``method.loss`` for a batch of raw outputs h (B, K), by what it trains on:
    (h, y, index), and penultimate features (B, TARGET_DIM) drawn from g for a method that
    ``takes_features``, or the other network's outputs (B, K) drawn from g for a two-network method; (h, x) with target features x (B, TARGET_DIM) drawn from g; or (h, h2) with h2
    a second view's outputs, h plus noise drawn from g (so both depend on h)."""
    if method.trains_on == "labels":
        if method.takes_features:
            return h, y, index, torch.randn(h.shape[0], TARGET_DIM, generator=g).to(h.dtype)
        if method.streams > 1:
            return h, y, index, torch.randn(tuple(h.shape), generator=g).to(h.dtype)
        return h, y, index
    noise_shape = (h.shape[0], TARGET_DIM) if method.trains_on == "targets" else tuple(h.shape)
    noise = torch.randn(noise_shape, generator=g).to(h.dtype)
    if method.trains_on == "targets":
        return h, noise
    if method.trains_on == "views":
        return h, h + 0.3 * noise
    raise AssertionError(f"{method.name}: the harness does not feed {method.trains_on!r}; teach feed() it")


def training_labels(method, y):
    """What ``prepare`` gets: the training labels, or None for a method that never reads them."""
    return y if method.trains_on == "labels" else None


def batch_rows(method) -> int:
    """Rows of a harness batch: 3, or 4 for a method that pairs the halves of its batch."""
    return 4 if method.even_batch else 3


def _run_steps(method, y_train, g, steps, K):
    values = []
    B = batch_rows(method)
    for s in range(steps):
        rows = method.epoch_rows(0, g)
        rows = torch.arange(len(y_train)) if rows is None else rows
        idx = rows[(torch.arange(B) + B * s) % len(rows)]
        h = torch.randn(B, K, generator=g, requires_grad=True)
        value = method.loss(*feed(method, h, y_train[idx], idx, g))
        value.backward()
        values.append((value, h.grad))
    return values


class MethodSuite:
    """The checks of every method; a subclass sets ``name`` and may override ``params`` (small
    hyper-parameters for a test) and ``warm_up`` (what precedes a few training steps)."""

    name: str = ""

    def params(self, test: str, n: int) -> Dict[str, Any]:
        """Hyper-parameters for test ``test`` ("edge", "resume", "steps", "half") on ``n`` images."""
        return {}

    def warm_up(self, method, model, X, Y, g) -> torch.Tensor:
        """The rows a few training steps go over (after ``prepare``)."""
        return torch.arange(len(X))

    def test_the_loss_takes_what_the_method_trains_on(self):
        cls = method_class(self.name)
        assert cls.trains_on in TRAINS_ON and cls.family in FAMILIES
        params = list(inspect.signature(cls.loss).parameters)
        if cls.trains_on == "labels":
            assert params[:4] == ["self", "h", "y", "index"] and not issubclass(cls, UnsupervisedMethod)
            assert cls.views is None
            assert ("features" in params) == cls.takes_features  # the trainer passes them as features=
            assert ("other" in params and "stream" in params) == (cls.streams > 1)  # and a second network's so
            return
        # no labels and no training-set rows reach the loss: it has no argument for them
        assert issubclass(cls, UnsupervisedMethod) and cls.family == "unsupervised"
        assert len(params) == 3 and not {"y", "index", "labels", "gathered"} & set(params), params
        assert (cls.views is not None) == (cls.trains_on == "views")

    @pytest.mark.parametrize("case", sorted(EDGE) + ["single_item"])
    def test_edge_cases_are_finite_with_finite_gradients(self, case):
        g = torch.Generator().manual_seed(1)
        n, K, C = 8, 16, 5
        B = 1 if case == "single_item" else 4
        y = EDGE["multi_label" if case == "single_item" else case](g, B, C)
        y_train = torch.cat([y, torch.eye(C)[torch.randint(0, C, (n - B,), generator=g)]])
        method = create_method(self.name, bits=K, n_class=C, num_train=n, **self.params("edge", n))
        method.prepare(training_labels(method, y_train), g)
        rows = method.epoch_rows(0, g)
        index = torch.arange(B) if rows is None else rows[:B]
        if B % 2 and method.even_batch:  # a batch whose halves cannot be paired is refused in one line
            with pytest.raises(DataError, match="even number of rows"):
                method.loss(*feed(method, torch.randn(B, K, generator=g), y_train[index], index, g))
            return
        for scale in (0.0, 1.0, 30.0):  # 0: every output tied (and sign 0); 30: saturated tanh / sigmoid
            h = (scale * torch.randn(B, K, generator=g)).requires_grad_(True)
            value = method.loss(*feed(method, h, y_train[index], index, g))
            value.backward()
            assert torch.isfinite(value), (case, scale)
            assert torch.isfinite(h.grad).all(), (case, scale)

    def test_trains_and_resumes_exactly(self, tmp_path):
        n, K, C = 12, 16, 4
        g = torch.Generator().manual_seed(0)
        y_train = torch.eye(C)[torch.randint(0, C, (n,), generator=g)]
        hp = self.params("resume", n)
        method = create_method(self.name, bits=K, n_class=C, num_train=n, **hp)
        assert method.name == self.name and method.family in FAMILIES
        assert method.defaults.optimizer in ("rmsprop", "adam", "sgd") and method.defaults.lr > 0
        method.prepare(training_labels(method, y_train), g)
        method.on_epoch_start(0, 0)
        for value, grad in _run_steps(method, y_train, g, 2, K):
            assert torch.isfinite(value) and grad is not None and torch.isfinite(grad).all()
        method.on_epoch_end(0)  # ADSH: V update
        method.on_epoch_start(1, 2)
        save_file(method.state_tensors(), tmp_path / "state.safetensors")
        again = create_method(self.name, bits=K, n_class=C, num_train=n, **hp)
        again.load_state_tensors(load_file(tmp_path / "state.safetensors"))
        again.prepare(training_labels(again, y_train), torch.Generator().manual_seed(99))  # a restored CNNH
        # does not redo stage 1
        ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        a = _run_steps(method, y_train, ga, 2, K)
        b = _run_steps(again, y_train, gb, 2, K)
        for (va, _), (vb, _) in zip(a, b):
            assert va.item() == vb.item()
        # config round trip through JSON
        assert type(method.config).from_dict(json.loads(json.dumps(method.config.to_dict())), self.name) \
            == method.config

    def test_a_few_steps_lower_the_loss(self):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        n, D, K, C = 24, 12, 16, 3
        cls = torch.arange(n) % C
        X = 3 * torch.eye(C, D)[cls] + 0.3 * torch.randn(n, D, generator=g)
        Y = torch.eye(C)[cls]
        method = create_method(self.name, bits=K, n_class=C, num_train=n, **self.params("steps", n))
        model = torch.nn.Linear(D, K)
        other = torch.nn.Linear(D, K).requires_grad_(False)  # a two-network method's other network, held
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        method.prepare(training_labels(method, Y), g)
        rows = self.warm_up(method, model, X, Y, g)
        # a second view of each input (fixed, so that the loss before and after compares like with like)
        X2 = X + 0.3 * torch.randn(X.shape, generator=g)

        def full_loss():
            if method.trains_on == "targets":  # the inputs as their own targets, as pixel targets are
                return method.loss(model(X[rows]), X[rows])
            if method.trains_on == "views":
                return method.loss(model(X[rows]), model(X2[rows]))
            # the inputs of the linear model are its penultimate features
            extra = [X[rows]] if method.takes_features else [other(X[rows])] if method.streams > 1 else []
            return method.loss(model(X[rows]), Y[rows], rows, *extra)

        with torch.no_grad():
            before = full_loss().item()
        for _ in range(30):
            opt.zero_grad()
            full_loss().backward()
            opt.step()
        with torch.no_grad():
            after = full_loss().item()
        assert after < before, (before, after)

    def test_half_precision_outputs_give_a_float32_loss(self):
        n, K, C = 6, 8, 2
        y = torch.eye(C)[torch.arange(n) % C]
        method = create_method(self.name, bits=K, n_class=C, num_train=n, **self.params("half", n))
        method.prepare(training_labels(method, y), torch.Generator().manual_seed(0))
        rows = method.epoch_rows(0, torch.Generator().manual_seed(0))
        B = batch_rows(method)
        idx = torch.arange(B) if rows is None else rows[:B]
        h = torch.randn(B, K, generator=torch.Generator().manual_seed(1))
        low = method.loss(*feed(method, h.half(), y[idx], idx, torch.Generator().manual_seed(2)))
        assert low.dtype == torch.float32 and torch.isfinite(low)
