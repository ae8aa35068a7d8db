"""Updating a collection in place (``encode`` run again, :mod:`hybridhash.app.encode.update`): after
random additions, removals, rewrites and label changes the collection equals a fresh encode of the
new list as a mapping path -> (code, label), its carried index answers as one built from scratch
(flat, and ivf on its kept cells against a naive re-computation), ids of unchanged images stay, and
``--dry-run`` writes nothing. Kill -9 and the writer's lock: tests/app/test_encode_update_kill.py."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import hybridhash
from hybridhash.app import cli
from hybridhash.app.encode import encode_collection, update_collection
from hybridhash.codes import hamming_topk
from hybridhash.collection import open_collection
from hybridhash.index import HashIndex
from hybridhash.retrieval import Retriever, build_index, load_or_build_index
from tests.helpers.encoding import MAX_PIXELS, save_model
from tests.helpers.living import (as_mapping, change, digit_png, ids_by_path, result_sets, snapshot_stats,
                                  write_list)

pytestmark = pytest.mark.usefixtures("one_thread")
KW = dict(workers=0, batch_size=16, shard_size=8, max_pixels=MAX_PIXELS, progress=False)


@pytest.fixture(scope="module")
def model_ckpt(one_thread, tmp_path_factory):
    ckpt = save_model(tmp_path_factory.mktemp("ckpt") / "ckpt")
    return ckpt, hybridhash.from_pretrained(ckpt)


def _queries(col, rng, n=6) -> np.ndarray:
    """Packed query codes (n, bits/8): random ones and codes of the collection itself."""
    rand = rng.integers(0, 256, (n // 2, col.bits // 8), dtype=np.uint8)
    own = np.asarray(col.codes[rng.choice(col.count, n - n // 2, replace=False)])
    return np.concatenate([rand, own])


def test_random_updates_equal_a_fresh_encode(model_ckpt, tmp_path):
    ckpt, model = model_ckpt
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    entries = {}  # path -> labels (3 bits)
    for i in range(40):
        rel = f"d{i % 4}/img_{i:03d}.png"
        digit_png(images / rel, i)
        entries[rel] = [int(b) for b in rng.integers(0, 2, 3)]
    (images / "d0" / "broken.png").write_bytes(b"not a png")
    entries["d0/broken.png"] = [1, 0, 0]
    listfile = images / "db.txt"  # paths start at its folder
    write_list(listfile, entries)
    out = tmp_path / "codes"
    encode_collection(listfile, out, ckpt, model=model, **KW)
    assert cli.main(["index", "--collection", str(out)]) == 0
    serial = 1000
    for round_ in range(3):
        before = open_collection(out)
        ids_before = ids_by_path(before)
        names = sorted(p for p in entries if p != "d0/broken.png")
        gone = set(rng.choice(names, 4, replace=False))
        rest = [p for p in names if p not in gone]
        changed = set(rng.choice(rest, 3, replace=False))
        relabelled = {p for p in rng.choice(rest, 3, replace=False) if p not in changed}
        for p in gone:
            (images / p).unlink()
            del entries[p]
        for p in changed:
            change(images / p, serial)
            serial += 1
        for p in relabelled:
            entries[p] = [1 - entries[p][0]] + entries[p][1:]
        added = []
        for _ in range(5):
            rel = f"d{serial % 4}/new_{serial:04d}.png"
            digit_png(images / rel, serial)
            entries[rel] = [int(b) for b in rng.integers(0, 2, 3)]
            added.append(rel)
            serial += 1
        write_list(listfile, entries)

        done = []
        col = encode_collection(listfile, out, ckpt, model=model, report=done.append, **KW)
        report = done[0]
        assert col.generation == round_ + 1
        assert (report.added, report.removed, report.changed, report.relabelled) == \
            (len(added), len(gone), len(changed), len(relabelled))
        assert report.kept == before.count - len(gone) - len(changed) and report.skipped == 1
        fresh = encode_collection(listfile, tmp_path / f"fresh{round_}", ckpt, model=model, **KW)
        assert as_mapping(col) == as_mapping(fresh)
        assert [s["path"] for s in col.skipped] == [s["path"] for s in fresh.skipped] == ["d0/broken.png"]
        # unchanged images keep their ids; new and rewritten ones get ids above all given before
        ids_after = ids_by_path(col)
        assert {p: ids_after[p] for p in ids_after if p in ids_before and p not in changed} == \
            {p: ids_before[p] for p in ids_after if p in ids_before and p not in changed}
        assert min(ids_after[p] for p in [*added, *changed]) >= before.next_id
        assert col.next_id == before.next_id + len(added) + len(changed)
        # the carried index is bound to these codes and answers as one built from scratch
        assert col.index_path.parent.name == f"gen-{round_ + 1:05d}" and col.index_path.is_file()
        carried = HashIndex.load(col.index_path, expect_codes_sha256=col.codes_sha256)
        scratch = build_index(fresh, "flat")
        q = _queries(col, rng)
        assert result_sets(col, carried, q) == result_sets(fresh, scratch, q)
        # the old generation's files are gone, nothing else is there
        assert sorted(e.name for e in out.iterdir()) == [".hybridhash.lock", f"gen-{round_ + 1:05d}",
                                                         "manifest.json"]


def test_ivf_keeps_its_cells_and_answers_as_the_naive_ivf(model_ckpt, tmp_path):
    ckpt, model = model_ckpt
    images = tmp_path / "images"
    for i in range(48):
        digit_png(images / f"img_{i:03d}.png", i)
    out = tmp_path / "codes"
    encode_collection(images, out, ckpt, model=model, **KW)
    assert cli.main(["index", "--collection", str(out), "--kind", "ivf", "--nlist", "4", "--nprobe", "1"]) == 0
    before = HashIndex.load(open_collection(out).index_path)
    import faiss

    cells = faiss.vector_to_array(faiss.downcast_IndexBinary(before._index.quantizer).xb).reshape(4, -1)
    for i in range(48, 60):
        digit_png(images / f"img_{i:03d}.png", i)
    for i in range(0, 6):
        (images / f"img_{i:03d}.png").unlink()
    done = []
    col = encode_collection(images, out, ckpt, model=model, report=done.append, **KW)
    index = load_or_build_index(col)
    assert index.kind == "ivf" and col.index_path.is_file() and index.codes_sha256 == col.codes_sha256
    now = faiss.vector_to_array(faiss.downcast_IndexBinary(index._index.quantizer).xb).reshape(4, -1)
    np.testing.assert_array_equal(now, cells)
    # drift: the rows added after training over all rows
    assert done[0].index == "ivf" and done[0].ivf_drift == pytest.approx(12 / col.count)

    codes = np.asarray(col.codes)
    paths = col.all_paths()
    cell_of = np.array([hamming_topk(c[None], cells, 1)[1][0, 0] for c in codes])  # nearest cell, ties by id
    q = _queries(col, np.random.default_rng(1))
    for nprobe in (1, 4):
        index.nprobe = nprobe
        got = result_sets(col, index, q)
        want = []
        for qc in q:
            probed = set(hamming_topk(qc[None], cells, nprobe)[1][0].tolist())
            dist = np.unpackbits(codes ^ qc, axis=1).sum(1)
            want.append({(paths[r], int(dist[r])) for r in range(col.count) if cell_of[r] in probed})
        assert got == want
    # with every cell probed it is exact: the same as a flat index built from scratch
    fresh = encode_collection(images, tmp_path / "fresh", ckpt, model=model, **KW)
    assert result_sets(col, index, q) == result_sets(fresh, build_index(fresh, "flat"), q)


def test_dry_run_writes_nothing_and_says_what_it_would_do(model_ckpt, tmp_path, capsys):
    ckpt, model = model_ckpt
    images = tmp_path / "images"
    for i in range(12):
        digit_png(images / f"c{i % 2}" / f"img_{i:03d}.png", i)
    out = tmp_path / "codes"
    argv = ["encode", "--checkpoint", str(ckpt), "--images", str(images), "--collection", str(out),
            "--workers", "0", "--max-pixels", str(MAX_PIXELS), "--no-progress"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    (images / "c0" / "img_000.png").unlink()
    change(images / "c1" / "img_001.png", 500)
    digit_png(images / "c1" / "img_100.png", 100)
    digit_png(images / "c0" / "img_101.png", 101)
    before = snapshot_stats(tmp_path)
    assert cli.main(argv + ["--dry-run"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert snapshot_stats(tmp_path) == before
    assert len(printed) == 1 and printed[0].startswith(f"dry run: {out} would go to generation 1: ")
    assert "add 2, remove 1, change 1, relabel 0, keep 10" in printed[0] and "nothing written" in printed[0]

    assert cli.main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith(f"updated {out} to generation 1: added 2, removed 1, changed 1, relabelled 0, "
                                 f"kept 10 (") and "encode" in printed[0]
    # nothing changed since: nothing is written
    before = snapshot_stats(tmp_path)
    assert cli.main(argv) == 0
    assert f"{out} is up to date at generation 1: kept 13 (" in capsys.readouterr().out
    after = snapshot_stats(tmp_path)
    lock = "codes/.hybridhash.lock"  # the writer's lock records who took it last
    assert {k: v for k, v in after.items() if k != lock} == {k: v for k, v in before.items() if k != lock}


def test_a_reader_keeps_its_generation_until_it_refreshes(model_ckpt, tmp_path):
    ckpt, model = model_ckpt
    images = tmp_path / "images"
    for i in range(16):
        digit_png(images / f"img_{i:03d}.png", i)
    out = tmp_path / "codes"
    encode_collection(images, out, ckpt, model=model, **KW)
    retriever = Retriever.open(out)
    q = _queries(retriever.collection, np.random.default_rng(2))
    k = retriever.count
    old = [[(h.path, h.distance, h.id) for h in hits] for hits in retriever.search_codes(q, k)]
    assert not retriever.refresh()
    for i in range(4):
        (images / f"img_{i:03d}.png").unlink()
    for i in range(16, 20):
        digit_png(images / f"img_{i:03d}.png", i)
    encode_collection(images, out, ckpt, model=model, **KW)
    assert not (out / "codes.npy").exists()  # generation 0's files are gone ...
    assert [[(h.path, h.distance, h.id) for h in hits] for hits in retriever.search_codes(q, k)] == old  # ... still read
    assert retriever.generation == 0 and not retriever.collection.is_current()
    assert open_collection(out).generation == 1 == type(retriever.collection).current_generation(out)
    assert retriever.refresh() and retriever.generation == 1 and not retriever.refresh()
    new = retriever.search_codes(q, retriever.count)
    col = open_collection(out)
    assert [{(h.path, h.distance) for h in hits} for hits in new] == \
        result_sets(col, build_index(col, "flat"), q)
    assert all(col.path(h.id) == h.path for hits in new for h in hits)


def test_update_collection_from_python(model_ckpt, tmp_path):
    ckpt, model = model_ckpt
    images = tmp_path / "images"
    for i in range(12):
        digit_png(images / f"c{i % 3}" / f"img_{i:03d}.png", i)
    out = tmp_path / "codes"
    col = encode_collection(images, out, ckpt, model=model, **KW)
    ids = ids_by_path(col)
    # the application put one new image in a new class, rewrote one, dropped one, and names a new class for one
    digit_png(images / "c3" / "img_050.png", 50)
    change(images / "c0" / "img_003.png", 51)
    (images / "c1" / "img_004.png").unlink()
    dry = update_collection(out, add=["c3/img_050.png"], remove=["c1/img_004.png"], labels={"c3/img_050.png": "c3"},
                            model=model, dry_run=True)
    assert dry.dry_run and (dry.added, dry.removed) == (1, 1) and open_collection(out).generation == 0
    report = update_collection(out, add=["c3/img_050.png", "c0/img_003.png"], remove=["c1/img_004.png"],
                               labels={"c3/img_050.png": "c3", "c2/img_002.png": "c1"}, model=model)
    assert (report.added, report.removed, report.changed, report.relabelled) == (1, 1, 1, 1)
    col = open_collection(out)
    assert ids_by_path(col)["c2/img_002.png"] == ids["c2/img_002.png"]  # relabelled, not encoded again
    assert col.label(ids["c2/img_002.png"]) == "c1"
    # the same as a fresh encode of the folder, where the relabelled image sits in its new class folder
    moved = tmp_path / "moved"
    shutil.copytree(images, moved)
    os.replace(moved / "c2" / "img_002.png", moved / "c1" / "img_002.png")
    want = {p.replace("c1/img_002", "c2/img_002"): v for p, v in as_mapping(
        encode_collection(moved, tmp_path / "fresh", ckpt, model=model, **KW)).items()}
    assert as_mapping(col) == want


def test_no_resume_starts_over_at_generation_zero(model_ckpt, tmp_path):
    ckpt, model = model_ckpt
    images = tmp_path / "images"
    for i in range(8):
        digit_png(images / f"img_{i:03d}.png", i)
    out = tmp_path / "codes"
    encode_collection(images, out, ckpt, model=model, **KW)
    digit_png(images / "img_100.png", 100)
    assert encode_collection(images, out, ckpt, model=model, **KW).generation == 1
    col = encode_collection(images, out, ckpt, model=model, resume=False, **{**KW, "shard_size": 64})
    assert col.generation == 0 and col.ids is None and col.count == 9
    assert not any(Path(out).glob("gen-*"))
