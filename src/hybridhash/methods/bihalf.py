"""Bi-half (Li and van Gemert, AAAI 2021, "Deep Unsupervised Image Hashing by Maximizing Bit
Entropy"): every bit is +1 on exactly half of the batch, and the codes of the batch's two halves
copy the cosine similarities of their target features (docs/methods.md, bihalf)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import MethodConfig, MethodDefaults, UnsupervisedMethod
from .registry import register_method


class BiHalfSign(torch.autograd.Function):
    """h (B, K) -> b (B, K) +-1: in each column the floor(B/2) largest values get +1, the rest -1
    (ties: the earlier row first). Backward: dL/dh = dL/db + gamma (h - b) / (B K)."""

    @staticmethod
    def forward(ctx, h: Tensor, gamma: float) -> Tensor:
        B = h.shape[0]
        order = torch.sort(h, dim=0, descending=True, stable=True).indices  # (B, K) rows by value
        b = torch.full_like(h, -1.0)
        b.scatter_(0, order[: B // 2], 1.0)
        ctx.save_for_backward(h, b)
        ctx.gamma = gamma
        return b

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, b = ctx.saved_tensors
        return grad + ctx.gamma * (h - b) / h.numel(), None


def bi_half(h: Tensor, gamma: float = 6.0) -> Tensor:
    """The bi-half codes b (B, K) of h (B, K), with the backward of :class:`BiHalfSign`."""
    return BiHalfSign.apply(h, gamma)


def halves_cosine_loss(b: Tensor, x: Tensor) -> Tensor:
    """b (B, K) codes, x (B, d) targets, B even: mean over i < B/2 of
    (cos(b_i, b_{i+B/2}) - cos(x_i, x_{i+B/2}))^2, x a constant (cosines with norms clamped at 1e-8)."""
    half = b.shape[0] // 2
    target = F.cosine_similarity(x[:half], x[half:], dim=1).detach().to(b.dtype)  # (B/2,)
    return (F.cosine_similarity(b[:half], b[half:], dim=1) - target).pow(2).mean()


def bihalf_loss(h: Tensor, x: Tensor, gamma: float = 6.0) -> Tensor:
    """h (B, K) raw outputs, x (B, d) targets, B even: :func:`halves_cosine_loss` of bi_half(h)."""
    return halves_cosine_loss(bi_half(h, gamma), x)


@dataclass
class BiHalfConfig(MethodConfig):
    """gamma: weight of the term that pulls h towards its bi-half codes in the backward pass."""

    gamma: float = 6.0
    nonnegative = ("gamma",)


@register_method
class BiHalf(UnsupervisedMethod):
    name = "bihalf"
    activation = "none"
    trains_on = "targets"
    even_batch = True
    Config = BiHalfConfig
    # DeepHash-pytorch: SGD on the hash layer, lr x 0.1 every 30 epochs (the authors' CIFAR-10 runs:
    # batch 32, 300 epochs, decay every 120)
    DEFAULTS = MethodDefaults("sgd", 1e-4, 5e-4, batch_size=64, epochs=200, momentum=0.9, lr_step_epochs=30)

    def batch_loss(self, h: Tensor, x: Tensor) -> Tensor:
        return bihalf_loss(h, x, self.config.gamma)
