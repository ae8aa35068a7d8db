"""The training precision rule (bf16 where the device has the units, emulated only when asked) and a
bf16 autocast training step on the CPU: finite, close to fp32's, and clear of the oneDNN linears."""
import pytest
import torch

import hybridhash
from hybridhash import environment as E
from hybridhash.environment import TrainingPrecision, precision_autocast, training_precision
from hybridhash.methods import create_method
from hybridhash.models import cpu_gemm

CPU = torch.device("cpu")
AVX2 = frozenset("fpu sse4_2 avx avx2 fma".split())  # an AMD EPYC of this project, or an older Xeon
AVX512_BF16 = AVX2 | {"avx512f", "avx512_bf16"}  # Cooper Lake, Zen 4
AMX = AVX512_BF16 | {"amx_tile", "amx_bf16", "amx_int8"}  # Sapphire Rapids


@pytest.mark.parametrize("flags, amp, name, emulated", [
    (AVX2, None, "fp32", False),  # unset on a CPU without units: as before, fp32
    (AVX2, True, "bf16", True),  # asked for: emulated, and said
    (AVX2, False, "fp32", False),
    (AVX512_BF16, None, "bf16", False),
    (AMX, None, "bf16", False),
    (AMX, True, "bf16", False),
    (AMX, False, "fp32", False),
])
def test_the_cpu_rule(flags, amp, name, emulated):
    got = training_precision(CPU, amp, flags)
    assert (got.name, got.emulated) == (name, emulated)
    if emulated:
        assert "slower" in got.why and "--amp" in got.why


def test_the_rule_reads_this_machines_flags_when_none_are_given(monkeypatch):
    # precision.cpu_flags is cached per process: the rule's own name for it is what a test replaces
    monkeypatch.setattr(E, "cpu_flags", lambda: AMX)
    assert training_precision(CPU) == TrainingPrecision("bf16", "the CPU has bf16 units (avx512_bf16, amx_bf16)")
    monkeypatch.setattr(E, "cpu_flags", lambda: AVX2)
    assert training_precision(CPU).name == "fp32"


@pytest.mark.parametrize("supported, amp, name", [(True, None, "bf16"), (False, None, "fp32"), (False, True, "fp32"),
                                                  (True, False, "fp32")])
def test_the_gpu_rule_is_the_gpus_bf16_support(monkeypatch, supported, amp, name):
    monkeypatch.setattr(E, "bf16_autocast_available", lambda device: supported)
    # a GPU without bf16 is never emulated, whatever the CPU has
    assert training_precision(torch.device("cuda"), amp, AMX).name == name


def test_no_bf16_on_other_devices():
    assert training_precision(torch.device("meta"), True, AMX).name == "fp32"


def test_the_precision_autocast_is_bf16_on_the_devices_type():
    with precision_autocast(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.nn.Linear(4, 3)(torch.ones(2, 4)).dtype == torch.bfloat16
    with precision_autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")


# --------------------------------------------------------------------------------------------
# a training step under CPU autocast

@pytest.fixture
def gemm():
    """Set the process's GEMM choice for one test and restore it afterwards."""
    before = cpu_gemm._choice
    yield cpu_gemm.set_cpu_gemm
    cpu_gemm._choice = before


def _step(precision: str, x, y, index):
    """One forward and backward of the trainer's kind: (loss, {name: gradient}, raw outputs' dtype)."""
    torch.manual_seed(0)
    model = hybridhash.create_model("hybridhash_cpu", bits=16, depths=[1, 1, 1]).train()
    method = create_method("hybridhash", 16, 10, 64)
    torch.manual_seed(1)  # the same DropPath draws on both sides
    with precision_autocast(CPU, precision):
        raw = model(x, activate=False)
    loss = method.loss(raw.float(), y, index)
    loss.backward()
    return float(loss.detach()), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, raw.dtype


def _batch():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 3, 32, 32, generator=g)
    y = torch.nn.functional.one_hot(torch.arange(8) % 4, 10).float()
    return x, y, torch.arange(8)


def test_a_bf16_step_is_finite_and_close_to_fp32(gemm):
    gemm("aten")
    x, y, index = _batch()
    loss32, grads32, dtype32 = _step("fp32", x, y, index)
    loss16, grads16, dtype16 = _step("bf16", x, y, index)
    assert (dtype32, dtype16) == (torch.float32, torch.bfloat16)  # autocast did run
    assert grads16.keys() == grads32.keys()
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads16.values())  # fp32 master weights
    # bf16 keeps 8 bits of mantissa (a relative step of 2^-8 = 0.4%) and the errors add up over the layers
    assert loss16 == pytest.approx(loss32, rel=5e-3)
    flat32 = torch.cat([g.flatten() for g in grads32.values()])
    flat16 = torch.cat([grads16[n].flatten() for n in grads32])
    assert float((flat16 - flat32).norm() / flat32.norm()) < 0.06
    assert float(torch.nn.functional.cosine_similarity(flat16, flat32, dim=0)) > 0.995


@pytest.mark.skipif(cpu_gemm._op() is None, reason="this PyTorch build has no oneDNN linear")
def test_autocast_and_the_onednn_training_linears_do_not_meet(gemm, monkeypatch):
    """With oneDNN chosen, a bf16 step runs no oneDNN linear and gives PyTorch's gradients bit for bit;
    the fp32 step after it is on oneDNN again."""
    monkeypatch.setattr(cpu_gemm, "TRAIN_MIN_MACS", 0)  # every linear of the small model would qualify
    calls = []
    real = cpu_gemm._TrainLinear.apply
    monkeypatch.setattr(cpu_gemm._TrainLinear, "apply", lambda *a: calls.append(1) or real(*a))
    x, y, index = _batch()
    gemm("aten")
    _, ref, _ = _step("bf16", x, y, index)
    gemm("onednn")
    _, got, _ = _step("bf16", x, y, index)
    assert not calls
    assert all(torch.equal(got[n], ref[n]) for n in ref)
    _step("fp32", x, y, index)
    assert calls
