"""The feature network a training-free baseline is fitted on, chosen by name (``train --model``):

- ``pixels``: raw pixels (:class:`~.shallow.Pixels`; option ``img_size``, ``interpolation``);
- a checkpoint directory (``RUN/bits64/best``): that trained model's pre-hash features;
- any other model name (a preset, ``cnn_cpu``, a timm backbone such as ``resnet50``), with
  ``pretrained`` as :func:`~.factory.create_model` takes it (``"imagenet"`` downloads timm's
  weights on a user's machine): its pre-hash features.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch import nn

from ..errors import ConfigError
from .factory import create_model, from_pretrained
from .shallow import Pixels, PixelsConfig, PreHash
from .weights import CONFIG_NAME

__all__ = ["PIXELS", "feature_network", "is_checkpoint_dir"]

PIXELS = "pixels"


def is_checkpoint_dir(name: str) -> bool:
    """Whether ``name`` is a directory holding a project checkpoint's config.json."""
    return isinstance(name, str) and (Path(name) / CONFIG_NAME).is_file()


def feature_network(name: str, pretrained: Optional[str] = None, **overrides: Any) -> nn.Module:
    """A :class:`Pixels` or :class:`PreHash` module in eval mode; ``forward(images) -> (B, d)``
    float32 and ``n_features`` = d. One-line ConfigError for options that do not apply, and for a
    network without pre-hash features (a fitted baseline's own checkpoint)."""
    if name == PIXELS:
        if pretrained:
            raise ConfigError("--pretrained: pixels are their own features and have no weights; drop --pretrained")
        net: nn.Module = Pixels(PixelsConfig.from_dict(dict(overrides)))
    elif is_checkpoint_dir(name):
        if pretrained or overrides:
            raise ConfigError(f"--model {name} is a trained checkpoint: its weights and options are its own; drop "
                              f"--pretrained and --model-overrides")
        net = PreHash(from_pretrained(name))
    else:
        net = PreHash(create_model(name, bits=64, pretrained=pretrained, **overrides))
    return net.eval()
