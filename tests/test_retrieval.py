"""Retriever and the index/search commands: results equal a brute-force popcount search over the
collection (ties by id), an indexed image finds itself, the wrong checkpoint is refused."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import hybridhash
from hybridhash.app import cli
from hybridhash.app.encode import encode_collection
from hybridhash.errors import ConfigError, DataError, IndexMismatchError
from hybridhash.retrieval import Hit, Retriever, index_path

from tests.helpers.encoding import BITS, MAX_PIXELS, make_images, save_model

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force(collection_codes: np.ndarray, query_codes: np.ndarray, k: int):
    """Distances and ids of the k nearest by popcount of xor, ties by id: (nq, <=k) each."""
    xor = np.bitwise_xor(query_codes[:, None, :], collection_codes[None, :, :])  # (nq, n, bytes)
    dist = np.unpackbits(xor, axis=2).sum(axis=2)  # (nq, n)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]  # stable: equal distances keep id order
    return np.take_along_axis(dist, order, axis=1), order


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):  # noqa: F811
    base = tmp_path_factory.mktemp("retrieval")
    good = make_images(base / "images")
    ckpt = save_model(base / "ckpt")
    model = hybridhash.from_pretrained(ckpt)
    codes_dir = base / "codes"
    encode_collection(base / "images", codes_dir, ckpt, model=model, workers=0, shard_size=16,
                      max_pixels=MAX_PIXELS, progress=False)
    # query images that are not in the collection: later digits of each class
    from sklearn.datasets import load_digits

    digits = load_digits()
    queries = []
    for c in (1, 7):
        i = np.flatnonzero(digits.target == c)[20]
        img = Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
        queries.append(base / f"query_{c}.png")
        img.convert("RGB").save(queries[-1])
    return {"base": base, "images": base / "images", "good": good, "ckpt": ckpt, "codes": codes_dir,
            "queries": [str(q) for q in queries]}


@pytest.fixture(scope="module")
def retriever(world):
    return Retriever.open(world["codes"])


def query_paths(world):
    return world["queries"] + [str(world["images"] / p) for p in world["good"][::13]]


def assert_hits_equal_brute_force(r: Retriever, hits, qcodes: np.ndarray, k: int) -> None:
    packed = np.packbits(qcodes > 0, axis=1)
    dist, ids = brute_force(np.asarray(r.collection.codes), packed, k)
    for row, d, i in zip(hits, dist, ids):
        assert [h.id for h in row] == i.tolist()
        assert [h.distance for h in row] == d.tolist()
        assert [h.rank for h in row] == list(range(1, len(i) + 1))
        assert [h.path for h in row] == [r.collection.path(j) for j in i]
        assert [h.label for h in row] == [r.collection.path(j).split("/")[0] for j in i]


def test_search_equals_brute_force(world, retriever):
    r = retriever
    assert (r.bits, r.count) == (BITS, len(world["good"]))
    assert r.preprocess["img_size"] == 32 and r.model.bits == BITS
    queries = query_paths(world)
    qcodes = r.encode_images(queries)
    assert qcodes.dtype == np.int8 and qcodes.shape == (len(queries), BITS)
    assert set(np.unique(qcodes)) <= {-1, 1}
    for k in (1, 5, 17):
        assert_hits_equal_brute_force(r, r.search(queries, k=k), qcodes, k)
    # k beyond the collection: every item once, no empty slots
    hits = r.search(queries[:2], k=r.count + 10)
    assert all(len(row) == r.count for row in hits)
    assert_hits_equal_brute_force(r, hits, qcodes[:2], r.count)
    # search_codes takes +-1 or packed codes
    a = r.search_codes(qcodes, 4)
    assert a == r.search_codes(np.packbits(qcodes > 0, axis=1), 4) == r.search(queries, 4)


def test_query_encoding_is_the_collections(world, retriever):
    """A collection image, encoded at query time, has exactly its stored code; it finds itself first when unique."""
    r = retriever
    codes = np.asarray(r.collection.codes)
    paths = [str(world["images"] / p) for p in world["good"]]
    q = np.packbits(r.encode_images(paths) > 0, axis=1)
    np.testing.assert_array_equal(q, codes)
    unique_ids = [i for i in range(len(codes)) if (codes == codes[i]).all(axis=1).sum() == 1]
    assert len(unique_ids) >= 10, "the test model should give most images a code of their own"
    hits = r.search([paths[i] for i in unique_ids], k=3)
    for i, row in zip(unique_ids, hits):
        assert (row[0].rank, row[0].id, row[0].distance) == (1, i, 0)
        assert row[0].path == world["good"][i] and row[1].distance > 0


def test_inputs_paths_bytes_pil_and_tensors_agree(world, retriever):
    r = retriever
    paths = world["queries"]
    want = r.search(paths, k=5)
    pils = [Image.open(p) for p in paths]
    assert r.search(pils, k=5) == want
    assert r.search([open(p, "rb").read() for p in paths], k=5) == want
    x = torch.stack([r.transform(img.convert("RGB")) for img in pils])  # (2, 3, 32, 32)
    assert r.search(x, k=5) == want
    assert r.search(paths[0], k=5) == want[:1]
    # the first hit's record against brute force over the collection, not against its own fields
    dist, ids = brute_force(np.asarray(r.collection.codes), np.packbits(r.encode_images(paths[:1]) > 0, axis=1), 1)
    j = int(ids[0, 0])
    assert isinstance(want[0][0], Hit)
    assert json.loads(json.dumps(want[0][0].to_dict())) == {
        "rank": 1, "id": j, "distance": int(dist[0, 0]), "path": r.collection.path(j),
        "label": r.collection.path(j).split("/")[0]}


def test_bad_queries_raise_one_line_errors(world, retriever, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(DataError, match="bad.jpg: not an image"):
        retriever.search([str(bad)], k=3)
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        retriever.search(world["queries"], k=0)
    with pytest.raises(DataError, match=r"\(B, 3, 32, 32\)"):
        retriever.search(torch.zeros(1, 3, 16, 16), k=3)
    small = Retriever(retriever.model, retriever.collection, retriever.index, max_pixels=100)
    with pytest.raises(DataError, match="over the limit of 100"):
        small.search(world["queries"][:1], k=3)


def test_concurrent_searches_match_sequential(world, retriever):
    queries = query_paths(world)
    want = [retriever.search([q], k=7) for q in queries]
    got = {}

    def worker(t):
        got[t] = [retriever.search([q], k=7) for q in queries]

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[t] == want for t in range(4))


def test_refuses_checkpoint_of_other_bits_or_model(world, tmp_path, capsys):
    other_bits = save_model(tmp_path / "b16", seed=0, bits=16)
    with pytest.raises(IndexMismatchError) as err:
        Retriever.open(world["codes"], checkpoint=other_bits)
    msg = str(err.value)
    assert "32-bit" in msg and "16-bit" in msg and len(msg.splitlines()) == 1

    other_model = save_model(tmp_path / "seed1", seed=1)
    fp_other = hybridhash.from_pretrained(other_model).fingerprint
    fp_codes = hybridhash.from_pretrained(world["ckpt"]).fingerprint
    assert fp_other != fp_codes
    with pytest.raises(IndexMismatchError) as err:
        Retriever.open(world["codes"], checkpoint=other_model)
    assert fp_other in str(err.value) and fp_codes in str(err.value)

    assert cli.main(["search", "--collection", str(world["codes"]), world["queries"][0], "--checkpoint",
                     str(other_model)]) == 1
    err_text = capsys.readouterr().err
    assert err_text.startswith("error: ") and fp_other in err_text


def test_index_command_and_saved_index(world, retriever, tmp_path, capsys):
    from hybridhash.index import HashIndex

    assert cli.main(["index", "--collection", str(world["codes"])]) == 0
    capsys.readouterr()
    assert index_path(world["codes"]).is_file()
    r = Retriever.open(world["codes"])
    assert r.index.kind == "flat" and r.index.ntotal == r.count
    queries = query_paths(world)
    assert r.search(queries, k=9) == retriever.search(queries, k=9)
    # the sidecar records the collection's model; loading checks it
    saved = HashIndex.load(index_path(world["codes"]), expect_bits=BITS, expect_fingerprint=r.collection.fingerprint)
    assert saved.ntotal == r.count and saved.fingerprint == r.collection.fingerprint
    with pytest.raises(IndexMismatchError):
        HashIndex.load(index_path(world["codes"]), expect_bits=16)
    with pytest.raises(IndexMismatchError):
        HashIndex.load(index_path(world["codes"]), expect_fingerprint="0123456789abcdef")

    # a sub-linear kind: saved with its parameters; scanning every cell it equals the exact search
    out = tmp_path / "ivf"
    assert cli.main(["index", "--collection", str(world["codes"]), "--kind", "ivf", "--nlist", "2", "--nprobe", "2",
                     "--out", str(out)]) == 0
    ivf = HashIndex.load(index_path(out), expect_bits=BITS)
    assert (ivf.kind, ivf.params["nlist"], ivf.nprobe, ivf.ntotal) == ("ivf", 2, 2, r.count)
    assert Retriever(r.model, r.collection, ivf).search(queries, k=9) == retriever.search(queries, k=9)
    r_ivf = Retriever.open(world["codes"], kind="ivf")  # not the saved kind: built in memory
    assert r_ivf.index.kind == "ivf" and r_ivf.index.ntotal == r.count
    assert cli.main(["index", "--collection", str(world["codes"]), "--nprobe", "2"]) == 1
    assert "applies to ivf" in capsys.readouterr().err


def test_search_cli_table_and_json(world, retriever, capsys):
    queries = world["queries"]
    want = retriever.search(queries, k=3)
    assert cli.main(["search", "--collection", str(world["codes"]), *queries, "--k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["query", "rank", "distance", "path", "label"]
    assert len(lines) == 1 + 3 * len(queries)
    for line, (q, h) in zip(lines[1:], [(q, h) for q, row in zip(queries, want) for h in row]):
        assert line.split() == [q, str(h.rank), str(h.distance), h.path, h.label]

    assert cli.main(["search", "--collection", str(world["codes"]), *queries, "--k", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["k"] == 3 and [res["query"] for res in doc["results"]] == queries
    assert [res["hits"] for res in doc["results"]] == [[h.to_dict() for h in row] for row in want]


def test_collection_of_only_unreadable_images(world, tmp_path):
    """Every image skipped: an empty collection that still opens and answers with no hits."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.jpg").write_text("no pixels")
    col = encode_collection(bad, tmp_path / "codes", world["ckpt"], workers=0, progress=False)
    assert col.count == 0 and col.codes.shape == (0, BITS // 8)
    assert sorted(s["path"] for s in col.skipped) == ["empty.png", "text.jpg"]
    r = Retriever.open(tmp_path / "codes")
    assert r.count == 0 and r.search(world["queries"], k=3) == [[], []]
