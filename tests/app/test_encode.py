"""Encoding a collection: codes equal the model's on independently preprocessed images, bad images
are reported (or stop a strict run), a killed run resumes only the missing shards, two ranks merge
to the same collection as one."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import hybridhash
from hybridhash.app import cli
from hybridhash.collection import open_collection, write_collection
from hybridhash.app.encode import (encode_collection, encode_shards, find_images, merge_shards, plan_encode,
                               shard_path)
from hybridhash.errors import DataError, IndexMismatchError
from tests.helpers.encoding import BAD, BITS, MAX_PIXELS, expected_codes, make_images, save_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(one_thread, tmp_path_factory):
    base = tmp_path_factory.mktemp("encode")
    good = make_images(base / "images")
    ckpt = save_model(base / "ckpt")
    model = hybridhash.from_pretrained(ckpt)
    return {"base": base, "images": base / "images", "good": good, "ckpt": ckpt, "model": model,
            "expected": expected_codes(model, base / "images", good)}


def files_of(directory: Path) -> dict:
    """The merged collection files that must agree between runs."""
    out = {}
    for name in ("codes.npy", "labels.npy", "paths.offsets.npy"):
        out[name] = np.load(directory / name)
    for name in ("paths.txt", "classes.json", "skipped.json"):
        out[name] = (directory / name).read_text()
    return out


def assert_same_files(a: Path, b: Path) -> None:
    fa, fb = files_of(a), files_of(b)
    for k in fa:
        if isinstance(fa[k], np.ndarray):
            np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
        else:
            assert fa[k] == fb[k], k


# --------------------------------------------------------------------------------------------

def test_encode_cli_matches_model_and_reports_bad_images(setup, tmp_path, capsys):
    out = tmp_path / "codes"
    rc = cli.main(["encode", "--checkpoint", str(setup["ckpt"]), "--images", str(setup["images"]),
                   "--collection", str(out), "--workers", "2", "--batch-size", "7", "--shard-size", "16",
                   "--max-pixels", str(MAX_PIXELS), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"encoded {len(setup['good'])} images" in printed and "skipped 4" in printed

    col = open_collection(out)
    good = setup["good"]
    assert col.count == len(good) and col.bits == BITS
    assert col.codes.dtype == np.uint8 and col.codes.shape == (len(good), BITS // 8)
    np.testing.assert_array_equal(col.codes, setup["expected"])
    assert [col.path(i) for i in range(col.count)] == good
    assert col.abspath(5) == (setup["images"] / good[5]).resolve()
    assert col.classes == [str(c) for c in range(10)]
    assert [col.label(i) for i in range(col.count)] == [p.split("/")[0] for p in good]

    m = col.manifest
    assert m["format"] == "hybridhash-codes" and m["bits"] == BITS and m["count"] == len(good)
    assert m["fingerprint"] == setup["model"].fingerprint
    assert m["checkpoint"] == str(setup["ckpt"].resolve()) and Path(m["checkpoint"]).is_absolute()
    assert m["preprocess"]["img_size"] == 32 and m["image_root"] == str(setup["images"].resolve())
    total = len(good) + len(BAD)
    assert [(s["start"], s["end"]) for s in m["shards"]] == [(s, min(s + 16, total)) for s in range(0, total, 16)]
    assert sum(s["encoded"] for s in m["shards"]) == len(good) and m["skipped"] == len(BAD)
    assert "created" in m

    skipped = json.loads((out / "skipped.json").read_text())
    assert sorted(s["path"] for s in skipped) == sorted(BAD)
    for s in skipped:
        assert BAD[s["path"]] in s["reason"], s


def test_strict_stops_at_the_first_bad_image(setup, tmp_path, capsys):
    rc = cli.main(["encode", "--checkpoint", str(setup["ckpt"]), "--images", str(setup["images"]),
                   "--collection", str(tmp_path / "codes"), "--workers", "0", "--strict", "--no-progress",
                   "--max-pixels", str(MAX_PIXELS)])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    first_bad = sorted(BAD)[0]  # the list is sorted, so the strict run meets this one first
    assert first_bad in err and BAD[first_bad] in err
    assert not (tmp_path / "codes" / "manifest.json").exists()


def test_killed_run_resumes_only_missing_shards(setup, tmp_path):
    out = tmp_path / "codes"
    kw = dict(model=setup["model"], workers=0, batch_size=5, shard_size=16, max_pixels=MAX_PIXELS, progress=False)

    class Killed(Exception):
        pass

    def kill_after_first(s):
        raise Killed(s)

    with pytest.raises(Killed):
        encode_collection(setup["images"], out, setup["ckpt"], on_shard=kill_after_first, **kw)
    assert shard_path(out, 0).is_file() and not shard_path(out, 1).exists()
    assert not (out / "manifest.json").exists()
    with pytest.raises(DataError, match="encoding has not finished"):
        open_collection(out)
    mtime0 = shard_path(out, 0).stat().st_mtime_ns

    done = []
    col = encode_collection(setup["images"], out, setup["ckpt"], on_shard=done.append, **kw)
    assert done == [1, 2, 3]  # 64 files in shards of 16: shard 0 was not encoded again
    assert shard_path(out, 0).stat().st_mtime_ns == mtime0
    np.testing.assert_array_equal(col.codes, setup["expected"])

    # merged files and one shard lost: only that shard is encoded again, the result is the same
    reference = tmp_path / "reference"
    reference.mkdir()
    for name in ("codes.npy", "labels.npy", "paths.txt", "paths.offsets.npy", "classes.json", "skipped.json"):
        (reference / name).write_bytes((out / name).read_bytes())
        (out / name).unlink()
    (out / "manifest.json").unlink()
    shard_path(out, 2).unlink()
    done.clear()
    encode_collection(setup["images"], out, setup["ckpt"], on_shard=done.append, **kw)
    assert done == [2]
    assert_same_files(out, reference)

    # a finished collection: nothing is encoded or merged again
    done.clear()
    merged = (out / "manifest.json").stat().st_mtime_ns
    encode_collection(setup["images"], out, setup["ckpt"], on_shard=done.append, **kw)
    assert done == [] and (out / "manifest.json").stat().st_mtime_ns == merged


def test_resume_refuses_another_checkpoint_or_image_list(setup, tmp_path, capsys):
    out = tmp_path / "codes"
    kw = dict(workers=0, shard_size=16, max_pixels=MAX_PIXELS, progress=False)
    encode_collection(setup["images"], out, setup["ckpt"], model=setup["model"], **kw)

    other = save_model(tmp_path / "other", seed=1)
    rc = cli.main(["encode", "--checkpoint", str(other), "--images", str(setup["images"]), "--collection", str(out),
                   "--workers", "0", "--shard-size", "16", "--max-pixels", str(MAX_PIXELS), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "another model" in err and setup["model"].fingerprint in err and "--no-resume" in err

    subset = tmp_path / "subset.txt"
    subset.write_text("".join(f"{p}\n" for p in setup["good"][:10]))
    # another list of images under the same root is an update in place (tests/app/test_encode_update.py)
    done = []
    col = encode_collection(subset, out, setup["ckpt"], model=setup["model"], root=setup["images"],
                            report=done.append, **kw)
    assert col.count == 10 and col.generation == 1 and col.labels is None
    assert (done[0].added, done[0].removed, done[0].kept, done[0].relabelled) == (0, len(setup["good"]) - 10, 10, 10)
    fewer = tmp_path / "fewer"
    make_images(fewer, per_class=2, classes=3, bad=False)
    with pytest.raises(IndexMismatchError, match="images under another root"):
        encode_collection(fewer, out, setup["ckpt"], model=setup["model"], **kw)

    # --no-resume replaces the collection
    rc = cli.main(["encode", "--checkpoint", str(other), "--images", str(fewer), "--collection", str(out),
                   "--workers", "0", "--no-resume", "--no-progress"])
    assert rc == 0
    col = open_collection(out)
    assert col.count == 6 and col.fingerprint == hybridhash.from_pretrained(other).fingerprint
    assert sorted(p.name for p in (out / "shards").glob("shard-*.npz")) == ["shard-00000.npz"]


def test_two_ranks_merge_to_the_single_rank_collection(setup, tmp_path):
    model = setup["model"]
    one, two = tmp_path / "one", tmp_path / "two"
    encode_collection(setup["images"], one, setup["ckpt"], model=model, workers=0, shard_size=16,
                      max_pixels=MAX_PIXELS, progress=False)

    images = find_images(setup["images"])
    plan = plan_encode(two, images, model, setup["ckpt"], shard_size=16, max_pixels=MAX_PIXELS)
    assert plan.num_shards == 4
    # rank 1 first: the order in which ranks finish must not matter
    assert encode_shards(two, model, rank=1, world_size=2, workers=0, progress=False) == [1, 3]
    with pytest.raises(DataError, match="2 of 4 shards are not encoded"):
        merge_shards(two)
    assert encode_shards(two, model, rank=0, world_size=2, workers=0, progress=False) == [0, 2]
    merge_shards(two)
    assert_same_files(one, two)


def _rank_main(rank: int, port: int, images: str, out: str, ckpt: str, results) -> None:
    """One process of a two-rank run, with the environment torchrun would give it."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        col = encode_collection(images, out, ckpt, workers=0, shard_size=16, max_pixels=MAX_PIXELS, progress=False)
        results.put((rank, None if col is None else col.count))
    except BaseException as err:  # report to the parent instead of dying silently
        results.put((rank, repr(err)))


def test_two_processes_with_process_group(setup, tmp_path):
    """Two real processes joined by a gloo process group, as under torchrun: each encodes its shards,
    rank 0 merges them. Forked, so the children need not import torch again."""
    import multiprocessing as mp
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    out = tmp_path / "codes"
    procs = [ctx.Process(target=_rank_main, args=(r, port, str(setup["images"]), str(out), str(setup["ckpt"]), results))
             for r in range(2)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert got == {0: len(setup["good"]), 1: None}, got
    col = open_collection(out)
    np.testing.assert_array_equal(col.codes, setup["expected"])
    assert len(list((out / "shards").glob("shard-*.npz"))) == 4


def test_list_file_multi_hot_labels(setup, tmp_path):
    good = setup["good"][:8]
    lines = [f"/{p} {' '.join('1' if j in (i % 3, 3) else '0' for j in range(4))}" for i, p in enumerate(good)]
    lines.append("../outside.png 1 0 0 0")
    lines.append("5/notes.jpg 0 1 0 0")
    (tmp_path / "db.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "codes"
    col = encode_collection(tmp_path / "db.txt", out, setup["ckpt"], model=setup["model"],
                            root=setup["images"], workers=0, progress=False)
    assert [col.path(i) for i in range(col.count)] == good  # leading "/" is part of the relative path
    assert col.manifest["labels"] == "multi-hot" and col.labels.dtype == np.uint8 and col.labels.shape == (8, 4)
    for i in range(8):
        want = sorted({i % 3, 3})
        assert col.label_ids(i) == want and col.label(i) == ", ".join(str(c) for c in want)
    np.testing.assert_array_equal(col.codes, setup["expected"][:8])
    reasons = {s["path"]: s["reason"] for s in col.skipped}
    assert "leaves the image root" in reasons["../outside.png"] and "not an image" in reasons["5/notes.jpg"]

    (tmp_path / "bad.txt").write_text(f"{good[0]} 0 1\n{good[1]} 0 2\n")
    with pytest.raises(DataError, match=r"bad.txt:2"):
        find_images(tmp_path / "bad.txt", root=setup["images"])


def test_folder_without_classes_has_no_labels(setup, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for rel in setup["good"][:3]:
        (flat / rel.replace("/", "_")).write_bytes((setup["images"] / rel).read_bytes())
    col = encode_collection(flat, tmp_path / "codes", setup["ckpt"], model=setup["model"], workers=0, progress=False)
    assert col.count == 3 and col.labels is None and col.classes is None and col.label(0) is None
    assert not (tmp_path / "codes" / "labels.npy").exists()


def test_collection_paths_never_leave_the_image_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    codes = np.zeros((3, 2), np.uint8)
    col = write_collection(tmp_path / "c", {"bits": 16, "fingerprint": "f", "image_root": str(root)}, codes,
                           ["ok.png", "../secret.png", "link.png"])
    assert col.abspath(0) == (root / "ok.png").resolve()
    for i in (1, 2):
        with pytest.raises(DataError, match="outside the image root"):
            col.abspath(i)
    with pytest.raises(IndexError):
        col.path(3)


def test_bad_arguments_are_one_line_errors(setup, tmp_path, capsys):
    assert cli.main(["encode", "--checkpoint", str(setup["ckpt"]), "--images", str(tmp_path / "nope"),
                     "--collection", str(tmp_path / "c")]) == 1
    assert "no such folder or list file" in capsys.readouterr().err
    not_empty = tmp_path / "docs"
    not_empty.mkdir()
    (not_empty / "thesis.tex").write_text("x")
    assert cli.main(["encode", "--checkpoint", str(setup["ckpt"]), "--images", str(setup["images"]),
                     "--collection", str(not_empty), "--workers", "0"]) == 1
    assert "not a code collection" in capsys.readouterr().err
    assert (not_empty / "thesis.tex").exists()
