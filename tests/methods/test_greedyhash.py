"""GreedyHash (supervised): its loss, value and gradient (of the outputs and of the classifier), against a
row-by-row re-computation from docs/methods.md, both multi-label forms, and the classifier through the
trainer."""
from __future__ import annotations

import math

import pytest
import torch

from hybridhash.methods import create_method

from . import owned_parameters
from .harness import MethodSuite, assert_matches_naive, labels, naive_autograd, sign


def naive_greedyhash(h, W, y, alpha=0.1, multilabel="soft"):
    """h (B, K) and W (C, K) rows of 0-d leaves, y rows of floats. The sign passes its gradient
    straight through: b = h + (sign(h) - h) held constant."""
    B, K, C = len(h), len(h[0]), len(W)
    ce = 0
    for i in range(B):
        b = [x + (sign(x.item()) - x.item()) for x in h[i]]
        logits = [sum(b[k] * W[c][k] for k in range(K)) for c in range(C)]
        log_total = torch.log(sum(torch.exp(o) for o in logits))
        if multilabel == "argmax":
            first = max(range(C), key=lambda c: (y[i][c], -c))  # the first largest entry
            target = [1.0 if c == first else 0.0 for c in range(C)]
        else:
            n = sum(y[i])
            target = [v / n if n else 0.0 for v in y[i]]
        ce = ce - sum(target[c] * (logits[c] - log_total) for c in range(C))
    cubic = sum(abs(abs(x) - 1) ** 3 for row in h for x in row)
    return ce / B + alpha * cubic / (B * K)


class TestGreedyHash(MethodSuite):
    name = "greedyhash"


@pytest.mark.parametrize("multilabel", ["soft", "argmax"])
@pytest.mark.parametrize("B,K,kind,scale", [(5, 8, "single", 1.0), (6, 16, "multi", 1.5), (1, 8, "multi", 1.0),
                                            (2, 8, "single", 1.0), (4, 8, "none", 1.0), (3, 8, "multi", 30.0)])
def test_greedyhash_value_and_gradients_match_the_rows(B, K, kind, scale, multilabel):
    """"none": rows without labels (soft: they add nothing; argmax: class 0); 30: saturated outputs."""
    g = torch.Generator().manual_seed(B * 11 + K)
    C = 4
    h = scale * torch.randn(B, K, generator=g, dtype=torch.float64)
    y = torch.zeros(B, C, dtype=torch.float64) if kind == "none" else labels(kind, B, C, g)
    alpha = 0.1 if B != 6 else 0.8
    method = create_method("greedyhash", bits=K, n_class=C, num_train=B, alpha=alpha, multilabel=multilabel, seed=B)
    h.requires_grad_(True)
    value = method.loss(h, y, torch.arange(B))
    value.backward()
    want, grads = naive_autograd(lambda hr, Wr: naive_greedyhash(hr, Wr, y.tolist(), alpha, multilabel),
                                 h.detach(), method.W.detach())
    assert_matches_naive(value.item(), [h.grad, method.W.grad], want, grads)


def test_single_label_rows_give_the_same_loss_in_both_forms():
    g = torch.Generator().manual_seed(3)
    h, y = torch.randn(5, 8, generator=g), labels("single", 5, 4, g).float()
    soft, argmax = (create_method("greedyhash", bits=8, n_class=4, num_train=5, multilabel=m) for m in ("soft", "argmax"))
    assert soft.loss(h, y, torch.arange(5)).item() == pytest.approx(argmax.loss(h, y, torch.arange(5)).item(), rel=1e-6)


def test_the_classifier_is_drawn_from_the_seed_like_a_default_linear_layer():
    a, b, c = (create_method("greedyhash", bits=64, n_class=10, num_train=4, seed=s) for s in (1, 1, 2))
    assert isinstance(a.W, torch.nn.Parameter) and a.W.shape == (10, 64)
    assert torch.equal(a.W, b.W) and not torch.equal(a.W, c.W)
    assert float(a.W.detach().abs().max()) <= 1 / math.sqrt(64) and list(a.parameters()) == [a.W]
    assert set(a.state_tensors()) == {"W"}


def test_greedyhash_published_settings():
    m = create_method("greedyhash", bits=48, n_class=10, num_train=50)
    d = m.defaults
    assert (m.config.alpha, m.config.multilabel, m.family, m.uses_seed) == (0.1, "soft", "classification", True)
    assert (d.optimizer, d.lr, d.weight_decay, d.momentum, d.batch_size, d.epochs, d.lr_step_epochs) == (
        "sgd", 1e-3, 5e-4, 0.9, 64, 200, 30)


def test_the_classifier_trains_saves_and_resumes_through_the_trainer(tmp_path):
    owned_parameters.classifier_trains_saves_and_resumes(tmp_path, "greedyhash")
