"""Writes that lose nothing: every command that takes ``--out`` (found from the parser) refuses a
folder of someone else's files or writes only new names in it; the demo removes only what it made;
``encode --no-resume`` removes only the collection's own file names; results are written whole or
not at all, with the mode the umask (or the replaced file) gives; a full disk while saving a
checkpoint is one line and keeps the previous one. Tiny images, tiny models, one epoch."""
from __future__ import annotations

import argparse
import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hybridhash
from hybridhash.app import cli
from tests.helpers.fakes import write_folder
from tests.helpers.commands import one_line_error, snapshot
from tests.helpers.encoding import save_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

BITS = 16
SMALL = '{"depths": [1, 1, 1]}'
TINY_TRAIN = ["--model", "hybridhash_cpu", "--model-overrides", SMALL, "--bits", "8", "--epochs", "1",
              "--batch-size", "4", "--no-progress", "--threads", "1", "--parallel", "1", "--device", "cpu"]
FOREIGN = b"a file hybridhash did not write: "


def fill(directory: Path, names) -> dict:
    """Write a foreign file at each relative name under ``directory``; returns the snapshot."""
    for name in names:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(FOREIGN + name.encode())
    return snapshot(directory)


def noise_image(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.NEAREST)


def make_flat(root: Path, n: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        noise_image(i).save(root / f"img_{i}.png")
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("ckpt") / "model", bits=BITS)


class Stop(Exception):
    """Raised by a stand-in to end a long command once the part under test has run."""


def stop(*args, **kwargs):
    raise Stop


# --------------------------------------------------------------------------------------------
# every command that takes --out, with a folder of someone else's files

def out_commands() -> list:
    """The words of every sub-command, nested ones included, whose options include ``--out`` (among them
    ``encode``, whose ``--collection`` still answers to ``--out``, its spelling before)."""
    found = []

    def walk(parser: argparse.ArgumentParser, words: tuple) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, words + (name,))
            elif "--out" in action.option_strings:
                found.append(words)

    walk(cli.build_parser(), ())
    return found


def _small_digits(monkeypatch) -> None:
    """The demo on 200 of the digits with 2 queries and 6 training images per class (seconds, not a minute)."""
    import sklearn.datasets

    import hybridhash.data as data

    real_digits, real_protocol = sklearn.datasets.load_digits, data.load_protocol

    def few_digits(*args, **kwargs):
        bunch = real_digits(*args, **kwargs)
        bunch.images, bunch.target = bunch.images[:200], bunch.target[:200]
        return bunch

    monkeypatch.setattr(sklearn.datasets, "load_digits", few_digits)
    monkeypatch.setattr(data, "load_protocol", lambda name, *a, **kw: real_protocol(
        name, *a, **{**kw, "sizes": {"query": 2, "train": 6}}))


def _setups(base: Path, ckpt: Path) -> dict:
    """{command words: (argv with "{out}" where --out goes, the file name under the directory that
    --out names for commands whose --out is a file (else None), setup to run first)}."""
    folder = base / "classes"
    write_folder(folder, {"cat": 6, "dog": 6})
    flat = make_flat(base / "flat")
    codes = base / "codes"
    data = ["--dataset", f"folder:{folder}"]

    def encoded(monkeypatch):
        if not codes.exists():
            assert cli.main(["encode", "--checkpoint", str(ckpt), "--images", str(flat), "--collection", str(codes),
                             "--workers", "0", "--no-progress"]) == 0

    return {
        ("train",): (["train", *data, *TINY_TRAIN, "--out", "{out}"], None, None),
        ("evaluate",): (["evaluate", "--checkpoint", str(ckpt), *data, "--device", "cpu", "--queries", "1",
                         "--out", "{out}"], None, None),
        ("compare",): (["compare", "--methods", "hybridhash", "--bits", "8", "--seeds", "0", "--epochs", "1",
                        *data, "--model-overrides", SMALL, "--threads", "1", "--device", "cpu", "--no-floor",
                        "--no-progress", "--out", "{out}"], None, None),
        ("encode",): (["encode", "--checkpoint", str(ckpt), "--images", str(flat), "--workers", "0",
                       "--no-progress", "--collection", "{out}"], None, None),
        ("index",): (["index", "--collection", str(codes), "--out", "{out}"], None, encoded),
        ("export",): (["export", "--checkpoint", str(ckpt), "--no-verify", "--out", "{out}"], "model.onnx", None),
        ("data", "export"): (["data", "export", "digits", "--sets", "query", "--out", "{out}"], None, None),
        ("demo",): (["demo", "--bits", "8", "--epochs", "1", "--no-progress", "--out", "{out}"], None, _small_digits),
    }


@pytest.mark.slow
def test_every_command_with_out_leaves_a_foreign_directory_byte_identical(tmp_path, ckpt, capsys, monkeypatch):
    """Each command runs once into a new directory, which tells the names it writes; then again into a
    directory holding someone else's files at exactly those names (and a few others): every one of
    them must be byte-identical afterwards, the command refused in one line or wrote new names only."""
    setups = _setups(tmp_path / "inputs", ckpt)
    commands = out_commands()
    assert ("data", "export") in commands and ("train",) in commands  # nested and plain ones are found
    for words in commands:
        name = " ".join(words)
        if words not in setups:
            pytest.fail(f"`hybridhash {name}` takes --out but the scan cannot run it: teach it how, by adding "
                        f"its arguments to _setups in {Path(__file__).name}")
        argv, file_name, prepare = setups[words]
        with monkeypatch.context() as patch:
            if prepare is not None:
                prepare(patch)
            fresh = tmp_path / "fresh" / name.replace(" ", "-")
            target = fresh / file_name if file_name else fresh
            capsys.readouterr()
            rc = cli.main([str(target) if a == "{out}" else a for a in argv])
            err = capsys.readouterr().err
            assert rc == 0, f"`hybridhash {name}` failed into a new directory ({err.strip()[-300:]}); teach the scan how"
            written = sorted(snapshot(fresh))
            assert written, f"`hybridhash {name}` wrote nothing under {fresh}"

            foreign = tmp_path / "foreign" / name.replace(" ", "-")
            before = fill(foreign, written + ["notes.txt", "photos/holiday.jpg"])
            target = foreign / file_name if file_name else foreign
            rc = cli.main([str(target) if a == "{out}" else a for a in argv])
        after = snapshot(foreign)
        changed = [n for n in before if after.get(n) != before[n]]
        assert not changed, f"`hybridhash {name}` changed or removed {changed[:5]}"
        if rc != 0:
            err = one_line_error(capsys)
            assert rc == 1 and str(foreign) in err, (name, err)


def test_the_scan_finds_every_command_that_takes_out():
    assert sorted(out_commands()) == sorted([("data", "export"), ("train",), ("evaluate",), ("compare",),
                                             ("encode",), ("export",), ("index",), ("demo",)])


# --------------------------------------------------------------------------------------------
# demo: only what it made

@pytest.mark.parametrize("theirs", [["train/bits16/best/model.safetensors", "train/run.json"],
                                    ["data/train.txt", "data/images/0/0.png", "src/main.py"]])
def test_demo_refuses_a_folder_of_other_files(tmp_path, capsys, monkeypatch, theirs):
    import hybridhash.data

    out = tmp_path / "runs"  # `demo --out runs` beside train's default runs/train, or `demo --out .`
    before = fill(out, theirs)
    monkeypatch.setattr(hybridhash.data, "load_protocol", stop)  # the demo must not get this far
    assert cli.main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 1
    assert one_line_error(capsys) == (f"error: --out {out} is not empty and is not a hybridhash demo directory "
                                      f"(no .hybridhash-output.json); choose an empty or new directory")
    assert snapshot(out) == before


def test_demo_removes_what_it_made_and_nothing_else(tmp_path, capsys, monkeypatch):
    import hybridhash.data

    out = tmp_path / "demo"
    # an earlier demo's output, with a person's files beside and inside it
    fill(out, ["train/bits8/last/model.safetensors", "eval/metrics.json", "report.html", "notes.txt",
               "mine/photo.jpg"])
    (out / "report.html").write_text("<!doctype html><html><head><meta charset='utf-8'>"
                                     "<title>hybridhash demo: digits</title></head></html>")
    monkeypatch.setattr(hybridhash.data, "load_protocol", stop)
    with pytest.raises(Stop):
        cli.main(["demo", "--quick", "--no-progress", "--out", str(out)])
    assert sorted(snapshot(out)) == [".hybridhash-output.json", "mine/photo.jpg", "notes.txt"]

    # a marker edited to claim the person's folder does not make the demo remove it
    marker = json.loads((out / ".hybridhash-output.json").read_text())
    marker["made"] += ["mine", "notes.txt", "../elsewhere"]
    (out / ".hybridhash-output.json").write_text(json.dumps(marker))
    with pytest.raises(Stop):
        cli.main(["demo", "--quick", "--no-progress", "--out", str(out)])
    assert sorted(snapshot(out)) == [".hybridhash-output.json", "mine/photo.jpg", "notes.txt"]

    # a name the demo writes, put there by someone else after the demo ran: refused, kept
    before = fill(out, ["data/train.txt"])
    assert cli.main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 1
    assert one_line_error(capsys) == (f"error: --out {out} holds {out / 'data'}, which the demo did not write; "
                                      f"move it away or choose another --out")
    assert snapshot(out) == before


# --------------------------------------------------------------------------------------------
# data export and --save-split: never over someone else's files

def test_data_export_refuses_a_folder_of_other_files(tmp_path, capsys):
    out = tmp_path / "mine"
    before = fill(out, ["test.txt", "images/0/000.png", "images/3/013.png"])
    assert cli.main(["data", "export", "digits", "--sets", "query", "--out", str(out)]) == 1
    err = one_line_error(capsys)
    assert err.startswith(f"error: --out {out} is not empty and is not a hybridhash data export directory")
    assert snapshot(out) == before

    ours = tmp_path / "export"
    for _ in range(2):  # its own export is replaced
        assert cli.main(["data", "export", "digits", "--sets", "query", "--out", str(ours)]) == 0
    assert len((ours / "test.txt").read_text().splitlines()) == 200


def test_save_split_never_replaces_another_file(tmp_path, capsys):
    theirs = tmp_path / "split.json"
    theirs.write_text('{"mine": true}\n')
    assert cli.main(["data", "info", "digits", "--save-split", str(theirs)]) == 1
    assert one_line_error(capsys) == (f"error: {theirs} exists and is not a split record of hybridhash; "
                                      f"choose another path")
    assert theirs.read_text() == '{"mine": true}\n'
    ours = tmp_path / "ours.json"
    for _ in range(2):
        assert cli.main(["data", "info", "digits", "--save-split", str(ours)]) == 0
    assert json.loads(ours.read_text())["format"] == "hybridhash-split/1"


# --------------------------------------------------------------------------------------------
# encode --no-resume: only the collection's own names

def test_no_resume_ignores_other_names_in_a_crafted_manifest(tmp_path, ckpt):
    images, out = make_flat(tmp_path / "images"), tmp_path / "codes"
    assert cli.main(["encode", "--checkpoint", str(ckpt), "--images", str(images), "--collection", str(out),
                     "--workers", "0", "--no-progress"]) == 0
    theirs = fill(out, ["holiday.jpg", "notes.txt", "shards/my-notes.txt"])
    (tmp_path / "beside.txt").write_bytes(b"beside")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] += ["holiday.jpg", "notes.txt"]  # names a collection never holds
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main(["encode", "--checkpoint", str(ckpt), "--images", str(images), "--collection", str(out),
                     "--workers", "0", "--no-progress", "--no-resume"]) == 0
    after = snapshot(out)
    assert {n: after.get(n) for n in theirs if n.startswith(("holiday", "notes", "shards/my"))} == \
        {n: b for n, b in theirs.items() if n.startswith(("holiday", "notes", "shards/my"))}
    assert (tmp_path / "beside.txt").read_bytes() == b"beside"
    assert hybridhash.collection.open_collection(out).count == 4


# --------------------------------------------------------------------------------------------
# a shard of the wrong width: a hint that helps

def test_an_encoder_of_the_wrong_width_stops_before_writing_a_shard(tmp_path, ckpt):
    from hybridhash.app.encode import encode_collection, shard_path
    from hybridhash.errors import IndexMismatchError

    images, out = make_flat(tmp_path / "images"), tmp_path / "codes"
    model = hybridhash.from_pretrained(ckpt)
    real = model.encode
    model.encode = lambda x: torch.cat([real(x), real(x)], dim=1)  # an export that disagrees with its model
    with pytest.raises(IndexMismatchError) as err:
        encode_collection(images, out, ckpt, model=model, workers=0, progress=False)
    msg = str(err.value)
    assert f"gives {2 * BITS}-bit codes, the model says {BITS} bits" in msg
    assert "--runtime torch" in msg and "hybridhash export" in msg and "same encode command" not in msg
    assert not shard_path(out, 0).exists()


def test_a_shard_of_the_wrong_width_is_not_to_be_encoded_the_same_way_again(tmp_path, ckpt):
    from hybridhash.app.encode import encode_collection, merge_shards, shard_path
    from hybridhash.errors import DataError

    images, out = make_flat(tmp_path / "images"), tmp_path / "codes"
    encode_collection(images, out, ckpt, workers=0, shard_size=2, progress=False)
    path = shard_path(out, 1)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["codes"] = np.concatenate([arrays["codes"], arrays["codes"]], axis=1)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(DataError) as err:
        merge_shards(out)
    msg = str(err.value)
    assert msg.startswith(f"{path}: holds codes of shape (2, {2 * BITS // 8})")
    assert msg.endswith("encode again with --no-resume, or into another --collection")
    assert "same encode command" not in msg


# --------------------------------------------------------------------------------------------
# results are written whole: evaluate on a full disk

def _full_disk(real):
    """``np.savez`` that writes a little and then finds the disk full."""
    def fake(file, *args, **kwargs):
        if hasattr(file, "write"):
            file.write(b"PK\x03\x04 partial")
        else:
            Path(file).write_bytes(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    return fake


def test_evaluate_on_a_full_disk_leaves_no_partial_codes(tmp_path, ckpt, capsys, monkeypatch):
    folder, out = tmp_path / "classes", tmp_path / "eval"
    write_folder(folder, {"cat": 6, "dog": 6})
    monkeypatch.setattr(np, "savez", _full_disk(np.savez))
    assert cli.main(["evaluate", "--checkpoint", str(ckpt), "--dataset", f"folder:{folder}", "--device", "cpu",
                     "--queries", "1", "--out", str(out)]) == 1
    assert one_line_error(capsys).startswith(f"error: no space left on device while writing {out}: free space "
                                             f"and rerun")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".hybridhash")) == []


# --------------------------------------------------------------------------------------------
# written files keep the umask, or the mode of the file they replace

def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_new_files_get_the_mode_the_umask_gives(tmp_path, umask):
    from hybridhash.fileio import write_json

    model = hybridhash.create_model("hybridhash_cpu", bits=BITS)
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as f:  # what any program's new file gets
            f.write("x")
        model.save_pretrained(str(tmp_path / "ckpt"))
        write_json(tmp_path / "doc.json", {"a": 1})
    finally:
        os.umask(old)
    want = _mode(tmp_path / "plain.txt")
    assert want == 0o666 & ~umask
    for path in (tmp_path / "ckpt" / "model.safetensors", tmp_path / "ckpt" / "config.json", tmp_path / "doc.json"):
        assert oct(_mode(path)) == oct(want), path


def test_a_replaced_file_keeps_its_mode(tmp_path):
    from hybridhash.fileio import write_json

    model = hybridhash.create_model("hybridhash_cpu", bits=BITS)
    model.save_pretrained(str(tmp_path / "ckpt"))
    write_json(tmp_path / "doc.json", {"a": 1})
    files = [tmp_path / "ckpt" / "model.safetensors", tmp_path / "ckpt" / "config.json", tmp_path / "doc.json"]
    for path in files:
        os.chmod(path, 0o644)
    old = os.umask(0o077)
    try:
        model.save_pretrained(str(tmp_path / "ckpt"))
        write_json(tmp_path / "doc.json", {"a": 2})
    finally:
        os.umask(old)
    assert [oct(_mode(p)) for p in files] == [oct(0o644)] * 3
    assert json.loads((tmp_path / "doc.json").read_text()) == {"a": 2}


# --------------------------------------------------------------------------------------------
# a full disk while training saves best/ or last/

@pytest.mark.parametrize("failure", ["safetensors", "oserror"])
def test_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_previous(tmp_path, capsys, monkeypatch,
                                                                                 failure):
    import safetensors.torch
    from safetensors import SafetensorError

    folder, run = tmp_path / "classes", tmp_path / "run"
    write_folder(folder, {"cat": 6, "dog": 6})
    argv = ["train", "--dataset", f"folder:{folder}", *TINY_TRAIN, "--epochs", "2", "--eval-every", "1",
            "--out", str(run)]
    assert cli.main([*argv, "--stop-after-epochs", "1"]) == 0
    before = snapshot(run / "bits8")
    assert {"best/model.safetensors", "last/model.safetensors", "last/training_state.safetensors"} <= set(before)
    real = safetensors.torch.save_file

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        if failure == "safetensors":  # how safetensors reports a failed write
            raise SafetensorError(f'Error while serializing: I/O error: No space left on device (os error 28) '
                                  f'at path "{filename}"')
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    capsys.readouterr()
    assert cli.main([*argv, "--resume"]) == 1
    err = one_line_error(capsys)
    which = "best" if "bits8/best:" in err else "last"
    assert err == (f"error: no space left on device while saving {run / 'bits8' / which}: free space and "
                   f"continue with --resume; the previous {which}/ is kept")
    after = snapshot(run / "bits8")
    assert {n: b for n, b in after.items() if n.startswith(("best/", "last/"))} == \
        {n: b for n, b in before.items() if n.startswith(("best/", "last/"))}
    assert not [n for n in after if n.startswith(".")]  # no half-written checkpoint left beside them
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert cli.main([*argv, "--resume"]) == 0
    assert json.loads((run / "bits8" / "last" / "config.json").read_text())["extra"]["epoch"] == 2
