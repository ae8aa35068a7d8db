"""MDSHC's center generator: the Gilbert-Varshamov target against its formula, the ADMM iterates and
the acceptance rule against the per-center form written from its definition (tests/methods/mdshc_naive.py),
the target reached for 10 and 100 classes at 16, 32, 48 and 64 bits, seeding, and the edge cases."""
from __future__ import annotations

import numpy as np
import pytest

from hybridhash.errors import ConfigError
from hybridhash.methods.mdshc_centers import (accept_candidate, admm_candidates, generate_centers, initial_centers,
                                              target_distance)

from .mdshc_naive import _distances, _key, gv_target, naive_center


def pairwise(G):
    """Every pairwise Hamming distance of the rows of G, counted entry by entry."""
    return [int(np.sum(G[a] != G[b])) for a in range(len(G)) for b in range(a + 1, len(G))]


@pytest.mark.parametrize("C", [2, 3, 10, 21, 80, 100, 196, 1000])
def test_the_target_is_the_gilbert_varshamov_distance(C):
    for K in list(range(1, 40)) + [48, 64, 128]:
        if C <= 2 ** K:
            assert target_distance(K, C) == gv_target(K, C), (K, C)


def test_the_target_table_of_the_reference_text():
    # the table of targets in docs/mdshc.md: 10 and 100 classes at 16, 32, 48, 64, 128 bits
    assert [target_distance(K, 10) for K in (16, 32, 48, 64, 128)] == [gv_target(K, 10) for K in (16, 32, 48, 64, 128)]
    assert [target_distance(K, 100) for K in (16, 32, 48, 64, 128)] == [4, 10, 17, 24, 52]


@pytest.mark.parametrize("C, K, rows", [(12, 16, [3]), (9, 12, [0, 4, 8]), (20, 8, [19])])
def test_the_admm_iterates_follow_the_per_center_form(C, K, rows):
    """Side by side or alone, each center's b follows the one-at-a-time run with the matrix inverted at
    every step, outer iteration by outer iteration, while the run is far from its stopping tests
    (later, float rounding decides on which iteration a residual first falls under 1e-6)."""
    G, _ = initial_centers(C, K, np.random.default_rng(C))
    D = gv_target(K, C)
    trace = []
    admm_candidates(G, np.array(rows), D, np.random.default_rng(7), trace)
    rng = np.random.default_rng(7)  # the same stream: the duals are drawn center by center
    for s, i in enumerate(rows):
        naive = []
        naive_center(G, i, D, rng, naive)
        steps = min(len(naive), 120)
        got = np.array([t[s] for t in trace[:steps]])
        np.testing.assert_allclose(got, np.array(naive[:steps]), rtol=1e-6, atol=1e-6)


def test_acceptance_takes_the_largest_minimum_then_score_first_among_equals():
    rng = np.random.default_rng(0)
    for trial in range(30):
        C, K = 7, 10
        G = rng.integers(0, 2, (C, K)) * 2.0 - 1
        pool = rng.integers(0, 2, (6, K)) * 2.0 - 1
        cands = pool[rng.integers(0, 6, 12)]  # repeats: equal keys
        i = int(rng.integers(0, C))
        others = np.delete(G, i, axis=0)
        best, best_key = G[i].copy(), _key(_distances(G[i], others))
        for c in cands:  # as the candidates arise, a strictly larger (min, score) wins
            key = _key(_distances(c, others))
            if key > best_key:
                best, best_key = c, key
        H = G.copy()
        changed = accept_candidate(H, i, cands)
        assert np.array_equal(H[i], best) and changed == (not np.array_equal(best, G[i])), trial
        assert np.array_equal(np.delete(H, i, axis=0), others)


def _check_set(C, K, seed=0):
    G, report = generate_centers(C, K, seed=seed)
    assert G.shape == (C, K) and set(np.unique(G)) <= {-1.0, 1.0}
    d = pairwise(G)
    D = gv_target(K, C)
    assert report.target == D and report.min == min(d) and report.mean == pytest.approx(np.mean(d))
    assert min(d) >= D and report.reached
    assert list(report.history) == sorted(report.history)  # the set's minimum never decreased
    assert report.initial_min <= report.history[0] and 1 <= report.sweeps == len(report.history)
    return G, report


@pytest.mark.parametrize("K", [16, 32, 48, 64])
def test_ten_centers_reach_the_target(K):
    _check_set(10, K)


@pytest.mark.slow
@pytest.mark.parametrize("K", [16, 32, 48, 64])
def test_a_hundred_centers_reach_the_target(K):  # 5 to 15 s each on one core; the benchmark times them
    _check_set(100, K)


def test_a_target_not_reached_is_reported_with_the_best_set():
    # 20 codes of 8 bits at distance 3 exist (A(8, 3) = 20) but one sweep does not find them
    G, report = generate_centers(20, 8, seed=2, max_sweeps=1)
    assert report.target == 3 and not report.reached and report.sweeps == 1
    assert report.min == min(pairwise(G)) < 3 and report.min >= report.initial_min


def test_the_seed_decides_the_centers():
    for C, K in ((10, 48), (10, 32)):
        a, b, c = (generate_centers(C, K, seed=s)[0] for s in (5, 5, 6))
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)


def test_the_published_one_at_a_time_order_reaches_the_target():
    G, report = generate_centers(20, 12, seed=2, block=1)
    assert min(pairwise(G)) >= gv_target(12, 20) and report.reached


def test_more_classes_than_codes_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^mdshc: 20 classes need at least 5 bits .* got 4; use more bits$"):
        generate_centers(20, 4)
    G, report = generate_centers(16, 4, seed=1)  # every code of 4 bits: distinct, D = 1
    assert len({tuple(r) for r in G}) == 16 and report.reached


def test_one_class_is_its_start_row():
    G, report = generate_centers(1, 8)
    assert G.shape == (1, 8) and report.sweeps == 0 and report.reached
