"""CSQ: its loss against a naive loop, Hadamard centers where they exist, random ones elsewhere."""
from __future__ import annotations

import math

import pytest
import torch

from hybridhash.methods import create_method
from hybridhash.methods.csq import hash_centers

from .harness import L, MethodSuite, labels, mean


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


class TestCSQ(MethodSuite):
    name = "csq"


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
