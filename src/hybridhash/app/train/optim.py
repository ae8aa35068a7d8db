"""Optimiser and learning-rate schedule: parameter groups, RMSprop / AdamW / Adam, warm-up + cosine."""
from __future__ import annotations

import math
from typing import Any, Dict, List

import torch
from torch import nn

from ...errors import ConfigError
from .recipe import OPTIMIZERS


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based) of ``total``:
    linear warm-up over ``warmup`` steps, then constant or a cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Two groups: weights that decay, and biases, norms and position embeddings that do not."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config) -> torch.optim.Optimizer:
    """The optimiser ``config.optimizer`` names, over :func:`param_groups` of ``model``.

    ``config`` needs ``optimizer``, ``lr``, ``weight_decay`` and ``momentum`` (RMSprop only).
    """
    groups = param_groups(model, config.weight_decay)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, momentum=config.momentum or 0.0)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "adam":
        # weight decay as an L2 term of the gradient, as the methods that publish Adam use it
        return torch.optim.Adam(groups, lr=config.lr)
    raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")
