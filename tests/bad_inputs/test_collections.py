"""Code collections under bad or changing inputs: stale indexes, foreign directories, images
replaced in place, damaged shards and plans, full disks, corrupt manifests, unstorable names and
symlinked images. Each test builds a handful of 32 px images and a tiny untrained checkpoint."""
from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hybridhash
from hybridhash.app import cli
from hybridhash.collection import open_collection
from hybridhash.app.encode import encode_collection, load_plan, merge_shards, shard_path
from hybridhash.errors import DataError, IndexMismatchError
from hybridhash.locking import LOCK_NAME

from tests.helpers.commands import one_line_error, snapshot
from tests.helpers.encoding import save_model

BITS = 32
KW = dict(workers=0, shard_size=2, progress=False)  # 6 images -> 3 shards


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def noise_image(seed: int, size: int = 32) -> Image.Image:
    """A random RGB image with coarse blocks, so different seeds give different codes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.NEAREST)


def make_flat(root: Path, n: int = 6, seed: int = 0, prefix: str = "img") -> list:
    """``n`` PNG images directly in ``root`` (no labels); returns their sorted relative paths."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"{prefix}_{i}.png"
        noise_image(seed * 1000 + i).save(root / name)
        names.append(name)
    return sorted(names)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("ckpt") / "model", bits=BITS)


@pytest.fixture(scope="module")
def model(ckpt):
    return hybridhash.from_pretrained(ckpt)


def encode_cli(images: Path, out: Path, ckpt: Path, *extra: str) -> int:
    return cli.main(["encode", "--checkpoint", str(ckpt), "--images", str(images), "--collection", str(out),
                     "--workers", "0", "--no-progress", "--shard-size", "2", *extra])


def brute_force(query: np.ndarray, codes: np.ndarray) -> list:
    """(distance, id) of every packed code to the packed ``query``, nearest first, ties by id."""
    dist = (np.unpackbits(codes, axis=1) != np.unpackbits(query[None], axis=1)).sum(1)
    return sorted((int(d), i) for i, d in enumerate(dist))


# --------------------------------------------------------------------------------------------
# 1. an index answers only for the codes it was built from

def test_reencoded_collection_is_not_answered_by_the_old_index(tmp_path, ckpt, capsys):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "codes"
    make_flat(a, 4, seed=1, prefix="a")
    b_names = make_flat(b, 4, seed=2, prefix="b")
    assert encode_cli(a, out, ckpt) == 0
    codes_a = np.array(open_collection(out).codes)
    assert cli.main(["index", "--collection", str(out)]) == 0

    assert encode_cli(b, out, ckpt, "--no-resume") == 0  # same count, same model
    col = open_collection(out)
    assert not np.array_equal(codes_a, np.asarray(col.codes))
    capsys.readouterr()
    j = 2
    assert cli.main(["search", "--collection", str(out), str(b / b_names[j]), "--k", "4", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"][0]["hits"]
    want = brute_force(np.asarray(col.codes)[j], np.asarray(col.codes))
    assert [(h["distance"], h["id"]) for h in hits] == want
    assert {"distance": 0, "path": b_names[j]}.items() <= next(h for h in hits if h["id"] == j).items()
    assert not (out / "index.faiss").exists()  # the project's own index of A's codes went with them
    assert cli.main(["index", "--collection", str(out)]) == 0
    side = json.loads((out / "index.faiss.json").read_text())
    assert side["codes_sha256"] == col.codes_sha256


def test_a_stale_saved_index_is_rebuilt_and_an_explicit_one_refused(tmp_path, ckpt, caplog):
    from hybridhash.index import HashIndex
    from hybridhash.retrieval import Retriever, index_path

    a, b, out, other = tmp_path / "a", tmp_path / "b", tmp_path / "codes", tmp_path / "other"
    make_flat(a, 4, seed=1, prefix="a")
    make_flat(b, 4, seed=2, prefix="b")
    assert encode_cli(b, out, ckpt) == 0
    assert encode_cli(a, other, ckpt) == 0
    col, col_other = open_collection(out), open_collection(other)
    # an index of A's codes planted beside B's collection (count and model agree)
    assert cli.main(["index", "--collection", str(other), "--out", str(out)]) == 0
    with caplog.at_level(logging.WARNING, logger="hybridhash.retrieval"):
        r = Retriever.open(out)
    assert "not these codes" in caplog.text
    assert [h.id for h in r.search_codes(np.asarray(col.codes)[:1], k=1)[0]] == [0]
    assert r.index.codes_sha256 == col.codes_sha256
    with pytest.raises(IndexMismatchError, match="not these codes"):
        HashIndex.load(index_path(out), expect_codes_sha256=col.codes_sha256)
    assert HashIndex.load(index_path(out), expect_codes_sha256=col_other.codes_sha256).ntotal == 4


# --------------------------------------------------------------------------------------------
# 2. only the project's own collections are replaced, and only its own files removed

@pytest.mark.parametrize("resume", [True, False])
def test_foreign_directory_is_refused_and_left_byte_identical(tmp_path, ckpt, capsys, resume):
    images, out = tmp_path / "images", tmp_path / "mine"
    make_flat(images, 2)
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"bits": 8, "name": "holiday", "count": 2}))
    (out / "paths.txt").write_text("beach.jpg\nhill.jpg\n")
    (out / "classes.json").write_text('["sea", "land"]\n')
    noise_image(7).save(out / "beach.jpg")
    before = snapshot(out)
    assert encode_cli(images, out, ckpt, *([] if resume else ["--no-resume"])) == 1
    err = one_line_error(capsys)
    assert err == (f"error: --collection {out} is not empty and is not a hybridhash collection (not a code collection "
                   f"this project wrote); choose an empty or new directory")
    assert snapshot(out) == before


def test_a_run_stopped_before_its_plan_is_still_the_projects(tmp_path, model):
    images, out = tmp_path / "images", tmp_path / "codes"
    make_flat(images, 2)
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "items.txt").write_text("img_0.png\n")  # written just before plan.json
    assert encode_collection(images, out, model=model, **KW).count == 2


def test_no_resume_removes_only_the_files_the_project_wrote(tmp_path, ckpt, model):
    images, out = tmp_path / "images", tmp_path / "codes"
    make_flat(images, 4)
    col = encode_collection(images, out, model=model, **KW)
    written = set(col.manifest["files"])
    assert {"codes.npy", "paths.txt", "paths.offsets.npy", "skipped.json", "files.stat.npy",
            "manifest.json"} == written
    m = json.loads((out / "manifest.json").read_text())
    del m["files"]  # a collection written before the list was kept: still recognised and replaced
    (out / "manifest.json").write_text(json.dumps(m))
    (out / "notes.txt").write_text("mine\n")
    (out / "shards" / "my-shard.npz").write_bytes(b"mine too")
    encode_collection(images, out, model=model, resume=False, **KW)
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "shards" / "my-shard.npz").read_bytes() == b"mine too"
    assert open_collection(out).count == 4


# --------------------------------------------------------------------------------------------
# 3. images replaced in place are encoded again on resume, and nothing else

def test_resume_reencodes_exactly_the_shards_whose_images_changed(tmp_path, model, caplog):
    images, out = tmp_path / "images", tmp_path / "codes"
    names = make_flat(images, 6)
    encode_collection(images, out, model=model, **KW)
    mtimes = {s: shard_path(out, s).stat().st_mtime_ns for s in range(3)}

    target = images / names[3]  # shard 1
    noise_image(999).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    (out / "manifest.json").unlink()  # a run killed before its merge: resumed shard by shard
    done = []
    with caplog.at_level(logging.WARNING, logger="hybridhash.app.encode"):
        col = encode_collection(images, out, model=model, on_shard=done.append, **KW)
    assert done == [1]
    assert "re-encoding 1 of 3 shards: 1 image changed since it was encoded" in caplog.text
    assert {s: shard_path(out, s).stat().st_mtime_ns for s in (0, 2)} == {0: mtimes[0], 2: mtimes[2]}

    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    (fresh_dir / names[3]).write_bytes(target.read_bytes())
    fresh = encode_collection(fresh_dir, tmp_path / "fresh_codes", model=model, **KW)
    np.testing.assert_array_equal(np.asarray(col.codes)[3], np.asarray(fresh.codes)[0])

    done.clear()  # nothing changed since: nothing is encoded again
    encode_collection(images, out, model=model, on_shard=done.append, **KW)
    assert done == []

    # a finished collection whose image changed is updated in place: that image alone is encoded again
    noise_image(998).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 9_000_000_000))
    reports = []
    col = encode_collection(images, out, model=model, on_shard=done.append, report=reports.append, **KW)
    assert done == [0] and (reports[0].changed, reports[0].kept) == (1, 5) and col.generation == 1
    (fresh_dir / names[3]).write_bytes(target.read_bytes())
    fresh = encode_collection(fresh_dir, tmp_path / "fresh_codes2", model=model, **KW)
    assert bytes(np.asarray(col.codes)[col.row(col.item_ids.max())]) == bytes(np.asarray(fresh.codes)[0])


# --------------------------------------------------------------------------------------------
# 4. a shard must hold exactly its plan's rows

def _truncate_shard(out: Path, s: int, keep: int) -> None:
    path = shard_path(out, s)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["index"], arrays["codes"] = arrays["index"][:keep], arrays["codes"][:keep]
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_short_shard_is_reencoded_on_resume_and_refused_by_merge(tmp_path, model, caplog):
    images, out = tmp_path / "images", tmp_path / "codes"
    make_flat(images, 6)
    full = np.array(encode_collection(images, out, model=model, **KW).codes)
    _truncate_shard(out, 1, keep=1)
    with pytest.raises(DataError, match=r"shard-00001\.npz: holds 1 rows \(1 encoded, 0 skipped\), its plan 2"):
        merge_shards(out)
    (out / "manifest.json").unlink()  # a run killed before its merge: resumed shard by shard

    done = []
    with caplog.at_level(logging.WARNING, logger="hybridhash.app.encode"):
        col = encode_collection(images, out, model=model, on_shard=done.append, **KW)
    assert done == [1] and "re-encoding 1 of 3 shards: shard-00001.npz holds 1 rows" in caplog.text
    assert col.count == 6
    np.testing.assert_array_equal(np.asarray(col.codes), full)


def test_shard_with_foreign_ids_is_refused_by_merge(tmp_path, model):
    images, out = tmp_path / "images", tmp_path / "codes"
    make_flat(images, 6)
    encode_collection(images, out, model=model, **KW)
    path = shard_path(out, 2)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["index"] = arrays["index"] - 2  # rows of shard 1's images
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(DataError, match=r"shard-00002\.npz: holds ids other than 4\.\.5"):
        merge_shards(out)


# --------------------------------------------------------------------------------------------
# 5. one-line errors, nothing half written

def _fail_on_call(n: int, real):
    """A stand-in for a writer that writes a little and then finds the disk full on its ``n``-th call."""
    calls = {"n": 0}

    def fake(file, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            if hasattr(file, "write"):
                file.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(file, *args, **kwargs)

    return fake


def test_disk_full_while_writing_a_shard(tmp_path, ckpt, capsys, monkeypatch):
    images, out = tmp_path / "images", tmp_path / "codes"
    make_flat(images, 6)
    monkeypatch.setattr(np, "savez", _fail_on_call(2, np.savez))
    assert encode_cli(images, out, ckpt) == 1
    err = one_line_error(capsys)
    assert err == (f"error: no space left on device while writing {shard_path(out, 1)}: free space and rerun; "
                   f"finished shards are kept")
    monkeypatch.undo()
    plan, _ = load_plan(out)
    from hybridhash.app.encode import check_shard

    assert check_shard(out, plan, 0)[0] is None and not shard_path(out, 1).exists()
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["items.txt", "plan.json", "shard-00000.npz"]
    assert not (out / "manifest.json").exists()
    done = []
    encode_collection(images, out, ckpt, on_shard=done.append, **KW)
    assert done == [1, 2]


def test_disk_full_while_merging(tmp_path, ckpt, model, capsys, monkeypatch):
    images, out = tmp_path / "images", tmp_path / "codes"
    make_flat(images, 6)
    monkeypatch.setattr(np, "save", _fail_on_call(1, np.save))  # codes.npy, the merge's first file
    assert encode_cli(images, out, ckpt) == 1
    err = one_line_error(capsys)
    assert err.startswith(f"error: no space left on device while writing {out}: free space and rerun; "
                          f"the encoded shards are kept")
    monkeypatch.undo()
    # no partial collection file (the writer's lock file stays: see hybridhash.locking)
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) == ["shards"]
    done = []
    col = encode_collection(images, out, model=model, on_shard=done.append, **KW)
    assert done == [] and col.count == 6  # the shards were whole: only the merge ran again


def test_disk_full_while_saving_an_index(tmp_path, ckpt, capsys, monkeypatch):
    import hybridhash.index as index_mod
    from hybridhash.index import HashIndex

    images, out = tmp_path / "images", tmp_path / "codes"
    make_flat(images, 4)
    assert encode_cli(images, out, ckpt) == 0
    before = snapshot(out)

    def full(index, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(index_mod.faiss, "write_index_binary", full)
    capsys.readouterr()
    assert cli.main(["index", "--collection", str(out)]) == 1
    assert one_line_error(capsys) == (f"error: no space left on device while writing {out / 'index.faiss'}: "
                                      f"free space and rerun; no index was saved")
    before.pop(LOCK_NAME)  # `index` takes the writer's lock, which records who took it
    assert {k: v for k, v in snapshot(out).items() if k != LOCK_NAME} == before
    monkeypatch.undo()
    assert cli.main(["index", "--collection", str(out)]) == 0
    saved = snapshot(out)
    monkeypatch.setattr(index_mod.faiss, "write_index_binary", full)
    assert cli.main(["index", "--collection", str(out)]) == 1
    saved.pop(LOCK_NAME)
    assert {k: v for k, v in snapshot(out).items() if k != LOCK_NAME} == saved  # the saved pair as it was
    monkeypatch.undo()
    assert HashIndex.load(out / "index.faiss", expect_codes_sha256=open_collection(out).codes_sha256).ntotal == 4


def test_other_os_errors_are_one_line(tmp_path, ckpt, capsys, monkeypatch):
    images, out = tmp_path / "images", tmp_path / "codes"
    make_flat(images, 2)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(out / "shards" / "items.txt"))

    monkeypatch.setattr("hybridhash.collection.atomic_path", denied)
    assert encode_cli(images, out, ckpt) == 1
    assert one_line_error(capsys) == f"error: Permission denied: {out / 'shards' / 'items.txt'}"


def test_corrupt_shard_is_reencoded_on_resume(tmp_path, model, caplog):
    images, out = tmp_path / "images", tmp_path / "codes"
    make_flat(images, 6)
    full = np.array(encode_collection(images, out, model=model, **KW).codes)
    shard_path(out, 1).write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(DataError, match=r"shard-00001\.npz: is unreadable"):
        merge_shards(out)
    (out / "manifest.json").unlink()  # a run killed before its merge: resumed shard by shard
    done = []
    with caplog.at_level(logging.WARNING, logger="hybridhash.app.encode"):
        col = encode_collection(images, out, model=model, on_shard=done.append, **KW)
    assert done == [1] and "shard-00001.npz is unreadable" in caplog.text
    np.testing.assert_array_equal(np.asarray(col.codes), full)


def test_corrupt_plan_names_the_file_and_no_resume_starts_over(tmp_path, ckpt, model, capsys):
    images, out = tmp_path / "images", tmp_path / "codes"
    make_flat(images, 6)

    class Killed(Exception):
        pass

    def kill(s):
        raise Killed(s)

    with pytest.raises(Killed):
        encode_collection(images, out, model=model, on_shard=kill, **KW)
    plan_file = out / "shards" / "plan.json"
    plan_file.write_bytes(np.random.default_rng(1).bytes(64))
    assert encode_cli(images, out, ckpt) == 1
    err = one_line_error(capsys)
    assert err.startswith(f"error: {plan_file}: unreadable") and err.endswith("pass --no-resume to start over")
    assert encode_cli(images, out, ckpt, "--no-resume") == 0
    assert open_collection(out).count == 6


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.update(bits=64), "says 6 codes of 64 bits"),
    (lambda m: m.pop("image_root"), "no image_root"),
    (lambda m: m.update(count=5), "says 5 codes"),
    (lambda m: m.update(bits="32"), "bits is '32'"),
    ("offsets", "paths.offsets.npy"),
    ("offsets-short", "paths.offsets.npy has shape (6,)"),
])
def test_inconsistent_manifest_is_a_one_line_error_naming_it(tmp_path, model, ckpt, capsys, edit, words):
    from hybridhash.retrieval import Retriever

    images, out = tmp_path / "images", tmp_path / "codes"
    make_flat(images, 6)
    encode_collection(images, out, ckpt, model=model, **KW)
    mpath = out / "manifest.json"
    if edit == "offsets":
        off = np.load(out / "paths.offsets.npy")
        off[3] = off[1]  # a line of zero bytes
        np.save(out / "paths.offsets.npy", off)
    elif edit == "offsets-short":
        np.save(out / "paths.offsets.npy", np.load(out / "paths.offsets.npy")[:6])
    else:
        m = json.loads(mpath.read_text())
        edit(m)
        mpath.write_text(json.dumps(m))
    with pytest.raises(DataError) as err:
        open_collection(out)
    assert str(err.value).startswith(f"{mpath}: ") and words in str(err.value)
    with pytest.raises(DataError, match="manifest.json"):
        Retriever.open(out)
    capsys.readouterr()
    for argv in (["index", "--collection", str(out)], ["search", "--collection", str(out), str(images / "img_0.png")]):
        assert cli.main(argv) == 1
        msg = one_line_error(capsys)
        assert str(mpath) in msg and words in msg


# --------------------------------------------------------------------------------------------
# 6. names that cannot be stored

def test_line_break_in_a_name_stops_strict_and_is_listed_otherwise(tmp_path, ckpt, capsys):
    images = tmp_path / "images"
    make_flat(images, 3)
    bad = "two\nlines.png"
    noise_image(5).save(images / bad, format="PNG")
    assert encode_cli(images, tmp_path / "strict", ckpt, "--strict") == 1
    err = one_line_error(capsys)
    assert repr(str(images.resolve() / bad)) in err and "line break" in err and "strict" in err
    assert not (tmp_path / "strict").exists()

    assert encode_cli(images, tmp_path / "lenient", ckpt) == 0
    col = open_collection(tmp_path / "lenient")
    assert col.count == 3
    assert col.skipped == [{"path": bad, "reason": "file name contains a line break"}]


# --------------------------------------------------------------------------------------------
# 7. a symlinked image is served as encoded, and nothing else is

def test_symlinked_image_is_served_and_only_while_it_is_the_encoded_file(tmp_path, ckpt):
    from fastapi.testclient import TestClient

    from hybridhash.retrieval import Retriever
    from hybridhash.app.serve import create_app

    images, store = tmp_path / "images", tmp_path / "store"
    make_flat(images, 2)
    store.mkdir()
    noise_image(42).save(store / "kept.png")
    (images / "linked.png").symlink_to(store / "kept.png")
    (tmp_path / "secret.png").write_bytes(b"not to be served")
    out = tmp_path / "codes"
    assert encode_cli(images, out, ckpt) == 0
    r = Retriever.open(out)
    ids = {r.collection.path(i): i for i in range(r.count)}
    assert sorted(ids) == ["img_0.png", "img_1.png", "linked.png"]
    with TestClient(create_app(r), base_url="http://127.0.0.1") as c:
        resp = c.get(f"/items/{ids['linked.png']}")
        assert resp.status_code == 200 and resp.content == (store / "kept.png").read_bytes()
        assert c.get(f"/items/{ids['linked.png']}?thumb=1").status_code == 200
        assert c.get(f"/items/{ids['img_0.png']}").content == (images / "img_0.png").read_bytes()

        # the link now leads to a file that was never encoded: refused
        (images / "linked.png").unlink()
        (images / "linked.png").symlink_to(tmp_path / "secret.png")
        resp = c.get(f"/items/{ids['linked.png']}")
        assert resp.status_code == 404 and b"not to be served" not in resp.content
        # the target replaced after encoding: refused too
        (images / "linked.png").unlink()
        (images / "linked.png").symlink_to(store / "kept.png")
        noise_image(43).save(store / "kept.png")
        st = (store / "kept.png").stat()
        os.utime(store / "kept.png", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        assert c.get(f"/items/{ids['linked.png']}").status_code == 404
        assert c.get("/items/3").status_code == 404


# --------------------------------------------------------------------------------------------
# 8. a generation written by an update, damaged

@pytest.mark.parametrize("damage, culprit, words", [
    ("codes", "gen-00001/codes.npy", "missing"),
    ("ids", "gen-00001/ids.npy", "item ids are not increasing"),
    ("generation", "gen-00007/codes.npy", "missing"),
    ("next_id", "gen-00001/ids.npy", "below next_id 3"),
])
def test_a_damaged_generation_is_a_one_line_error_naming_it(tmp_path, model, ckpt, capsys, damage, culprit, words):
    images, out = tmp_path / "images", tmp_path / "codes"
    names = make_flat(images, 6)
    encode_collection(images, out, ckpt, model=model, **KW)
    (images / names[0]).unlink()
    noise_image(77).save(images / "img_9.png")
    assert encode_collection(images, out, ckpt, model=model, **KW).generation == 1
    if damage == "codes":
        (out / culprit).unlink()
    elif damage == "ids":
        ids = np.load(out / culprit)
        np.save(out / culprit, ids[::-1].copy())
    else:
        m = json.loads((out / "manifest.json").read_text())
        m.update(generation=7) if damage == "generation" else m.update(next_id=3)
        (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError) as err:
        open_collection(out)
    assert str(out / culprit) in str(err.value) and words in str(err.value)
    capsys.readouterr()
    assert cli.main(["search", "--collection", str(out), str(images / names[1])]) == 1
    msg = one_line_error(capsys)
    assert str(out / culprit) in msg and words in msg
