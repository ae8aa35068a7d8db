"""DTSH: its triplet likelihood against a naive loop over triplets."""
from __future__ import annotations

import pytest

from . import in_batch
from .harness import MethodSuite, dot, mean, sign, sim, softplus


def naive_dtsh(h, y, alpha=5.0, lam=1.0):
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


class TestDTSH(MethodSuite):
    name = "dtsh"


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_dtsh_matches_naive_loop(K, kind):
    in_batch.matches_naive("dtsh", naive_dtsh, K, kind, scale=0.3)  # keep some triplets inside its margin
