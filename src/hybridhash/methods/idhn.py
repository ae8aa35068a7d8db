"""IDHN (Zhang, Zou, Lin, Chen and Wang, IEEE TMM 2019, "Improved Deep Hashing With Soft Pairwise
Similarity for Multi-Label Image Retrieval"): softsign outputs against a bank, with a soft
similarity (the cosine of the label vectors); the likelihood on pairs whose similarity is near 0 or
1, a squared error on the others (docs/methods.md, idhn). ISDH is IDHN with another pair loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from torch import Tensor
from torch.nn.functional import softsign  # h / (1 + |h|)

from .bank import BankMethod
from .base import MethodConfig, MethodDefaults
from .dhn import likelihood
from .registry import register_method

SCALES = ("deephash", "official")


def soft_similarity(y: Tensor, Y: Tensor) -> Tuple[Tensor, Tensor]:
    """(s_hat, M), both (B, n): s_hat = y_i . Y_j / (|y_i| |Y_j| + 1e-5) (0 for an empty row), and
    M = 1 where s_hat > 0.99 or s_hat < 0.01 (the pairs the likelihood treats as hard), else 0."""
    Y = Y.to(y.dtype)
    s = (y @ Y.t()) / (y.norm(dim=1, keepdim=True) * Y.norm(dim=1) + 1e-5)
    hard = ((s > 0.99) | (s < 0.01)).to(y.dtype)
    return s, hard


def inner_scale(scale: str, alpha: float, bits: int) -> float:
    """The factor of u_i . U_j in theta: alpha (DeepHash-pytorch) or 5 / K (the authors' code)."""
    return alpha if scale == "deephash" else 5.0 / bits


def idhn_loss(h: Tensor, U: Tensor, y: Tensor, Y: Tensor, alpha: float = 0.5, gamma: float = 0.1,
              lam: float = 0.1, scale: str = "deephash") -> Tensor:
    """h (B, K) raw outputs, U (n, K) bank of softsign outputs, y (B, C), Y (n, C).

    u = softsign(h); p = u_i . U_j; theta = alpha p ("deephash") or 5 p / K ("official");
    mean over B x n of M l(theta, s_hat) + gamma (1 - M) q + lam mean(| |u| - 1 |), where
    q = (theta - K (2 s_hat - 1))^2 ("deephash") or (p - K (2 s_hat - 1))^2 / (4K) ("official").
    """
    K = h.shape[1]
    u = softsign(h)
    s, hard = soft_similarity(y.to(h.dtype), Y)
    p = u @ U.to(h.dtype).t()  # (B, n)
    theta = inner_scale(scale, alpha, K) * p
    target = K * (2 * s - 1)
    soft = (theta - target).pow(2) if scale == "deephash" else (p - target).pow(2) / (4 * K)
    pairs = hard * likelihood(theta, s) + gamma * (1 - hard) * soft
    return pairs.mean() + lam * (u.abs() - 1).abs().mean()


@dataclass
class IDHNConfig(MethodConfig):
    """alpha: scale of the inner product (scale "deephash"); gamma: weight of the soft pairs' squared
    error; lam: weight of the quantization term; pairs: "bank" (as DeepHash-pytorch) or "batch" (the
    pairs inside the mini-batch, as the authors' code); scale: "deephash" (alpha u.U, the squared
    error on that) or "official" (the authors' 5 u.U / K, and their soft term)."""

    alpha: float = 0.5
    gamma: float = 0.1
    lam: float = 0.1
    pairs: str = "bank"
    scale: str = "deephash"
    choices = {"pairs": ("bank", "batch"), "scale": SCALES}
    nonnegative = ("gamma", "lam")
    positive = ("alpha",)


@register_method
class IDHN(BankMethod):
    name = "idhn"
    family = "symmetric"
    activation = "softsign"
    Config = IDHNConfig
    DEFAULTS = MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=128, epochs=150)
    # its best val mAP under the scratch recipe (digits, hybridhash_cpu, 32 bits, 30 epochs, seed 0):
    # 0.44 at lr 2e-3, 0.85 at 2e-4
    scratch_lr_scale = 0.1

    def activate(self, h: Tensor) -> Tensor:
        """softsign(h), what the bank stores."""
        return softsign(h)

    def pair_loss(self, h: Tensor, y: Tensor, U: Tensor, Y: Tensor) -> Tensor:
        c = self.config
        return idhn_loss(h, U, y, Y, c.alpha, c.gamma, c.lam, c.scale)
