"""HashNet (Cao et al., ICCV 2017): in-batch weighted pairwise likelihood on tanh(beta h), with
beta raised by continuation, per epoch (default) or per iteration as the official code does."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import InBatchMethod, MethodConfig, MethodDefaults, pairwise_similarity
from .registry import register_method


def hashnet_loss(u: Tensor, y: Tensor, alpha: float = 0.1) -> Tensor:
    """u (B, K) = tanh(beta h), y (B, C). d = alpha u_i . u_j; l = softplus(d) - s d;
    w = S/S1 on similar pairs, S/S0 on dissimilar ones; loss = sum(w l) / S (B x B pairs)."""
    s = pairwise_similarity(y, y).to(u.dtype)  # (B, B)
    d = alpha * (u @ u.t())  # (B, B)
    l = F.softplus(d) - s * d
    S = float(s.numel())
    S1 = s.sum().detach()
    # an empty class of pairs has no terms; the clamp only avoids inf * 0
    w = s * (S / S1.clamp(min=1.0)) + (1 - s) * (S / (S - S1).clamp(min=1.0))
    return (w * l).sum() / S


def continuation_beta(epoch: int, step: int, schedule: str = "epoch", step_continuation: int = 20,
                      gamma: float = 0.005, every: int = 200) -> float:
    """beta = sqrt(floor(epoch / step_continuation) + 1) ("epoch"), or
    (1 + gamma * it)^0.5 with it the step rounded down to a multiple of ``every`` ("iteration")."""
    if schedule == "iteration":
        return math.sqrt(1.0 + gamma * (step // every) * every)
    return math.sqrt(epoch // step_continuation + 1)


@dataclass
class HashNetConfig(MethodConfig):
    """alpha: inner-product scale; schedule: "epoch" or "iteration" continuation of beta;
    step_continuation: epochs per beta step; iteration_gamma, iteration_every: the official
    per-iteration schedule (1 + 0.005 it)^0.5 updated every 200 iterations."""

    alpha: float = 0.1
    schedule: str = "epoch"
    step_continuation: int = 20
    iteration_gamma: float = 0.005
    iteration_every: int = 200
    choices = {"schedule": ("epoch", "iteration")}
    positive = ("alpha", "step_continuation", "iteration_every")
    nonnegative = ("iteration_gamma",)


@register_method
class HashNet(InBatchMethod):
    name = "hashnet"
    family = "symmetric"
    activation = "tanh_beta"
    Config = HashNetConfig
    DEFAULTS = MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=64, epochs=150)
    # its best val mAP under the scratch recipe (digits, hybridhash_cpu, 32 bits, 30 epochs, seed 0):
    # 0.34 at lr 2e-3 (then collapsed to chance near epoch 10), 0.93 at 2e-4
    scratch_lr_scale = 0.1

    def __init__(self, bits, n_class, num_train, config=None):
        super().__init__(bits, n_class, num_train, config)
        self.register_buffer("beta", torch.ones((), dtype=torch.float64))

    def _set(self, epoch: int, step: int) -> None:
        c = self.config
        self.beta.fill_(continuation_beta(epoch, step, c.schedule, c.step_continuation,
                                          c.iteration_gamma, c.iteration_every))

    def on_epoch_start(self, epoch: int, step: int) -> None:
        self._set(epoch, step)

    def on_step(self, step: int) -> None:
        if self.config.schedule == "iteration":
            self._set(0, step)

    def activate(self, h: Tensor) -> Tensor:
        return torch.tanh(float(self.beta) * h)

    def batch_loss(self, h: Tensor, y: Tensor) -> Tensor:
        return hashnet_loss(self.activate(h), y, self.config.alpha)
