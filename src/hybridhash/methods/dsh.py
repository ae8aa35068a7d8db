"""DSH (Liu et al., CVPR 2016): contrastive loss on squared Euclidean distances against a bank."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .bank import BankMethod
from .base import MethodConfig, MethodDefaults, pairwise_similarity
from .registry import register_method


def dsh_loss(h: Tensor, U: Tensor, y: Tensor, Y: Tensor, margin: float, alpha: float = 0.1) -> Tensor:
    """h (B, K) raw outputs, U (n, K) bank, y (B, C), Y (n, C); margin m (2K as published).

    mean over B x n of 0.5 s dist + 0.5 (1 - s) max(m - dist, 0), + alpha mean(| |h| - 1 |).
    """
    U = U.to(h.dtype)
    s = pairwise_similarity(y.to(h.dtype), Y).to(h.dtype)  # (B, n)
    # |a - b|^2 expanded: a (B, n, K) difference tensor would not fit at n = 50000
    dist = (h.pow(2).sum(1, keepdim=True) + U.pow(2).sum(1) - 2 * h @ U.t()).clamp(min=0)  # (B, n)
    contrastive = 0.5 * s * dist + 0.5 * (1 - s) * (margin - dist).clamp(min=0)
    return contrastive.mean() + alpha * (h.abs() - 1).abs().mean()


@dataclass
class DSHConfig(MethodConfig):
    """alpha: weight of the regulariser; margin_factor: m = margin_factor * bits; pairs: "bank" (the
    batch against a bank of all training outputs, as DeepHash-pytorch) or "batch" (the pairs inside
    the mini-batch, as the paper generates them online; no stale bank for the outputs to drift from)."""

    alpha: float = 0.1
    margin_factor: float = 2.0
    pairs: str = "bank"
    choices = {"pairs": ("bank", "batch")}
    nonnegative = ("alpha",)
    positive = ("margin_factor",)


@register_method
class DSH(BankMethod):
    name = "dsh"
    family = "symmetric"
    activation = "none"
    Config = DSHConfig
    DEFAULTS = MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=64, epochs=150)

    def pair_loss(self, h: Tensor, y: Tensor, U: Tensor, Y: Tensor) -> Tensor:
        return dsh_loss(h, U, y, Y, self.config.margin_factor * self.bits, self.config.alpha)
