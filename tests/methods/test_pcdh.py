"""pcdh: the loss, value and gradient (network outputs, features, discrete layer, classifier), against a
pair-by-pair re-computation from the formulas of docs/roster.md (pcdh), the straight-through fix against
the reference's blocked threshold, the class loss decided by the labels, and a run through the trainer
that is given the model's penultimate features."""
from __future__ import annotations

import json
import math

import pytest
import torch

from hybridhash.app.train import TrainConfig, train
from hybridhash.app.train.feeds import FeatureTap
from hybridhash.app.train.state import read_training_state
from hybridhash.data import load_protocol
from hybridhash.errors import DataError
from hybridhash.methods import create_method

from .harness import MethodSuite, labels, sim

# two spinning OpenMP threads on a shared 2-core machine make these small steps many times slower
pytestmark = pytest.mark.usefixtures("one_thread")


class TestPCDH(MethodSuite):
    name = "pcdh"


def _contrastive(rows, y, margin):
    """mean over all (i, j) of s/2 d + (1 - s)/2 max(margin - d, 0)^2, d the squared distance."""
    B = len(rows)
    total = 0
    for i in range(B):
        for j in range(B):
            d = sum((a - b) ** 2 for a, b in zip(rows[i], rows[j]))
            s = sim(y[i], y[j])
            total = total + s / 2 * d + (1 - s) / 2 * torch.clamp(margin - d, min=0) ** 2
    return total / (B * B)


def naive_pcdh(h, f, y, Wd, bd, Wc, alpha, beta, straight_through, multi):
    """(loss, dL/dh, dL/df, dL/dWd, dL/dbd, dL/dWc), entry by entry. The discrete codes b are a constant
    of the autograd graph (b_k = +1 where z_k >= 0, z = Wd u + bd); with the straight-through fix dL/dz
    = dL/db, carried back to u, Wd and bd by the chain rule written out."""
    B, K = h.shape
    C = Wc.shape[0]
    h, f, Wc = (t.detach().clone().requires_grad_(True) for t in (h, f, Wc))
    yl = y.tolist()
    u = [[torch.tanh(h[i, k]) for k in range(K)] for i in range(B)]
    uf = [[float(v.detach()) for v in row] for row in u]
    z = [[sum(float(Wd[k, l]) * uf[i][l] for l in range(K)) + float(bd[k]) for k in range(K)] for i in range(B)]
    b = torch.tensor([[1.0 if v >= 0 else -1.0 for v in row] for row in z], dtype=h.dtype, requires_grad=True)
    class_total = 0
    for i in range(B):
        o = [sum(Wc[c, k] * b[i, k] for k in range(K)) for c in range(C)]
        if multi:
            class_total = class_total + sum(torch.log1p(torch.exp(-o[c].abs())) + torch.clamp(o[c], min=0)
                                            - yl[i][c] * o[c] for c in range(C))
        else:
            lse = torch.log(sum(torch.exp(oc) for oc in o))
            class_total = class_total - sum(yl[i][c] * (o[c] - lse) for c in range(C))
    rows_f = [[f[i, k] for k in range(f.shape[1])] for i in range(B)]
    loss = _contrastive(u, yl, 2 * K) + alpha * _contrastive(rows_f, yl, 2 * K) + beta * class_total / B
    gh, gf, gWc, gb = torch.autograd.grad(loss, (h, f, Wc, b))
    gWd, gbd = torch.zeros_like(Wd), torch.zeros_like(bd)
    if straight_through:
        for i in range(B):
            for k in range(K):
                gbd[k] += gb[i, k]
                for l in range(K):
                    gWd[k, l] += gb[i, k] * uf[i][l]
                    gh[i, l] += gb[i, k] * float(Wd[k, l]) * (1 - uf[i][l] ** 2)
    return loss.detach(), gh, gf, gWd, gbd, gWc


def _ours(method, h, f, y):
    h = h.clone().requires_grad_(True)
    f = f.clone().requires_grad_(True)
    value = method.loss(h, y, torch.arange(len(h)), features=f)
    params = (method.discrete.weight, method.discrete.bias, method.classifier.weight)
    grads = torch.autograd.grad(value, (h, f, *params), allow_unused=True)
    return (value.detach(), *[torch.zeros_like(p) if g is None else g for g, p in zip(grads, (h, f, *params))])


@pytest.mark.parametrize("straight_through", [True, False])
@pytest.mark.parametrize("kind,B,K,C,scale", [("single", 5, 8, 3, 1.0), ("multi", 4, 6, 4, 2.0),
                                              ("single", 2, 4, 2, 0.3), ("multi", 1, 5, 3, 1.0)])
def test_pcdh_value_and_gradients_match_the_formula(straight_through, kind, B, K, C, scale):
    g = torch.Generator().manual_seed(B * 31 + K)
    y = labels(kind, B, C, g)
    if kind == "multi":
        y[0, :2] = 1.0  # a multi-hot row: the multi-label class loss
    h = scale * torch.randn(B, K, generator=g, dtype=torch.float64)
    f = 2 * torch.randn(B, 7, generator=g, dtype=torch.float64)  # distances on both sides of the margin 2K
    method = create_method("pcdh", bits=K, n_class=C, num_train=B, alpha=0.7, beta=1.3,
                           straight_through=straight_through).double()
    method.prepare(y)
    want = naive_pcdh(h, f, y, method.discrete.weight.detach(), method.discrete.bias.detach(),
                      method.classifier.weight.detach(), 0.7, 1.3, straight_through, kind == "multi")
    got = _ours(method, h, f, y)
    for name, a, b in zip(("value", "h", "features", "discrete.weight", "discrete.bias", "classifier"), got, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9), name


def test_without_the_fix_the_class_loss_reaches_only_the_classifier():
    """The reference's threshold: the network's and the discrete layer's gradients are those of the
    contrastive terms alone; the fix adds the class loss's."""
    g = torch.Generator().manual_seed(3)
    y = labels("single", 6, 3, g)
    h, f = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    blocked = create_method("pcdh", bits=8, n_class=3, num_train=6, straight_through=False).double()
    torch.manual_seed(0)
    no_class = create_method("pcdh", bits=8, n_class=3, num_train=6, beta=0.0).double()
    torch.manual_seed(0)
    fixed = create_method("pcdh", bits=8, n_class=3, num_train=6).double()
    a, b, c = (_ours(m, h, f, y) for m in (blocked, no_class, fixed))
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])  # h, features
    assert not a[3].any() and not a[4].any() and a[5].abs().sum() > 0  # discrete layer untouched; classifier trains
    assert not torch.allclose(c[1], b[1]) and c[3].abs().sum() > 0
    assert torch.allclose(a[0], c[0])  # the same value: only the gradient differs


def test_the_labels_decide_the_class_loss_and_the_decision_is_saved():
    g = torch.Generator().manual_seed(4)
    single, multi = labels("single", 6, 4, g), labels("multi", 6, 4, g)
    multi[0, :2] = 1.0
    h, f = torch.randn(3, 8, generator=g), torch.randn(3, 5, generator=g)
    m = create_method("pcdh", bits=8, n_class=4, num_train=6)
    assert int(m.multi_label) == -1  # not prepared: each batch decides
    by_batch = m.loss(h, single[:3], torch.arange(3), features=f)
    m.prepare(multi)
    assert int(m.multi_label) == 1
    as_multi = m.loss(h, single[:3], torch.arange(3), features=f)  # one-hot rows of multi-label data: BCE
    assert not torch.allclose(by_batch, as_multi)
    again = create_method("pcdh", bits=8, n_class=4, num_train=6)
    again.load_state_tensors(m.state_tensors())
    assert int(again.multi_label) == 1 and torch.equal(again.classifier.weight, m.classifier.weight)
    assert torch.equal(again.loss(h, single[:3], torch.arange(3), features=f), as_multi)
    m.prepare(single)
    assert int(m.multi_label) == 0


def test_missing_or_misshapen_features_are_a_one_line_error():
    m = create_method("pcdh", bits=8, n_class=2, num_train=4)
    h, y = torch.randn(3, 8), torch.eye(2)[[0, 1, 0]]
    for bad in (None, torch.randn(2, 5), torch.randn(3)):
        with pytest.raises(DataError, match="features must be"):
            m.loss(h, y, torch.arange(3), features=bad)


def test_saturated_outputs_and_wide_features_stay_finite():
    m = create_method("pcdh", bits=64, n_class=3, num_train=8)
    h = (50 * torch.randn(8, 64)).requires_grad_(True)
    f = (1e3 * torch.randn(8, 512)).requires_grad_(True)
    value = m.loss(h, torch.eye(3)[torch.arange(8) % 3], torch.arange(8), features=f)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(h.grad).all() and torch.isfinite(f.grad).all()


def test_the_tap_gives_the_input_of_the_hash_layer():
    """hybridhash_cpu's hash layer is a 1x1 convolution on a map, averaged: h = W mean(map) + b."""
    from hybridhash.models import create_model

    torch.manual_seed(0)
    model = create_model("hybridhash_cpu", bits=16, depths=[1, 1, 1]).eval()
    tap = FeatureTap(model)
    x = torch.randn(2, 3, 32, 32)
    h = model(x, activate=False)
    f = tap.take()["features"]
    conv = model.hash_head.to_bits
    assert f.shape == (2, conv.in_channels) and tap.value is None
    assert torch.allclose(h, f @ conv.weight.flatten(1).t() + conv.bias, atol=1e-5)


def test_trains_through_the_trainer_and_resumes_its_layers_exactly(tmp_path):
    p = load_protocol("digits", sizes=dict(query=2, train=8), val_fraction=0.25)

    def config(out, **kw):
        return TrainConfig(model="hybridhash_cpu", model_overrides={"depths": [1, 1, 1]}, bits=(16,), out=str(out),
                           progress=False, threads=1, parallel=1, eval_every=1, method="pcdh", epochs=2, **kw)

    seen = []
    train(config(tmp_path / "straight"), protocol=p, callbacks=[
        lambda event, trainer, **info: seen.append(trainer.method.classifier.weight.detach().clone())])
    train(config(tmp_path / "cut", stop_after_epochs=1), protocol=p)
    train(config(tmp_path / "cut", resume=True), protocol=p)
    a, _ = read_training_state(tmp_path / "straight/bits16/last/training_state.safetensors")
    b, _ = read_training_state(tmp_path / "cut/bits16/last/training_state.safetensors")
    for key in ("loss.discrete.weight", "loss.discrete.bias", "loss.classifier.weight", "loss.multi_label"):
        assert torch.equal(a[key], b[key]), key
    assert int(a["loss.multi_label"]) == 0  # digits: one label per image
    # the optimizer steps the method's layers: the classifier moves from step to step
    assert len(seen) > 2 and not torch.equal(seen[0], seen[-1])
    assert torch.equal(seen[-1], a["loss.classifier.weight"])
    log = [json.loads(x) for x in (tmp_path / "straight/bits16/log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log)
    doc = json.loads((tmp_path / "straight/bits16/method.json").read_text())
    assert doc["method"] == "pcdh" and doc["config"]["straight_through"] is True
