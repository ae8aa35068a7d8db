"""What every hashing network of the project offers beyond ``forward(x, activate=True)``: its code
length, its preprocessing, binary codes by the project's sign rule, and saving in the project format."""
from __future__ import annotations

from typing import Any, Dict

import torch

from ..codes import binarize
from .cpu_gemm import inference_context
from .weights import save_pretrained


class HashNetMixin:
    """What the trainer, evaluation, encoding and serving use of a model beyond ``forward``:
    ``bits``, ``preprocess``, ``encode``, ``save_pretrained``, ``num_params``."""

    config: Any

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        # a forward pass without autograd on a CPU runs its linears on oneDNN where that is faster
        # (see cpu_gemm); training, tracing and compiling see the plain module
        with inference_context(x):
            return super().__call__(x, *args, **kwargs)

    @property
    def bits(self) -> int:
        return self.config.bits

    @property
    def preprocess(self) -> Dict[str, Any]:
        return self.config.preprocess

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Binary codes (B, bits) as int8 +-1 (the project's sign rule: 0 maps to +1)."""
        return binarize(self(x))

    def save_pretrained(self, directory: str, **extra: Any) -> None:
        """Write ``model.safetensors`` and ``config.json`` (see :func:`~.weights.save_pretrained`)."""
        save_pretrained(self, directory, **extra)

    def set_fused_attn(self, enable: bool = True):
        """Switch timm attention layers between fused and written-out attention (a no-op without any)."""
        for m in self.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = bool(enable)
        return self
