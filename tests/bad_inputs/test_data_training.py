"""Hostile or mistaken input on the data and training side: one-line errors, nothing run, nothing changed.

CIFAR-10 batches that would run code, unusable --device values, absurd sizes in a checkpoint's
config.json, single-class data, --resume without a run, splits too small for validation, and
.pth files that pickle more than tensors.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import hybridhash
from tests.helpers.fakes import write_fake_cifar, write_folder
from tests.helpers.commands import one_error_line, run_cli, snapshot_digests as snapshot
from hybridhash.data import load_protocol
from hybridhash.data import cifar
from hybridhash.data.cifar import read_cifar10
from hybridhash.data.splits import draw_val, rng_for, STREAM_VAL
from hybridhash.errors import CheckpointError, ConfigError, DataError
from hybridhash.environment import pick_device

SMALL = '{"depths": [1, 1, 1]}'
TINY_TRAIN = ["--model", "hybridhash_cpu", "--model-overrides", SMALL, "--bits", "8", "--epochs", "1",
              "--batch-size", "4", "--no-progress", "--threads", "1", "--parallel", "1", "--device", "cpu"]


# --------------------------------------------------------------------------------------------
# 1. a CIFAR-10 batch that runs code when unpickled

class _OpensAFile:
    """Pickles as a call of ``open(marker, "w")``: unpickling it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def crafted_cifar(tmp_path):
    """A CIFAR-10 folder whose data_batch_1 would create ``marker`` when unpickled (protocol 2, as
    the real batches)."""
    root = tmp_path / "cifar"
    write_fake_cifar(root, train_per_class=1, test_per_class=1)
    marker = tmp_path / "marker"
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"batch_label": "x", "labels": [0], "data": _OpensAFile(marker)}, protocol=2))
    return root, batch, marker


def unsafe_message(path: Path, name: str) -> str:
    return (f"{path} is not a CIFAR-10 batch: it asks to load {name}, which a CIFAR batch never contains; "
            f"re-download it")


@pytest.mark.parametrize("command", [
    ["data", "check", "cifar10", "--verify-images"],
    ["data", "info", "cifar10"],
    ["train", "--dataset", "cifar10", *TINY_TRAIN],
])
def test_a_cifar_batch_that_runs_code_is_refused_unrun(crafted_cifar, tmp_path, capsys, command):
    root, batch, marker = crafted_cifar
    before = snapshot(root)
    out = tmp_path / "run"
    argv = command + ["--data-root", root] + (["--out", out] if command[0] == "train" else [])
    rc, _, err = run_cli(argv, capsys)
    assert rc == 1
    assert one_error_line(err) == unsafe_message(batch, "io.open")
    assert not marker.exists()
    assert snapshot(root) == before and not out.exists()


def test_a_crafted_batches_meta_is_refused_unrun(tmp_path):
    root = tmp_path / "cifar"
    write_fake_cifar(root)
    meta = root / "cifar-10-batches-py" / "batches.meta"
    marker = tmp_path / "marker"
    meta.write_bytes(pickle.dumps({"label_names": _OpensAFile(marker)}, protocol=4))
    with pytest.raises(DataError) as err:
        read_cifar10(root)
    assert str(err.value) == unsafe_message(meta, "io.open")
    assert not marker.exists()


def test_os_system_in_a_batch_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "batch"

    class Shell:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path.write_bytes(pickle.dumps({"data": Shell()}, protocol=2))
    with pytest.raises(DataError, match=r"asks to load posix\.system|asks to load nt\.system"):
        cifar.load_batch_file(str(path))
    assert not marker.exists()


def test_genuine_fake_batches_still_load(tmp_path):
    images, classes = write_fake_cifar(tmp_path, train_per_class=1, test_per_class=2)
    got_images, got_classes, names = read_cifar10(tmp_path)
    assert np.array_equal(got_images, images) and np.array_equal(got_classes, classes)
    assert names[0] == "airplane" and len(names) == 10


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_batches_of_every_pickle_protocol_load(tmp_path, protocol):
    # protocol 5 pickles arrays through numpy's _frombuffer, 0-4 through _reconstruct (+ _codecs for bytes)
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"data": data, "labels": [3, 7], "filenames": [b"a.png", "b.png"]},
                                  protocol=protocol))
    got = cifar.load_batch_file(str(path))
    assert np.array_equal(got["data"], data) and got["labels"] == [3, 7] and got["filenames"] == [b"a.png", "b.png"]


def test_a_python2_batch_loads(tmp_path):
    """The real batches are Python 2 pickles: numpy.core names, the array's bytes as a latin-1 str."""
    def s(text):
        b = text.encode("latin1")
        return b"U" + bytes([len(b)]) + b

    raw = (b"\x80\x02}(" + s("data") + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s("b")
           + b"\x87R(K\x01K\x02K\x03\x86cnumpy\ndtype\n" + s("u1") + b"K\x00K\x01\x87R(K\x03" + s("|")
           + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + s("\x00\x01\x02\x03\x04\xff") + b"tb"
           + s("labels") + b"](K\x01K\x02eu.")
    path = tmp_path / "batch"
    path.write_bytes(raw)
    got = cifar.load_batch_file(str(path))
    assert got["labels"] == [1, 2]
    assert got["data"].dtype == np.uint8 and got["data"].tolist() == [[0, 1, 2], [3, 4, 255]]


def test_codecs_in_a_batch_only_decode_latin1(tmp_path):
    # `_codecs.encode` is how protocol 2 stores bytes; any other codec could be a way in
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(pickle.UnpicklingError, match="latin-1"):
        cifar.load_batch_file(str(path))
    with pytest.raises(DataError, match="cannot read CIFAR-10 under"):
        root = tmp_path / "cifar"
        write_fake_cifar(root)
        (root / "cifar-10-batches-py" / "test_batch").write_bytes(path.read_bytes())
        read_cifar10(root)


def test_no_pickle_or_unsafe_load_elsewhere_in_src():
    """Every other way of reading a pickle in the package is a weights-only or pickle-free one."""
    src = Path(hybridhash.__file__).parent
    for path in src.rglob("*.py"):
        text = path.read_text()
        if path.name != "cifar.py":
            assert "import pickle" not in text and "pickle.load" not in text, path
        assert "allow_pickle=True" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line and not line.lstrip().startswith(("#", '"', "`")):
                assert "weights_only=True" in line, f"{path}: {line}"


# --------------------------------------------------------------------------------------------
# 2. --device

CHOICES = "choose auto, cpu, cuda or cuda:N"
NO_CUDA = ("--device cuda: this machine has no CUDA GPU (or PyTorch was built without CUDA); use --device cpu, "
           "or --device auto to take a GPU only when there is one")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_pick_device_messages(no_gpu, monkeypatch):
    for name in ("tpu", "gpu", "meta", "cuda:x", ""):
        with pytest.raises(ConfigError) as err:
            pick_device(name)
        assert str(err.value) == f"--device {name!r} is not a device this program can use; {CHOICES}"
    with pytest.raises(ConfigError) as err:
        pick_device("cuda")
    assert str(err.value) == NO_CUDA
    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError) as err:
        pick_device("cuda:3")
    assert str(err.value) == ("--device cuda:3: this machine has 1 CUDA device(s), cuda:0 to cuda:0; "
                              "choose one of those, cuda, or cpu")
    assert pick_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize("device", ["tpu", "cuda"])
@pytest.mark.parametrize("command", [
    ["train", "--dataset", "digits", "--bits", "8"],
    ["evaluate", "--checkpoint", "{tmp}"],
    ["encode", "--checkpoint", "{tmp}/ck", "--images", "{tmp}", "--collection", "{tmp}/codes"],
    ["search", "{tmp}/q.png", "--collection", "{tmp}/codes"],
    ["serve", "--collection", "{tmp}/codes"],
])
def test_unusable_device_is_a_one_line_error_in_every_command(no_gpu, tmp_path, capsys, command, device):
    before = snapshot(tmp_path)
    argv = [a.format(tmp=tmp_path) for a in command] + ["--device", device]
    if command[0] == "train":
        argv += ["--out", str(tmp_path / "run")]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 1
    expected = NO_CUDA if device == "cuda" else f"--device 'tpu' is not a device this program can use; {CHOICES}"
    assert one_error_line(err) == expected
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists() and not (tmp_path / "codes").exists()


# --------------------------------------------------------------------------------------------
# 3. absurd sizes in a checkpoint's config.json

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "ck"
    torch.manual_seed(0)
    hybridhash.create_model("hybridhash_cpu", bits=8, depths=(1, 1, 1)).save_pretrained(str(path))
    return path


def edited_checkpoint(checkpoint: Path, tmp_path: Path, **config) -> Path:
    """A copy of ``checkpoint`` whose config.json sets ``config`` in its model config."""
    out = tmp_path / "edited"
    out.mkdir()
    for f in checkpoint.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    meta = json.loads((out / "config.json").read_text())
    meta["config"].update(config)
    (out / "config.json").write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("img_size, reason", [
    (10 ** 6, "img_size must be a whole number of pixels from 1 to 4096, got 1000000"),
    (4112, "img_size must be a whole number of pixels from 1 to 4096, got 4112"),
    (0, "img_size must be a whole number of pixels from 1 to 4096, got 0"),
    (-32, "img_size must be a whole number of pixels from 1 to 4096, got -32"),
    ("32", "img_size must be a whole number of pixels from 1 to 4096, got '32'"),
    (32.0, "img_size must be a whole number of pixels from 1 to 4096, got 32.0"),
    (33, "img_size 33 is not a multiple of patch_size 2"),
])
def test_absurd_img_size_in_config_json_is_refused_before_building(checkpoint, tmp_path, monkeypatch, capsys,
                                                                   img_size, reason):
    from hybridhash.models import factory as weights

    ck = edited_checkpoint(checkpoint, tmp_path, img_size=img_size)
    before = snapshot(ck)

    def no_model(*a, **k):
        raise AssertionError("the model was built from an invalid config")

    monkeypatch.setattr(weights, "HybridHash", no_model)
    expected = f"{ck / 'config.json'}: not a usable model config: {reason}"
    with pytest.raises(CheckpointError) as err:
        hybridhash.from_pretrained(ck)
    assert str(err.value) == expected
    rc, _, err = run_cli(["evaluate", "--checkpoint", ck, "--dataset", "digits", "--out", tmp_path / "eval",
                          "--device", "cpu"], capsys)
    assert rc == 1 and one_error_line(err) == expected
    assert snapshot(ck) == before


def test_other_absurd_model_sizes_are_refused(checkpoint, tmp_path):
    ck = edited_checkpoint(checkpoint, tmp_path, embed_dims=[32, 64, 10 ** 7], patch_size=0)
    with pytest.raises(CheckpointError) as err:
        hybridhash.from_pretrained(ck)
    assert str(err.value) == (f"{ck / 'config.json'}: not a usable model config: patch_size must be a whole number "
                              f"from 1 to img_size (32), got 0")
    meta = json.loads((ck / "config.json").read_text())
    for change, reason in [
        ({"patch_size": 2}, "embed_dims must be whole numbers from 1 to 8192, got [32, 64, 10000000]"),
        ({"patch_size": 2, "embed_dims": [32, 64, 128], "depths": [1, 1, 10 ** 6]},
         "depths must be whole numbers from 0 to 128, got [1, 1, 1000000]"),
        ({"depths": [1, 1, 1], "crop_pct": 1e-9},
         "crop_pct must be a number from 0.1 to 2, got 1e-09"),
        ({"crop_pct": 0.875, "embed_dims_typo": 1}, "unknown model options: embed_dims_typo"),
    ]:
        meta["config"].update(change)
        (ck / "config.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError) as err:
            hybridhash.from_pretrained(ck)
        assert str(err.value) == f"{ck / 'config.json'}: not a usable model config: {reason}"
        meta["config"].pop("embed_dims_typo", None)


def test_the_saved_config_still_loads(checkpoint):
    assert hybridhash.from_pretrained(checkpoint).config.img_size == 32


# --------------------------------------------------------------------------------------------
# 4. a single class

SINGLE = ("every query and database image has the same label ('cat'): mAP is meaningless with one class "
          "(every database image is relevant to every query, so mAP is 1.0 whatever the codes); use data with "
          "two or more classes")


def test_single_class_split_warns(tmp_path, caplog):
    write_folder(tmp_path / "one", {"cat": 12})
    name = f"folder:{tmp_path / 'one'}"
    with caplog.at_level(logging.WARNING, logger="hybridhash.data.load"):
        p = load_protocol(name)
    assert p.warnings == [f"{name}: {SINGLE}"] and f"{name}: {SINGLE}" in caplog.text
    assert p.summary()["warnings"] == p.warnings
    # two classes: no warning
    write_folder(tmp_path / "two", {"cat": 6, "dog": 6})
    assert load_protocol(f"folder:{tmp_path / 'two'}").warnings == []


def test_single_class_training_set_warns(tmp_path):
    from hybridhash.data.load import label_warnings
    from hybridhash.data.sets import ArrayPool, RetrievalSet

    labels = np.eye(2, dtype=np.float32)[[0, 0, 0, 1, 1]]
    pool = ArrayPool("p", np.zeros((5, 4, 4, 3), np.uint8), labels, ["a", "b"])
    sets = {"train": RetrievalSet("train", pool, np.array([0, 1])), "val": RetrievalSet("val", pool, np.array([2])),
            "query": RetrievalSet("query", pool, np.array([3])),
            "database": RetrievalSet("database", pool, np.array([0, 4]))}
    assert label_warnings("x", sets, ["a", "b"]) == [
        "x: every training image has the same label ('a'): the model learns nothing that tells classes apart and "
        "the validation mAP that selects it is meaningless (1.0); use training data with two or more classes"]


@pytest.mark.slow
def test_train_and_evaluate_print_the_single_class_warning(tmp_path, capsys):
    write_folder(tmp_path / "one", {"cat": 12})
    name = f"folder:{tmp_path / 'one'}"
    rc, out, _ = run_cli(["train", "--dataset", name, "--out", tmp_path / "run", *TINY_TRAIN], capsys)
    assert rc == 0 and f"warning: {name}: {SINGLE}" in out.splitlines()
    rc, out, _ = run_cli(["evaluate", "--checkpoint", tmp_path / "run", "--device", "cpu", "--queries", "1"], capsys)
    assert rc == 0 and f"warning: {name}: {SINGLE}" in out.splitlines()
    doc = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert doc["results"]["8"]["map"] == pytest.approx(1.0) and doc["warnings"] == [f"{name}: {SINGLE}"]


# --------------------------------------------------------------------------------------------
# 5. --resume without a run

def test_resume_without_a_run_is_an_error(tmp_path, capsys):
    missing = tmp_path / "nothing"
    rc, _, err = run_cli(["train", "--resume", "--out", missing, *TINY_TRAIN], capsys)
    assert rc == 1
    assert one_error_line(err) == f"--resume: no run in {missing}; drop --resume to start a new run"
    assert not missing.exists()
    # a directory that holds something else is no run either, and is left as it was
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    rc, _, err = run_cli(["train", "--resume", "--out", other, *TINY_TRAIN], capsys)
    assert rc == 1 and one_error_line(err) == f"--resume: no run in {other}; drop --resume to start a new run"
    assert snapshot(other) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}


# --------------------------------------------------------------------------------------------
# 6. splits too small for a validation set

def test_small_folder_gets_a_validation_image(tmp_path):
    write_folder(tmp_path / "f", {"a": 6, "b": 6})
    p = load_protocol(f"folder:{tmp_path / 'f'}")
    # per class: 0.1 of 6 -> 1 query, 0.5 of 5 -> 3 train; 0.1 of 3 rounds to 0 per class, one is held out anyway
    assert (len(p.query), len(p.train) + len(p.val), len(p.val), len(p.database)) == (2, 6, 1, 10)
    assert set(p.val.rows) <= set(p.database.rows) - set(p.train.rows)


def test_draw_val_holds_out_one_image_when_the_fraction_rounds_to_none():
    def val(classes, fraction, n_class=None):
        labels = np.eye(n_class or max(classes) + 1, dtype=np.float32)[classes]
        return draw_val(labels, fraction, rng_for(0, STREAM_VAL))

    # 3 + 4 images: 0.1 rounds to 0 in both; one image of the larger class (1) is held out
    rows = val([0, 0, 0, 1, 1, 1, 1], 0.1)
    assert rows.size == 1 and rows[0] in (3, 4, 5, 6)
    # every class has a single image: holding one out would remove a class from training
    assert val([0, 1, 2], 0.1).size == 0
    assert val([0, 0, 1], 0.0).size == 0
    # fractions that give images already are unchanged: 0.1 of 5 rounds up to 1 per class
    assert val([0] * 5 + [1] * 5, 0.1).size == 2
    # multi-label: drawn uniformly, at least one of 2 or more images
    multi = np.array([[1, 1], [1, 0], [0, 1]], np.float32)
    assert draw_val(multi, 0.1, rng_for(0, STREAM_VAL)).size == 1
    assert draw_val(multi[:1], 0.1, rng_for(0, STREAM_VAL)).size == 0


@pytest.mark.parametrize("fraction, why", [
    ("0.1", "val_fraction 0.1 of 2 training images rounds to 0, and no class has 2 training images to spare one"),
    ("0", "val_fraction 0"),
])
def test_no_validation_image_says_why_and_what_to_do(tmp_path, capsys, fraction, why):
    write_folder(tmp_path / "f", {"a": 2, "b": 2})
    name = f"folder:{tmp_path / 'f'}"
    rc, _, err = run_cli(["train", "--dataset", name, "--out", tmp_path / "run", "--val-fraction", fraction,
                          *TINY_TRAIN], capsys)
    assert rc == 1
    assert one_error_line(err) == (
        f"{name} has 4 images: query 0, train 2, val 0 ({why}), database 4; --select-on val needs at least 1 "
        f"validation image: use a larger dataset (a class with at least 2 training images), --val-fraction above 0, "
        f"or --select-on query")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# 7. .pth files holding more than tensors, and other foreign or broken checkpoints

def test_pth_with_pickled_objects_is_refused_without_advising_to_unpickle(tmp_path):
    path = tmp_path / "trainer.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    before = path.read_bytes()
    expected = (f"{path}: holds Python objects other than tensors (e.g. argparse.Namespace), which are not loaded "
                f"because unpickling them can run code; in an environment you trust, re-save only the weights with "
                f"torch.save(model.state_dict(), path), or convert them to .safetensors")
    with pytest.raises(CheckpointError) as err:
        hybridhash.models.read_state_dict(path)
    assert str(err.value) == expected and "weights_only=False" not in str(err.value)
    with pytest.raises(CheckpointError) as err:
        hybridhash.create_model("hybridhash_cpu", pretrained=str(path))
    assert str(err.value) == expected
    assert path.read_bytes() == before


def test_truncated_safetensors_and_foreign_files_are_one_line_errors(checkpoint, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    for f in checkpoint.iterdir():
        (ck / f.name).write_bytes(f.read_bytes())
    weights = ck / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    before = snapshot(ck)
    with pytest.raises(CheckpointError) as err:
        hybridhash.from_pretrained(ck)
    assert str(err.value).startswith(f"{weights}: not a readable safetensors file (") and "\n" not in str(err.value)
    # a config.json of another program
    (ck / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 768}))
    before = snapshot(ck)
    with pytest.raises(CheckpointError) as err:
        hybridhash.from_pretrained(ck)
    assert str(err.value) == f"{ck / 'config.json'}: not a hybridhash checkpoint config"
    assert snapshot(ck) == before


def test_foreign_state_dict_is_a_one_line_mismatch(checkpoint, tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, path)
    before = path.read_bytes()
    model = hybridhash.create_model("hybridhash_cpu", bits=8, depths=(1, 1, 1))
    state = hybridhash.models.read_state_dict(path)
    with pytest.raises(CheckpointError) as err:
        hybridhash.models.load_checked(model, state, str(path))
    n = len(model.state_dict())
    first = next(iter(model.state_dict()))
    assert str(err.value) == (f"{path} does not fit this hybridhash_cpu model: keys {n} missing (e.g. {first}), "
                              f"1 unexpected (e.g. conv.weight)")
    assert path.read_bytes() == before


# --------------------------------------------------------------------------------------------
# methods fed what they cannot use: labels that are not there, odd batches, views that cannot vary

def test_unsupervised_mismatches_are_one_line_and_change_nothing(tmp_path, capsys, monkeypatch):
    import dataclasses

    from PIL import Image

    from hybridhash.methods.cibhash import CIBHash

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(12):
        Image.new("RGB", (8, 8), (20 * i, 255 - 20 * i, 7 * i)).save(flat / f"{i:02d}.png")
    before = snapshot(tmp_path)
    narrow = dataclasses.replace(CIBHash.views, crop_scale=(0.98, 1.0))  # needs 50 px to vary its crop
    monkeypatch.setattr(CIBHash, "views", narrow)
    cases = [(["--dataset", f"folder:{flat}", "--method", "hashnet"], "choose a method that trains without labels"),
             (["--method", "greedyhash_unsup", "--batch-size", "7"], "use --batch-size 8"),
             (["--method", "cibhash", "--batch-size", "8"], "needs images of at least 50 px")]
    for extra, message in cases:
        rc, _, err = run_cli(["train", *TINY_TRAIN, *extra, "--out", tmp_path / "run"], capsys)
        assert rc == 1 and message in one_error_line(err), err
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()
