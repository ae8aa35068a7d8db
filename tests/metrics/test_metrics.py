"""Retrieval metrics against naive per-query re-computations, brute force and a hand-worked case."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hybridhash import codes as C
from hybridhash import metrics
from hybridhash.errors import ConfigError, DataError, IndexMismatchError
from hybridhash.metrics import (
    average_precisions,
    hamming_distances,
    mean_average_precision,
    pack_pm1,
    precision_at_n,
    precision_recall_by_radius,
    precision_within_radius,
    tie_aware_average_precisions,
    tie_aware_mean_average_precision,
    unpack_codes,
)

# ------------------------------------------------------------------------------------------------
# naive references: one query at a time, a full stable argsort, the definitions in docs/faithfulness.md ("Metrics")


def naive_distances(q, db):
    return (q.shape[1] - db.astype(np.int64) @ q.astype(np.int64).T).T // 2  # (nq, ndb)


def naive_relevance(ql, dbl, i):
    if ql.ndim == 1:
        return dbl == ql[i]
    return (dbl.astype(np.int64) @ ql[i].astype(np.int64)) > 0


def naive_ap_of(rel):
    rel = np.asarray(rel, bool)
    if not rel.any():
        return 0.0
    ranks = np.flatnonzero(rel) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def naive_aps(q, db, ql, dbl, topk=None):
    dist = naive_distances(q, db)
    out = []
    for i in range(len(q)):
        order = np.argsort(dist[i], kind="stable")[:topk]
        out.append(naive_ap_of(naive_relevance(ql, dbl, i)[order]))
    return np.array(out)


def random_case(rng, nq, ndb, bits, multilabel, n_class=5, p=0.3):
    q = rng.choice([-1, 1], (nq, bits)).astype(np.int8)
    db = rng.choice([-1, 1], (ndb, bits)).astype(np.int8)
    if multilabel:
        ql = (rng.random((nq, n_class)) < p).astype(np.int64)
        dbl = (rng.random((ndb, n_class)) < p).astype(np.int64)
    else:
        ql, dbl = rng.integers(0, n_class, nq), rng.integers(0, n_class, ndb)
    return q, db, ql, dbl


# ------------------------------------------------------------------------------------------------
# codes


def test_pack_codes_follows_packbits_order_and_round_trips():
    rng = np.random.default_rng(0)
    for bits in (1, 8, 13, 64, 100):
        codes = rng.choice([-1, 1], (7, bits)).astype(np.float32)
        packed = pack_pm1(codes)
        assert packed.dtype == np.uint8 and packed.shape == (7, -(-bits // 8))
        assert np.array_equal(packed, np.packbits(codes > 0, axis=1))
        assert np.array_equal(unpack_codes(packed, bits), codes.astype(np.int8))
    assert pack_pm1(np.array([[1, -1, -1, -1, -1, -1, -1, 1]]))[0, 0] == 0b10000001
    assert np.array_equal(pack_pm1(torch.tensor([[1.0, -1.0]])), pack_pm1(np.array([[True, False]])))


def test_hamming_distances_match_inner_products():
    rng = np.random.default_rng(1)
    for bits in (5, 64, 65, 300):  # one word, exactly a word, two words, uint16 distances
        q, db, _, _ = random_case(rng, 9, 31, bits, False)
        expected = naive_distances(q, db)
        for a, b in ((q, db), (pack_pm1(q), pack_pm1(db)), (pack_pm1(q), db), (torch.from_numpy(q), db)):
            got = hamming_distances(a, b)
            assert got.dtype == np.int32 and np.array_equal(got, expected), bits


def test_swar_popcount_matches_bitwise_count():
    rng = np.random.default_rng(2)
    x = rng.integers(0, np.iinfo(np.uint64).max, 1000, dtype=np.uint64, endpoint=True)
    x[:3] = [0, np.iinfo(np.uint64).max, 1 << 63]
    expected = np.array([bin(int(v)).count("1") for v in x])
    assert np.array_equal(C.popcount_swar(x, np.empty(x.shape, np.uint8)), expected)
    assert np.array_equal(C.popcount(x, np.empty(x.shape, np.uint8)), expected)


# ------------------------------------------------------------------------------------------------
# mAP


def hand_case():
    """Query 1111; database distances 0, 1, 1, 2, 0; relevant items 0, 2, 3."""
    q = np.array([[1, 1, 1, 1]])
    db = np.array([[1, 1, 1, 1], [-1, 1, 1, 1], [1, -1, 1, 1], [-1, -1, 1, 1], [1, 1, 1, 1]])
    return q, db, np.array([1]), np.array([1, 0, 1, 1, 0])


def test_hand_worked_example():
    q, db, ql, dbl = hand_case()
    assert hamming_distances(q, db).tolist() == [[0, 1, 1, 2, 0]]
    # stable ranking 0, 4, 1, 2, 3: relevant at ranks 1, 4, 5
    assert mean_average_precision(q, db, ql, dbl) == pytest.approx((1 / 1 + 2 / 4 + 3 / 5) / 3, abs=1e-15)
    assert mean_average_precision(q, db, ql, dbl, topk=2) == pytest.approx(1.0, abs=1e-15)
    assert mean_average_precision(q, db, ql, dbl, topk=4) == pytest.approx((1 + 2 / 4) / 2, abs=1e-15)
    assert mean_average_precision(q, db, ql, dbl, topk=100) == mean_average_precision(q, db, ql, dbl)
    # the four orders of the two tied pairs: relevant at (1|2, 3|4, 5)
    assert tie_aware_mean_average_precision(q, db, ql, dbl) == pytest.approx(29 / 45, abs=1e-14)
    assert precision_at_n(q, db, ql, dbl, [1, 2, 3, 4, 5]) == pytest.approx([1, 1 / 2, 1 / 3, 2 / 4, 3 / 5], abs=1e-15)
    radius, precision, recall = precision_recall_by_radius(q, db, ql, dbl)
    assert radius.tolist() == [0, 1, 2, 3, 4]
    assert precision == pytest.approx([1 / 2, 1 / 2, 3 / 5, 3 / 5, 3 / 5], abs=1e-15)
    assert recall == pytest.approx([1 / 3, 2 / 3, 1, 1, 1], abs=1e-15)
    assert precision_within_radius(q, db, ql, dbl, radius=1) == pytest.approx(1 / 2, abs=1e-15)


@pytest.mark.parametrize("bits", [3, 10, 64, 130])
@pytest.mark.parametrize("multilabel", [False, True])
def test_average_precisions_match_naive_loop(bits, multilabel):
    rng = np.random.default_rng(bits * 2 + multilabel)
    q, db, ql, dbl = random_case(rng, 23, 301, bits, multilabel)
    ql[:3] = 7 if not multilabel else 0  # queries with no relevant item in the database
    for topk in (None, 1, 9, 100, 300, 301, 5000):
        expected = naive_aps(q, db, ql, dbl, topk)
        got = average_precisions(q, db, ql, dbl, topk)
        assert np.abs(got - expected).max() <= 1e-12, topk
        assert np.all(got[:3] == 0.0)
        assert mean_average_precision(q, db, ql, dbl, topk) == pytest.approx(expected.mean(), abs=1e-12)


def test_packed_torch_and_pm1_inputs_agree():
    rng = np.random.default_rng(5)
    q, db, ql, dbl = random_case(rng, 11, 97, 24, True)
    reference = average_precisions(q, db, ql, dbl, 20)
    assert np.array_equal(average_precisions(pack_pm1(q), pack_pm1(db), ql, dbl, 20), reference)
    assert np.array_equal(average_precisions(q.astype(np.float32), pack_pm1(db), ql, dbl, 20), reference)
    assert np.array_equal(
        average_precisions(torch.from_numpy(q).float(), torch.from_numpy(db), torch.from_numpy(ql), dbl, 20), reference
    )
    assert np.array_equal(average_precisions(q, db, ql.astype(bool), dbl.astype(np.float32), 20), reference)
    assert np.array_equal(average_precisions(torch.from_numpy(q).half(), db, ql, dbl, 20), reference)


@pytest.mark.parametrize("bits", [16, 80])
@pytest.mark.parametrize("sample_cols", [8, 8192])
def test_chunking_threads_and_threshold_guess_do_not_change_results(monkeypatch, sample_cols, bits):
    # few sampled columns make the threshold guess poor, so the rows that fall short are redone
    monkeypatch.setattr(C, "_SAMPLE_COLS", sample_cols)
    rng = np.random.default_rng(6)
    q, db, ql, dbl = random_case(rng, 41, 2000, bits, False, n_class=10)
    for topk in (1, 37, 500):
        expected = naive_aps(q, db, ql, dbl, topk)
        for chunk_size, num_threads in ((None, None), (1, 1), (7, 2), (41, 3), (1000, 1)):
            got = average_precisions(q, db, ql, dbl, topk, chunk_size=chunk_size, num_threads=num_threads)
            assert np.abs(got - expected).max() <= 1e-12, (topk, chunk_size, num_threads)


def test_learned_like_codes_many_queries_match_naive_loop():
    # class prototypes with a few flipped bits: ties cluster near the top, as with trained codes
    rng = np.random.default_rng(7)
    bits, n_class = 32, 8
    proto = rng.choice([-1, 1], (n_class, bits))
    ql, dbl = rng.integers(0, n_class, 60), rng.integers(0, n_class, 3000)
    flip = lambda n: np.where(rng.random((n, bits)) < 0.1, -1, 1)  # noqa: E731
    q, db = proto[ql] * flip(60), proto[dbl] * flip(3000)
    for topk in (None, 250):
        got = mean_average_precision(q, db, ql, dbl, topk, chunk_size=16)
        assert got == pytest.approx(naive_aps(q, db, ql, dbl, topk).mean(), abs=1e-12)


# ------------------------------------------------------------------------------------------------
# tie-aware mAP


def brute_force_tie_aware(dist, rel, k):
    """Mean AP@k over every ordering of the equal-distance groups."""
    groups = [np.flatnonzero(dist == v) for v in np.unique(dist)]
    values = [
        naive_ap_of(rel[np.concatenate(perm)][:k])
        for perm in itertools.product(*(itertools.permutations(g) for g in groups))
    ]
    return float(np.mean(values))


def test_tie_aware_matches_brute_force_over_all_orders():
    rng = np.random.default_rng(8)
    checked = 0
    for _ in range(30):
        ndb = int(rng.integers(1, 8))
        q, db, ql, dbl = random_case(rng, 2, ndb, 3, bool(rng.integers(0, 2)), n_class=3, p=0.4)
        dist = naive_distances(q, db)
        for topk in [None, *range(1, ndb + 1)]:
            got = tie_aware_average_precisions(q, db, ql, dbl, topk)
            for i in range(2):
                expected = brute_force_tie_aware(dist[i], naive_relevance(ql, dbl, i), topk or ndb)
                assert got[i] == pytest.approx(expected, abs=1e-12), (dist[i], topk)
                checked += 1
    assert checked > 100


def test_tie_aware_matches_monte_carlo_on_larger_groups():
    rng = np.random.default_rng(9)
    q, db, ql, dbl = random_case(rng, 3, 120, 4, False, n_class=3)
    dist = naive_distances(q, db)
    samples = 3000
    for topk in (None, 30):
        got = tie_aware_average_precisions(q, db, ql, dbl, topk)
        for i in range(3):
            rel = naive_relevance(ql, dbl, i)
            # a random key inside each distance orders every tied group uniformly at random
            keys = dist[i][None, :] * 1.0 + rng.random((samples, len(db)))
            draws = np.array([naive_ap_of(rel[np.argsort(key)][:topk]) for key in keys])
            stderr = draws.std() / np.sqrt(samples)
            assert abs(got[i] - draws.mean()) <= 4 * stderr + 1e-9, (i, topk)
            # and the index-order AP is one of the orders, not the expectation
            assert abs(got[i] - naive_aps(q[i : i + 1], db, ql[i : i + 1], dbl, topk)[0]) > 1e-6


def test_tie_aware_equals_ap_without_ties():
    # item j differs from the query in its first j bits: all distances differ
    bits = 12
    q = np.ones((1, bits), np.int8)
    db = np.ones((bits + 1, bits), np.int8)
    for j in range(bits + 1):
        db[j, :j] = -1
    rng = np.random.default_rng(10)
    dbl = rng.integers(0, 2, bits + 1)
    for topk in (None, 1, 5):
        assert tie_aware_average_precisions(q, db, [1], dbl, topk)[0] == pytest.approx(
            average_precisions(q, db, [1], dbl, topk)[0], abs=1e-13
        )


def test_tie_aware_chunking_does_not_change_results():
    rng = np.random.default_rng(11)
    q, db, ql, dbl = random_case(rng, 30, 400, 6, True)
    reference = tie_aware_average_precisions(q, db, ql, dbl, 50, chunk_size=30)
    assert np.array_equal(tie_aware_average_precisions(q, db, ql, dbl, 50, chunk_size=4, num_threads=2), reference)


# ------------------------------------------------------------------------------------------------
# curves


@pytest.mark.parametrize("multilabel", [False, True])
def test_precision_recall_by_radius_matches_naive_loop(multilabel):
    rng = np.random.default_rng(12 + multilabel)
    bits = 8
    q, db, ql, dbl = random_case(rng, 17, 150, bits, multilabel)
    ql[0] = 9 if not multilabel else 0  # no relevant item: recall 0 at every radius
    q[1] = db[0]  # at least one item at radius 0
    dist = naive_distances(q, db)
    precision = np.zeros((len(q), bits + 1))
    recall = np.zeros((len(q), bits + 1))
    for i in range(len(q)):
        rel = naive_relevance(ql, dbl, i)
        for r in range(bits + 1):
            within = dist[i] <= r
            precision[i, r] = (rel & within).sum() / within.sum() if within.any() else 0.0
            recall[i, r] = (rel & within).sum() / rel.sum() if rel.any() else 0.0
    radius, p, rc = precision_recall_by_radius(q, db, ql, dbl, chunk_size=5)
    assert np.array_equal(radius, np.arange(bits + 1))
    assert np.abs(p - precision.mean(0)).max() <= 1e-12
    assert np.abs(rc - recall.mean(0)).max() <= 1e-12
    assert precision_within_radius(q, db, ql, dbl) == pytest.approx(precision[:, 2].mean(), abs=1e-12)


def test_queries_retrieving_nothing_within_radius_count_zero():
    q = np.ones((2, 6), np.int8)
    q[1] = -1
    db = np.ones((3, 6), np.int8)  # all at distance 0 from query 0, 6 from query 1
    labels = np.zeros(3, np.int64)
    assert precision_within_radius(q, db, [0, 0], labels, radius=2) == pytest.approx(0.5)
    assert precision_within_radius(q, db, [0, 0], labels, radius=6) == pytest.approx(1.0)
    assert precision_within_radius(q, db, [0, 0], labels, radius=60) == pytest.approx(1.0)


def test_precision_at_n_matches_naive_loop():
    rng = np.random.default_rng(14)
    q, db, ql, dbl = random_case(rng, 19, 240, 6, False)
    ns = [1, 2, 10, 100, 240]
    dist = naive_distances(q, db)
    expected = np.zeros(len(ns))
    for i in range(len(q)):
        rel = naive_relevance(ql, dbl, i)[np.argsort(dist[i], kind="stable")]
        expected += [rel[:n].sum() / n for n in ns]
    expected /= len(q)
    got = precision_at_n(q, db, ql, dbl, ns, chunk_size=4)
    assert np.abs(got - expected).max() <= 1e-12
    assert precision_at_n(q, db, ql, dbl, 10)[0] == pytest.approx(expected[2], abs=1e-12)


# ------------------------------------------------------------------------------------------------
# bad input


def test_bad_input_names_the_culprit():
    q, db, ql, dbl = hand_case()
    with pytest.raises(DataError, match="database_codes holds 0"):
        mean_average_precision(q, np.zeros((2, 4)), ql, [0, 1])
    with pytest.raises(IndexMismatchError, match="query_codes have 4 bits but database_codes have 5 bits"):
        mean_average_precision(q, np.ones((5, 5)), ql, dbl)
    with pytest.raises(IndexMismatchError, match="packed bytes"):
        hamming_distances(np.zeros((1, 2), np.uint8), np.zeros((1, 3), np.uint8))
    with pytest.raises(DataError, match="database_labels has 4 rows but database_codes has 5"):
        mean_average_precision(q, db, ql, dbl[:4])
    with pytest.raises(DataError, match="both be class ids or both multi-hot"):
        mean_average_precision(q, db, ql, np.eye(2)[dbl])
    with pytest.raises(DataError, match="multi-hot entries must be 0 or 1"):
        mean_average_precision(q, db, [[2, 0]], np.eye(2)[dbl])
    with pytest.raises(DataError, match="query_labels class ids must be integers"):
        mean_average_precision(q, db, [1.0], dbl)
    with pytest.raises(DataError, match="database_codes is empty"):
        mean_average_precision(q, db[:0], ql, dbl[:0])
    with pytest.raises(DataError, match="query_codes is empty"):
        mean_average_precision(q[:0], db, ql[:0], dbl)
    assert average_precisions(q[:0], db, ql[:0], dbl).shape == (0,)
    with pytest.raises(ConfigError, match="topk"):
        mean_average_precision(q, db, ql, dbl, topk=0)
    with pytest.raises(ConfigError, match="chunk_size"):
        mean_average_precision(q, db, ql, dbl, chunk_size=0)
    with pytest.raises(ConfigError, match="ns must lie in 1..5"):
        precision_at_n(q, db, ql, dbl, [1, 6])
    with pytest.raises(ConfigError, match="radius"):
        precision_within_radius(q, db, ql, dbl, radius=-1)
    with pytest.raises(DataError, match="uint8"):
        pack_pm1(np.zeros((1, 8), np.uint8))
    with pytest.raises(DataError, match="must be 2-D"):
        hamming_distances(np.ones(4), db)
