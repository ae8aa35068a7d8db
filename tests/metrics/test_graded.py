"""ACG, NDCG and WAP against per-query loops written from their definitions (DSRH, CVPR 2015;
docs/faithfulness.md, "Metrics"), the tie-aware ACG and NDCG against every order of the tied items."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from hybridhash import metrics as M
from hybridhash.errors import ConfigError, DataError, IndexMismatchError

PER_QUERY = {"acg": M.acgs, "ndcg": M.ndcgs, "wap": M.weighted_average_precisions,
             "acg_tie_aware": M.tie_aware_acgs, "ndcg_tie_aware": M.tie_aware_ndcgs}
MEANS = {"acg": M.mean_acg, "ndcg": M.mean_ndcg, "wap": M.weighted_mean_average_precision,
         "acg_tie_aware": M.tie_aware_mean_acg, "ndcg_tie_aware": M.tie_aware_mean_ndcg}


# ------------------------------------------------------------------------------------------------
# naive references: one query at a time, plain Python sums over ranks


def naive_distances(q, db):
    return [[sum(a != b for a, b in zip(qi, di)) for di in db] for qi in q]


def naive_shared(ql, dbl, i):
    """Labels query i shares with each database item (class ids: 1 for the same class)."""
    if np.ndim(ql) == 1:
        return [int(d == ql[i]) for d in dbl]
    return [sum(int(a) * int(b) for a, b in zip(ql[i], d)) for d in dbl]


def naive_dcg(r, k):
    return sum((2 ** r[i] - 1) / math.log(1 + (i + 1)) for i in range(min(k, len(r))))


def naive_scores(ranked, shared_all, k):
    """(ACG@k, NDCG@k, WAP@k) of one query from its relevances in rank order, as section E writes them."""
    acg = sum(ranked[:k]) / k
    ideal = naive_dcg(sorted(shared_all, reverse=True), k)
    ndcg = naive_dcg(ranked, k) / ideal if ideal > 0 else 0.0
    total, hits = 0.0, 0
    for i in range(k):
        if ranked[i] > 0:
            total += sum(ranked[: i + 1]) / (i + 1)
            hits += 1
    return acg, ndcg, (total / hits if hits else 0.0)


def naive_all(q, db, ql, dbl, topk):
    """{figure: per-query list} over the stable ranking (distance, then index)."""
    dist = naive_distances(q, db)
    k = len(db) if topk is None else min(topk, len(db))
    out = {"acg": [], "ndcg": [], "wap": []}
    for i in range(len(q)):
        shared = naive_shared(ql, dbl, i)
        order = sorted(range(len(db)), key=lambda j: (dist[i][j], j))
        for name, v in zip(out, naive_scores([shared[j] for j in order], shared, k)):
            out[name].append(v)
    return {name: np.array(v) for name, v in out.items()}


def brute_force_tie_aware(dist_row, shared, k):
    """(ACG@k, NDCG@k) averaged over every order of the items inside each group of equal distance."""
    groups = [[j for j in range(len(dist_row)) if dist_row[j] == v] for v in sorted(set(dist_row))]
    acg, ndcg = [], []
    for perm in itertools.product(*(itertools.permutations(g) for g in groups)):
        ranked = [shared[j] for g in perm for j in g]
        a, n, _ = naive_scores(ranked, shared, k)
        acg.append(a)
        ndcg.append(n)
    return float(np.mean(acg)), float(np.mean(ndcg))


def random_case(rng, nq, ndb, bits, n_class, p=0.3, multilabel=True):
    q = rng.choice([-1, 1], (nq, bits)).astype(np.int8)
    db = rng.choice([-1, 1], (ndb, bits)).astype(np.int8)
    if not multilabel:
        return q, db, rng.integers(0, n_class, nq), rng.integers(0, n_class, ndb)
    return q, db, (rng.random((nq, n_class)) < p).astype(np.int64), (rng.random((ndb, n_class)) < p).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# stable ranking


@pytest.mark.parametrize("nq,ndb,bits,n_class", [(13, 57, 6, 5), (9, 140, 16, 21), (5, 90, 70, 80), (4, 3, 4, 3)])
def test_stable_figures_match_naive_loops(nq, ndb, bits, n_class):
    rng = np.random.default_rng(nq * 1000 + ndb)
    q, db, ql, dbl = random_case(rng, nq, ndb, bits, n_class, p=0.35)
    ql[0] = 0  # a query sharing no label with anything: every figure 0
    dbl[: min(3, ndb)] = 1  # items carrying every label: large relevances, 2^r well above 1
    for topk in (None, 1, 2, 10, ndb, ndb + 1, 5000):
        expected = naive_all(q, db, ql, dbl, topk)
        for name in ("acg", "ndcg", "wap"):
            got = PER_QUERY[name](q, db, ql, dbl, topk)
            assert got.shape == (nq,) and np.abs(got - expected[name]).max() <= 1e-9, (name, topk)
            assert got[0] == 0.0
            assert MEANS[name](q, db, ql, dbl, topk) == pytest.approx(expected[name].mean(), abs=1e-9)


def test_all_tied_distances_rank_by_index():
    rng = np.random.default_rng(1)
    q = np.ones((3, 8), np.int8)
    db = np.ones((12, 8), np.int8)  # every item at distance 0 of every query
    ql, dbl = (rng.random((3, 4)) < 0.5).astype(int), (rng.random((12, 4)) < 0.5).astype(int)
    ql[2] = 0
    for topk in (None, 1, 5, 12):
        expected = naive_all(q, db, ql, dbl, topk)
        for name in ("acg", "ndcg", "wap"):
            assert np.abs(PER_QUERY[name](q, db, ql, dbl, topk) - expected[name]).max() <= 1e-9, (name, topk)
        # one group: the tie-aware ACG is the mean relevance of the database, whatever k
        shared = ql @ dbl.T
        assert np.abs(M.tie_aware_acgs(q, db, ql, dbl, topk) - shared.mean(axis=1)).max() <= 1e-12


def test_single_label_and_one_hot_agree_and_wap_is_map():
    # relevance 0/1: WAP@k is AP@k, ACG@k is precision@k
    rng = np.random.default_rng(2)
    q, db, ql, dbl = random_case(rng, 17, 200, 8, 6, multilabel=False)
    ql[0] = 99  # no relevant item
    for topk in (None, 7, 50):
        wap = M.weighted_average_precisions(q, db, ql, dbl, topk)
        assert np.abs(wap - M.average_precisions(q, db, ql, dbl, topk)).max() <= 1e-12
        onehot_q, onehot_db = np.eye(100, dtype=int)[ql], np.eye(100, dtype=int)[dbl]
        for name, fn in PER_QUERY.items():
            assert np.abs(fn(q, db, ql, dbl, topk) - fn(q, db, onehot_q, onehot_db, topk)).max() <= 1e-12, name
        expected = naive_all(q, db, ql, dbl, topk)
        for name in ("acg", "ndcg", "wap"):
            assert np.abs(PER_QUERY[name](q, db, ql, dbl, topk) - expected[name]).max() <= 1e-9
    assert M.mean_acg(q, db, ql, dbl, 10) == pytest.approx(M.precision_at_n(q, db, ql, dbl, 10)[0], abs=1e-12)


def test_hand_worked_example():
    """Query 1111 with labels {0, 1}; database distances 0, 1, 1, 2, 0 and shared labels 1, 0, 2, 1, 0."""
    q = np.array([[1, 1, 1, 1]])
    db = np.array([[1, 1, 1, 1], [-1, 1, 1, 1], [1, -1, 1, 1], [-1, -1, 1, 1], [1, 1, 1, 1]])
    ql = np.array([[1, 1, 0]])
    dbl = np.array([[1, 0, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [0, 0, 0]])
    # stable ranking 0, 4, 1, 2, 3: relevances 1, 0, 0, 2, 1
    assert M.mean_acg(q, db, ql, dbl, 4) == pytest.approx(3 / 4, abs=1e-15)
    assert M.weighted_mean_average_precision(q, db, ql, dbl) == pytest.approx((1 + 3 / 4 + 4 / 5) / 3, abs=1e-15)
    dcg = 1 / math.log(2) + 3 / math.log(5) + 1 / math.log(6)
    ideal = 3 / math.log(2) + 1 / math.log(3) + 1 / math.log(4)
    assert M.mean_ndcg(q, db, ql, dbl) == pytest.approx(dcg / ideal, abs=1e-14)
    # tie-aware at k = 3: group {0, 4} (mean 1/2) fills ranks 1-2, group {1, 2} (mean 1) rank 3
    assert M.tie_aware_mean_acg(q, db, ql, dbl, 3) == pytest.approx((1 / 2 + 1 / 2 + 1) / 3, abs=1e-15)


# ------------------------------------------------------------------------------------------------
# tie-aware ACG and NDCG


def test_tie_aware_matches_brute_force_over_all_orders():
    rng = np.random.default_rng(3)
    checked = 0
    for trial in range(40):
        ndb = int(rng.integers(1, 8))
        multilabel = trial % 4 != 0
        q, db, ql, dbl = random_case(rng, 2, ndb, 3, 3, p=0.5, multilabel=multilabel)
        dist = naive_distances(q, db)
        for topk in (None, *range(1, ndb + 2)):
            acg = M.tie_aware_acgs(q, db, ql, dbl, topk)
            ndcg = M.tie_aware_ndcgs(q, db, ql, dbl, topk)
            for i in range(2):
                k = ndb if topk is None else min(topk, ndb)
                a, n = brute_force_tie_aware(dist[i], naive_shared(ql, dbl, i), k)
                assert acg[i] == pytest.approx(a, abs=1e-12) and ndcg[i] == pytest.approx(n, abs=1e-12), (trial, topk)
                checked += 1
    assert checked > 200


def test_tie_aware_equals_stable_without_ties():
    # item j differs from the query in its first j bits: every distance differs
    bits = 20
    q = np.ones((1, bits), np.int8)
    db = np.ones((bits + 1, bits), np.int8)
    for j in range(bits + 1):
        db[j, :j] = -1
    db = db[np.random.default_rng(4).permutation(bits + 1)]  # the index order is not the distance order
    rng = np.random.default_rng(5)
    ql, dbl = np.array([[1, 1, 0, 1, 0, 1]]), (rng.random((bits + 1, 6)) < 0.5).astype(int)
    for topk in (None, 1, 4, 21, 30):
        assert M.tie_aware_acgs(q, db, ql, dbl, topk)[0] == pytest.approx(M.acgs(q, db, ql, dbl, topk)[0], abs=1e-12)
        assert M.tie_aware_ndcgs(q, db, ql, dbl, topk)[0] == pytest.approx(M.ndcgs(q, db, ql, dbl, topk)[0],
                                                                          abs=1e-12)


# ------------------------------------------------------------------------------------------------
# inputs, chunks, the one-pass form, bad input


def test_chunks_threads_input_forms_and_graded_scores_agree():
    rng = np.random.default_rng(6)
    q, db, ql, dbl = random_case(rng, 37, 500, 12, 9)
    for topk in (20, None):
        reference = {name: fn(q, db, ql, dbl, topk, chunk_size=37) for name, fn in PER_QUERY.items()}
        for name, fn in PER_QUERY.items():
            for chunk_size, threads in ((1, 1), (5, 2), (None, None)):
                got = fn(q, db, ql, dbl, topk, chunk_size=chunk_size, num_threads=threads)
                assert np.array_equal(got, reference[name]), (name, chunk_size)
            assert np.array_equal(fn(M.pack_pm1(q), M.pack_pm1(db), ql.astype(bool), dbl.astype(np.float32), topk),
                                  reference[name])
            assert np.array_equal(fn(torch.from_numpy(q).float(), db, torch.from_numpy(ql), dbl, topk),
                                  reference[name])
        scores = M.graded_scores(q, db, ql, dbl, topk)
        assert scores == {name: pytest.approx(v.mean(), abs=1e-15) for name, v in reference.items()}
        assert set(M.graded_scores(q, db, ql, dbl, topk, tie_aware=False)) == {"acg", "ndcg", "wap"}


@pytest.mark.parametrize("fn", [*MEANS.values(), M.graded_scores], ids=[*MEANS, "graded_scores"])
def test_bad_input_gets_the_errors_of_map(fn):
    q = np.ones((1, 4), np.int8)
    db = np.ones((3, 4), np.int8)
    ql, dbl = np.array([[1, 0]]), np.array([[1, 0], [0, 1], [1, 1]])
    with pytest.raises(ConfigError, match="topk must be a positive integer"):
        fn(q, db, ql, dbl, 0)
    with pytest.raises(IndexMismatchError, match="query_codes have 4 bits but database_codes have 5 bits"):
        fn(q, np.ones((3, 5)), ql, dbl)
    with pytest.raises(DataError, match="database_labels has 2 rows but database_codes has 3"):
        fn(q, db, ql, dbl[:2])
    with pytest.raises(DataError, match="multi-hot entries must be 0 or 1"):
        fn(q, db, [[2, 0]], dbl)
    with pytest.raises(DataError, match="both be class ids or both multi-hot"):
        fn(q, db, [0], dbl)
    with pytest.raises(DataError, match="database_codes is empty"):
        fn(q, db[:0], ql, dbl[:0])
    with pytest.raises(DataError, match="query_codes is empty"):
        fn(q[:0], db, ql[:0], dbl)
    with pytest.raises(ConfigError, match="chunk_size"):
        fn(q, db, ql, dbl, chunk_size=0)
