"""PCDH (Chen and Lu, Neurocomputing 2020, "Deep discrete hashing with pairwise correlation
learning"): a squared-hinge contrastive loss on the tanh codes and on the penultimate features
inside the batch, and a classifier on discrete codes made from the tanh codes by a linear layer
(docs/methods.md, pcdh).

The tanh layer is the model's own hash layer (codes sign(h), as for every method); the discrete
layer and the classifier are the method's parameters, trained with the network. DeepHash-pytorch
thresholds the discrete layer without a gradient, so its class loss trains only the classifier;
``straight_through`` (the default) passes the gradient through the threshold unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DataError
from .base import Method, MethodConfig, MethodDefaults, pairwise_similarity, promote
from .registry import register_method


def squared_hinge_contrastive(x: Tensor, s: Tensor, margin: float) -> Tensor:
    """x (B, D) rows, s (B, B) 1 for similar pairs, 0 else: the mean over B x B (the diagonal
    included) of s/2 d + (1 - s)/2 max(margin - d, 0)^2, d_ij = |x_i - x_j|^2."""
    norms = x.pow(2).sum(1)
    # |a - b|^2 expanded: the (B, B, D) differences of wide features would not fit large batches
    d = (norms.unsqueeze(1) + norms.unsqueeze(0) - 2 * x @ x.t()).clamp(min=0)  # (B, B)
    return (s / 2 * d + (1 - s) / 2 * (margin - d).clamp(min=0).pow(2)).mean()


def class_loss(logits: Tensor, y: Tensor, multi_label: bool) -> Tensor:
    """logits, y (B, C): multi-label, the mean over rows of sum_c softplus(o_c) - y_c o_c; else the
    mean over rows of -sum_c y_c log softmax(o)_c."""
    if multi_label:
        return (F.softplus(logits) - y * logits).sum(1).mean()
    return -(y * F.log_softmax(logits, dim=1)).sum(1).mean()


def discrete_codes(z: Tensor, straight_through: bool) -> Tensor:
    """z (B, K) -> +1 where z >= 0, else -1 (the reference's threshold); with ``straight_through`` the
    gradient passes to z unchanged, else none does."""
    b = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
    # z - z.detach() is exactly 0 forward and the identity backward
    return b + (z - z.detach()) if straight_through else b


def pcdh_loss(u: Tensor, f: Tensor, y: Tensor, discrete: Callable[[Tensor], Tensor],
              classifier: Callable[[Tensor], Tensor],
              alpha: float = 1.0, beta: float = 1.0, straight_through: bool = True,
              multi_label: bool = False) -> Tensor:
    """u (B, K) tanh codes, f (B, F) penultimate features, y (B, C); ``discrete`` (K -> K) and
    ``classifier`` (K -> C) the method's layers. L_h + alpha L_f + beta L_c: the squared-hinge
    contrastive loss on u and on f (margin 2K both), and the class loss of classifier(b), b the
    discrete codes of discrete(u)."""
    K = u.shape[1]
    s = pairwise_similarity(y, y).to(u.dtype)
    logits = classifier(discrete_codes(discrete(u), straight_through))
    return (squared_hinge_contrastive(u, s, 2 * K) + alpha * squared_hinge_contrastive(f, s, 2 * K)
            + beta * class_loss(logits, y, multi_label))


@dataclass
class PCDHConfig(MethodConfig):
    """alpha: weight of the contrastive loss on the features; beta: weight of the class loss;
    straight_through: the class loss reaches the network through the discrete layer (False: the
    reference, where it trains the classifier only)."""

    alpha: float = 1.0
    beta: float = 1.0
    straight_through: bool = True
    nonnegative = ("alpha", "beta")


@register_method
class PCDH(Method):
    name = "pcdh"
    family = "symmetric"
    activation = "tanh"
    Config = PCDHConfig
    # DeepHash-pytorch, on its own CNN trained from scratch at 128 px
    DEFAULTS = MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=64, epochs=2000)
    # its best val mAP under the scratch recipe (digits, hybridhash_cpu, 32 bits, 30 epochs, seed 0):
    # 0.45 at lr 2e-3, 0.71 at 2e-4
    scratch_lr_scale = 0.1
    takes_features = True

    def __init__(self, bits, n_class, num_train, config=None):
        super().__init__(bits, n_class, num_train, config)
        self.discrete = nn.Linear(bits, bits)
        self.classifier = nn.Linear(bits, n_class, bias=False)
        # whether the training labels are multi-hot (1), one-hot (0), or not seen yet (-1: each batch decides)
        self.register_buffer("multi_label", torch.tensor(-1, dtype=torch.int8))

    @classmethod
    def table_note(cls, config, run, given, n_train, wall_record) -> Optional[str]:
        if config.straight_through:
            # measured on digits (hybridhash_cpu, 64 bits, seed 0, lr 2e-4): val mAP 0.24, 0.35, 0.43, 0.45,
            # 0.49, 0.49 at epochs 5 to 30, its loss still falling
            return (f"{cls.name}: straight-through fix (the class loss reaches the network through the discrete "
                    "layer); the shared model's hash layer, not the reference's own CNN; from scratch it learns "
                    "slowly (at 64 bits still rising at the last epoch)")
        return f"{cls.name}: as DeepHash-pytorch, the class loss trains only its classifier"

    def prepare(self, train_labels: Tensor, generator: Optional[torch.Generator] = None) -> None:
        """Decide the class loss from the training labels: multi-label when a row has other than one label."""
        self.multi_label.fill_(int(bool((train_labels.sum(1) != 1).any())))

    def loss(self, h: Tensor, y: Tensor, index: Tensor, features: Optional[Tensor] = None, *,
             gathered: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
        """h (B, K) raw outputs, y (B, C), index (B,), features (B, F) the penultimate features of the
        same images (in-batch: ``gathered`` is not needed)."""
        self.check_batch(h, y, index)
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[0] != h.shape[0]:
            got = tuple(features.shape) if isinstance(features, Tensor) else None
            raise DataError(f"{self.name}: features must be ({h.shape[0]}, F), the penultimate features of the batch "
                            f"(the input of the model's hash layer), got {got}")
        h = promote(h)
        y = y.to(h.dtype)
        multi = int(self.multi_label) == 1 or (int(self.multi_label) < 0 and bool((y.sum(1) != 1).any()))
        # the layers in h's dtype: a float64 check of the formula keeps its precision
        discrete = lambda v: F.linear(v, self.discrete.weight.to(h.dtype), self.discrete.bias.to(h.dtype))
        classifier = lambda v: F.linear(v, self.classifier.weight.to(h.dtype))
        return pcdh_loss(torch.tanh(h), promote(features), y, discrete, classifier, self.config.alpha,
                         self.config.beta, self.config.straight_through, multi)
