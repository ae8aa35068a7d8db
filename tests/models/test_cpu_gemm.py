"""CPU inference linears on oneDNN (models/cpu_gemm.py): same outputs as PyTorch's own linear, and
only where no gradient, autocast or tracing is involved."""
import logging

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

import hybridhash
from hybridhash.models import cpu_gemm

needs_onednn = pytest.mark.skipif(cpu_gemm._op() is None, reason="this PyTorch build has no oneDNN linear")


@pytest.fixture
def gemm():
    """Set the process's choice for one test and restore it afterwards."""
    before = cpu_gemm._choice
    yield cpu_gemm.set_cpu_gemm
    cpu_gemm._choice = before


@pytest.fixture
def every_linear(monkeypatch):
    """Route every adopted linear through oneDNN, however small (the test models are small)."""
    monkeypatch.setattr(cpu_gemm, "MIN_MACS", 0)
    monkeypatch.setattr(cpu_gemm, "TRAIN_MIN_MACS", 0)


def _model(seed=0):
    torch.manual_seed(seed)
    return hybridhash.create_model("hybridhash_cpu", bits=32).eval()


class _Counting:
    """Stands in for the op pair, recording the post-op of every call to the linear."""

    def __init__(self):
        self.reorder, self.real_linear = cpu_gemm._op()
        self.post_ops = []

    def __call__(self):
        def linear(*args):
            self.post_ops.append(args[3])
            return self.real_linear(*args)
        return self.reorder, linear


@pytest.fixture
def counting(monkeypatch):
    c = _Counting()
    monkeypatch.setattr(cpu_gemm, "_op", c)
    return c


def test_adopt_keeps_the_parameters_and_covers_every_linear():
    for name in ("hybridhash_cpu", "cnn_cpu"):
        model = hybridhash.create_model(name, bits=16)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert linears and all(type(m) is cpu_gemm.PackedLinear for m in linears)
        assert all(type(m) is cpu_gemm.GeluMlp for m in model.modules() if isinstance(m, Mlp))
    plain = nn.Sequential(nn.Linear(4, 8), Mlp(8, 16))
    keys = {k: v.clone() for k, v in plain.state_dict().items()}
    cpu_gemm.adopt(plain)
    assert type(plain[0]) is cpu_gemm.PackedLinear and type(plain[1]) is cpu_gemm.GeluMlp
    assert type(plain[1].fc1) is cpu_gemm.PackedLinear
    after = plain.state_dict()
    assert list(after) == list(keys) and all(torch.equal(after[k], v) for k, v in keys.items())


@needs_onednn
def test_model_outputs_and_codes_equal_on_both_gemms(gemm, every_linear, counting):
    model, x = _model(), torch.randn(5, 3, 32, 32)
    gemm("aten")
    with torch.inference_mode():
        ref, ref_codes = model(x), model.encode(x)
    assert not counting.post_ops
    gemm("onednn")
    with torch.inference_mode():
        out, codes = model(x), model.encode(x)
    assert counting.post_ops
    assert (out - ref).abs().max() < 1e-5
    assert torch.equal(codes, ref_codes)


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 24), (2, 3, 24), (2, 3, 4, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_matches_f_linear(shape, bias, every_linear, counting):
    torch.manual_seed(0)
    layer = cpu_gemm.PackedLinear(24, 10, bias=bias)
    x = torch.randn(*shape)
    with torch.inference_mode():
        ref = F.linear(x, layer.weight, layer.bias)
        with cpu_gemm.forced():
            out = layer(x)
            assert len(counting.post_ops) == 1
            other = layer.double()(x.double())  # not fp32: left to PyTorch
    assert len(counting.post_ops) == 1 and other.dtype == torch.float64
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-5


@needs_onednn
def test_small_products_stay_on_pytorch(gemm, counting):
    gemm("onednn")
    small, big = cpu_gemm.PackedLinear(24, 10), cpu_gemm.PackedLinear(256, 256)
    with torch.inference_mode(), cpu_gemm.forced():
        small(torch.randn(4, 24))  # 960 multiply-adds
        assert not counting.post_ops
        big(torch.randn(64, 256))  # 4 M
        assert counting.post_ops == ["none"]
    big.train()
    big(torch.randn(64, 256)).sum().backward()  # in training 4 M is small: PyTorch's linear
    assert counting.post_ops == ["none"]
    big(torch.randn(1024, 256, requires_grad=True)).sum().backward()  # 67 M
    assert counting.post_ops == ["none"] * 4  # the forward, the input's and the weight's gradients


@needs_onednn
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_not_used_under_autocast_tracing_or_aten(gemm, every_linear, counting):
    model, x = _model(), torch.randn(2, 3, 32, 32)
    gemm("onednn")
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        model(x)
    assert not counting.post_ops
    with torch.no_grad():
        torch.jit.trace(model, x[:1], check_trace=False)
    assert not counting.post_ops
    with torch.no_grad():
        model(x)
    assert counting.post_ops
    gemm("aten")
    seen = len(counting.post_ops)
    with torch.inference_mode():
        model(x)
    assert len(counting.post_ops) == seen


@needs_onednn
def test_weights_changed_in_place_are_packed_again(gemm, every_linear):
    model, other, x = _model(0), _model(1), torch.randn(3, 3, 32, 32)
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


@needs_onednn
def test_gelu_fused_into_fc1_inside_the_context_only(gemm, every_linear, counting, monkeypatch):
    model, x = _model(), torch.randn(3, 3, 32, 32)
    mlps = [m for m in model.modules() if isinstance(m, Mlp)]
    gemm("onednn")
    with torch.inference_mode():
        fused = model(x)
    assert counting.post_ops.count("gelu") == len(mlps)
    with monkeypatch.context() as m:
        m.setattr(cpu_gemm.GeluMlp, "forward", Mlp.forward)  # GELU as a separate op
        with torch.inference_mode():
            separate = model(x)
    assert (fused - separate).abs().max() < 1e-6
    mlp, y = mlps[0], torch.randn(2, 5, mlps[0].fc1.in_features)
    del counting.post_ops[:]
    with torch.no_grad():
        with cpu_gemm.forced():
            inside = mlp(y)
        assert counting.post_ops == ["gelu", "none"]
        outside = mlp(y)  # no context: timm's own forward
        mlp.train()
        with cpu_gemm.forced():
            training = mlp(y)  # train mode is never fused (dropout would be skipped)
    assert counting.post_ops[-2:] == ["none", "none"]
    assert (inside - outside).abs().max() < 1e-6 and (training - outside).abs().max() < 1e-6


def test_environment_choice(gemm, monkeypatch, caplog):
    monkeypatch.setenv(cpu_gemm.ENV, "aten")
    gemm(None)
    assert cpu_gemm.cpu_gemm() == "aten"
    # an unknown value falls back to auto, i.e. to what the measurement picks, with a warning
    monkeypatch.setenv(cpu_gemm.ENV, "mkl-please")
    for measured in ("onednn", "aten"):
        monkeypatch.setattr(cpu_gemm, "_measure", lambda measured=measured: measured)
        gemm(None)
        with caplog.at_level(logging.WARNING, logger=cpu_gemm.__name__):
            assert cpu_gemm.cpu_gemm() == measured
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
@pytest.mark.parametrize("rows, k, n", [(6, 8, 40), (200, 8, 4)])  # weight gradient on oneDNN / on PyTorch
@pytest.mark.parametrize("bias", [True, False])
def test_training_linear_gradients_equal_autograd(gemm, every_linear, counting, rows, k, n, bias):
    torch.manual_seed(0)
    layer = cpu_gemm.PackedLinear(k, n, bias=bias)
    x = torch.randn(2, rows // 2, k, requires_grad=True)
    g = torch.randn(2, rows // 2, n)
    gemm("onednn")
    out = layer(x)
    assert counting.post_ops == ["none"] and out.grad_fn is not None
    grads = torch.autograd.grad(out, [x, layer.weight] + ([layer.bias] if bias else []), g)
    ref_out = F.linear(x, layer.weight, layer.bias)
    refs = torch.autograd.grad(ref_out, [x, layer.weight] + ([layer.bias] if bias else []), g)
    assert (out - ref_out).abs().max() < 1e-5
    for got, ref in zip(grads, refs):
        assert got.shape == ref.shape and (got - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max()))
    frozen = torch.randn(3, k)  # an input without grad: only the weight's gradient is asked for
    (gw,) = torch.autograd.grad(layer(frozen).sum(), [layer.weight])
    assert (gw - torch.ones(3, n).t() @ frozen).abs().max() < 1e-4


@needs_onednn
def test_a_training_step_follows_pytorch(gemm, every_linear, counting):
    """One step of the small model: the same loss and gradients on both GEMMs, and with gradient
    checkpointing; PyTorch's linear when autocast or aten is asked for."""
    x = torch.randn(4, 3, 32, 32)

    def grads(choice, checkpointing=False):
        gemm(choice)
        model = _model().train()
        model.set_grad_checkpointing(checkpointing)
        torch.manual_seed(5)  # the same DropPath draws
        model(x, activate=False).pow(2).mean().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    ref = grads("aten")
    assert not counting.post_ops
    for checkpointing in (False, True):
        got = grads("onednn", checkpointing)
        assert counting.post_ops
        assert got.keys() == ref.keys()
        for name, g in ref.items():
            assert (got[name] - g).abs().max() <= 1e-4 * max(1e-3, float(g.abs().max())), name
    del counting.post_ops[:]
    gemm("onednn")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _model().train()(x).float().sum().backward()
    assert not counting.post_ops
