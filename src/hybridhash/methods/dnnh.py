"""DNNH (Lai et al., CVPR 2015): triplet ranking hinge on sigmoid codes, with the paper's
divide-and-encode head as an option (``head="divide_encode"``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import InBatchMethod, MethodConfig, MethodDefaults, pairwise_similarity
from .registry import register_method


def dnnh_loss(u: Tensor, y: Tensor, margin: float = 1.0) -> Tensor:
    """u (B, K) = sigmoid(h), y (B, C): mean over valid (a, p, n) of
    max(0, margin - (|u_a - u_n|^2 - |u_a - u_p|^2)); valid: s_ap = 1, s_an = 0 (the anchor may
    be its own positive, as in-batch pairs include the diagonal). 0 when no triplet is valid."""
    D = (u.unsqueeze(1) - u.unsqueeze(0)).pow(2).sum(-1)  # (B, B) squared distances
    s = pairwise_similarity(y, y)
    mask = (s.unsqueeze(2) & ~s.unsqueeze(1)).to(u.dtype)  # (a, p, n)
    hinge = (margin - (D.unsqueeze(1) - D.unsqueeze(2))).clamp(min=0)  # [a, p, n]: D[a, n] - D[a, p]
    return (hinge * mask).sum() / mask.sum().clamp(min=1)


class DivideAndEncode(nn.Module):
    """(B, D) features -> (B, K): the features cut into K contiguous slices, each slice mapped to
    one unit by its own linear map (raw outputs; the method applies the sigmoid)."""

    def __init__(self, in_features: int, bits: int) -> None:
        super().__init__()
        sizes = [len(c) for c in torch.arange(in_features).tensor_split(bits)]
        if min(sizes) < 1:
            raise ConfigError(f"dnnh: divide-and-encode needs at least {bits} features, got {in_features}")
        self.sizes = sizes
        self.units = nn.ModuleList(nn.Linear(n, 1) for n in sizes)

    def forward(self, x: Tensor) -> Tensor:
        parts = x.split(self.sizes, dim=1)
        return torch.cat([unit(p) for unit, p in zip(self.units, parts)], dim=1)  # (B, K)


@dataclass
class DNNHConfig(MethodConfig):
    """margin: of the triplet hinge; head: "linear" (the model's own hash layer, for a fair
    comparison) or "divide_encode" (the paper's head, see ``make_head``)."""

    margin: float = 1.0
    head: str = "linear"
    choices = {"head": ("linear", "divide_encode")}
    positive = ("margin",)


@register_method
class DNNH(InBatchMethod):
    name = "dnnh"
    family = "symmetric"
    activation = "sigmoid"
    Config = DNNHConfig
    DEFAULTS = MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=64, epochs=150)
    # its sigmoid outputs saturate together at the scratch recipe's rate (measured on digits at 32
    # bits, 20 epochs: val mAP 0.11 at lr 2e-3, 0.96 at 2e-4)
    scratch_lr_scale = 0.1

    def make_head(self, in_features: int) -> Optional[nn.Module]:
        if self.config.head == "divide_encode":
            return DivideAndEncode(in_features, self.bits)
        return None

    def batch_loss(self, h: Tensor, y: Tensor) -> Tensor:
        return dnnh_loss(torch.sigmoid(h), y, self.config.margin)
