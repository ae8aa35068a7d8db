"""Linear layers on oneDNN's GEMM when a project model runs on a CPU, in inference and training.

PyTorch runs an fp32 ``F.linear`` on the CPU through MKL's sgemm. On AMD processors MKL takes a
generic path at about half of what the cores can do: on this project's 2-core EPYC (AVX-512) a
4096x4096 matmul runs at 185-200 GFLOP/s through MKL, against 340-470 through oneDNN (which ships
inside PyTorch and picks its kernels by the instruction set, not the vendor) and 420 in
onnxruntime. Linear layers are 70% of hybridhash_base's CPU time, forward and backward alike.

:func:`adopt` turns a model's ``nn.Linear`` layers into :class:`PackedLinear` (and timm's ``Mlp``
into :class:`GeluMlp`): the same parameters and state dict, and a forward that runs
``torch.ops.mkldnn._linear_pointwise`` (the op ``torch.compile`` uses for CPU linear layers):

- inside :func:`inference_context`, with the weight packed once into oneDNN's blocked layout. The
  context is entered by ``HashNetMixin.__call__`` for every forward pass that needs no gradient, no
  autocast and no tracing, so encoding, evaluation, search and the service all take it;
- with autograd on, through :class:`_TrainLinear`, whose backward puts the input gradient (and the
  weight gradient where it pays) on oneDNN too.

Autocast (bf16), tracing (the ONNX export), scripting and ``torch.compile`` run the layers as plain
``nn.Linear``. Products under :data:`MIN_MACS` (:data:`TRAIN_MIN_MACS` in training) stay on
PyTorch's GEMM, where oneDNN's per-call cost outweighs its speed. Outputs and gradients agree with
MKL's within float rounding (about 1e-6 at the model's output).

Which GEMM runs is chosen once per process: ``HYBRIDHASH_CPU_GEMM=onednn`` or ``aten`` forces one;
``auto`` (the default) times both on one layer-sized product and keeps oneDNN only where it is
faster and gives the same result (on Intel CPUs MKL is usually as fast, and then nothing changes).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

_log = logging.getLogger(__name__)

CHOICES = ("auto", "onednn", "aten")
ENV = "HYBRIDHASH_CPU_GEMM"
# the product timed by the auto choice: hybridhash_base's level-2 MLP on one image, (196 x 512) @ (512 x 2048)
_PROBE = (196, 512, 2048)

# re-entrant: a weight's finalizer (_forget) may run from garbage collection while this thread
# already holds the lock inside packed_weight
_lock = threading.RLock()
_choice: Optional[str] = None  # "onednn" or "aten" once decided
_packed: Dict[int, Tuple["weakref.ref", int, int, torch.Tensor]] = {}  # id(weight) -> (ref, version, ptr, packed)


def _op():
    """oneDNN's packed linear op pair, or None where this PyTorch build has none."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight, torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def _best_time(fn, rounds: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _measure() -> str:
    ops = _op()
    if ops is None:
        return "aten"
    reorder, linear = ops
    m, k, n = _PROBE
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g) / k ** 0.5, torch.randn(n, generator=g)
    with torch.inference_mode():
        try:
            packed = reorder(w, m)
            same = torch.allclose(linear(x, packed, b, "none", [], ""), F.linear(x, w, b), rtol=1e-4, atol=1e-4)
        except RuntimeError:
            return "aten"
        if not same:
            return "aten"
        # alternate the two sides so that a change of load hits both alike
        t_aten, t_dnn = float("inf"), float("inf")
        for _ in range(2):
            t_aten = min(t_aten, _best_time(lambda: F.linear(x, w, b)))
            t_dnn = min(t_dnn, _best_time(lambda: linear(x, packed, b, "none", [], "")))
    choice = "onednn" if t_dnn < 0.9 * t_aten else "aten"
    _log.debug("CPU linear layers: %s (probe %dx%dx%d: MKL %.2f ms, oneDNN %.2f ms)", choice, m, k, n,
              t_aten * 1e3, t_dnn * 1e3)
    return choice


def cpu_gemm() -> str:
    """The GEMM this process runs CPU inference linears on: ``onednn`` or ``aten`` (decided once)."""
    global _choice
    if _choice is None:
        with _lock:
            if _choice is None:
                asked = os.environ.get(ENV, "auto").strip().lower() or "auto"
                if asked not in CHOICES:
                    _log.warning("%s=%s is not one of %s; using auto", ENV, asked, ", ".join(CHOICES))
                    asked = "auto"
                if asked == "onednn" and _op() is None:
                    _log.warning("%s=onednn, but this PyTorch has no oneDNN linear; using aten", ENV)
                    asked = "aten"
                _choice = _measure() if asked == "auto" else asked
    return _choice


def set_cpu_gemm(choice: Optional[str]) -> None:
    """Force ``onednn`` or ``aten`` for this process, or ``None`` to decide again (benchmarks, tests)."""
    global _choice
    if choice is not None and choice not in CHOICES[1:]:
        raise ValueError(f"cpu gemm must be one of {CHOICES[1:]}, got {choice!r}")
    if choice == "onednn" and _op() is None:
        raise ValueError("this PyTorch build has no oneDNN linear")
    with _lock:
        _choice = choice


def _forget(key: int) -> None:
    with _lock:
        _packed.pop(key, None)


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (N, K) in oneDNN's layout, packed once and again only after it changes."""
    key, version, ptr = id(weight), weight._version, weight.data_ptr()
    with _lock:
        entry = _packed.get(key)
    if entry is not None and entry[0]() is weight and entry[1] == version and entry[2] == ptr:
        return entry[3]
    with torch.inference_mode():
        packed = _op()[0](weight.detach(), 1)
    with _lock:
        if entry is None or entry[0]() is not weight:  # a new tensor (possibly at a recycled id)
            weakref.finalize(weight, _forget, key)
        _packed[key] = (weakref.ref(weight), version, ptr, packed)
    return packed


_active = threading.local()  # how deep this thread is in inference_context
# below about 2 M multiply-adds a oneDNN call costs more than it saves (2-core EPYC: (16 x 96) @
# (96 x 288) took 17 us against MKL's 10; (64 x 96) @ (96 x 384) 25 against 31; from 1e7 on, 2x faster)
MIN_MACS = 1 << 21
# in training each call also packs the weight twice (forward, input gradient) and runs three products:
# (256 x 96) @ (96 x 288) forward and backward took 0.62 against MKL's 0.28 ms, 3.8e7 multiply-adds
# 1.1 against 1.3 ms, and from 1.5e8 on oneDNN is 1.35-1.55x as fast
TRAIN_MIN_MACS = 1 << 25


def _sized(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], min_macs: int) -> bool:
    """fp32 on a CPU, shapes that match, and a product big enough for oneDNN to pay."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32 and x.dim() >= 2
            and x.shape[-1] == w.shape[1] and (b is None or b.dtype == torch.float32)
            and x.numel() * w.shape[0] >= min_macs)


def _fits(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> bool:
    """Whether ``F.linear(x, w, b)`` runs on oneDNN for inference: inside the context, and :func:`_sized`."""
    return getattr(_active, "depth", 0) > 0 and _sized(x, w, b, MIN_MACS)


def _trains(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> bool:
    """Whether ``F.linear(x, w, b)`` runs on oneDNN with autograd (:class:`_TrainLinear`)."""
    return (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad) and _sized(x, w, b, TRAIN_MIN_MACS)
            and _onednn_allowed())


def _onednn_allowed() -> bool:
    """No autocast, tracing, scripting or compiling in progress, and oneDNN is this process's choice."""
    return (not torch.is_autocast_enabled("cpu") and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and not torch.compiler.is_compiling() and cpu_gemm() == "onednn")


class _TrainLinear(torch.autograd.Function):
    """``F.linear`` with its forward and input gradient on oneDNN, for training on a CPU.

    The weight changes every step, so it is packed anew on each call (one pass over it, small next
    to the product). The weight gradient g^T x runs on oneDNN when the rows are few next to the
    widths (x^T is then cheap to pack: hybridhash_base's level 2, 11 against 17 ms per product at
    batch 8) and on PyTorch's GEMM otherwise (level 0's 25,088 rows: 19 against 46 ms).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        reorder, linear = _op()
        rows = x.numel() // x.shape[-1]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return linear(x, reorder(weight.detach(), rows), bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        reorder, linear = _op()
        x, weight = ctx.saved_tensors
        n, k = weight.shape
        g = grad.reshape(-1, n)  # (M, N)
        m = g.shape[0]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # g (M, N) @ W (N, K): a linear whose weight is W^T (K, N)
            gx = linear(g, reorder(weight.t(), m), None, "none", [], "").view(x.shape)
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(m, k)
            if m <= 2 * (n + k):  # g^T (N, M) @ x (M, K): a linear whose weight is x^T (K, M)
                gw = linear(g.t(), reorder(x2.t(), n), None, "none", [], "")
            else:
                gw = g.t() @ x2
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb


class PackedLinear(nn.Linear):
    """``nn.Linear`` that runs on oneDNN's GEMM where that is the faster: inside
    :func:`inference_context` with its weight packed once, and in training (autograd on, on a CPU)
    through :class:`_TrainLinear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fits(x, self.weight, self.bias):
            return _op()[1](x, packed_weight(self.weight), self.bias, "none", [], "")
        if _trains(x, self.weight, self.bias):
            return _TrainLinear.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class GeluMlp(Mlp):
    """timm's ``Mlp`` with, inside :func:`inference_context`, the GELU fused into fc1's GEMM as a
    oneDNN post-op: one pass over fc1's output fewer (at hybridhash_base's level 0 that is 22
    against 36 ms per 8 images for fc1 and GELU). Same parameters; identical outputs (the same erf GELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1, act = self.fc1, self.act
        if (not self.training and isinstance(fc1, nn.Linear) and type(act) is nn.GELU and act.approximate == "none"
                and isinstance(self.norm, nn.Identity) and _fits(x, fc1.weight, fc1.bias)):
            x = _op()[1](x, packed_weight(fc1.weight), fc1.bias, "gelu", [], "none")
            return self.drop2(self.fc2(x))  # drop1 and norm are identities here
        return super().forward(x)


def adopt(model: nn.Module) -> nn.Module:
    """Give ``model``'s plain ``nn.Linear`` and timm ``Mlp`` modules the oneDNN-capable forwards
    (in place; parameters, buffers and state dict unchanged). Returns ``model``."""
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = PackedLinear
        elif type(m) is Mlp:
            m.__class__ = GeluMlp
    return model


class _Inside:
    """Marks this thread as inside :func:`inference_context` (re-entrant)."""

    def __enter__(self):
        _active.depth = getattr(_active, "depth", 0) + 1
        return self

    def __exit__(self, *exc):
        _active.depth -= 1
        return False


def wants_fast_linear(x: torch.Tensor) -> bool:
    """Whether a forward pass on ``x`` may run its linears on oneDNN: on a CPU, fp32, no gradient,
    no autocast, not traced, scripted, compiled or exported."""
    if not isinstance(x, torch.Tensor) or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
        return False
    return _onednn_allowed()


def inference_context(x: torch.Tensor):
    """The context a forward pass on ``x`` runs in: adopted layers on oneDNN where that applies
    (:func:`wants_fast_linear`), else nothing."""
    return _Inside() if wants_fast_linear(x) else contextlib.nullcontext()


def forced():
    """The oneDNN context whatever the input (tests and benchmarks; the layers still check each call)."""
    return _Inside()
