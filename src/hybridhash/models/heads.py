"""A hashing method's own head in place of the layer of a model that makes the bits, and its record
in a checkpoint's config.json, so that a saved model is rebuilt with it.

Every network here ends in ``hash_head.to_bits``: a linear layer on pooled features (B, F) -> (B, bits)
(timm backbones, the small CNN) or a 1x1 convolution on a feature map (B, F, h, w) -> (B, bits, h, w)
(HybridHash, whose head then averages over positions). A method's ``make_head(F)`` (cibhash's
two-layer encoder) is a module (B, F) -> (B, bits); on a feature map it is applied at each position,
as the convolution it replaces is. The record is ``{"method", "in_features", "config"}``: the
method's registry name and hyper-parameters rebuild the same head through the methods registry.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["MethodHead", "attach_method_head", "rebuild_head"]


class MethodHead(nn.Module):
    """``head`` (B, F) -> (B, bits) in the place of ``to_bits``; ``spatial``: the input is a map
    (B, F, h, w) and the output (B, bits, h, w), the head applied at each of the h x w positions."""

    def __init__(self, head: nn.Module, spatial: bool):
        super().__init__()
        self.head = head
        self.spatial = spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spatial:
            return self.head(x)
        B, F, h, w = x.shape
        y = self.head(x.permute(0, 2, 3, 1).reshape(B * h * w, F))  # (B h w, bits)
        return y.reshape(B, h, w, -1).permute(0, 3, 1, 2)


def _bits_layer(model: nn.Module) -> nn.Module:
    head = getattr(model, "hash_head", None)
    layer = getattr(head, "to_bits", None)
    if layer is None:
        raise ConfigError(f"{type(model).__name__} has no hash_head.to_bits layer for a method's head to replace")
    return layer


def _in_features(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels
    raise ConfigError(f"hash_head.to_bits is a {type(layer).__name__}; a method's head replaces a Linear or a "
                      "1x1 Conv2d")


def attach_method_head(model: nn.Module, method: str, config: Optional[Dict[str, Any]] = None) -> bool:
    """Put the head that method ``method`` with hyper-parameters ``config`` makes (``make_head``) in
    place of ``model.hash_head.to_bits`` and note its record on the model (``model.method_head``).

    Returns False, leaving the model as it is, when the method keeps the model's layer. The head is
    initialised from the current torch seed (on the model's device: the meta device builds a skeleton).
    """
    from ..methods import create_method  # models may use methods; methods never use models

    config = dict(config or {})
    layer = _bits_layer(model)
    features = _in_features(layer)
    try:
        device = next(layer.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    made = create_method(method, model.bits, 1, 1, **config)
    with torch.device(device):
        head = made.make_head(features)
    if head is None:
        return False
    from .cpu_gemm import adopt

    model.hash_head.to_bits = MethodHead(adopt(head), spatial=isinstance(layer, nn.Conv2d))
    model.method_head = {"method": method, "in_features": features, "config": config}
    return True


def rebuild_head(model: nn.Module, record: Any) -> None:
    """Attach the head a config.json ``record`` describes to a freshly built ``model`` (ConfigError,
    one line, for a record that does not describe one of this model)."""
    if record is None:
        return
    if not isinstance(record, dict) or not isinstance(record.get("method"), str) \
            or not isinstance(record.get("config", {}), dict):
        raise ConfigError("head must be an object {\"method\": name, \"in_features\": F, \"config\": {...}}")
    features = _in_features(_bits_layer(model))
    if record.get("in_features") != features:
        raise ConfigError(f"head takes {record.get('in_features')!r} features, the model gives {features}")
    if not attach_method_head(model, record["method"], record.get("config", {})):
        raise ConfigError(f"head: method {record['method']} makes no head of its own")
