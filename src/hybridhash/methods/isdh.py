"""ISDH (Zhang, Zou et al., arXiv 2018, "Instance Similarity Deep Hashing for Multi-Label Image
Retrieval"): as IDHN, softsign outputs against a bank with the cosine of the label vectors as
similarity; the likelihood (weighted by gamma) on the hard pairs, the squared error of the
similarity and sigma(theta) on the others (docs/methods.md, isdh)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.functional import softsign

from .dhn import likelihood
from .idhn import IDHN, IDHNConfig, inner_scale, soft_similarity
from .registry import register_method


def isdh_loss(h: Tensor, U: Tensor, y: Tensor, Y: Tensor, alpha: float = 0.5, gamma: float = 10.0,
              lam: float = 0.1, scale: str = "deephash") -> Tensor:
    """h (B, K) raw outputs, U (n, K) bank of softsign outputs, y (B, C), Y (n, C).

    u = softsign(h); theta = alpha u_i . U_j ("deephash") or 5 u_i . U_j / K ("official");
    mean over B x n of gamma M l(theta, s_hat) + (1 - M)(s_hat - sigma(theta))^2
    + lam mean(| |u| - 1 |), with s_hat and M of ``soft_similarity``.
    """
    u = softsign(h)
    s, hard = soft_similarity(y.to(h.dtype), Y)
    theta = inner_scale(scale, alpha, h.shape[1]) * (u @ U.to(h.dtype).t())  # (B, n)
    pairs = gamma * hard * likelihood(theta, s) + (1 - hard) * (s - torch.sigmoid(theta)).pow(2)
    return pairs.mean() + lam * (u.abs() - 1).abs().mean()


@dataclass
class ISDHConfig(IDHNConfig):
    """As IDHN's fields; gamma weighs the hard pairs' likelihood here."""

    gamma: float = 10.0


@register_method
class ISDH(IDHN):
    """IDHN's softsign bank and soft similarity, with ISDH's pair loss."""

    name = "isdh"
    Config = ISDHConfig
    # IDHN's scratch_lr_scale (0.1) holds for it too: best val mAP under the scratch recipe (digits,
    # hybridhash_cpu, 32 bits, 30 epochs, seed 0) 0.78 at lr 2e-3, 0.86 at 2e-4

    def pair_loss(self, h: Tensor, y: Tensor, U: Tensor, Y: Tensor) -> Tensor:
        c = self.config
        return isdh_loss(h, U, y, Y, c.alpha, c.gamma, c.lam, c.scale)
