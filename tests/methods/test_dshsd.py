"""DSHSD: its loss, value and gradient (of the outputs and of the classifier), against a pair-by-pair
re-computation from docs/methods.md; the multi-label form decided by the labels; the classifier as a
trained parameter or, as DeepHash-pytorch, a fixed random one; through the trainer."""
from __future__ import annotations

import pytest
import torch

from hybridhash.methods import create_method

from . import owned_parameters
from .harness import MethodSuite, assert_matches_naive, labels, naive_autograd, sim


def naive_dshsd(h, W, y, alpha=0.05, multilabel=False):
    """h (B, K) and W (C, K) rows of 0-d leaves, y rows of floats."""
    B, K, C = len(h), len(h[0]), len(W)
    u = [[torch.tanh(x) for x in row] for row in h]
    pairs = 0
    for i in range(B):
        for j in range(B):
            d = sum((a - b) ** 2 for a, b in zip(u[i], u[j]))
            s = sim(y[i], y[j])
            pairs = pairs + s / 2 * d + (1 - s) / 2 * torch.clamp(2 * K - d, min=0)
    classes = 0
    for i in range(B):
        o = [sum(u[i][k] * W[c][k] for k in range(K)) for c in range(C)]
        if multilabel:
            classes = classes + sum(torch.log1p(torch.exp(o[c])) - y[i][c] * o[c] for c in range(C))
        else:
            log_total = torch.log(sum(torch.exp(v) for v in o))
            classes = classes - sum(y[i][c] * (o[c] - log_total) for c in range(C))
    return classes / B + alpha * pairs / B ** 2


class TestDSHSD(MethodSuite):
    name = "dshsd"


@pytest.mark.parametrize("train_classifier", [True, False])
@pytest.mark.parametrize("B,K,kind,scale", [(5, 8, "single", 1.0), (6, 16, "multi", 1.5), (1, 8, "single", 1.0),
                                            (2, 8, "multi", 1.0), (4, 8, "same", 1.0), (3, 8, "single", 30.0)])
def test_dshsd_value_and_gradients_match_the_pairs(B, K, kind, scale, train_classifier):
    """30: saturated tanh; "same": every pair similar (no margin term)."""
    g = torch.Generator().manual_seed(B * 13 + K)
    C = 4
    h = scale * torch.randn(B, K, generator=g, dtype=torch.float64)
    y = torch.eye(C, dtype=torch.float64)[[3] * B] if kind == "same" else labels(kind, B, C, g)
    alpha = 0.05 if B != 6 else 0.6
    method = create_method("dshsd", bits=K, n_class=C, num_train=B, alpha=alpha, seed=B,
                           train_classifier=train_classifier)
    multilabel = bool((y.sum(1) > 1).any())
    method.prepare(y.float(), torch.Generator().manual_seed(0))
    h.requires_grad_(True)
    value = method.loss(h, y, torch.arange(B))
    value.backward()
    want, grads = naive_autograd(lambda hr, Wr: naive_dshsd(hr, Wr, y.tolist(), alpha, multilabel),
                                 h.detach(), method.W.detach())
    assert_matches_naive(value.item(), [h.grad], want, grads[:1])
    if train_classifier:
        assert_matches_naive(value.item(), [method.W.grad], want, grads[1:])
    else:  # a buffer: no gradient, not among the parameters
        assert not method.W.requires_grad and list(method.parameters()) == []


def test_a_multi_label_training_set_takes_the_logistic_loss_for_every_row():
    g = torch.Generator().manual_seed(5)
    C, K = 4, 8
    train_labels = torch.cat([torch.eye(C), torch.tensor([[1.0, 1.0, 0.0, 0.0]])])  # one row with two labels
    h, y = torch.randn(3, K, generator=g, dtype=torch.float64), torch.eye(C, dtype=torch.float64)[:3]
    plain = create_method("dshsd", bits=K, n_class=C, num_train=5)
    plain.prepare(train_labels[:C], g)
    multi = create_method("dshsd", bits=K, n_class=C, num_train=5)
    multi.prepare(train_labels, g)
    assert not bool(plain.multilabel) and bool(multi.multilabel)
    W = plain.W.detach().double()
    for method, form in ((plain, False), (multi, True)):
        want, _ = naive_autograd(lambda hr: naive_dshsd(hr, W.tolist(), y.tolist(), 0.05, form), h)
        assert method.loss(h, y, torch.arange(3)).item() == pytest.approx(want, rel=1e-6)


def test_the_classifier_is_seeded_saved_and_noted_when_fixed():
    a, b = (create_method("dshsd", bits=16, n_class=3, num_train=4, seed=s) for s in (7, 7))
    fixed = create_method("dshsd", bits=16, n_class=3, num_train=4, seed=7, train_classifier=False)
    assert torch.equal(a.W, b.W) and torch.equal(a.W.detach(), fixed.W)
    assert set(a.state_tensors()) == set(fixed.state_tensors()) == {"W", "multilabel"}
    b.load_state_tensors({"W": torch.ones(3, 16), "multilabel": torch.tensor(True)})
    assert torch.equal(b.W.detach(), torch.ones(3, 16)) and bool(b.multilabel) and b.W.requires_grad
    note = fixed.table_note(fixed.config, {}, {}, 4, "")
    assert "random initial weights" in note and a.table_note(a.config, {}, {}, 4, "") is None


def test_dshsd_published_settings():
    m = create_method("dshsd", bits=48, n_class=10, num_train=50)
    d = m.defaults
    assert (m.config.alpha, m.config.train_classifier, m.family, m.activation) == (0.05, True, "symmetric", "tanh")
    assert (d.optimizer, d.lr, d.weight_decay, d.batch_size, d.epochs) == ("adam", 1e-5, 0.0, 64, 250)


def test_the_classifier_trains_saves_and_resumes_through_the_trainer(tmp_path):
    # the fixed form's W is a buffer outside method.parameters(), so no optimizer sees it (checked above)
    owned_parameters.classifier_trains_saves_and_resumes(tmp_path, "dshsd")
