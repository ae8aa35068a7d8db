"""CSQ (Yuan et al., CVPR 2020): central similarity. Each class gets a hash center (Hadamard rows
when they exist, else balanced random codes far apart); codes are pulled to their center."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from scipy.linalg import hadamard
from torch import Tensor

from .base import InBatchMethod, MethodConfig, MethodDefaults
from .registry import register_method


def center_distances(centers: Tensor) -> Tuple[float, float]:
    """(min, mean) pairwise Hamming distance of +-1 centers (C, K); (K, K) when C < 2."""
    C, K = centers.shape
    if C < 2:
        return float(K), float(K)
    dist = (K - centers.double() @ centers.double().t()) / 2
    pairs = dist[torch.triu_indices(C, C, 1).unbind()]
    return float(pairs.min()), float(pairs.mean())


def hash_centers(n_class: int, bits: int, seed: int = 0, tries: int = 20) -> Tensor:
    """+-1 centers (C, K): the first C rows of [H_K; -H_K] (Sylvester Hadamard) when K is a power
    of two and C <= 2K; otherwise balanced random codes (exactly K/2 entries -1) redrawn from
    ``seed`` up to ``tries`` times until min distance > K/4 and mean >= K/2, keeping the best draw
    (largest minimum, then largest mean)."""
    if bits & (bits - 1) == 0 and n_class <= 2 * bits:
        H = torch.from_numpy(hadamard(bits)).float()
        return torch.cat([H, -H])[:n_class].contiguous()
    g = torch.Generator().manual_seed(seed)
    best, best_key = None, None
    for _ in range(tries):
        draw = torch.ones(n_class, bits)
        for c in range(n_class):
            draw[c, torch.randperm(bits, generator=g)[: bits // 2]] = -1
        lo, mean = center_distances(draw)
        if best_key is None or (lo, mean) > best_key:
            best, best_key = draw, (lo, mean)
        if lo > bits / 4 and mean >= bits / 2:
            break
    return best


def batch_centers(y: Tensor, centers: Tensor, fill: Tensor) -> Tensor:
    """Center of each sample (B, K): sign(y @ centers), its zeros taken from ``fill`` (K,)."""
    total = y @ centers.to(y.dtype)  # (B, K)
    return torch.where(total > 0, 1.0, torch.where(total < 0, -1.0, fill.to(y.dtype))).to(y.dtype)


def csq_loss(h: Tensor, c: Tensor, lam: float = 1e-4) -> Tensor:
    """h (B, K) raw outputs, c (B, K) +-1 centers: BCE((u + 1)/2, (c + 1)/2) + lam mean((|u| - 1)^2)
    with u = tanh(h). (u + 1)/2 = sigmoid(2h), so the BCE is taken on the logits 2h, which stays
    finite where tanh saturates."""
    u = torch.tanh(h)
    bce = F.binary_cross_entropy_with_logits(2 * h, (c.to(h.dtype) + 1) / 2)
    return bce + lam * (u.abs() - 1).pow(2).mean()


@dataclass
class CSQConfig(MethodConfig):
    """lam: weight of the quantization term; seed: of the random centers (pass the run's seed)
    and of the vector that breaks multi-label ties; tries: random draws at most."""

    lam: float = 1e-4
    seed: int = 0
    tries: int = 20
    nonnegative = ("lam",)
    positive = ("tries",)


@register_method
class CSQ(InBatchMethod):
    name = "csq"
    family = "central"
    activation = "tanh"
    Config = CSQConfig
    DEFAULTS = MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=64, epochs=150)
    uses_seed = True  # its random centers (when no Hadamard matrix fits) differ from seed to seed

    def __init__(self, bits, n_class, num_train, config=None):
        super().__init__(bits, n_class, num_train, config)
        self.register_buffer("centers", hash_centers(n_class, bits, self.config.seed, self.config.tries))  # (C, K)
        g = torch.Generator().manual_seed(self.config.seed + 1)
        self.register_buffer("fill", torch.randint(0, 2, (bits,), generator=g).float() * 2 - 1)  # (K,)

    @property
    def min_center_distance(self) -> float:
        return center_distances(self.centers)[0]

    @property
    def mean_center_distance(self) -> float:
        return center_distances(self.centers)[1]

    def facts(self) -> dict:
        low, mean = center_distances(self.centers)
        kind = "hadamard" if self.bits & (self.bits - 1) == 0 and self.n_class <= 2 * self.bits else "random"
        return {"centers": kind, "min_center_distance": low, "mean_center_distance": mean}

    def batch_loss(self, h: Tensor, y: Tensor) -> Tensor:
        c = batch_centers(y, self.centers.to(h.device), self.fill.to(h.device))
        return csq_loss(h, c, self.config.lam)
