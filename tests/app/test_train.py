"""Trainer: learning, exact resume, checkpoints, optimizer-state storage, two-process banks, CLI."""
from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import hybridhash
from hybridhash.app import cli
from hybridhash import metrics as M
from hybridhash.data import load_protocol
from hybridhash.errors import CheckpointError, ConfigError
from hybridhash.app.train import TrainConfig, lr_factor, resolve, train
from hybridhash.app.train import distributed as D
from hybridhash.app.train.augment import BatchAugment
from hybridhash.app.train.state import (
    capture_rng, flatten_optimizer_state, read_training_state, restore_rng, unflatten_optimizer_state,
)

# hybridhash_cpu with one layer per level: learns on a few digits in seconds
SMALL = {"depths": [1, 1, 1]}


@pytest.fixture(scope="module")
def small_digits():
    """15 training, 5 validation and 5 query images per class."""
    return load_protocol("digits", sizes=dict(query=5, train=20), val_fraction=0.25)


def small_config(out, **kw) -> TrainConfig:
    base = dict(model="hybridhash_cpu", model_overrides=SMALL, bits=(16,), out=str(out), progress=False, threads=1,
                parallel=1, eval_every=1)
    base.update(kw)
    return TrainConfig(**base)


def tensors(path):
    return load_file(str(path))


def assert_same_tensors(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------------------
# pieces

def test_lr_factor_warmup_then_cosine():
    total, warm = 100, 10
    f = [lr_factor(s, total, warm, "cosine") for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:]))  # non-increasing after warm-up
    assert f[-1] < 0.01
    assert lr_factor(50, total, 0, "constant") == 1.0


def test_recipes_follow_the_model():
    scratch = resolve(TrainConfig(model="hybridhash_cpu"), img_size=32)
    assert scratch.recipe == "scratch" and scratch.optimizer == "adamw" and scratch.data_mode == "cache"
    original = resolve(TrainConfig(model="hybridhash_base", pretrained="imagenet"), img_size=224)
    assert (original.recipe, original.optimizer, original.lr, original.weight_decay, original.epochs,
            original.eval_every, original.batch_size) == ("original", "rmsprop", 2.5e-5, 1e-5, 15, 3, 64)
    assert resolve(TrainConfig(lr=1e-4), img_size=32).lr == 1e-4  # an explicit option wins
    with pytest.raises(ConfigError, match="--batch-size"):
        resolve(TrainConfig(batch_size=0), img_size=32)
    with pytest.raises(ConfigError, match="twice"):
        resolve(TrainConfig(bits=(16, 16)), img_size=32)


def test_optimizer_state_round_trip_is_exact():
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4))
    for opt_cls in (torch.optim.AdamW, torch.optim.RMSprop):
        opt = opt_cls(model.parameters(), lr=1e-2)
        for _ in range(3):
            model(torch.randn(8, 5)).pow(2).sum().backward()
            opt.step()
        tens, meta = flatten_optimizer_state(opt.state_dict())
        json.dumps(meta)  # the non-tensor part is plain JSON
        assert all(isinstance(t, torch.Tensor) for t in tens.values())
        fresh = opt_cls(model.parameters(), lr=1e-2)
        fresh.load_state_dict(unflatten_optimizer_state(tens, meta))
        a, b = opt.state_dict(), fresh.state_dict()
        assert a["param_groups"] == b["param_groups"]
        for pid in a["state"]:
            for k, v in a["state"][pid].items():
                assert torch.equal(v, b["state"][pid][k]) if isinstance(v, torch.Tensor) else v == b["state"][pid][k]


def test_rng_capture_restores_every_generator():
    import random

    state = capture_rng()
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(*state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_shard_indices_cover_the_set_once_per_epoch():
    n, world = 23, 3
    shards = [D.shard_indices(n, 5, 2, r, world) for r in range(world)]
    assert len({s.numel() for s in shards}) == 1  # equal steps on every rank
    assert set(torch.cat(shards).tolist()) == set(range(n))
    assert torch.equal(D.shard_indices(n, 5, 2), D.shard_indices(n, 5, 2))
    assert not torch.equal(D.shard_indices(n, 5, 2), D.shard_indices(n, 5, 3))


def test_batch_shift_matches_a_padded_crop():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5)
    aug = BatchAugment(shift=2)
    g = torch.Generator().manual_seed(3)
    y = aug(x, g)
    g = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 5, (2,), generator=g), torch.randint(0, 5, (2,), generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for b in range(2):
        assert torch.equal(y[b], padded[b, :, dy[b]:dy[b] + 5, dx[b]:dx[b] + 5])


# --------------------------------------------------------------------------------------------
# training

def test_training_learns_and_saves_loadable_checkpoints(tmp_path, small_digits):
    p = small_digits
    results = train(small_config(tmp_path / "run", epochs=8, eval_every=4), protocol=p)
    r = results[16]
    losses = [h["loss"] for h in r.history]
    assert losses[-1] < losses[0] - 0.1
    run = tmp_path / "run" / "bits16"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == list(range(1, 9)) and "val_map" in log[3] and "val_map" not in log[0]
    # best/ is the model of the best validation epoch, loadable by the public API
    best = hybridhash.from_pretrained(run / "best", bits=16)
    assert best.checkpoint_meta["extra"]["epoch"] == r.best_epoch
    assert best.checkpoint_meta["extra"]["preprocess"]["pipeline"] == "digits"
    last = hybridhash.from_pretrained(run / "last")
    assert last.checkpoint_meta["extra"]["epoch"] == 8
    assert not [f for f in os.listdir(run) if f.startswith(".")]  # no temporary directories left
    # the selected model retrieves far better than chance (0.1 for ten balanced classes)
    from hybridhash.data.transforms import build_transform

    tf = build_transform(best.checkpoint_meta["extra"]["preprocess"], train=False)
    q = best.encode(torch.stack([tf(p.query.image(i)) for i in range(len(p.query))]))
    d = best.encode(torch.stack([tf(p.train.image(i)) for i in range(len(p.train))]))
    assert M.mean_average_precision(q, d, p.query.labels, p.train.labels) > 0.25
    # the split is recorded for evaluation
    assert json.loads((tmp_path / "run" / "split.json").read_text())["hash"] == p.split_record()["hash"]


def test_resume_reproduces_the_uninterrupted_weights(tmp_path, small_digits):
    p = small_digits
    kw = dict(epochs=3, eval_every=2)
    train(small_config(tmp_path / "straight", **kw), protocol=p)

    # a run stopped after epoch 1, then killed in the middle of epoch 3, then resumed to the end
    train(small_config(tmp_path / "cut", stop_after_epochs=1, **kw), protocol=p)
    assert read_training_state(tmp_path / "cut/bits16/last/training_state.safetensors")[1]["counters"]["epoch"] == 1

    class Crash(Exception):
        pass

    def crash(event, trainer, **info):
        if event == "step_end" and info["epoch"] == 2 and info["step"] % trainer.steps_per_epoch == 3:
            raise Crash

    with pytest.raises(Crash):
        train(small_config(tmp_path / "cut", resume=True, **kw), protocol=p, callbacks=[crash])
    assert read_training_state(tmp_path / "cut/bits16/last/training_state.safetensors")[1]["counters"]["epoch"] == 2
    train(small_config(tmp_path / "cut", resume=True, **kw), protocol=p)

    for sub in ("last/model.safetensors", "best/model.safetensors"):
        assert_same_tensors(tensors(tmp_path / "straight/bits16" / sub), tensors(tmp_path / "cut/bits16" / sub))
    a = tensors(tmp_path / "straight/bits16/last/training_state.safetensors")
    b = tensors(tmp_path / "cut/bits16/last/training_state.safetensors")
    assert_same_tensors({k: v for k, v in a.items() if not k.startswith("rng.")},
                        {k: v for k, v in b.items() if not k.startswith("rng.")})
    logs = [(tmp_path / r / "bits16/log.jsonl").read_text().splitlines() for r in ("straight", "cut")]
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if "time" not in k and k != "elapsed"} for x in lines]
    assert strip(logs[0]) == strip(logs[1])  # one line per epoch, the killed epoch's not repeated


def test_existing_run_needs_resume_and_same_options(tmp_path, small_digits):
    train(small_config(tmp_path / "r", epochs=1), protocol=small_digits)
    with pytest.raises(ConfigError, match="--resume"):
        train(small_config(tmp_path / "r", epochs=1), protocol=small_digits)
    with pytest.raises(ConfigError, match="lr"):
        train(small_config(tmp_path / "r", epochs=1, lr=1e-4, resume=True), protocol=small_digits)
    # finished code lengths are skipped on resume
    r = train(small_config(tmp_path / "r", epochs=1, resume=True), protocol=small_digits)
    assert r[16].epochs == 1


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, small_digits, monkeypatch):
    from hybridhash.app.train import state as T

    train(small_config(tmp_path / "r", epochs=2, stop_after_epochs=1), protocol=small_digits)
    before = tensors(tmp_path / "r/bits16/last/model.safetensors")

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(T, "save_training_state", broken)
    with pytest.raises(OSError):
        train(small_config(tmp_path / "r", epochs=2, resume=True), protocol=small_digits)
    assert_same_tensors(before, tensors(tmp_path / "r/bits16/last/model.safetensors"))
    counters = read_training_state(tmp_path / "r/bits16/last/training_state.safetensors")[1]["counters"]
    assert counters["epoch"] == 1 and counters["fingerprint"] == hybridhash.from_pretrained(
        tmp_path / "r/bits16/last").fingerprint


def test_corrupt_training_state_is_a_one_line_error(tmp_path, small_digits):
    train(small_config(tmp_path / "r", epochs=2, stop_after_epochs=1), protocol=small_digits)
    (tmp_path / "r/bits16/last/training_state.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="training state"):
        train(small_config(tmp_path / "r", epochs=2, resume=True), protocol=small_digits)


# --------------------------------------------------------------------------------------------
# two processes (gloo): identical banks

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out, dumps):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    p = load_protocol("digits", sizes=dict(query=2, train=8), val_fraction=0.25)

    def dump(event, trainer, **info):
        if event == "epoch_end":
            torch.save({"U": trainer.method.criterion.U.clone(), "Y": trainer.method.criterion.Y.clone(),
                        "weights": {k: v.clone() for k, v in trainer.model.state_dict().items()}},
                       os.path.join(dumps, f"rank{rank}_epoch{info['epoch']}.pt"))

    try:
        train(small_config(out, epochs=2, device="cpu", batch_size=8), protocol=p, callbacks=[dump])
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_keep_identical_banks(tmp_path):
    import torch.multiprocessing as mp

    dumps = tmp_path / "dumps"
    dumps.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "run"), str(dumps)), nprocs=2, join=True)
    n_train = len(load_protocol("digits", sizes=dict(query=2, train=8), val_fraction=0.25).train)
    for epoch in (1, 2):
        a = torch.load(dumps / f"rank0_epoch{epoch}.pt")
        b = torch.load(dumps / f"rank1_epoch{epoch}.pt")
        assert torch.equal(a["U"], b["U"]) and torch.equal(a["Y"], b["Y"])
        # each rank saw half the batches, yet every training row was written into both banks
        assert a["U"].shape[0] == n_train and bool((a["Y"].sum(1) == 1).all())
        assert bool((a["U"].abs().sum(1) > 0).all())
        for k in a["weights"]:
            assert torch.equal(a["weights"][k], b["weights"][k]), k
    # rank 0 alone wrote the checkpoints
    assert hybridhash.from_pretrained(tmp_path / "run/bits16/last").checkpoint_meta["extra"]["epoch"] == 2


# --------------------------------------------------------------------------------------------
# CLI

def test_cli_train_in_process(tmp_path, capsys, caplog):
    # per-image transforms in a DataLoader (the pretrained recipe's path) and the original's selection
    out = tmp_path / "cli"
    args = ["train", "--dataset", "digits", "--model", "hybridhash_cpu", "--model-overrides", '{"depths": [1, 1, 1]}',
            "--bits", "8", "16", "--epochs", "1", "--batch-size", "64", "--out", str(out), "--no-progress",
            "--threads", "1", "--parallel", "1", "--data-mode", "stream", "--select-on", "query"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "8 bits" in printed and "16 bits" in printed
    assert "not a fair evaluation" in caplog.text
    for bits in (8, 16):
        assert hybridhash.from_pretrained(out / f"bits{bits}" / "best").bits == bits
        assert "query_map" in json.loads((out / f"bits{bits}" / "log.jsonl").read_text())
    assert cli.main(args) == 1
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(tmp_path / "x"), "--bits", "16", "--lr", "-1"]) == 1
    assert "--lr" in capsys.readouterr().err


@pytest.mark.parametrize("amp, flags, precision, emulated", [
    (None, "fpu avx2", "fp32", False),  # unset on a CPU without bf16 units: fp32, as before
    (None, "avx2 avx512_bf16 amx_bf16", "bf16", False),  # unset where the units are (emulated underneath here)
    (True, "fpu avx2", "bf16", True),  # asked for without the units: emulated, and said
])
def test_the_training_precision_is_chosen_recorded_and_said(tmp_path, small_digits, monkeypatch, caplog, amp, flags,
                                                             precision, emulated):
    from hybridhash import environment

    monkeypatch.setattr(environment, "cpu_flags", lambda: frozenset(flags.split()))
    caplog.set_level("INFO")
    out = tmp_path / "run"
    results = train(small_config(out, epochs=1, amp=amp, device="cpu"), protocol=small_digits)
    assert results[16].precision == precision
    record = json.loads((out / "run.json").read_text())
    assert record["precision"]["name"] == precision and record["precision"]["emulated"] is emulated
    assert record["config"]["amp"] is amp  # unset stays unset: a re-run chooses again on its own machine
    assert json.loads((out / "summary.json").read_text())["results"]["16"]["precision"] == precision
    said = [r for r in caplog.records if r.getMessage().startswith("training in ")]
    assert len(said) == 1 and said[0].getMessage().startswith(f"training in {precision}: ")
    assert (said[0].levelname == "WARNING") is emulated and ("emulated, slower" in said[0].getMessage()) is emulated
    # the master weights stay fp32 whatever the forward ran in
    assert {t.dtype for t in tensors(out / "bits16" / "last" / "model.safetensors").values()} == {torch.float32}


def test_fit_method_adapts_dsh_and_adsh_to_a_scratch_run():
    from hybridhash.app.train.run import fit_method

    dsh = resolve(TrainConfig(method="dsh"), img_size=32)
    assert fit_method(dsh, 450).method_params == {"pairs": "batch"}  # its codes collapse against a stale bank
    kept = resolve(TrainConfig(method="dsh", method_params={"pairs": "bank"}), img_size=32)
    assert fit_method(kept, 450).method_params == {"pairs": "bank"}
    adsh = fit_method(resolve(TrainConfig(method="adsh", epochs=30), img_size=32), 450)
    # 30 passes over 450 images = 13500 image-steps = 10 iterations x 3 passes over a 450-image sample
    assert adsh.method_params == {"iterations": 10} and adsh.epochs == 30
    assert fit_method(resolve(TrainConfig(method="hybridhash"), img_size=32), 450).method_params == {}


def test_csq_at_48_bits_records_its_centers_and_resumes_with_them(tmp_path, small_digits):
    """No Hadamard matrix of order 48: random balanced centers, minimum distance above K/4, saved
    with the run and the same after a resume."""
    cfg = dict(method="csq", bits=(48,), epochs=2)
    train(small_config(tmp_path / "r", stop_after_epochs=1, **cfg), protocol=small_digits)
    doc = json.loads((tmp_path / "r/bits48/method.json").read_text())
    assert doc["method"] == "csq" and doc["family"] == "central" and doc["facts"]["centers"] == "random"
    assert doc["facts"]["min_center_distance"] > 48 / 4
    saved = read_training_state(tmp_path / "r/bits48/last/training_state.safetensors")[0]["loss.centers"]
    assert saved.shape == (10, 48) and set(saved.unique().tolist()) == {-1.0, 1.0}
    low = min(int((saved[i] != saved[j]).sum()) for i in range(10) for j in range(i + 1, 10))
    assert low == doc["facts"]["min_center_distance"]  # the record describes the saved centers
    seen = []
    train(small_config(tmp_path / "r", resume=True, **cfg), protocol=small_digits,
          callbacks=[lambda event, trainer, **info: seen.append(trainer.method.centers.cpu().clone())])
    assert seen and all(torch.equal(c, saved) for c in seen)


def test_scratch_recipe_scales_the_rate_of_methods_that_collapse_at_it():
    assert resolve(TrainConfig(method="dnnh"), img_size=32).lr == pytest.approx(2e-4)
    assert resolve(TrainConfig(method="dnnh", lr=1e-3), img_size=32).lr == 1e-3  # an explicit --lr wins
    assert resolve(TrainConfig(method="hybridhash"), img_size=32).lr == 2e-3
    # the published settings of a pretrained run are untouched
    assert resolve(TrainConfig(method="dnnh", pretrained="imagenet"), img_size=224,
                   method_defaults={"lr": 1e-5}).lr == 1e-5



def test_scratch_recipe_keeps_the_batch_of_a_loss_defined_on_the_whole_batch():
    from hybridhash.methods import method_class

    c = resolve(TrainConfig(method="cibhash"), img_size=32)
    assert (c.batch_size, c.lr) == (method_class("cibhash").scratch_batch_size, pytest.approx(2e-4))
    assert resolve(TrainConfig(method="cibhash", batch_size=32), img_size=32).batch_size == 32  # given wins
    assert resolve(TrainConfig(method="bihalf"), img_size=32).batch_size == 16  # the shared recipe's
    assert method_class("dsh").scratch_batch_size is None


def _average_worker(rank, world, port, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        layer = torch.nn.Linear(3, 2)
        unused = torch.nn.Linear(2, 2)  # no gradient on any rank: left alone
        layer.weight.grad = torch.full((2, 3), float(rank + 1))
        layer.bias.grad = torch.tensor([float(rank), 10.0 * rank])
        D.average_gradients([*layer.parameters(), *unused.parameters()])
        torch.save({"w": layer.weight.grad, "b": layer.bias.grad, "unused": unused.weight.grad},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_a_methods_own_gradients_are_averaged_over_the_ranks(tmp_path):
    """What DDP does for the model's parameters, for a method's (pcdh's classifier): the mean over ranks."""
    import torch.multiprocessing as mp

    mp.spawn(_average_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["w"], torch.full((2, 3), 1.5)) and torch.equal(got["b"], torch.tensor([0.5, 5.0]))
        assert got["unused"] is None
    layer = torch.nn.Linear(2, 2)
    layer.weight.grad = torch.ones(2, 2)
    D.average_gradients(layer.parameters())  # one process: unchanged
    assert torch.equal(layer.weight.grad, torch.ones(2, 2))


def _stop_at_first_step(event, trainer, **info):
    if event == "step_end":
        raise RuntimeError("stopped in a kept process")


def test_kept_worker_processes_train_what_new_ones_do(tmp_path, small_digits, monkeypatch):
    """Under keep_workers (a comparison grid) parallel code lengths reuse the same processes from
    one run to the next, and train the weights that new processes train."""
    from hybridhash.app.train import run as RUN

    monkeypatch.setenv("HYBRIDHASH_CPU_GEMM", "aten")  # one GEMM in every process: bitwise comparable
    kw = dict(bits=(16, 32), parallel=2, epochs=2, eval_every=2)
    train(small_config(tmp_path / "fresh", **kw), protocol=small_digits)
    with RUN.keep_workers():
        train(small_config(tmp_path / "other", seed=1, **kw), protocol=small_digits)
        pids = sorted(p.pid for p in RUN._kept[0][1]._pool)
        train(small_config(tmp_path / "kept", **kw), protocol=small_digits)
        assert sorted(p.pid for p in RUN._kept[0][1]._pool) == pids
    assert RUN._kept is None
    with RUN.keep_workers():  # a job that fails drops the kept processes; the next run starts new ones
        with pytest.raises(Exception, match="stopped in a kept process"):
            train(small_config(tmp_path / "failed", **kw), protocol=small_digits, callbacks=[_stop_at_first_step])
        assert RUN._kept == []
        train(small_config(tmp_path / "after", **kw), protocol=small_digits)
    for bits in (16, 32):
        for sub in ("last/model.safetensors", "best/model.safetensors"):
            for run in ("kept", "after"):
                assert_same_tensors(tensors(tmp_path / f"fresh/bits{bits}" / sub),
                                    tensors(tmp_path / f"{run}/bits{bits}" / sub))


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_the_adam_family_runs_fused_and_takes_the_looped_update(name):
    """On the CPU the Adam optimisers use PyTorch's fused kernel; its steps equal the looped ones'."""
    from types import SimpleNamespace

    if torch.__version__ < (2, 4):  # a TorchVersion: compares with tuples
        pytest.skip("PyTorch has fused CPU Adam kernels from 2.4 on; older ones run the loop")

    from hybridhash.app.train.optim import build_optimizer, param_groups

    config = SimpleNamespace(optimizer=name, lr=1e-2, weight_decay=1e-2, momentum=None)
    fused_model = hybridhash.create_model("hybridhash_cpu", bits=16, depths=[1, 1, 1])
    looped_model = hybridhash.create_model("hybridhash_cpu", bits=16, depths=[1, 1, 1])
    looped_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer(fused_model, config)
    looped = type(fused)(param_groups(looped_model, config.weight_decay), lr=config.lr, foreach=False)
    assert fused.defaults["fused"] is True
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        for a, b in zip(fused_model.parameters(), looped_model.parameters()):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        fused.step()
        looped.step()
    for a, b in zip(fused_model.parameters(), looped_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
