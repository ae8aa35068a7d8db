"""LCDSH (Zhu and Gao, IJCAI 2017, "Locality-Constrained Deep Supervised Hashing"): an in-batch
pairwise likelihood on raw outputs, plus a term that keeps each pair's likelihood close to the one its
binary codes would give (docs/methods.md, lcdsh)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import InBatchMethod, MethodConfig, MethodDefaults, pairwise_similarity
from .registry import register_method


def lcdsh_loss(h: Tensor, y: Tensor, lam: float = 3.0) -> Tensor:
    """h (B, K) raw outputs, y (B, C), pairs inside the batch (diagonal included). With s' = 2s - 1,
    theta = clamp(h_i.h_j / 2, -50, 50) and theta_b = sign(h_i).sign(h_j) / 2 (a constant):
    mean softplus(-s' theta) + lam mean (sigmoid(theta) - sigmoid(theta_b))^2."""
    s = 2 * pairwise_similarity(y, y).to(h.dtype) - 1  # (B, B)
    theta = (0.5 * (h @ h.t())).clamp(-50, 50)
    b = h.detach().sign()
    theta_b = 0.5 * (b @ b.t())
    likelihood = F.softplus(-s * theta).mean()
    return likelihood + lam * (torch.sigmoid(theta) - torch.sigmoid(theta_b)).pow(2).mean()


@dataclass
class LCDSHConfig(MethodConfig):
    """lam: weight of the term between the likelihood of the outputs and of their codes (lambda in
    DeepHash-pytorch)."""

    lam: float = 3.0
    nonnegative = ("lam",)


@register_method
class LCDSH(InBatchMethod):
    name = "lcdsh"
    family = "symmetric"
    activation = "none"
    Config = LCDSHConfig
    DEFAULTS = MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=128, epochs=350)
    # under the scratch recipe its best val mAP on digits (hybridhash_cpu, 32 bits, 10 epochs, seed 0) is
    # 0.39 at lr 2e-3, 0.47 at 2e-4, 0.39 at 5e-5
    scratch_lr_scale = 0.1

    def batch_loss(self, h: Tensor, y: Tensor) -> Tensor:
        return lcdsh_loss(h, y, self.config.lam)
