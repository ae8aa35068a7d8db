"""Augmentation of whole batches of preprocessed tensors (for data sets cached in memory).

Per-image PIL transforms cost more than the forward pass of a small model on tiny images; these
act on the batch tensor at once and draw from an explicit generator, so a run is reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BatchAugment:
    """Random translation by up to ``shift`` pixels (edges replicated) and optional horizontal flips.

    ``__call__(x (B, C, H, W), generator) -> (B, C, H, W)``: each image gets its own offset.
    """

    shift: int = 0
    hflip: bool = False

    @property
    def active(self) -> bool:
        return self.shift > 0 or self.hflip

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        B, C, H, W = x.shape
        if self.shift > 0:
            s = self.shift
            padded = F.pad(x, (s, s, s, s), mode="replicate")  # (B, C, H + 2s, W + 2s)
            dy = torch.randint(0, 2 * s + 1, (B,), generator=generator)
            dx = torch.randint(0, 2 * s + 1, (B,), generator=generator)
            rows = (dy[:, None] + torch.arange(H))[:, None, :, None]  # (B, 1, H, 1)
            cols = (dx[:, None] + torch.arange(W))[:, None, None, :]  # (B, 1, 1, W)
            b = torch.arange(B)[:, None, None, None]
            c = torch.arange(C)[None, :, None, None]
            idx = [t.to(x.device) for t in (b, c, rows, cols)]
            x = padded[idx[0], idx[1], idx[2], idx[3]]  # (B, C, H, W)
        if self.hflip:
            flip = torch.rand(B, generator=generator) < 0.5
            x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
        return x
