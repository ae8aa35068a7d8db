"""DPN (Fan, Ng, Ju, Zhang and Chan, IJCAI 2020, "Deep Polarized Network for Supervised Learning of
Accurate Binary Hashing Codes"): a hinge that polarises each output towards the sign of its class's
random target vector (docs/methods.md, dpn)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError
from .bank import MemoryBank
from .base import Method, MethodConfig, MethodDefaults, promote
from .csq import batch_centers, center_distances
from .registry import register_method


def draw_targets(n_class: int, bits: int, p: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Target vectors (C, K): each row +1 but for floor(p K) entries -1 at positions drawn from ``generator``."""
    T = torch.ones(n_class, bits)
    for c in range(n_class):
        T[c, torch.randperm(bits, generator=generator)[: math.floor(p * bits)]] = -1
    return T


def ternary(x: Tensor, m: float) -> Tensor:
    """sign(x) where |x| > m, else 0 (any shape)."""
    return x.sign() * (x.abs() > m).to(x.dtype)


def dpn_targets(y: Tensor, T: Tensor, fill: Tensor, multilabel: bool) -> Tensor:
    """The target of each row (B, K): T[argmax y_i] for a row with one label, or for every row when
    ``multilabel`` sign(y_i T) with its zeros taken from ``fill`` (K,) +-1 (a row with several labels
    always takes that rule)."""
    single = T.to(y.dtype)[y.argmax(1)]
    several = (y.sum(1, keepdim=True) > 1) | multilabel
    return torch.where(several, batch_centers(y, T, fill), single)


def dpn_loss(h: Tensor, t: Tensor, m: float = 1.0) -> Tensor:
    """h (B, K) raw outputs, t (B, K) targets: mean(max(0, m - h t))."""
    return (m - h * t.to(h.dtype)).clamp(min=0).mean()


@dataclass
class DPNConfig(MethodConfig):
    """m: margin of the hinge (and threshold of the adaptive update); p: share of -1 entries of each
    target vector; adaptive: after each epoch the targets become sign(Y^T tern(U)) (the "-A" variant),
    U a bank of the outputs of the training set and tern(x) = sign(x) where |x| > m, else 0."""

    m: float = 1.0
    p: float = 0.5
    adaptive: bool = False
    positive = ("m",)

    def check(self, method: str) -> None:
        super().check(method)
        if not 0 <= self.p <= 1:
            raise ConfigError(f"{method}: p must be between 0 and 1, got {self.p!r}")


@register_method
class DPN(Method):
    name = "dpn"
    family = "central"
    activation = "none"
    Config = DPNConfig
    DEFAULTS = MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=32, epochs=150)

    def __init__(self, bits, n_class, num_train, config=None):
        super().__init__(bits, n_class, num_train, config)
        self.register_buffer("T", torch.zeros(n_class, bits))  # (C, K) target vectors, drawn in prepare
        self.register_buffer("fill", torch.ones(bits))  # (K,) +-1, for the zeros of a multi-label sum
        self.register_buffer("prepared", torch.zeros((), dtype=torch.bool))
        self.register_buffer("multilabel", torch.zeros((), dtype=torch.bool))  # the training set's
        if self.config.adaptive:
            self.bank = MemoryBank(num_train, bits, n_class)

    def prepare(self, train_labels: Tensor, generator: Optional[torch.Generator] = None) -> None:
        """Draw the targets and the fill vector from ``generator``; a restored state keeps its own."""
        if bool(self.prepared):
            return
        self.T.copy_(draw_targets(self.n_class, self.bits, self.config.p, generator))
        self.fill.copy_(torch.randint(0, 2, (self.bits,), generator=generator).float() * 2 - 1)
        self.multilabel.fill_(bool((train_labels.sum(1) > 1).any()))
        self.prepared.fill_(True)

    def facts(self) -> dict:
        low, mean = center_distances(self.T)
        return {"min_target_distance": low, "mean_target_distance": mean} if bool(self.prepared) else {}

    def loss(self, h: Tensor, y: Tensor, index: Tensor, *,
             gathered: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
        index = self.check_batch(h, y, index)
        if not bool(self.prepared):
            raise ConfigError("dpn: call prepare(train_labels, generator) before training, to draw the targets")
        if self.config.adaptive:  # every rank writes every rank's rows, so the targets stay identical
            self.bank.write(*(gathered if gathered is not None else (h.detach(), y, index)))
        h = promote(h)
        t = dpn_targets(y.to(h.dtype), self.T.to(h.dtype), self.fill, bool(self.multilabel))
        return dpn_loss(h, t, self.config.m)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        """The adaptive variant: T = sign(Y^T tern(U)) over the bank (an entry of 0 stays 0)."""
        if self.config.adaptive:
            self.T.copy_((self.bank.Y.t() @ ternary(self.bank.U, self.config.m)).sign())
