"""DHN (Zhu, Long, Wang and Cao, AAAI 2016, "Deep Hashing Network for Efficient Similarity
Retrieval"): the pairwise likelihood of raw outputs against a bank, with a log-cosh quantization
term (docs/methods.md, dhn). ``likelihood`` is the pair term the other likelihood methods share."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from .bank import BankMethod
from .base import MethodConfig, MethodDefaults, pairwise_similarity
from .registry import register_method


def likelihood(theta: Tensor, s: Tensor) -> Tensor:
    """l(theta, s) = log(1 + e^theta) - s theta, elementwise, finite for any theta; s may be soft."""
    return F.softplus(theta) - s * theta


def log_cosh(x: Tensor) -> Tensor:
    """log(cosh(x)) without overflow: |x| + softplus(-2|x|) - log 2."""
    a = x.abs()
    return a + F.softplus(-2 * a) - 0.6931471805599453


def dhn_loss(h: Tensor, U: Tensor, y: Tensor, Y: Tensor, alpha: float = 0.1) -> Tensor:
    """h (B, K) raw outputs, U (n, K) bank, y (B, C), Y (n, C).

    theta = 0.5 h_i . U_j; mean over B x n of l(theta, s) + alpha mean(log cosh(|h| - 1)).
    """
    s = pairwise_similarity(y.to(h.dtype), Y).to(h.dtype)  # (B, n)
    theta = 0.5 * (h @ U.to(h.dtype).t())  # (B, n)
    return likelihood(theta, s).mean() + alpha * log_cosh(h.abs() - 1).mean()


@dataclass
class DHNConfig(MethodConfig):
    """alpha: weight of the quantization term; pairs: "bank" (the batch against a bank of all training
    outputs, as DeepHash-pytorch) or "batch" (the pairs inside the mini-batch)."""

    alpha: float = 0.1
    pairs: str = "bank"
    choices = {"pairs": ("bank", "batch")}
    nonnegative = ("alpha",)


@register_method
class DHN(BankMethod):
    name = "dhn"
    family = "symmetric"
    activation = "none"
    Config = DHNConfig
    DEFAULTS = MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=128, epochs=90)
    # its best val mAP under the scratch recipe (digits, hybridhash_cpu, 32 bits, 30 epochs, seed 0):
    # 0.50 at lr 2e-3, 0.80 at 2e-4
    scratch_lr_scale = 0.1

    def pair_loss(self, h: Tensor, y: Tensor, U: Tensor, Y: Tensor) -> Tensor:
        return dhn_loss(h, U, y, Y, self.config.alpha)
