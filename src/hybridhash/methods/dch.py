"""DCH (Cao et al., CVPR 2018): in-batch Cauchy cross-entropy on normalised Hamming distances."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import InBatchMethod, MethodConfig, MethodDefaults, pairwise_similarity
from .registry import register_method


def cauchy_distance(a: Tensor, b: Tensor, bits: int) -> Tensor:
    """K/2 (1 - cos) with cos = a_i.b_j / max(|a_i| |b_j|, 1e-4) capped at 0.99: (A, B)."""
    norm = a.norm(dim=1, keepdim=True) * b.norm(dim=1).unsqueeze(0)
    cos = (a @ b.t()) / norm.clamp(min=1e-4)
    return bits / 2 * (1 - cos.clamp(max=0.99))


def dch_loss(h: Tensor, y: Tensor, gamma: float = 20.0, lam: float = 0.1) -> Tensor:
    """h (B, K) raw outputs, y (B, C): mean(w [s log(d/gamma) + log(1 + gamma/d)]) + lam mean(q)."""
    B, K = h.shape
    s = pairwise_similarity(y, y).to(h.dtype)  # (B, B)
    S1 = s.sum()
    if 0 < S1 < s.numel():
        w = s * (s.numel() / S1) + (1 - s) * (s.numel() / (s.numel() - S1))
    else:  # one kind of pair only: no re-weighting
        w = torch.ones_like(s)
    d = cauchy_distance(h, h, K)
    cauchy = w * (s * torch.log(d / gamma) + torch.log1p(gamma / d))
    q = torch.log1p(cauchy_distance(h.abs(), torch.ones(1, K, dtype=h.dtype, device=h.device), K) / gamma)  # (B, 1)
    return cauchy.mean() + lam * q.mean()


@dataclass
class DCHConfig(MethodConfig):
    """gamma: Cauchy scale; lam: weight of the quantization term (lambda in the paper)."""

    gamma: float = 20.0
    lam: float = 0.1
    positive = ("gamma",)
    nonnegative = ("lam",)


@register_method
class DCH(InBatchMethod):
    name = "dch"
    family = "symmetric"
    activation = "none"
    Config = DCHConfig
    DEFAULTS = MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=128, epochs=150)

    def batch_loss(self, h: Tensor, y: Tensor) -> Tensor:
        return dch_loss(h, y, self.config.gamma, self.config.lam)
