"""GreedyHash, unsupervised (Su et al., NeurIPS 2018, "Greedy Hash: Towards Fast Optimization for
Accurate Hash Coding in CNN"): sign codes with the identity as their gradient, the codes of the
batch's two halves copying the cosines of their target features, and a cubic pull of |h| towards 1
(docs/methods.md, greedyhash_unsup)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import MethodConfig, MethodDefaults, UnsupervisedMethod, straight_through_sign
from .bihalf import halves_cosine_loss
from .registry import register_method


def greedyhash_unsup_loss(h: Tensor, x: Tensor, alpha: float = 0.1) -> Tensor:
    """h (B, K) raw outputs, x (B, d) targets, B even: halves_cosine_loss(ST(h), x)
    + alpha mean(||h| - 1|^3), ST the straight-through sign."""
    return halves_cosine_loss(straight_through_sign(h), x) + alpha * (h.abs() - 1).abs().pow(3).mean()


@dataclass
class GreedyHashUnsupConfig(MethodConfig):
    """alpha: weight of the cubic term that pulls |h| towards 1."""

    alpha: float = 0.1
    nonnegative = ("alpha",)


@register_method
class GreedyHashUnsup(UnsupervisedMethod):
    name = "greedyhash_unsup"
    activation = "none"
    trains_on = "targets"
    even_batch = True
    Config = GreedyHashUnsupConfig
    # DeepHash-pytorch (16 bits); the authors' runs: batch 32, 60 epochs (300 at 16 bits), no decay
    DEFAULTS = MethodDefaults("sgd", 1e-4, 5e-4, batch_size=64, epochs=200, momentum=0.9, lr_step_epochs=30)

    def batch_loss(self, h: Tensor, x: Tensor) -> Tensor:
        return greedyhash_unsup_loss(h, x, self.config.alpha)
