"""The binary code format (hybridhash.codes) against naive per-bit Python loops, with numpy's native
popcount and with the SWAR fallback that numpy 1.x gets; and its users (metrics, index) on the
fallback with ``np.bitwise_count`` gone, as on numpy 1.x."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridhash import codes, metrics
from hybridhash.errors import ConfigError, DataError, IndexMismatchError

BITS = [8, 16, 24, 40, 64, 72, 128, 200, 256]
SRC = Path(__file__).resolve().parents[1] / "src" / "hybridhash"


@pytest.fixture(params=["native", "fallback"])
def popcount_path(request, monkeypatch):
    """Each test runs once on np.bitwise_count (where numpy has it) and once on the SWAR fallback."""
    if request.param == "native":
        if not hasattr(np, "bitwise_count"):
            pytest.skip("numpy < 2 has no bitwise_count")
        monkeypatch.setattr(codes, "USE_BITWISE_COUNT", True)
    else:
        monkeypatch.setattr(codes, "USE_BITWISE_COUNT", False)
    return request.param


# ----------------------------------------------------------------------------------------------
# naive references: one bit at a time, plain Python


def naive_pack(pm1_rows) -> np.ndarray:
    """+-1 rows -> packed bytes, bit by bit: bit j of a row is bit 7 - j % 8 of byte j // 8."""
    out = []
    for row in pm1_rows:
        nbytes = -(-len(row) // 8)
        b = [0] * nbytes
        for j, v in enumerate(row):
            if v == 1:
                b[j // 8] |= 1 << (7 - j % 8)
        out.append(b)
    return np.array(out, dtype=np.uint8).reshape(len(out), -1)


def naive_popcount(v: int) -> int:
    n = 0
    while v:
        n += v & 1
        v >>= 1
    return n


def naive_hamming(a_rows, b_rows) -> np.ndarray:
    """Packed rows -> distances, comparing every bit of every byte."""
    return np.array([[sum(((int(x) >> s) & 1) != ((int(y) >> s) & 1) for x, y in zip(a, b) for s in range(8))
                      for b in b_rows] for a in a_rows], dtype=np.int64)


def random_pm1(rng, n, bits):
    return rng.choice(np.array([-1, 1], np.int8), (n, bits))


# ----------------------------------------------------------------------------------------------
# packing


@pytest.mark.parametrize("bits", BITS + [1, 13, 100])
def test_pack_and_unpack_match_per_bit_loops(bits):
    rng = np.random.default_rng(bits)
    pm = random_pm1(rng, 6, bits)
    expected = naive_pack(pm.tolist())
    for reader in (lambda x: codes.pack_pm1(x), lambda x: codes.pack_pm1(torch.from_numpy(x)),
                   lambda x: codes.pack_pm1(x.astype(np.float32)), lambda x: codes.pack_pm1(x == 1)):
        np.testing.assert_array_equal(reader(pm), expected)
    np.testing.assert_array_equal(codes.unpack_codes(expected, bits), pm)
    if bits % 8 == 0:  # the lenient reader: packed passes through, any sign is binarised
        np.testing.assert_array_equal(codes.as_packed(expected, bits), expected)
        scaled = pm * rng.uniform(0.01, 5.0, pm.shape)  # real outputs of either sign
        np.testing.assert_array_equal(codes.as_packed(scaled, bits), expected)


def test_strict_reader_refuses_what_the_lenient_one_binarises():
    x = np.array([[0.5, -2.0, 0.0, 1.0, -1.0, 3.0, -0.1, 1.0]])
    with pytest.raises(DataError, match="holds 0.5: \\+-1 codes must be exactly -1 or \\+1"):
        codes.pack_pm1(x)
    with pytest.raises(DataError, match="uint8, which reads as already packed"):
        codes.pack_pm1(np.zeros((1, 8), np.uint8))
    with pytest.raises(DataError, match="2-D"):
        codes.pack_pm1(np.ones(8))
    # value >= 0 -> bit 1: 0.5, 0.0, 1.0, 3.0, 1.0 set, MSB first
    assert codes.as_packed(x, 8).tolist() == [[0b10110101]]
    with pytest.raises(DataError, match="NaN"):
        codes.as_packed(np.full((1, 8), np.nan), 8)
    with pytest.raises(DataError, match="dtype bool"):
        codes.as_packed(np.ones((1, 8), bool), 8)
    with pytest.raises(IndexMismatchError, match="16 bits.*expected 8 bits"):
        codes.as_packed(np.zeros((1, 2), np.uint8), 8)


def test_sign_rule_zero_is_plus_one():
    values = np.array([[-1.0, -1e-30, -0.0, 0.0, 1e-30, 2.0]])
    expected = [[-1, -1, 1, 1, 1, 1]]  # -0.0 >= 0 holds: a zero of either sign is +1
    assert codes.binarize(values).tolist() == expected and codes.binarize(values).dtype == np.int8
    t = codes.binarize(torch.tensor(values))
    assert t.dtype == torch.int8 and t.tolist() == expected
    assert codes.as_packed(np.tile(values, (1, 4))[:, :8], 8).tolist() == [[0b00111100]]


def test_model_encode_uses_the_sign_rule():
    import hybridhash

    torch.manual_seed(0)
    model = hybridhash.create_model("hybridhash_cpu", bits=16, depths=(1, 1, 1)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        u = model(x)
    assert torch.equal(model.encode(x), codes.binarize(u))


# ----------------------------------------------------------------------------------------------
# popcount and distances


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_popcount_matches_bit_loop(dtype, popcount_path):
    rng = np.random.default_rng(np.dtype(dtype).itemsize)
    top = np.iinfo(dtype).max
    x = rng.integers(0, top, 500, dtype=dtype, endpoint=True)
    x[:4] = [0, top, 1, top >> 1]
    x[4] = dtype(1) << dtype(8 * np.dtype(dtype).itemsize - 1)
    expected = [naive_popcount(int(v)) for v in x]
    got = codes.popcount(x)
    assert got.dtype == np.uint8 and got.tolist() == expected
    out = np.empty(x.shape, np.uint8)
    view = out.reshape(20, 25)
    assert codes.popcount(x.reshape(20, 25), view) is view  # written in place, the same array returned
    assert out.tolist() == expected
    assert codes.popcount_swar(x).tolist() == expected  # the fallback itself, whatever the switch


@pytest.mark.parametrize("bits", BITS)
def test_hamming_distances_match_per_bit_loop(bits, popcount_path):
    rng = np.random.default_rng(100 + bits)
    q = codes.pack_pm1(random_pm1(rng, 5, bits))
    d = codes.pack_pm1(random_pm1(rng, 9, bits))
    d[0] = q[0]  # distance 0
    d[1] = ~q[1]  # every bit differs
    expected = naive_hamming(q.tolist(), d.tolist())
    assert expected[0, 0] == 0 and expected[1, 1] == bits
    for fn in (codes.hamming_distances, metrics.hamming_distances):
        got = fn(q, d)
        assert got.dtype == np.int32 and np.array_equal(got, expected), fn.__module__


def test_tiled_distances_cross_tile_boundaries(popcount_path, monkeypatch):
    monkeypatch.setattr(codes, "_TILE_CELLS", 64)  # many small tiles
    rng = np.random.default_rng(7)
    q = rng.integers(0, 256, (3, 9), dtype=np.uint8)  # 72 bits: two words, the second padded
    d = rng.integers(0, 256, (150, 9), dtype=np.uint8)
    np.testing.assert_array_equal(codes.hamming_distances(q, d), naive_hamming(q.tolist(), d.tolist()))


def test_hamming_width_mismatch_is_named():
    with pytest.raises(IndexMismatchError, match="2 packed bytes but database codes have 3"):
        codes.hamming_distances(np.zeros((1, 2), np.uint8), np.zeros((1, 3), np.uint8))


def naive_topk(dist: np.ndarray, k: int):
    """Each row's first k of sorted (distance, index) pairs, by Python's sort: (d (nq, k'), ids (nq, k'))."""
    rows = [sorted((int(v), j) for j, v in enumerate(row))[:k] for row in dist]
    return (np.array([[d for d, _ in r] for r in rows], np.int64).reshape(len(rows), -1),
            np.array([[j for _, j in r] for r in rows], np.int64).reshape(len(rows), -1))


@pytest.mark.parametrize("sample_cols", [8, 8192])  # 8: the sampled threshold guess, often too low
def test_hamming_topk_equals_a_sorted_ranking_with_ties_by_index(monkeypatch, popcount_path, sample_cols):
    monkeypatch.setattr(codes, "_SAMPLE_COLS", sample_cols)
    monkeypatch.setattr(codes, "_CHUNK_CELLS", 4000)  # several chunks of queries
    rng = np.random.default_rng(11)
    pool = rng.integers(0, 256, (25, 3), dtype=np.uint8)  # 24 bits from 25 distinct codes: many ties
    d = pool[rng.integers(0, 25, 300)]
    q = np.concatenate([pool[rng.integers(0, 25, 30)], rng.integers(0, 256, (10, 3), dtype=np.uint8)])
    dist = naive_hamming(q.tolist(), d.tolist())  # (40, 300)
    for k in (1, 5, 37, 299, 300, 1000):
        got_d, got_i = codes.hamming_topk(q, d, k)
        want_d, want_i = naive_topk(dist, k)
        assert got_d.dtype == np.int32 and got_i.dtype == np.int64 and got_i.shape == (40, min(k, 300))
        assert np.array_equal(got_i, want_i) and np.array_equal(got_d, want_d), k
    pm_q, pm_d = codes.unpack_codes(q), codes.unpack_codes(d)  # the same codes as +-1
    assert np.array_equal(codes.hamming_topk(pm_q, pm_d, 9)[1], naive_topk(dist, 9)[1])
    assert codes.hamming_topk(q, d, 0)[1].shape == (40, 0) and codes.hamming_topk(q[:0], d, 4)[0].shape == (0, 4)
    with pytest.raises(ConfigError, match="k must be a non-negative integer"):
        codes.hamming_topk(q, d, -1)
    with pytest.raises(IndexMismatchError, match="3 packed bytes but database codes have 2"):
        codes.hamming_topk(q, d[:, :2], 3)


def test_rank_rows_orders_by_distance_then_id():
    rng = np.random.default_rng(12)
    dist = rng.integers(0, 4, (20, 15)).astype(np.int32)
    ids = np.stack([rng.permutation(100)[:15] for _ in range(20)]).astype(np.int64)
    got_d, got_i = codes.rank_rows(dist, ids)
    for r in range(20):
        pairs = sorted(zip(dist[r].tolist(), ids[r].tolist()))
        assert got_d[r].tolist() == [p[0] for p in pairs] and got_i[r].tolist() == [p[1] for p in pairs]


def test_numpy1_without_bitwise_count(monkeypatch):
    """As on numpy 1.x: the switch off and np.bitwise_count absent; nothing may call it."""
    monkeypatch.setattr(codes, "USE_BITWISE_COUNT", False)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    rng = np.random.default_rng(3)
    pm_q, pm_d = random_pm1(rng, 4, 64), random_pm1(rng, 30, 64)
    q, d = codes.pack_pm1(pm_q), codes.pack_pm1(pm_d)
    expected = naive_hamming(q.tolist(), d.tolist())
    np.testing.assert_array_equal(codes.hamming_distances(q, d), expected)
    np.testing.assert_array_equal(metrics.hamming_distances(pm_q, pm_d), expected)
    ql, dl = rng.integers(0, 3, 4), rng.integers(0, 3, 30)
    # mAP@all from the naive distances: stable ranking, precision at each relevant item
    aps = []
    for i in range(4):
        order = sorted(range(30), key=lambda j: (expected[i, j], j))
        rel = [dl[j] == ql[i] for j in order]
        hits = np.cumsum(rel)
        aps.append(sum(hits[r] / (r + 1) for r in range(30) if rel[r]) / max(1, hits[-1]))
    assert metrics.mean_average_precision(pm_q, pm_d, ql, dl) == pytest.approx(np.mean(aps), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# the code-length rule


def test_check_bits_rule():
    assert [codes.check_bits(b) for b in range(8, 257, 8)] == list(range(8, 257, 8))
    assert codes.check_bits(np.int64(64)) == 64
    with pytest.raises(ConfigError) as err:
        codes.check_bits(12)
    assert str(err.value) == "bits must be a multiple of 8 between 8 and 256, got 12"
    for bad in (0, -8, 4, 7, 12, 255, 264, 300, 64.0, True, "16", None):
        with pytest.raises(ConfigError, match="multiple of 8 between 8 and 256"):
            codes.check_bits(bad)
    with pytest.raises(ConfigError, match="^--bits must be"):
        codes.check_bits(7, "--bits")


def test_one_owner_of_the_format():
    """No other module of the package packs, popcounts or binarises on its own."""
    patterns = [r"np\.packbits\(", r"np\.unpackbits\(", r"bitwise_count", r"0x5555", r">= 0, 1, -1",
                r"def (_?pack_codes|_?popcount\w*|_?words|hamming_distances|_check_bits|_bits_from_pm1)\b"]
    allowed = set()
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "codes.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(SRC)}: {m.group(0)}" for p in patterns for m in re.finditer(p, text)
                      if (path.name, m.group(0)) not in allowed]
    assert offenders == []
