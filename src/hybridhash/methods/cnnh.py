"""CNNH (Xia et al., AAAI 2014): stage 1 learns approximate codes H for the training set by
coordinate descent on |H H^T - K S|^2; stage 2 regresses the network's outputs onto them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Method, MethodConfig, MethodDefaults, pairwise_similarity, promote
from .registry import register_method


def cnnh_stage_one(S: Tensor, bits: int, sweeps: int = 10,
                   generator: Optional[torch.Generator] = None) -> Tuple[Tensor, List[float]]:
    """Approximate codes H (n, bits) in [-1, 1] minimising |H H^T - bits S|^2 for S (n, n) in {-1, 1}.

    H starts uniform in [-1, 1] (drawn from ``generator``). Each sweep visits every (i, j) once in a
    random order and takes the Newton step on H_ij clipped to [-1, 1], keeping L = H H^T - K S up
    to date; a sweep that does not lower mean(L^2) is undone. Returns (H, [mean(L^2) at the start
    and after each sweep]). Cost: n * bits coordinate steps of O(n) each per sweep.
    """
    n = S.shape[0]
    H = (2 * torch.rand(n, bits, generator=generator, dtype=S.dtype) - 1).to(S.device)
    L = H @ H.t() - bits * S  # (n, n)
    errors = [float(L.pow(2).mean())]
    for _ in range(sweeps):
        H_before, L_before = H.clone(), L.clone()
        for c in torch.randperm(n * bits, generator=generator).tolist():
            i, j = divmod(c, bits)
            hj = H[:, j]
            grad = 4 * L[i] @ hj
            curv = 4 * (hj @ hj + H[i, j] ** 2 + L[i, i])
            if curv <= 0:  # no Newton step where the error is not locally convex in H_ij
                continue
            d = (-grad / curv).clamp(-1 - H[i, j], 1 - H[i, j])
            # L + d (e_i h_j^T + h_j e_i^T) + d^2 e_i e_i^T, with h_j before the step
            L[i] += d * hj
            L[:, i] += d * hj
            L[i, i] += d * d
            H[i, j] += d
        error = float(L.pow(2).mean())
        if error >= errors[-1]:
            H, L, error = H_before, L_before, errors[-1]
        errors.append(error)
    return H, errors


def cnnh_loss(h: Tensor, target: Tensor) -> Tensor:
    """Stage 2: mean((h - H[ind])^2), h (B, K) raw outputs, target (B, K) in {-1, +1}."""
    return (h - target.to(h.dtype)).pow(2).mean()


@dataclass
class CNNHConfig(MethodConfig):
    """sweeps: T, coordinate-descent sweeps of stage 1 (its cost grows as n^2 K per sweep; lower it
    on large training sets, raise it on small ones to give stage 1 a comparable effort)."""

    sweeps: int = 10
    nonnegative = ("sweeps",)


@register_method
class CNNH(Method):
    name = "cnnh"
    family = "symmetric"
    activation = "none"
    Config = CNNHConfig
    DEFAULTS = MethodDefaults("adam", 1e-5, 0.0, batch_size=128, epochs=150)

    def __init__(self, bits, n_class, num_train, config=None):
        super().__init__(bits, n_class, num_train, config)
        self.register_buffer("H", torch.zeros(num_train, bits))  # (n, bits) target codes
        self.register_buffer("prepared", torch.zeros((), dtype=torch.bool))
        self.stage_one_errors: List[float] = []

    @classmethod
    def table_note(cls, config: CNNHConfig, run: Mapping[str, Any], given: Mapping[str, Any],
                   n_train: int, wall_record: str) -> Optional[str]:
        return (f"{cls.name}: stage 1 with {config.sweeps} coordinate-descent sweeps over the {n_train} training "
                f"images (cost n^2 x bits each), then {run.get('epochs')} epochs of stage 2; its train s counts "
                f"stage 2 only ({wall_record}'s train_wall_seconds holds both)")

    def prepare(self, train_labels: Tensor, generator: Optional[torch.Generator] = None) -> None:
        """Stage 1 on the (n, C) training labels; skipped when H was restored by load_state_tensors."""
        if bool(self.prepared):
            return
        if tuple(train_labels.shape) != (self.num_train, self.n_class):
            raise ConfigError(f"cnnh: train_labels must be ({self.num_train}, {self.n_class}), "
                              f"got {tuple(train_labels.shape)}")
        y = train_labels.to(self.H.device, torch.float32)
        S = 2 * pairwise_similarity(y, y).float() - 1  # (n, n) in {-1, 1}
        H, self.stage_one_errors = cnnh_stage_one(S, self.bits, self.config.sweeps, generator)
        self.H.copy_(torch.where(H >= 0, 1.0, -1.0))
        self.prepared.fill_(True)

    def loss(self, h: Tensor, y: Tensor, index: Tensor, *, gathered=None) -> Tensor:
        index = self.check_batch(h, y, index)
        if not bool(self.prepared):
            raise ConfigError("cnnh: call prepare(train_labels) before training (stage 1 codes)")
        h = promote(h)
        return cnnh_loss(h, self.H[index.to(self.H.device)].to(h.device))
