"""DTSH (Wang et al., ACCV 2016): in-batch triplet likelihood on inner products."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from .base import InBatchMethod, MethodConfig, MethodDefaults, pairwise_similarity
from .registry import register_method


def dtsh_loss(h: Tensor, y: Tensor, alpha: float = 5.0, lam: float = 1.0) -> Tensor:
    """h (B, K) raw outputs, y (B, C).

    theta = h h^T; for each anchor with a similar and a dissimilar item (the anchor itself counts
    as similar, as in the reference), t = clamp(theta_ap - theta_an - alpha, -100, 50) over its
    (p, n) pairs and the anchor's loss is mean(softplus(-t)); those are averaged over anchors (0 if
    none), + lam mean((h - sign h)^2).
    """
    theta = h @ h.t()  # (B, B)
    s = pairwise_similarity(y, y)  # (B, B)
    mask = (s.unsqueeze(2) & ~s.unsqueeze(1)).to(h.dtype)  # (B anchor, B p, B n)
    t = (theta.unsqueeze(2) - theta.unsqueeze(1) - alpha).clamp(-100, 50)  # (B, B, B)
    count = mask.sum(dim=(1, 2))  # (B,)
    valid = count > 0
    per_anchor = (F.softplus(-t) * mask).sum(dim=(1, 2)) / count.clamp(min=1)
    triplet = per_anchor[valid].sum() / valid.sum().clamp(min=1)
    return triplet + lam * (h - h.sign()).pow(2).mean()


@dataclass
class DTSHConfig(MethodConfig):
    """alpha: triplet margin; lam: weight of the quantization term."""

    alpha: float = 5.0
    lam: float = 1.0
    nonnegative = ("alpha", "lam")


@register_method
class DTSH(InBatchMethod):
    name = "dtsh"
    family = "symmetric"
    activation = "none"
    Config = DTSHConfig
    DEFAULTS = MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=128, epochs=150)

    def batch_loss(self, h: Tensor, y: Tensor) -> Tensor:
        return dtsh_loss(h, y, self.config.alpha, self.config.lam)
