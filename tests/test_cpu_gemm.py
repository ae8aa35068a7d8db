"""CPU inference linears on oneDNN (models/cpu_gemm.py): same outputs as PyTorch's own linear, and
only where no gradient, autocast or tracing is involved."""
import logging

import pytest
import torch
import torch.nn.functional as F

import hybridhash
from hybridhash.models import cpu_gemm

needs_onednn = pytest.mark.skipif(cpu_gemm._op() is None, reason="this PyTorch build has no oneDNN linear")


@pytest.fixture
def gemm():
    """Set the process's choice for one test and restore it afterwards."""
    before = cpu_gemm._choice
    yield cpu_gemm.set_cpu_gemm
    cpu_gemm._choice = before


def _model():
    torch.manual_seed(0)
    return hybridhash.create_model("hybridhash_cpu", bits=32).eval()


class _Counting:
    """Stands in for the op pair, counting calls to the linear."""

    def __init__(self):
        self.reorder, self.real_linear = cpu_gemm._op()
        self.calls, self.post_ops = 0, []

    def __call__(self):
        def linear(*args):
            self.calls += 1
            self.post_ops.append(args[3])
            return self.real_linear(*args)
        return self.reorder, linear


@needs_onednn
def test_model_outputs_and_codes_equal_on_both_gemms(gemm):
    model, x = _model(), torch.randn(5, 3, 32, 32)
    gemm("aten")
    with torch.inference_mode():
        ref, ref_codes = model(x), model.encode(x)
    gemm("onednn")
    with torch.inference_mode():
        out, codes = model(x), model.encode(x)
    assert (out - ref).abs().max() < 1e-5
    assert torch.equal(codes, ref_codes)


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 24), (2, 3, 24), (2, 3, 4, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_mode_matches_f_linear(shape, bias):
    torch.manual_seed(0)
    x, w = torch.randn(*shape), torch.randn(10, 24)
    b = torch.randn(10) if bias else None
    with torch.inference_mode():
        ref = F.linear(x, w, b)
        with cpu_gemm.OneDNNLinear():
            out = F.linear(x, w, bias=b)
            other = F.linear(x.double(), w.double())  # not fp32: left to PyTorch
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-5
    assert other.dtype == torch.float64


@needs_onednn
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_used_only_without_autograd_autocast_or_tracing(gemm, monkeypatch):
    model, x = _model(), torch.randn(2, 3, 32, 32)
    counting = _Counting()
    monkeypatch.setattr(cpu_gemm, "_op", counting)
    gemm("onednn")
    out = model(x)  # autograd on: a training-style pass
    assert counting.calls == 0 and out.grad_fn is not None
    out.sum().backward()
    assert all(p.grad is not None for p in model.hash_head.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        model(x)
    assert counting.calls == 0
    with torch.no_grad():
        torch.jit.trace(model, x[:1], check_trace=False)
    assert counting.calls == 0
    with torch.no_grad():
        model(x)
    assert counting.calls > 0
    gemm("aten")
    seen = counting.calls
    with torch.inference_mode():
        model(x)
    assert counting.calls == seen


@needs_onednn
def test_weights_changed_in_place_are_packed_again(gemm):
    model, x = _model(), torch.randn(3, 3, 32, 32)
    torch.manual_seed(1)
    other = hybridhash.create_model("hybridhash_cpu", bits=32).eval()
    gemm("onednn")
    with torch.inference_mode():
        before = model(x)
    with torch.no_grad():
        model.load_state_dict(other.state_dict())  # copies into the same tensors
        model.hash_head.global_attention.qkv.weight.mul_(2)  # and a change in place
        after = model(x)
    gemm("aten")
    with torch.no_grad():
        ref = model(x)
    assert (after - ref).abs().max() < 1e-5
    assert (after - before).abs().max() > 1e-3


def test_environment_choice(gemm, monkeypatch, caplog):
    monkeypatch.setenv(cpu_gemm.ENV, "aten")
    gemm(None)
    assert cpu_gemm.cpu_gemm() == "aten"
    monkeypatch.setenv(cpu_gemm.ENV, "mkl-please")
    gemm(None)
    with caplog.at_level(logging.WARNING, logger=cpu_gemm.__name__):
        assert cpu_gemm.cpu_gemm() in ("aten", "onednn")
    assert "mkl-please" in caplog.text
    with pytest.raises(ValueError):
        cpu_gemm.set_cpu_gemm("fast")


def test_without_onednn_auto_keeps_pytorch(gemm, monkeypatch):
    monkeypatch.delenv(cpu_gemm.ENV, raising=False)
    monkeypatch.setattr(cpu_gemm, "_op", lambda: None)
    gemm(None)
    assert cpu_gemm.cpu_gemm() == "aten"
    assert not cpu_gemm.wants_fast_linear(torch.zeros(1, 3))


@needs_onednn
def test_gelu_fused_into_fc1_inside_the_mode_only(gemm, monkeypatch):
    from timm.layers import Mlp

    model, x = _model(), torch.randn(3, 3, 32, 32)
    mlps = [m for m in model.modules() if isinstance(m, Mlp)]
    assert mlps and all(type(m) is cpu_gemm.GeluMlp for m in mlps)
    counting = _Counting()
    monkeypatch.setattr(cpu_gemm, "_op", counting)
    gemm("onednn")
    with torch.inference_mode():
        fused = model(x)
    assert counting.post_ops.count("gelu") == len(mlps)
    monkeypatch.setattr(cpu_gemm.GeluMlp, "forward", Mlp.forward)  # GELU as a separate op
    with torch.inference_mode():
        separate = model(x)
    assert (fused - separate).abs().max() < 1e-6
    mlp = mlps[0]
    monkeypatch.undo()
    y = torch.randn(2, 5, mlp.fc1.in_features)
    with torch.no_grad(), cpu_gemm.OneDNNLinear():
        inside = mlp(y)
    with torch.no_grad():
        outside = mlp(y)  # no mode: timm's own forward
        mlp.train()
        with cpu_gemm.OneDNNLinear():
            training = mlp(y)  # train mode is never fused (dropout would be skipped)
    assert (inside - outside).abs().max() < 1e-6 and (training - outside).abs().max() < 1e-6
