"""DCH: its Cauchy loss against a naive loop over pairs."""
from __future__ import annotations

import math

import pytest

from . import in_batch
from .harness import MethodSuite, dot, mean, sim


def naive_cauchy_d(a, b):
    K = len(a)
    cos = dot(a, b) / max(math.sqrt(dot(a, a)) * math.sqrt(dot(b, b)), 1e-4)
    return K / 2 * (1 - min(cos, 0.99))


def naive_dch(h, y, gamma=20.0, lam=0.1):
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


class TestDCH(MethodSuite):
    name = "dch"


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_dch_matches_naive_loop(K, kind):
    in_batch.matches_naive("dch", naive_dch, K, kind)
