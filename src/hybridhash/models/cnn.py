"""A small CNN for 32 px images that trains from scratch on a CPU: a baseline network beside HybridHash.

Four stages of 3x3 conv-BN-ReLU (two convs in the middle stages, one in the first and last), 2x2 max pooling after
the first three, global average pooling, then the linear hash layer. At 32 px the feature maps are
32, 16, 8 and 4 px; ``cnn_cpu`` has widths (32, 64, 128, 256), about 0.58 M parameters.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..configs import from_json_dict, to_json_dict
from ..errors import ConfigError
from ..limits import MAX_CNN_WIDTH
from .backbone import LinearHashHead, _is_int, check_common, make_preprocess
from .base import HashNetMixin
from .cpu_gemm import adopt
from .registry import register_arch_preset
from .weights import LoadReport


@dataclass
class CnnConfig:
    """The small CNN and the preprocessing it expects."""

    arch: str = "cnn"
    preset: str = "cnn_cpu"
    bits: int = 64
    img_size: int = 32
    in_chans: int = 3
    widths: Tuple[int, ...] = (32, 64, 128, 256)
    drop_rate: float = 0.0  # dropout before the hash layer
    mean: Tuple[float, ...] = (0.5, 0.5, 0.5)
    std: Tuple[float, ...] = (0.5, 0.5, 0.5)
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    pretrained_source: Optional[str] = None  # no ImageNet weights

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        self.validate()

    @property
    def preprocess(self) -> Dict[str, Any]:
        return make_preprocess(self.img_size, self.crop_pct, self.mean, self.std, self.interpolation, self.in_chans)

    def validate(self) -> None:
        if self.arch != "cnn":
            raise ConfigError(f"arch must be 'cnn' for the small CNN, got {self.arch!r}")
        if not isinstance(self.preset, str):
            raise ConfigError(f"preset must be a name, got {self.preset!r}")
        if not 1 <= len(self.widths) <= 8 or not all(_is_int(w) and 1 <= w <= MAX_CNN_WIDTH for w in self.widths):
            raise ConfigError(f"widths must be 1 to 8 whole numbers from 1 to {MAX_CNN_WIDTH}, got {list(self.widths)}")
        if self.pretrained_source is not None:
            raise ConfigError("the small CNN has no ImageNet weights: pretrained_source must be null")
        check_common(self)

    def to_dict(self) -> Dict[str, Any]:
        return to_json_dict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CnnConfig":
        return from_json_dict(cls, d, "model options")


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class CnnHash(HashNetMixin, nn.Module):
    """The small CNN. ``forward(images (B, C, H, W)) -> (B, bits)`` tanh outputs; any H, W >= 1."""

    def __init__(self, config: Optional[CnnConfig] = None, **kwargs: Any):
        super().__init__()
        if config is None:
            config = CnnConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        self.config = cfg = config
        stages, c_in = [], cfg.in_chans
        for i, width in enumerate(cfg.widths):
            middle = 0 < i < len(cfg.widths) - 1
            layers = [_conv_bn_relu(c_in, width)] + ([_conv_bn_relu(width, width)] if middle else [])
            if i < len(cfg.widths) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: a 1 px map stays 1 px
            stages.append(nn.Sequential(*layers))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.hash_head = LinearHashHead(cfg.widths[-1], cfg.bits)
        adopt(self)  # linears on oneDNN in CPU inference (cpu_gemm)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He init for ReLU stacks trained from scratch
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.fingerprint: Optional[str] = None  # of the checkpoint it was loaded from
        self.checkpoint_meta: Dict[str, Any] = {}  # that checkpoint's config.json
        self.load_report: Optional[LoadReport] = None  # what pretrained weights filled

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> pooled features (B, widths[-1])."""
        return self.stages(x).mean((2, 3))

    def forward(self, x: torch.Tensor, activate: bool = True) -> torch.Tensor:
        """(B, in_chans, H, W) -> tanh outputs (B, bits); raw hash-layer outputs with ``activate=False``."""
        return self.hash_head(self.drop(self.forward_features(x)), activate)


@register_arch_preset("cnn")
def cnn_cpu() -> dict:
    """A 0.58 M-parameter CNN for 32x32 inputs, trained from scratch on a CPU (baselines on digits)."""
    return dict(img_size=32, widths=(32, 64, 128, 256), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0)
