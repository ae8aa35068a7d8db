"""cibhash: the loss, value and gradient, against a row-by-row re-computation from docs/methods.md
(cibhash); the stochastic form's seeded thresholds; the two-layer head; the declared views."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hybridhash.errors import DataError
from hybridhash.methods import create_method

from .harness import MethodSuite
from .unsup_naive import EPS, assert_close, naive_cos


class TestCIBHash(MethodSuite):
    name = "cibhash"

    def params(self, test, n):
        # the resumed run draws the stochastic thresholds it would have drawn uninterrupted
        return {"resume": {"stochastic": True, "seed": 5}}.get(test, {})


def naive_nt_xent(Z, B, tau):
    """Z (2B, K) rows: the mean over rows a of -S_a,pos + log sum_{b != a} exp S_ab, S = cos / tau."""
    N = 2 * B
    rows = [[Z[a, k] for k in range(Z.shape[1])] for a in range(N)]
    total = 0
    for a in range(N):
        pos = a + B if a < B else a - B
        S = [naive_cos(rows[a], rows[b]) / tau for b in range(N)]
        total = total - S[pos] + torch.log(sum(torch.exp(S[b]) for b in range(N) if b != a))
    return total / N


def naive_kl(p, q):
    """mean over rows of the sum over bits of the Bernoulli KL of p against the constant q."""
    rows = []
    for i in range(p.shape[0]):
        row = 0
        for k in range(p.shape[1]):
            pk, qk = p[i, k], float(q[i, k])
            row = row + pk * (torch.log(pk + EPS) - math.log(qk + EPS)) \
                + (1 - pk) * (torch.log(1 - pk + EPS) - math.log(1 - qk + EPS))
        rows.append(row)
    return sum(rows) / len(rows)


def naive_cibhash(h1, h2, tau, w, u1=None, u2=None):
    """(loss, dL/dh1, dL/dh2) as written: z = sign(p - t) entry by entry; dL/dz from the NT-Xent of
    the 2B codes and dL/dp from the symmetric KL (each direction with its second argument constant),
    both by autograd of the formulas; dL/dh = (dL/dz + dL/dp) sigma'(h), the sign passing its
    gradient straight through."""
    B, K = h1.shape
    p = [torch.sigmoid(h.detach()) for h in (h1, h2)]
    t = [u1 if u1 is not None else torch.full_like(h1, 0.5), u2 if u2 is not None else torch.full_like(h1, 0.5)]
    z = torch.tensor([[(v > 0) - (v < 0) for v in row] for pv, tv in zip(p, t) for row in (pv - tv).tolist()],
                     dtype=h1.dtype, requires_grad=True)  # (2B, K)
    contrast = naive_nt_xent(z, B, tau)
    (grad_z,) = torch.autograd.grad(contrast, z)
    leaves = [pv.clone().requires_grad_(True) for pv in p]
    kl = (naive_kl(leaves[0], p[1]) + naive_kl(leaves[1], p[0])) / 2
    grad_p = torch.autograd.grad(kl, leaves)
    grads = [(grad_z[i * B:(i + 1) * B] + w * grad_p[i]) * p[i] * (1 - p[i]) for i in range(2)]
    return (contrast + w * kl).detach(), grads[0], grads[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,K,tau,w", [(3, 8, 0.3, 0.001), (5, 16, 0.3, 0.001), (4, 8, 0.5, 0.2)])
def test_cibhash_value_and_gradient_match_the_formula(dtype, B, K, tau, w):
    g = torch.Generator().manual_seed(B * 13 + K)
    h1 = (2 * torch.randn(B, K, generator=g, dtype=torch.float64)).to(dtype)
    h2 = (h1.double() + torch.randn(B, K, generator=g, dtype=torch.float64)).to(dtype)
    h1.requires_grad_(True)
    h2.requires_grad_(True)
    method = create_method("cibhash", bits=K, n_class=1, num_train=1, temperature=tau, weight=w)
    value = method.loss(h1, h2)
    grad1, grad2 = torch.autograd.grad(value, (h1, h2))
    want, want1, want2 = naive_cibhash(h1.detach(), h2.detach(), tau, w)
    assert_close(value, torch.cat([grad1, grad2]), want, torch.cat([want1, want2]), dtype)


def test_the_stochastic_form_draws_seeded_thresholds_one_step_after_another():
    g = torch.Generator().manual_seed(4)
    B, K = 4, 8
    h1, h2 = torch.randn(B, K, generator=g, dtype=torch.float64), torch.randn(B, K, generator=g, dtype=torch.float64)
    a = create_method("cibhash", bits=K, n_class=1, num_train=1, stochastic=True, seed=3)
    b = create_method("cibhash", bits=K, n_class=1, num_train=1, stochastic=True, seed=3)
    for step in range(2):
        u1, u2 = a.thresholds(h1.shape, h1.device, h1.dtype)  # what b draws at the same step
        want, _, _ = naive_cibhash(h1, h2, 0.3, 0.001, u1, u2)
        assert b.loss(h1, h2).item() == pytest.approx(want.item(), rel=1e-10)
        assert int(a.draws) == int(b.draws) == step + 1
    other = create_method("cibhash", bits=K, n_class=1, num_train=1, stochastic=True, seed=4)
    assert not torch.equal(other.thresholds(h1.shape, h1.device, h1.dtype)[0],
                           create_method("cibhash", bits=K, n_class=1, num_train=1, stochastic=True,
                                         seed=3).thresholds(h1.shape, h1.device, h1.dtype)[0])
    # uniform thresholds: a bit is +1 with probability p, the Bernoulli code of the abstract
    p = torch.full((4000, 1), 0.3, dtype=torch.float64)
    u, _ = a.thresholds(p.shape, p.device, p.dtype)
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert float((p > u).double().mean()) == pytest.approx(0.3, abs=0.03)
    # the deterministic form draws nothing
    c = create_method("cibhash", bits=K, n_class=1, num_train=1)
    c.loss(h1, h2)
    assert int(c.draws) == 0


def test_one_image_gives_a_zero_contrast_and_mismatched_views_are_refused():
    method = create_method("cibhash", bits=8, n_class=1, num_train=1, weight=0.0)
    h = torch.randn(1, 8, generator=torch.Generator().manual_seed(0))
    assert method.loss(h, h + 0.1).item() == pytest.approx(0.0, abs=1e-6)  # its only candidate is its positive
    with pytest.raises(DataError, match=r"cibhash: h2 must be a float tensor \(3, 8\), the outputs of the second "
                                        r"view of the same 3 images, got \(2, 8\)"):
        method.loss(torch.randn(3, 8), torch.randn(2, 8))


def test_head_views_and_published_settings():
    m = create_method("cibhash", bits=32, n_class=10, num_train=5000)
    head = m.make_head(4096)
    assert [type(l) for l in head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[2].out_features) == (4096, 1024, 32)
    c, d = m.config, m.defaults
    assert (c.temperature, c.weight, c.stochastic, m.trains_on, m.even_batch) == (0.3, 0.001, False, "views", False)
    assert (d.optimizer, d.lr, d.weight_decay, d.batch_size, d.epochs, d.lr_step_epochs) == ("adam", 1e-3, 0.0, 64,
                                                                                              60, None)
    assert m.total_epochs == 60 and create_method("cibhash", bits=16, n_class=10, num_train=5).total_epochs == 80
    v = m.views
    assert (v.size, v.crop_scale, v.flip_p, v.jitter, v.jitter_p, v.grayscale_p, v.blur_kernel, v.blur_sigma,
            v.blur_p) == (224, (0.5, 1.0), 0.5, (0.4, 0.4, 0.4, 0.1), 0.7, 0.2, 3, (0.1, 2.0), 0.5)
