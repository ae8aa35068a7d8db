"""DSHSD (Wu et al., IEEE Access 2019, "Deep Supervised Hashing Based on Stable Distribution"): an
in-batch contrastive loss on tanh outputs plus a bias-free linear classifier on them, trained with the
network (docs/methods.md, dshsd)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import InBatchMethod, MethodConfig, MethodDefaults, pairwise_similarity
from .registry import register_method


def contrastive_pairs(u: Tensor, s: Tensor, margin: float) -> Tensor:
    """u (B, K), s (B, B) 0/1 similarity: mean over pairs of s/2 d + (1 - s)/2 max(margin - d, 0),
    d = |u_i - u_j|^2 (taken on the differences, exact at the diagonal's 0)."""
    d = (u.unsqueeze(1) - u.unsqueeze(0)).pow(2).sum(2)  # (B, B)
    return (0.5 * s * d + 0.5 * (1 - s) * (margin - d).clamp(min=0)).mean()


def label_loss(o: Tensor, y: Tensor, multilabel: bool) -> Tensor:
    """o (B, C) logits, y (B, C) multi-hot. Multi-label: the mean over rows of the sum over classes of
    softplus(o) - y o (a logistic loss per class); else the mean of -sum_c y_c log softmax(o)_c."""
    if multilabel:
        return (F.softplus(o) - y * o).sum(1).mean()
    return -(y * F.log_softmax(o, dim=1)).sum(1).mean()


def dshsd_loss(h: Tensor, y: Tensor, W: Tensor, alpha: float = 0.05, multilabel: bool = False) -> Tensor:
    """h (B, K) raw outputs, y (B, C), W (C, K) the classifier. u = tanh(h), logits o = u W^T:
    label_loss(o, y) + alpha contrastive_pairs(u, s, 2K)."""
    u = torch.tanh(h)
    s = pairwise_similarity(y, y).to(h.dtype)
    return label_loss(u @ W.to(h.dtype).t(), y, multilabel) + alpha * contrastive_pairs(u, s, 2 * h.shape[1])


def default_linear_weight(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """(rows, cols) uniform in [-1/sqrt(cols), 1/sqrt(cols)): torch's default init of a bias-free
    Linear(cols, rows), drawn from ``generator``."""
    bound = 1 / math.sqrt(cols)
    return (torch.rand(rows, cols, generator=generator) * 2 - 1) * bound


@dataclass
class DSHSDConfig(MethodConfig):
    """alpha: weight of the contrastive term; train_classifier: the classifier W trains with the
    network (False: it keeps its random initial weights, as DeepHash-pytorch's optimizer never sees
    it); seed: of W's initial weights (pass the run's seed)."""

    alpha: float = 0.05
    train_classifier: bool = True
    seed: int = 0
    nonnegative = ("alpha",)


@register_method
class DSHSD(InBatchMethod):
    name = "dshsd"
    family = "symmetric"
    activation = "tanh"
    Config = DSHSDConfig
    DEFAULTS = MethodDefaults("adam", 1e-5, 0.0, batch_size=64, epochs=250)
    uses_seed = True  # the classifier's initial weights

    def __init__(self, bits, n_class, num_train, config=None):
        super().__init__(bits, n_class, num_train, config)
        W = default_linear_weight(n_class, bits, torch.Generator().manual_seed(self.config.seed))  # (C, K)
        if self.config.train_classifier:
            self.W = nn.Parameter(W)
        else:
            self.register_buffer("W", W)
        # the training set holds a row with several labels: the logistic loss per class
        self.register_buffer("multilabel", torch.zeros((), dtype=torch.bool))

    @classmethod
    def table_note(cls, config: DSHSDConfig, run: Mapping[str, Any], given: Mapping[str, Any],
                   n_train: int, wall_record: str) -> Optional[str]:
        if config.train_classifier:
            return None
        return f"{cls.name}: classifier kept at its random initial weights (train_classifier false, as DeepHash-pytorch)"

    def prepare(self, train_labels: Tensor, generator: Optional[torch.Generator] = None) -> None:
        self.multilabel.fill_(bool((train_labels.sum(1) > 1).any()))

    def batch_loss(self, h: Tensor, y: Tensor) -> Tensor:
        # a batch's multi-hot row is never summed into one softmax, whatever prepare saw
        multilabel = bool(self.multilabel) or bool((y.sum(1) > 1).any())
        return dshsd_loss(h, y, self.W, self.config.alpha, multilabel)
