"""kill -9 during an update and the writer's lock: an update killed at each stage (a forked child
stopped by the test-only ``HYBRIDHASH_TEST_STOP`` hook) leaves the previous generation searchable
with its own results, and running it again completes it; a second writer is refused in one line
naming the first; a lock left by a killed writer does not block."""
from __future__ import annotations

import os
import shutil
import signal
import traceback

import numpy as np
import pytest

import hybridhash
from hybridhash.app import cli
from hybridhash.app.encode import encode_collection
from hybridhash.codes import hamming_topk
from hybridhash.collection import open_collection
from hybridhash.generations import STAGES, STOP_ENV
from hybridhash.retrieval import Retriever
from tests.helpers.commands import one_line_error
from tests.helpers.encoding import MAX_PIXELS, save_model
from tests.helpers.living import as_mapping, change, digit_png

pytestmark = pytest.mark.usefixtures("one_thread")
KW = dict(workers=0, batch_size=8, shard_size=4, max_pixels=MAX_PIXELS, progress=False)


@pytest.fixture(scope="module")
def world(one_thread, tmp_path_factory):
    """A collection of 20 images (saved flat index), then its folder changed: 3 gone, 2 rewritten, 5 new."""
    base = tmp_path_factory.mktemp("kill")
    ckpt = save_model(base / "ckpt")
    model = hybridhash.from_pretrained(ckpt)
    images = base / "images"
    for i in range(20):
        digit_png(images / f"img_{i:03d}.png", i)
    encode_collection(images, base / "codes", ckpt, model=model, **KW)
    assert cli.main(["index", "--collection", str(base / "codes")]) == 0
    for i in range(3):
        (images / f"img_{i:03d}.png").unlink()
    for i in (5, 6):
        change(images / f"img_{i:03d}.png", 300 + i)
    for i in range(100, 105):
        digit_png(images / f"img_{i:03d}.png", i)
    want = as_mapping(encode_collection(images, base / "fresh", ckpt, model=model, **KW))
    return {"base": base, "ckpt": ckpt, "model": model, "images": images, "want": want}


def _child(stop: str, images, out, ckpt, model) -> int:
    """Fork a process that runs the update with ``STOP_ENV=stop``; returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ[STOP_ENV] = stop
            encode_collection(images, out, ckpt, model=model, **KW)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _searchable_with_its_own_results(out) -> int:
    """Open the collection as a reader would; its saved index answers as brute force over its own codes."""
    retriever = Retriever.open(out)
    col = retriever.collection
    codes = np.asarray(col.codes)
    for r in range(0, col.count, 5):
        hits = retriever.search_codes(codes[r:r + 1], col.count)[0]
        dist, rows = hamming_topk(codes[r:r + 1], codes, col.count)  # ties by row = ties by id
        assert [(h.path, h.distance) for h in hits] == \
            [(col.path(int(col.item_ids[j])), int(d)) for d, j in zip(dist[0], rows[0])]
    assert retriever.index.codes_sha256 == col.codes_sha256  # the saved one, bound to these codes
    return col.generation


@pytest.mark.parametrize("stage", STAGES)
def test_kill_at_each_stage_leaves_a_usable_generation(world, tmp_path, stage):
    out = tmp_path / "codes"
    shutil.copytree(world["base"] / "codes", out)
    before = as_mapping(open_collection(out))
    pid = _child(stage, world["images"], out, world["ckpt"], world["model"])
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    gen = _searchable_with_its_own_results(out)
    assert gen == (1 if stage == "switched" else 0)
    if gen == 0:
        assert as_mapping(open_collection(out)) == before
    # run again: the update completes, and nothing of the killed run is left over
    col = encode_collection(world["images"], out, world["ckpt"], model=world["model"], **KW)
    assert col.generation == 1 and as_mapping(col) == world["want"]
    assert _searchable_with_its_own_results(out) == 1
    assert sorted(e.name for e in out.iterdir()) == [".hybridhash.lock", "gen-00001", "manifest.json"]


def test_a_second_writer_is_refused_and_a_killed_ones_lock_does_not_block(world, tmp_path, capsys):
    out = tmp_path / "codes"
    shutil.copytree(world["base"] / "codes", out)
    pid = _child("planned:pause", world["images"], out, world["ckpt"], world["model"])
    try:
        _, status = os.waitpid(pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), status  # paused, holding the lock
        argv = ["encode", "--checkpoint", world["ckpt"], "--images", world["images"], "--collection", out,
                "--workers", "0", "--max-pixels", MAX_PIXELS, "--no-progress"]
        assert cli.main([str(a) for a in argv]) == 1
        err = one_line_error(capsys)
        assert f"is being written by another process (pid {pid}, started " in err
        assert open_collection(out).generation == 0
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    # the kernel dropped the dead writer's lock: the next one takes it at once and finishes the update
    assert cli.main([str(a) for a in argv]) == 0
    assert "updated" in capsys.readouterr().out
    assert as_mapping(open_collection(out)) == world["want"]
