"""Floors to read a HybridHash figure against, computed on the same split from raw pixels.

- ``lsh_codes``: random-projection LSH (sign of Gaussian projections of centred pixel vectors), the
  training-free baseline of :mod:`hybridhash.methods.shallow` fitted on the training pixels.
- ``train_mlp_hash``: a one-hidden-layer MLP on the pixels trained with the same pairwise loss.

Small data such as digits is easy for small models; a floor shows how much of a figure is the
method and how much the data.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
from torch import nn

from ...codes import binarize
from ...methods.hybridhash import PairwiseLikelihoodLoss

FLOOR_BASELINE = "lsh"  # the training-free baseline the floor is


def pixel_vectors(dataset) -> np.ndarray:
    """Grey pixels of every image of a ``RetrievalSet`` in [0, 1]: float32 (N, H * W).

    All images must share one size (digits, CIFAR-10).
    """
    rows = [np.asarray(dataset.image(i).convert("L"), dtype=np.float32).ravel() / 255.0 for i in range(len(dataset))]
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def lsh_codes(train: np.ndarray, *sets: np.ndarray, bits: int, seed: int = 0) -> Tuple[np.ndarray, ...]:
    """Sign random projections: +-1 int8 codes (n, bits) of each of ``sets``, centred on ``train``'s mean."""
    from ...methods.shallow import make_shallow

    lsh = make_shallow(FLOOR_BASELINE, bits, seed=seed)
    x = torch.as_tensor(train, dtype=torch.float64)
    lsh.fit(lambda: iter((x,)), x.shape[1])
    return tuple(lsh.encode(torch.as_tensor(s, dtype=torch.float64)).numpy() for s in sets)


class MLPHash(nn.Module):
    """(B, D) pixels -> (B, bits) tanh outputs through one hidden ReLU layer."""

    def __init__(self, in_dim: int, bits: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x))  # (B, bits)


def train_mlp_hash(x: np.ndarray, labels: np.ndarray, bits: int, *, epochs: int = 100, batch_size: int = 32,
                   lr: float = 1e-3, weight_decay: float = 1e-4, hidden: int = 256, alpha: float = 0.5,
                   seed: int = 0) -> MLPHash:
    """Train :class:`MLPHash` on pixels ``x`` (N, D) with multi-hot ``labels`` (N, C) and the pairwise
    likelihood loss with its memory bank (AdamW, cosine decay). Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    X = torch.as_tensor(x, dtype=torch.float32)
    Y = torch.as_tensor(labels, dtype=torch.float32)
    model = MLPHash(X.shape[1], bits, hidden)
    loss_fn = PairwiseLikelihoodLoss(X.shape[0], bits, Y.shape[1], alpha=alpha)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * math.ceil(X.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(X.shape[0], generator=g)
        for i in range(0, X.shape[0], batch_size):
            idx = order[i:i + batch_size]
            loss = loss_fn(model(X[idx]), Y[idx], idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.inference_mode()
def mlp_codes(model: MLPHash, x: np.ndarray) -> np.ndarray:
    """+-1 int8 codes (N, bits) of pixels ``x`` (N, D)."""
    u = model(torch.as_tensor(x, dtype=torch.float32))
    return binarize(u).numpy()
