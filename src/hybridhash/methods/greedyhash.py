"""GreedyHash, supervised (Su et al., NeurIPS 2018, "Greedy Hash: Towards Fast Optimization for
Accurate Hash Coding in CNN"): a bias-free linear classifier on the sign codes, the sign passing its
gradient straight through, and a cubic pull of |h| towards 1 (docs/methods.md, greedyhash)."""
from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import InBatchMethod, MethodConfig, MethodDefaults, straight_through_sign
from .dshsd import default_linear_weight
from .registry import register_method


def class_targets(y: Tensor, multilabel: str) -> Tensor:
    """What the cross-entropy of each row aims at, (B, C) rows summing to 1 (or 0): "argmax" the one-hot
    row of y's first largest entry (a row without labels: class 0); "soft" y divided by its number of
    labels (a row without labels: all zeros, so it adds nothing). Both agree on single-label rows."""
    if multilabel == "argmax":
        return F.one_hot(y.argmax(1), y.shape[1]).to(y.dtype)
    return y / y.sum(1, keepdim=True).clamp(min=1)


def greedyhash_loss(h: Tensor, y: Tensor, W: Tensor, alpha: float = 0.1, multilabel: str = "soft") -> Tensor:
    """h (B, K) raw outputs, y (B, C), W (C, K) the classifier. b = ST(h), logits b W^T:
    mean over rows of -sum_c t_c log softmax(b W^T)_c with t = class_targets(y)
    + alpha mean(| |h| - 1 |^3)."""
    logits = straight_through_sign(h) @ W.to(h.dtype).t()  # (B, C)
    ce = -(class_targets(y, multilabel) * F.log_softmax(logits, dim=1)).sum(1).mean()
    return ce + alpha * (h.abs() - 1).abs().pow(3).mean()


@dataclass
class GreedyHashConfig(MethodConfig):
    """alpha: weight of the cubic term (1 in the published ImageNet runs); multilabel: how a row with
    several labels enters the cross-entropy, "soft" (its labels share the target equally) or
    "argmax" (its first label only, as DeepHash-pytorch); seed: of the classifier's initial weights
    (pass the run's seed)."""

    alpha: float = 0.1
    multilabel: str = "soft"
    seed: int = 0
    choices = {"multilabel": ("soft", "argmax")}
    nonnegative = ("alpha",)


@register_method
class GreedyHash(InBatchMethod):
    name = "greedyhash"
    family = "classification"
    activation = "none"
    Config = GreedyHashConfig
    # DeepHash-pytorch: SGD, lr x 0.1 every 30 epochs (80 on ImageNet); the authors' runs: batch 32,
    # 50 / 40 / 100 epochs
    DEFAULTS = MethodDefaults("sgd", 1e-3, 5e-4, batch_size=64, epochs=200, momentum=0.9, lr_step_epochs=30)
    uses_seed = True  # the classifier's initial weights

    def __init__(self, bits, n_class, num_train, config=None):
        super().__init__(bits, n_class, num_train, config)
        # the classifier (C, K), trained with the network: a trainer gives it to the optimizer
        self.W = nn.Parameter(default_linear_weight(n_class, bits, torch.Generator().manual_seed(self.config.seed)))

    def batch_loss(self, h: Tensor, y: Tensor) -> Tensor:
        return greedyhash_loss(h, y, self.W, self.config.alpha, self.config.multilabel)
