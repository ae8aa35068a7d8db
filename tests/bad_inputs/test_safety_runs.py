"""Training runs under misuse: a new run into a directory that holds another, two writers of one run
directory, comparison cell or code collection (real processes, one of them killed), absurd sizes
and non-finite numbers in the training and evaluation options and in the methods'
hyper-parameters, and what a diverging loss says to try.

Each test trains at most a few one-epoch runs of ``hybridhash_cpu`` with one layer per level on
small digits splits; the processes that hold a lock wait at most a minute for the test.
"""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import signal
import time
import typing
from pathlib import Path

import pytest
import torch

import hybridhash
from hybridhash.app import cli
from hybridhash.data import load_protocol
from hybridhash.errors import ConfigError
from hybridhash.fileio import read_json
from hybridhash.methods import create_method, list_methods
from hybridhash.app.train import TrainConfig, train
from tests.bad_inputs.test_collections import make_flat
from tests.bad_inputs.test_data_training import one_error_line, run_cli, snapshot

SMALL = {"depths": [1, 1, 1]}
TINY = ["--model", "hybridhash_cpu", "--model-overrides", '{"depths": [1, 1, 1]}', "--epochs", "1",
        "--batch-size", "16", "--no-progress", "--threads", "1", "--parallel", "1", "--device", "cpu"]
WAIT = 180  # seconds a test waits for a spawned process to reach its lock (it imports torch first)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def small_digits():
    """10 classes x (15 training, 5 validation, 5 query) images."""
    return load_protocol("digits", sizes=dict(query=5, train=20), val_fraction=0.25)


def tiny_config(out: Path, **kw) -> TrainConfig:
    """The options TINY gives on the command line, with 16 bits."""
    base = dict(model="hybridhash_cpu", model_overrides=SMALL, bits=(16,), epochs=1, batch_size=16, progress=False,
                threads=1, parallel=1, device="cpu", out=str(out))
    return TrainConfig(**{**base, **kw})


# --------------------------------------------------------------------------------------------
# processes that stop while they hold a writer's lock

def _hold_until(ready: Path, go: Path) -> None:
    """Say that the lock is held (create ``ready``), then wait for ``go`` (at most a minute)."""
    if ready.exists():
        return
    ready.touch()
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _pausing(ready: Path, go: Path):
    """A training callback that holds the run after its first step."""
    def callback(event, trainer, **info):
        if event == "step_end":
            _hold_until(ready, go)
    return callback


def _train_and_hold(out: Path, ready: Path, go: Path) -> None:
    torch.set_num_threads(1)
    train(tiny_config(out), protocol=small_digits(), callbacks=[_pausing(ready, go)])


def _compare(out: Path, log: Path, ready: typing.Optional[Path], go: typing.Optional[Path]) -> None:
    from hybridhash.app.compare.grid import Grid

    torch.set_num_threads(1)
    grid = Grid(methods=("hybridhash", "dsh"), bits=(16,), seeds=(0,), out=str(out), model_overrides=SMALL,
                epochs=1, threads=1, parallel=1, progress=False, device="cpu")
    with open(log, "w") as f:
        def echo(line):
            f.write(line + "\n")
            f.flush()
        grid.run(protocols={0: small_digits()}, callbacks=[_pausing(ready, go)] if ready else [], echo=echo)


def _encode_and_hold(images: Path, out: Path, ckpt: Path, ready: Path, go: Path) -> None:
    from hybridhash.app.encode import encode_collection

    torch.set_num_threads(1)
    encode_collection(images, out, ckpt, workers=0, shard_size=2, progress=False,
                      on_shard=lambda shard: _hold_until(ready, go))


def _start(target, *args) -> mp.Process:
    proc = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _wait_for(path: Path, proc: mp.Process, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not path.exists():
        assert proc.is_alive(), f"{what} ended (exit code {proc.exitcode}) before it held the lock"
        assert time.monotonic() < deadline, f"{what} did not reach its lock within {WAIT} s"
        time.sleep(0.1)


@contextlib.contextmanager
def holding(target, *args, ready: Path):
    """A spawned process running ``target(*args)``, once it holds its lock (``ready`` exists); killed at
    the end if still running."""
    proc = _start(target, *args)
    try:
        _wait_for(ready, proc, target.__name__)
        yield proc
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(30)


# --------------------------------------------------------------------------------------------
# 17. a new run into a directory holding a run of another code length

def test_a_new_run_beside_another_code_length_is_refused_and_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    rc, _, err = run_cli(["train", "--bits", "32", "--out", run, *TINY], capsys)
    assert rc == 0, err
    before, summary = snapshot(run), read_json(run / "summary.json")
    rc, _, err = run_cli(["train", "--bits", "16", "--lr", "0.01", "--out", run, *TINY], capsys)
    assert rc == 1
    assert one_error_line(err) == (f"{run} already holds a run (run.json, summary.json, bits32); continue it with "
                                   f"--resume and the same options, or choose another --out")
    assert snapshot(run) == before
    # --resume with the same options adds the code length and keeps what the run held of the other
    rc, _, err = run_cli(["train", "--bits", "16", "--resume", "--out", run, *TINY], capsys)
    assert rc == 0, err
    results = read_json(run / "summary.json")["results"]
    assert sorted(results) == ["16", "32"]
    assert results["32"] == summary["results"]["32"]
    assert read_json(run / "run.json")["config"]["bits"] == [16, 32]


# --------------------------------------------------------------------------------------------
# 18. one writer per run directory, comparison cell and code collection

def test_a_second_train_into_a_run_being_written_is_refused_naming_the_writer(tmp_path, capsys):
    out, ready, go = tmp_path / "run", tmp_path / "ready", tmp_path / "go"
    with holding(_train_and_hold, out, ready, go, ready=ready) as writer:
        before = snapshot(out)
        rc, _, err = run_cli(["train", "--bits", "16", "--resume", "--out", out, *TINY], capsys)
        assert rc == 1
        message = one_error_line(err)
        assert message.startswith(f"{out} is being written by another process (pid {writer.pid}, started "), message
        assert message.endswith("): wait for it to finish, or write this run directory elsewhere")
        assert snapshot(out) == before


def test_a_killed_writer_does_not_block_the_next_run(tmp_path, capsys):
    out, ready, go = tmp_path / "run", tmp_path / "ready", tmp_path / "go"
    with holding(_train_and_hold, out, ready, go, ready=ready) as writer:
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(30)
    assert writer.exitcode == -signal.SIGKILL
    rc, printed, err = run_cli(["train", "--bits", "16", "--resume", "--out", out, *TINY], capsys)
    assert rc == 0, err
    assert len((out / "bits16" / "log.jsonl").read_text().splitlines()) == 1


def test_two_compare_processes_train_each_cell_once_and_both_finish(tmp_path):
    out, ready, go = tmp_path / "grid", tmp_path / "ready", tmp_path / "go"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = _start(_compare, out, first_log, ready, go)  # holds hybridhash/seed0 after its first step
    second = None
    try:
        _wait_for(ready, first, "the first compare")
        second = _start(_compare, out, second_log, None, None)
        deadline = time.monotonic() + WAIT
        while "[1/2] hybridhash/seed0: another process is training it" not in _text(second_log):
            assert second.is_alive() and time.monotonic() < deadline, _text(second_log)
            time.sleep(0.1)
        go.touch()
        for proc in (first, second):
            proc.join(WAIT)
            assert proc.exitcode == 0, (_text(first_log), _text(second_log))
    finally:
        for proc in (first, second):
            if proc is not None and proc.is_alive():
                proc.kill()
                proc.join(30)
    lines = _text(first_log).splitlines() + _text(second_log).splitlines()
    trained = sorted(line.split(":")[0] for line in lines if line.endswith(("training 16 bits", "resuming 16 bits")))
    assert trained == ["[1/2] hybridhash/seed0", "[2/2] dsh/seed0"], lines
    for log in (first_log, second_log):  # each process reports every cell: the grid finished in both
        reported = [line for line in _text(log).splitlines() if "; mAP 16 bits" in line]
        assert sorted(line.split(":")[0] for line in reported) == ["[1/2] hybridhash/seed0", "[2/2] dsh/seed0"], \
            reported
    for method in ("hybridhash", "dsh"):
        assert len((out / method / "seed0" / "bits16" / "log.jsonl").read_text().splitlines()) == 1  # one epoch


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_a_collection_being_encoded_refuses_a_second_encoder_until_the_first_is_killed(tmp_path):
    from hybridhash.app.encode import encode_collection
    from hybridhash.locking import LockedError

    images, out, ready, go = tmp_path / "images", tmp_path / "codes", tmp_path / "ready", tmp_path / "go"
    make_flat(images, 6)
    ckpt = tmp_path / "model"
    torch.manual_seed(0)
    hybridhash.create_model("hybridhash_cpu", bits=32, **SMALL).eval().save_pretrained(str(ckpt))
    kw = dict(workers=0, shard_size=2, progress=False)
    with holding(_encode_and_hold, images, out, ckpt, ready, go, ready=ready) as writer:
        before = snapshot(out)
        with pytest.raises(LockedError) as err:
            encode_collection(images, out, ckpt, **kw)
        assert str(err.value).startswith(f"{out} is being written by another process (pid {writer.pid}, ")
        assert str(err.value).endswith("wait for it to finish, or write this code collection elsewhere")
        assert snapshot(out) == before
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(30)
    done = []
    assert encode_collection(images, out, ckpt, on_shard=done.append, **kw).count == 6
    assert done == [1, 2]  # the killed encoder's first shard is kept


# --------------------------------------------------------------------------------------------
# 13. the memory bank's rows

def test_a_bank_larger_than_the_training_set_allows_is_refused_before_it_is_allocated():
    with pytest.raises(ConfigError) as err:
        create_method("hybridhash", bits=16, n_class=2, num_train=4, bank_rows=17)
    assert str(err.value) == ("hybridhash: bank_rows 17 is more than 4 rows per training image (4 images): rows "
                              "beyond the training set are never written; use at most 16, or leave it unset for "
                              "one row per image")
    with pytest.raises(ConfigError, match="^hybridhash: hyper-parameter bank_rows must be an integer from 0 to "
                                          "4294967295, got 1000000000000$"):
        create_method("hybridhash", bits=16, n_class=2, num_train=4, bank_rows=10 ** 12)  # 64 TB
    assert create_method("hybridhash", bits=16, n_class=2, num_train=4, bank_rows=16).criterion.U.shape == (16, 16)
    # the original's 10000 rows for CIFAR-10's 4500 training images
    assert create_method("hybridhash", bits=16, n_class=10, num_train=4500, bank_rows=10000).criterion.U.shape[0] \
        == 10000


@pytest.mark.parametrize("rows, message", [
    ("1000000000000", "--bank-rows must be an integer from 1 to 4294967295, got 1000000000000"),
    ("100000", "hybridhash: bank_rows 100000 is more than 4 rows per training image (450 images): rows beyond "
               "the training set are never written; use at most 1800, or leave it unset for one row per image"),
])
def test_train_refuses_an_oversized_bank_in_one_line(tmp_path, capsys, rows, message):
    out = tmp_path / "run"
    rc, _, err = run_cli(["train", "--bits", "8", "--bank-rows", rows, "--out", out, *TINY], capsys)
    assert rc == 1 and one_error_line(err) == message
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# 31. numbers of the training options and of the methods' hyper-parameters

@pytest.mark.parametrize("extra, message", [
    (["--threads", "-1"], "--threads must be an integer from 1 to 1024, got -1"),
    (["--warmup-epochs", "nan"], "--warmup-epochs must be a finite number >= 0, got nan"),
    (["--head-init-std", "nan"], "--head-init-std must be a finite number > 0, got nan"),
    (["--seed", str(2 ** 70)], f"--seed must be an integer from 0 to 4294967295, got {2 ** 70}"),
    (["--method", "csq", "--method-params", '{"seed": 1e100}'],
     "csq: hyper-parameter seed must be an integer from 0 to 4294967295, got 1e+100"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--val-fraction", "nan"], "--val-fraction must be a finite number >= 0 and < 1, got nan"),
    (["--momentum", "1"], "--momentum must be a finite number >= 0 and < 1, got 1.0"),
    (["--shift", "32"], "--shift must be less than the model's image size 32, got 32"),
])
def test_out_of_range_training_numbers_get_one_line_and_no_run(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    rc, _, err = run_cli(["train", "--bits", "8", "--out", out, *TINY, *extra], capsys)
    assert rc == 1 and one_error_line(err) == message
    assert not out.exists()


def test_data_loading_processes_are_bounded():
    # checked without a command line run: where the bound were missing, 100000 workers would be forked
    from hybridhash.app.train.recipe import resolve

    with pytest.raises(ConfigError) as err:
        resolve(TrainConfig(workers=100000), img_size=32)
    assert str(err.value) == "--workers must be an integer from 0 to 256, got 100000"
    assert resolve(TrainConfig(workers=256), img_size=32).workers == 256


def test_every_numeric_training_option_has_a_range():
    from hybridhash.configs import Bounds

    hints = typing.get_type_hints(TrainConfig)
    numeric = []
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        if typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind in (int, float):
            numeric.append(f.name)
            assert isinstance(f.metadata.get("bounds"), Bounds), f"{f.name} has no range"
    assert {"seed", "lr", "threads", "warmup_epochs", "head_init_std", "bank_rows"} <= set(numeric)


def _numeric_hyper_parameters():
    for name in list_methods():
        config = create_method(name, bits=16, n_class=2, num_train=4).config
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if f.name == "bank_rows" or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                yield name, f.name, type(value) if value is not None else int


@pytest.mark.parametrize("method, param, kind", list(_numeric_hyper_parameters()))
def test_every_method_refuses_non_finite_or_huge_hyper_parameters(method, param, kind):
    bad = [float("nan"), float("inf"), 10 ** 400] if kind is float else [2 ** 70, 1e100, float("nan")]
    for value in bad:
        with pytest.raises(ConfigError, match=f"^{method}: hyper-parameter {param} must be"):
            create_method(method, bits=16, n_class=2, num_train=4, **{param: value})


def test_compare_refuses_a_seed_out_of_range(tmp_path, capsys):
    out = tmp_path / "grid"
    rc, _, err = run_cli(["compare", "--methods", "dsh", "--bits", "16", "--seeds", str(2 ** 40), "--epochs", "1",
                          "--out", out], capsys)
    assert rc == 1 and one_error_line(err) == f"--seeds must be an integer from 0 to 4294967295, got {2 ** 40}"
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# 32. evaluate's sizes

@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "--batch-size must be an integer from 1 to 4294967295, got 0"),
    (["--workers", "-1"], "--workers must be an integer from 0 to 256, got -1"),
])
def test_evaluate_refuses_unusable_sizes_in_one_line(tmp_path, capsys, extra, message):
    ckpt = tmp_path / "model"
    hybridhash.create_model("hybridhash_cpu", bits=16, **SMALL).eval().save_pretrained(str(ckpt))
    out = tmp_path / "eval"
    rc, _, err = run_cli(["evaluate", "--checkpoint", ckpt, "--dataset", "digits", "--device", "cpu", "--out", out,
                          *extra], capsys)
    assert rc == 1 and one_error_line(err) == message
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# a diverging loss names what was set beyond the defaults

@pytest.mark.parametrize("extra, cause", [
    (["--lr", "1e30"], "likely cause, set beyond the defaults: --lr 1e+30 (the recipe's 0.002); bring it back "
                       "towards its default"),
    (["--method", "dsh", "--method-params", '{"alpha": 1e38}'],
     "likely cause, set beyond the defaults: dsh's alpha 1e+38 (its default 0.1); bring it back towards its "
     "default"),
])
def test_a_diverging_loss_names_the_settings_beyond_their_defaults(tmp_path, capsys, extra, cause):
    rc, _, err = run_cli(["train", "--bits", "8", "--out", tmp_path / "run", *TINY, *extra], capsys)
    assert rc == 1
    message = one_error_line(err)
    assert message.startswith("the loss became ") and message.endswith(cause), message


def test_with_every_setting_at_its_default_the_hint_is_a_lower_rate():
    from hybridhash.app.train.recipe import divergence_hint, recipe_defaults, resolve

    config = resolve(TrainConfig(model="hybridhash_cpu"), img_size=32)
    hint = divergence_hint(config, recipe_defaults("scratch", 32, "hybridhash"), "hybridhash", {"alpha": (0.5, 0.5)})
    assert hint == "no option is above its default: try a lower --lr (now 0.002) or a --grad-clip"
    raised = dataclasses.replace(config, head_init_std=1.0, warmup_epochs=0.0)
    assert divergence_hint(raised, recipe_defaults("scratch", 32, "hybridhash"), "hybridhash", {}) == (
        "likely causes, set beyond the defaults: --head-init-std 1 (the recipe's 0.1), --warmup-epochs 0 (the "
        "recipe's 1); bring them back towards their defaults")
