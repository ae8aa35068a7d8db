"""The label-free copy-retrieval score against a naive computation: the expected reciprocal rank of
each copy's original when equal distances are ordered at random, by enumerating the ties."""
from __future__ import annotations

import numpy as np
import pytest

from hybridhash.errors import DataError
from hybridhash.metrics import copy_retrieval_map
from hybridhash.metrics.copies import chance_level


def naive(originals, copies):
    """Mean over queries of E[1/rank of the own original], ties in uniformly random order: with b items
    strictly closer and t others at the same distance, the rank is b + 1 + U{0..t}."""
    scores = []
    for i, q in enumerate(copies):
        d = [(q != o).sum() for o in originals]
        better = sum(x < d[i] for x in d)
        tied = sum(x == d[i] for x in d) - 1
        scores.append(np.mean([1.0 / (better + 1 + j) for j in range(tied + 1)]))
    return float(np.mean(scores))


@pytest.mark.parametrize("seed", range(4))
def test_equals_the_expected_reciprocal_rank(seed):
    rng = np.random.default_rng(seed)
    originals = rng.choice([-1, 1], size=(30, 12))
    copies = originals.copy()
    flips = rng.random(copies.shape) < 0.15 * (seed + 1)  # copies drift from their originals
    copies[flips] *= -1
    assert copy_retrieval_map(originals, copies) == pytest.approx(naive(originals, copies), rel=1e-12)
    # packed codes give the same figure
    assert copy_retrieval_map(np.packbits(originals > 0, axis=1), np.packbits(copies > 0, axis=1)) == \
        pytest.approx(naive(originals, copies), rel=1e-12)


def test_perfect_copies_score_one_and_constant_codes_score_chance():
    rng = np.random.default_rng(0)
    codes = rng.choice([-1, 1], size=(50, 64))  # 64 random bits: distinct rows
    assert copy_retrieval_map(codes, codes) == pytest.approx(1.0)
    flat = np.ones((50, 16))
    assert copy_retrieval_map(flat, flat) == pytest.approx(chance_level(50)) == pytest.approx(naive(flat, flat))
    assert chance_level(50) == pytest.approx(sum(1 / r for r in range(1, 51)) / 50)


def test_mismatched_lengths_are_refused():
    with pytest.raises(DataError, match="3 copies for 4 originals"):
        copy_retrieval_map(np.ones((4, 8)), np.ones((3, 8)))
