"""Hostile or odd inputs on the data side: special files with an image's name, oversized files,
split records that ask for billions of rows, file names that are not UTF-8, JSON nested past the
parser's recursion limit, and per-class fractions that add up to more than a class.

A regression in the special-file cases would block or exhaust memory rather than fail, so those
run bounded: a named pipe in a thread with a deadline (the pipe is then opened for writing, which
lets a blocked reader go), a link to /dev/zero in a child process with a memory limit.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import hybridhash
from hybridhash.app import cli
from hybridhash.data import images as images_module
from hybridhash.data import load_protocol, splits
from hybridhash.data.images import decode_image, open_image
from hybridhash.errors import CheckpointError, DataError
from hybridhash.limits import MAX_FILE_BYTES, MAX_PIXELS
from tests.helpers.fakes import tiny_image, write_folder
from tests.helpers.commands import one_error_line, run_cli
from tests.helpers.encoding import save_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

BITS = 8
SMALL = '{"depths": [1, 1, 1]}'
TINY_TRAIN = ["--model", "hybridhash_cpu", "--model-overrides", SMALL, "--bits", str(BITS), "--epochs", "1",
              "--batch-size", "4", "--no-progress", "--threads", "1", "--parallel", "1", "--device", "cpu"]
DEADLINE = 90.0  # seconds a command on a handful of 6 px images may take on a loaded machine
DEEP = "[" * 100_000 + "]" * 100_000  # far past the recursion limit of any parser that recurses
SRC = str(Path(hybridhash.__file__).resolve().parents[1])  # the hybridhash these tests import


def within_deadline(fn, *pipes: Path, seconds: float = DEADLINE):
    """``fn()`` run in a thread; fails the test when it is still running after ``seconds``.

    A reader blocked opening one of ``pipes`` is then let go (the pipe opened for writing and
    closed: the reader sees an empty file), so a regression fails instead of hanging the suite.
    """
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as err:  # handed to the test's thread below
            result["error"] = err

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        for pipe in pipes:
            try:
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        worker.join(30)
        pytest.fail(f"still running after {seconds:g} s: blocked on a named pipe?")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def fifo(path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")
    os.mkfifo(path)
    return path


def link_to_dev_zero(path: Path) -> Path:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero on this system")
    os.symlink("/dev/zero", path)
    return path


def run_limited(code: str, *args: str, memory: int = 2 << 30, timeout: float = 240.0):
    """``python -c code args`` in a child whose data segment is limited to ``memory`` bytes: reading
    a file that never ends fails there with a MemoryError instead of filling this machine."""
    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))

    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], preexec_fn=limit, env=env, timeout=timeout,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("ckpt") / "model", bits=BITS)


def encode_argv(images: Path, out: Path, ckpt: Path, *extra) -> list:
    return ["encode", "--checkpoint", ckpt, "--images", images, "--collection", out, "--workers", "0", "--no-progress",
            *extra]


NOT_REGULAR = "not an image file; only regular files are read as images"


# --------------------------------------------------------------------------------------------
# special files and oversized files given an image's name

def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    pipe = fifo(tmp_path / "pipe.png")
    with pytest.raises(DataError) as err:
        within_deadline(lambda: open_image(pipe), pipe, seconds=20)
    assert str(err.value) == f"{pipe}: is a named pipe (FIFO), {NOT_REGULAR}"


def test_a_link_to_dev_zero_is_refused_unread(tmp_path):
    zero = link_to_dev_zero(tmp_path / "zero.png")
    code = ("import sys\nfrom hybridhash.data.images import open_image\nfrom hybridhash.errors import DataError\n"
            "try:\n    open_image(sys.argv[1])\nexcept DataError as err:\n    print(err)\n")
    done = run_limited(code, str(zero), timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"{zero}: is a character device, {NOT_REGULAR}", \
        done.stderr[-2000:]


def test_a_pipe_swapped_in_after_the_check_is_refused_once_open(tmp_path, monkeypatch):
    """The file opened is checked again: a pipe put in place between the check and the open is
    opened without blocking and refused."""
    pipe = fifo(tmp_path / "pipe.png")
    real_stat = os.stat
    regular = real_stat(__file__)
    monkeypatch.setattr(images_module.os, "stat", lambda p, *a, **k: regular if str(p) == str(pipe)
                        else real_stat(p, *a, **k))
    with pytest.raises(DataError) as err:
        within_deadline(lambda: decode_image(pipe), pipe, seconds=20)
    assert str(err.value) == f"{pipe}: is a named pipe (FIFO), {NOT_REGULAR}"


def test_the_byte_limit_fits_the_largest_image_and_bounds_every_read(tmp_path):
    from hybridhash.data.images import DEFAULT_MAX_BYTES, TooManyBytesError

    assert DEFAULT_MAX_BYTES == MAX_FILE_BYTES >= 4 * MAX_PIXELS  # an uncompressed RGBA image at the pixel limit fits
    path = tmp_path / "a.png"
    tiny_image(7).save(path)
    size = path.stat().st_size
    assert open_image(path, max_bytes=size).size == (6, 6)
    message = f"larger than the limit of {size - 1} bytes"
    with pytest.raises(TooManyBytesError, match=message):
        open_image(path, max_bytes=size - 1)
    with open(path, "rb") as f, pytest.raises(TooManyBytesError, match=message):
        open_image(f, max_bytes=size - 1)
    assert open_image(path.read_bytes(), max_bytes=size - 1).size == (6, 6)  # already in memory: not checked
    # a file over the default limit (sparse: no disk used) is refused before a byte of it is read
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.write(path.read_bytes())
        f.truncate(DEFAULT_MAX_BYTES + 1)
    with pytest.raises(TooManyBytesError) as err:
        open_image(big)
    assert str(err.value) == (f"{big}: larger than the limit of {DEFAULT_MAX_BYTES} bytes "
                              f"({DEFAULT_MAX_BYTES / 2**20:g} MiB) for an image file")


def test_encode_skips_a_link_to_dev_zero_with_its_reason(tmp_path, ckpt):
    images, out = tmp_path / "images", tmp_path / "codes"
    write_folder(images, {"a": 2})
    link_to_dev_zero(images / "a" / "zero.png")
    code = "import sys\nfrom hybridhash.app import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
    done = run_limited(code, *map(str, encode_argv(images, out, ckpt)))
    assert done.returncode == 0, done.stderr[-2000:]
    skipped = json.loads((out / "skipped.json").read_text())
    # the file's size and time when it was tried are recorded beside (an update tries it again once they change)
    assert [(s["path"], s["reason"]) for s in skipped] == [("a/zero.png", f"is a character device, {NOT_REGULAR}")]


@pytest.mark.parametrize("listed", [False, True], ids=["folder", "list-file"])
def test_encode_skips_a_named_pipe_and_an_oversized_file(tmp_path, ckpt, capsys, listed):
    images, out = tmp_path / "images", tmp_path / "codes"
    names = sorted(p for ps in write_folder(images, {"a": 2, "b": 2}).values() for p in ps)
    pipe = fifo(images / "a" / "pipe.png")
    with open(images / "b" / "big.png", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    source = images
    if listed:
        source = images / "all.txt"
        source.write_text("".join(f"{p} 1 0\n" for p in [*names, "a/pipe.png", "b/big.png"]))
    rc, _, err = within_deadline(lambda: run_cli(encode_argv(source, out, ckpt), capsys), pipe)
    assert rc == 0, err
    skipped = {s["path"]: s["reason"] for s in json.loads((out / "skipped.json").read_text())}
    assert skipped == {"a/pipe.png": f"is a named pipe (FIFO), {NOT_REGULAR}",
                       "b/big.png": f"larger than the limit of {MAX_FILE_BYTES} bytes "
                                    f"({MAX_FILE_BYTES / 2**20:g} MiB) for an image file"}


def test_search_refuses_a_named_pipe_as_a_query(tmp_path, ckpt, capsys):
    images, out = tmp_path / "images", tmp_path / "codes"
    write_folder(images, {"a": 2})
    assert run_cli(encode_argv(images, out, ckpt), capsys)[0] == 0
    pipe = fifo(tmp_path / "query.png")
    rc, _, err = within_deadline(lambda: run_cli(["search", "--collection", out, pipe], capsys), pipe)
    assert rc == 1 and one_error_line(err) == f"{pipe}: is a named pipe (FIFO), {NOT_REGULAR}"


def test_train_refuses_a_named_pipe_in_a_folder_dataset(tmp_path, capsys):
    data = tmp_path / "data"
    write_folder(data, {"a": 6})
    (data / "b").mkdir()
    pipes = [fifo(data / "b" / f"{i}.png") for i in range(6)]  # some of them are training images
    argv = ["train", "--dataset", f"folder:{data}", "--out", tmp_path / "run", *TINY_TRAIN]
    rc, _, err = within_deadline(lambda: run_cli(argv, capsys), *pipes)
    assert rc == 1
    message = one_error_line(err)
    assert message in {f"{pipe}: is a named pipe (FIFO), {NOT_REGULAR}" for pipe in pipes}, message


def test_a_thumbnail_of_a_named_pipe_is_refused(tmp_path):
    from hybridhash.app.serve.thumbnails import ThumbnailCache

    pipe = fifo(tmp_path / "item.png")
    with pytest.raises(DataError) as err:
        within_deadline(lambda: ThumbnailCache(size=16).get(0, pipe), pipe, seconds=20)
    assert str(err.value) == f"item.png: is a named pipe (FIFO), {NOT_REGULAR}"


# --------------------------------------------------------------------------------------------
# split records: row ranges checked before they are expanded

@pytest.fixture
def no_big_arange(monkeypatch):
    """numpy.arange refusing more than a million values: an unchecked range fails here, not in the
    memory of this machine."""
    real = np.arange

    def arange(*args, **kwargs):
        lo, hi = (0, args[0]) if len(args) == 1 else args[:2]
        assert hi - lo <= 10 ** 6, f"asked to expand {hi - lo} rows"
        return real(*args, **kwargs)

    monkeypatch.setattr(splits.np, "arange", arange)


@pytest.mark.parametrize("text", ["0-3000000000", "0-4,2-3000000000", "3-4,0-9,0-9,0-9"])
def test_row_ranges_beyond_the_data_are_refused_unexpanded(no_big_arange, text):
    with pytest.raises(DataError, match=r"^rows: rows out of order or outside 0\.\.9$"):
        splits.decode_rows(text, 10)


def test_row_ranges_still_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        rows = np.flatnonzero(rng.random(40) < 0.4)
        assert np.array_equal(splits.decode_rows(splits.encode_rows(rows), 40), rows)
    with pytest.raises(DataError, match="malformed row range '-3'"):
        splits.decode_rows("-3", 10)


def test_a_split_file_asking_for_billions_of_rows_is_one_line(tmp_path, capsys, no_big_arange):
    data, split = tmp_path / "data", tmp_path / "split.json"
    write_folder(data, {"a": 6, "b": 6})
    name = f"folder:{data}"
    assert run_cli(["data", "info", name, "--save-split", split], capsys)[0] == 0
    record = json.loads(split.read_text())
    record["sets"]["database"]["rows"] = "0-3000000000"
    # the hash guards against accidents, not against an edit: anyone can sign an edited record
    body = json.dumps({"pools": record["pools"], "sets": record["sets"]}, sort_keys=True, separators=(",", ":"))
    record["hash"] = hashlib.sha256(body.encode()).hexdigest()
    split.write_text(json.dumps(record))
    rc, _, err = run_cli(["data", "info", name, "--split-file", split], capsys)
    assert rc == 1 and one_error_line(err) == f"{split}: database rows: rows out of order or outside 0..11"


# --------------------------------------------------------------------------------------------
# file names that are not UTF-8 in a folder dataset: left out with a warning, as encode does

@pytest.fixture
def undecodable(tmp_path):
    """A folder dataset with one image whose name holds the byte 0xE9 (Latin-1 'é'); returns
    (folder, that image's path as Python spells it)."""
    data = tmp_path / "data"
    write_folder(data, {"a": 6, "b": 6})
    bad = os.fsdecode(os.path.join(os.fsencode(data / "a"), b"caf\xe9.png"))
    try:
        tiny_image(5).save(bad, format="PNG")
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    return data, bad


def test_a_folder_dataset_leaves_out_a_name_that_is_not_utf8(undecodable, caplog):
    data, bad = undecodable
    with caplog.at_level(logging.WARNING):
        proto = load_protocol(f"folder:{data}")
    assert sum(len(pool) for pool in proto.pools.values()) == 12  # of the 13 files
    assert f"{bad!r}: file name is not valid UTF-8; left out" in caplog.text


def test_encode_and_a_folder_dataset_leave_out_the_same_names(undecodable, tmp_path, ckpt, capsys):
    from hybridhash.data.folder import folder_pool

    data, bad = undecodable
    (data / "b" / "two\nlines.png").write_bytes((data / "b" / "000.png").read_bytes())
    assert run_cli(encode_argv(data, tmp_path / "codes", ckpt), capsys)[0] == 0
    paths = (tmp_path / "codes" / "paths.txt").read_text().splitlines()
    assert sorted(folder_pool(data).rel_paths) == sorted(paths) and len(paths) == 12


def test_train_and_data_check_leave_out_a_name_that_is_not_utf8(undecodable, tmp_path, capsys):
    data, bad = undecodable
    rc, out, err = run_cli(["data", "check", f"folder:{data}"], capsys)
    assert rc == 0, out + err
    assert f"  {bad!r}: file name is not valid UTF-8; left out" in out.splitlines()
    assert out.splitlines()[-1] == "OK"
    rc, out, err = run_cli(["train", "--dataset", f"folder:{data}", "--out", tmp_path / "run", *TINY_TRAIN], capsys)
    assert rc == 0, err
    assert (tmp_path / "run" / f"bits{BITS}" / "best").is_dir()


# --------------------------------------------------------------------------------------------
# JSON nested past the parser's recursion limit: one line naming the input, never a traceback

@pytest.mark.parametrize("option", ["--model-overrides", "--method-params"])
def test_a_deeply_nested_json_option_is_an_argument_error(tmp_path, capsys, option):
    argv = ["train", "--dataset", "digits", "--out", tmp_path / "run", option, '{"a": ' + DEEP + "}"]
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == [f"hybridhash train: error: argument {option}: JSON nested too deeply to read; pass a JSON "
                      f"object such as '{{\"name\": 1}}'"]
    assert not (tmp_path / "run").exists()


def test_a_deeply_nested_config_json_is_one_line(tmp_path, ckpt, capsys):
    images = tmp_path / "images"
    write_folder(images, {"a": 2})
    broken = tmp_path / "model"
    broken.mkdir()
    for f in ckpt.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "config.json").write_text(DEEP)
    rc, _, err = run_cli(encode_argv(images, tmp_path / "codes", broken), capsys)
    assert rc == 1
    assert one_error_line(err) == f"{broken / 'config.json'}: JSON nested too deeply to read; is this the right file?"


def test_a_deeply_nested_manifest_json_is_one_line(tmp_path, ckpt, capsys):
    images, out = tmp_path / "images", tmp_path / "codes"
    write_folder(images, {"a": 2})
    assert run_cli(encode_argv(images, out, ckpt), capsys)[0] == 0
    manifest = out / "manifest.json"
    manifest.write_text(DEEP)
    for argv in (["search", "--collection", out, images / "a" / "000.png"], ["index", "--collection", out]):
        rc, _, err = run_cli(argv, capsys)
        assert rc == 1
        assert one_error_line(err) == f"{manifest}: JSON nested too deeply to read; is this the right file?"


def test_deeply_nested_onnx_metadata_is_one_line(tmp_path, ckpt):
    from hybridhash.engines.exported import FORMAT, PREFIX, parse_metadata

    path = tmp_path / "model.onnx"
    meta = {"format": FORMAT, "format_version": "1", "bits": str(BITS), "fingerprint": "x",
            "preprocess": json.dumps(hybridhash.from_pretrained(ckpt).config.preprocess), "config": DEEP}
    with pytest.raises(CheckpointError) as err:
        parse_metadata(path, meta)
    assert str(err.value) == f"{path}: {PREFIX}config: JSON nested too deeply to read; is this the right file?"


def test_deeply_nested_run_files_are_one_line(tmp_path):
    from safetensors.torch import save_file

    from hybridhash.locking import _owner
    from hybridhash.app.rundir import LOG_NAME, read_log
    from hybridhash.app.train.state import read_training_state

    (tmp_path / LOG_NAME).write_text('{"epoch": 1}\n' + DEEP + "\n")
    with pytest.raises(DataError, match="JSON nested too deeply"):
        read_log(tmp_path)
    state = tmp_path / "state.safetensors"
    save_file({"x": torch.zeros(1)}, str(state), metadata={"hybridhash": DEEP})
    with pytest.raises(DataError, match="JSON nested too deeply"):
        read_training_state(state)
    lock = tmp_path / "lock"
    lock.write_text(DEEP)
    with open(lock) as handle:
        assert _owner(handle) == "owner unknown"


# --------------------------------------------------------------------------------------------
# --sizes fractions that add up to more than a class

def test_sizes_fractions_over_one_are_refused_naming_the_option(capsys):
    message = ("--sizes query=0.5,train=0.6: fractions of a class summing to 1.1, over 1; give fractions "
               "that sum to at most 1 (train is then taken from what the queries leave)")
    rc, _, err = run_cli(["data", "info", "digits", "--sizes", "query=0.5,train=0.6"], capsys)
    assert rc == 1 and one_error_line(err) == message
    rc, out, _ = run_cli(["data", "check", "digits", "--sizes", "query=0.5,train=0.6"], capsys)
    assert rc == 1 and f"  digits: {message}" in out.splitlines()
    with pytest.raises(DataError, match="summing to 1.1, over 1"):
        load_protocol("digits", sizes={"query": 0.7, "train": 0.4})
    # train is a fraction of what the queries leave: 0.5 and 0.5 is a quarter of each class
    proto = load_protocol("digits", sizes={"query": 0.5, "train": 0.5}, val_fraction=0.0)
    assert len(proto.query) == pytest.approx(1797 / 2, abs=10)
    assert len(proto.train) == pytest.approx(1797 / 4, abs=15)
