"""HashIndex against a brute-force popcount ranking written here, plus edge cases and persistence."""
import json

import numpy as np
import pytest
import torch

from hybridhash.errors import ConfigError, DataError, HybridHashError, IndexMismatchError
from hybridhash.codes import as_packed, hamming_distances
from hybridhash.index import EMPTY_DISTANCE, EMPTY_ID, HashIndex


# ---------------------------------------------------------------- independent reference
POPCOUNT8 = np.array([bin(v).count("1") for v in range(256)], dtype=np.int64)  # bits set per byte value


def brute_force(queries, database, k):
    """Exact k-NN by Hamming distance, ties by id, empty slots (-1, int32 max): (nq, k) each."""
    dist = POPCOUNT8[queries[:, None, :] ^ database[None, :, :]].sum(axis=2)  # (nq, nb)
    out_d = np.full((len(queries), k), np.iinfo(np.int32).max, dtype=np.int64)
    out_i = np.full((len(queries), k), -1, dtype=np.int64)
    ids = np.arange(len(database))
    for r in range(len(queries)):
        order = np.lexsort((ids, dist[r]))[:k]  # by distance, then id
        out_d[r, :len(order)] = dist[r, order]
        out_i[r, :len(order)] = order
    return out_d, out_i


def popcount_dist(a, b):
    """Hamming distance of matching rows of packed codes a, b: (n,)."""
    return POPCOUNT8[a ^ b].sum(axis=1)


def tied_codes(rng, n, bits, distinct):
    """Packed codes drawn from only ``distinct`` values: many duplicates, so many ties."""
    pool = rng.integers(0, 256, (distinct, bits // 8), dtype=np.uint8)
    return pool[rng.integers(0, distinct, n)]


def learned_like(rng, n, bits=64, protos=None, flip=0.15):
    """Codes of a few class prototypes with ``flip`` of the bits flipped per item (packed)."""
    if protos is None:
        protos = rng.random((20, bits)) < 0.5
    b = protos[rng.integers(0, len(protos), n)] ^ (rng.random((n, bits)) < flip)
    return np.packbits(b, axis=1)


# ---------------------------------------------------------------- exact search
@pytest.mark.parametrize("bits", [8, 16, 24, 64, 256])
@pytest.mark.parametrize("threads", [1, 2])
def test_flat_equals_brute_force_with_ties_by_id(bits, threads):
    rng = np.random.default_rng(bits + threads)
    db = tied_codes(rng, 700, bits, distinct=60)
    q = np.concatenate([tied_codes(rng, 120, bits, distinct=60),
                        rng.integers(0, 256, (80, bits // 8), dtype=np.uint8)])
    index = HashIndex(bits, threads=threads)
    index.add(db[:300])
    index.add(db[300:])  # two adds: ids continue in insertion order
    for k in (1, 7, 64, 700, 705):
        d, i = index.search(q, k)
        rd, ri = brute_force(q, db, k)
        assert d.dtype == np.int32 and i.dtype == np.int64 and d.shape == i.shape == (len(q), k)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(d, rd)


def test_flat_learned_like_codes_ties_at_kth():
    rng = np.random.default_rng(7)
    db = learned_like(rng, 5000)
    q = learned_like(rng, 300)
    index = HashIndex(64, threads=2)
    index.add(db)
    d, i = index.search(q, 50)
    rd, ri = brute_force(q, db, 50)
    # meaningful only when the k-th distance is shared by more items than the result has room for
    kth = rd[:, -1:]
    dist_all = POPCOUNT8[q[:, None, :] ^ db[None, :, :]].sum(axis=2)  # (nq, nb)
    assert ((dist_all == kth).sum(axis=1) > (rd == kth).sum(axis=1)).mean() > 0.5
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(d, rd)


# ---------------------------------------------------------------- approximate search
def test_ivf_recall_and_distances():
    rng = np.random.default_rng(3)
    protos = rng.random((50, 64)) < 0.5
    db = learned_like(rng, 20000, protos=protos)
    q = learned_like(rng, 100, protos=protos)
    index = HashIndex(64, "ivf", threads=2)  # default nprobe 8 of 32 cells
    index.add(db)
    assert index.params["nlist"] == 32  # power of two nearest sqrt(20000) / 4
    k = 20
    d, i = index.search(q, k)
    rd, _ = brute_force(q, db, k)
    assert (i >= 0).all() and (i < len(db)).all()
    assert all(len(set(row)) == k for row in i.tolist())
    np.testing.assert_array_equal(d, popcount_dist(np.repeat(q, k, axis=0), db[i.ravel()]).reshape(d.shape))
    assert (np.diff(d, axis=1) >= 0).all()
    recall = (d <= rd[:, -1:]).mean()  # a hit: within the exact k-th distance
    assert recall >= 0.95, recall  # measured 0.977 with these seeds
    index.nprobe = index.params["nlist"]  # every cell scanned: exact distances
    d_all, _ = index.search(q, k)
    np.testing.assert_array_equal(d_all, rd)


def test_ivf_small_first_add_and_explicit_nlist():
    rng = np.random.default_rng(0)
    db = rng.integers(0, 256, (100, 4), dtype=np.uint8)
    with pytest.raises(ConfigError, match="nlist=256 needs at least 256"):
        HashIndex(32, "ivf", nlist=256).add(db)
    index = HashIndex(32, "ivf", nlist=4, nprobe=4)
    index.add(db)
    index.add(db[:10])
    assert index.ntotal == 110
    d, i = index.search(db[:5], 3)
    np.testing.assert_array_equal(d[:, 0], 0)
    assert set(i[:, :2].ravel()) >= set(range(5))  # each item finds itself (and its later copy)


# ---------------------------------------------------------------- edge cases
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_empty_index_and_k_edges(kind):
    rng = np.random.default_rng(1)
    q = rng.integers(0, 256, (4, 8), dtype=np.uint8)
    index = HashIndex(64, kind)
    assert index.ntotal == len(index) == 0 and index.memory_bytes() == 0
    d, i = index.search(q, 5)
    assert d.shape == (4, 5) and (i == EMPTY_ID).all() and (d == EMPTY_DISTANCE).all()
    db = rng.integers(0, 256, (40, 8), dtype=np.uint8)
    index.add(db)
    d, i = index.search(q, 0)
    assert d.shape == i.shape == (4, 0) and d.dtype == np.int32 and i.dtype == np.int64
    d, i = index.search(q[:0], 3)
    assert d.shape == (0, 3)
    if kind == "ivf":
        index.nprobe = index.params["nlist"]
    d, i = index.search(q, 45)
    rd, ri = brute_force(q, db, 45)
    assert (i[:, 40:] == EMPTY_ID).all() and (d[:, 40:] == EMPTY_DISTANCE).all()
    np.testing.assert_array_equal(d, rd)
    assert sorted(i[0, :40].tolist()) == list(range(40))


def test_pm1_packed_and_torch_inputs_agree():
    rng = np.random.default_rng(5)
    pm = np.where(rng.random((300, 32)) < 0.5, -1.0, 1.0).astype(np.float32)  # (n, bits) +-1
    packed = np.packbits(pm >= 0, axis=1)
    np.testing.assert_array_equal(as_packed(pm, 32), packed)
    np.testing.assert_array_equal(as_packed(torch.from_numpy(pm), 32), packed)
    np.testing.assert_array_equal(as_packed(pm.astype(np.int8), 32), packed)
    a, b = HashIndex(32), HashIndex(32)
    a.add(pm)
    b.add(packed)
    for x, y in zip(a.search(pm[:20], 10), b.search(packed[:20], 10)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.search(torch.from_numpy(pm[:20]), 10)[1], b.search(packed[:20], 10)[1])
    # 0 counts as bit 1 (value >= 0), as the sign convention says
    assert as_packed(np.zeros((1, 8)), 8)[0, 0] == 255


def test_wrong_width_and_bad_input_errors():
    index = HashIndex(64)
    with pytest.raises(IndexMismatchError, match=r"32 bits.*expected 64 bits"):
        index.add(np.zeros((3, 4), np.uint8))
    with pytest.raises(IndexMismatchError, match=r"48 bits.*expected 64 bits"):
        index.search(np.ones((3, 48), np.float32), 5)
    with pytest.raises(DataError, match="2-D"):
        index.search(np.zeros(8, np.uint8), 5)
    with pytest.raises(DataError, match="dtype bool"):
        index.add(np.ones((2, 64), bool))
    with pytest.raises(DataError, match="NaN"):
        index.add(np.full((2, 64), np.nan))
    with pytest.raises(ConfigError, match="k must be"):
        index.search(np.zeros((1, 8), np.uint8), -1)
    with pytest.raises(ConfigError, match="unknown index kind 'lsh'"):
        HashIndex(64, "lsh")
    with pytest.raises(ConfigError, match="unknown parameter.*nprobe"):
        HashIndex(64, "flat", nprobe=3)
    for bad in (0, 12, 264, 64.0):
        with pytest.raises(ConfigError, match="bits"):
            HashIndex(bad)
    for err in (IndexMismatchError, DataError, ConfigError):
        assert issubclass(err, HybridHashError)


def test_hamming_distances_helper():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (7, 3), dtype=np.uint8)
    d = hamming_distances(a, b)
    assert d.dtype == np.int32 and d.shape == (5, 7)
    np.testing.assert_array_equal(d, POPCOUNT8[a[:, None, :] ^ b[None, :, :]].sum(axis=2))


def test_memory_is_one_code_per_item():
    index = HashIndex(64)
    index.add(np.zeros((1000, 8), np.uint8))
    assert index.memory_bytes() == 8000
    ivf = HashIndex(16, "ivf", nlist=2)
    ivf.add(np.random.default_rng(0).integers(0, 256, (100, 2), dtype=np.uint8))
    assert ivf.memory_bytes() == 100 * (2 + 8) + 2 * 2  # codes + ids + centroids


# ---------------------------------------------------------------- persistence
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_save_load_round_trip(tmp_path, kind):
    rng = np.random.default_rng(11)
    db = learned_like(rng, 3000, bits=48)
    q = learned_like(rng, 50, bits=48)
    params = {"nprobe": 3} if kind == "ivf" else {}
    index = HashIndex(48, kind, fingerprint="abc123", **params)
    index.add(db)
    path = tmp_path / "sub" / "index.faiss"
    index.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["index.faiss", "index.faiss.json"]  # no temp files
    manifest = json.loads((tmp_path / "sub" / "index.faiss.json").read_text())
    assert manifest["kind"] == kind and manifest["bits"] == 48 and manifest["count"] == 3000
    assert manifest["fingerprint"] == "abc123"
    back = HashIndex.load(path, expect_bits=48, expect_fingerprint="abc123")
    assert (back.kind, back.bits, back.ntotal, back.fingerprint) == (kind, 48, 3000, "abc123")
    assert back.params == index.params
    for x, y in zip(index.search(q, 30), back.search(q, 30)):
        np.testing.assert_array_equal(x, y)
    back.add(db[:5])  # a loaded index keeps growing with the next ids
    assert back.search(db[:1], 2)[1][0].tolist() == [0, 3000]


def test_save_load_empty(tmp_path):
    for kind in ("flat", "ivf"):
        HashIndex(16, kind).save(tmp_path / f"{kind}.faiss")
        back = HashIndex.load(tmp_path / f"{kind}.faiss", expect_bits=16)
        assert back.ntotal == 0 and back.kind == kind
        assert (back.search(np.zeros((1, 2), np.uint8), 3)[1] == -1).all()


def test_load_refuses_mismatch(tmp_path):
    index = HashIndex(32, fingerprint="model-a")
    index.add(np.zeros((10, 4), np.uint8))
    path = tmp_path / "i.faiss"
    index.save(path)
    with pytest.raises(IndexMismatchError, match=r"32-bit codes, expected 64-bit"):
        HashIndex.load(path, expect_bits=64)
    with pytest.raises(IndexMismatchError, match=r"model-a.*expected model model-b"):
        HashIndex.load(path, expect_fingerprint="model-b")
    HashIndex(32).save(tmp_path / "nofp.faiss")  # no fingerprint recorded: nothing to compare
    assert HashIndex.load(tmp_path / "nofp.faiss", expect_fingerprint="model-b").fingerprint is None


def test_load_corrupt_or_incomplete(tmp_path):
    index = HashIndex(32)
    index.add(np.random.default_rng(0).integers(0, 256, (50, 4), dtype=np.uint8))
    path = tmp_path / "i.faiss"
    index.save(path)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match="cannot read faiss index"):
        HashIndex.load(path)
    path.write_bytes(b"not an index at all")
    with pytest.raises(DataError, match="cannot read faiss index"):
        HashIndex.load(path)
    path.write_bytes(good)
    mpath = tmp_path / "i.faiss.json"
    manifest = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**manifest, "count": 49}))
    with pytest.raises(DataError, match="disagrees with its manifest"):
        HashIndex.load(path)
    mpath.write_text("{broken")
    with pytest.raises(DataError, match="malformed"):
        HashIndex.load(path)
    mpath.unlink()
    with pytest.raises(DataError, match="manifest not found"):
        HashIndex.load(path)
    with pytest.raises(DataError, match="index file not found"):
        HashIndex.load(tmp_path / "missing.faiss")
