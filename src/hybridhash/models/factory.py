"""Building models by name: preset configs, ``create_model``, and loading saved checkpoints.

timm's split: the architecture file (:mod:`.hybridhash`) defines the network and registers its
presets; this module depends on it and on :mod:`.weights`, never the reverse.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from ..errors import CheckpointError, CheckpointMismatchError, ConfigError, one_line
from .hybridhash import HybridHash, HybridHashConfig
from .registry import preset_kwargs
from .weights import (
    CONFIG_NAME, WEIGHTS_NAME, PathLike, fingerprint_state_dict, load_checked, load_nest_weights, read_config, read_state_dict,
)

__all__ = ["build_config", "create_model", "from_pretrained"]


def build_config(name: str, bits: int = 64, **overrides: Any) -> HybridHashConfig:
    """The config of preset ``name`` with ``bits`` and keyword ``overrides`` applied."""
    kwargs = preset_kwargs(name)
    kwargs.update(overrides)
    names = {f.name for f in dataclasses.fields(HybridHashConfig)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ConfigError(f"unknown model options {unknown}; valid: {', '.join(sorted(names - {'preset'}))}")
    return HybridHashConfig(preset=name, bits=bits, **kwargs)


def create_model(name: str = "hybridhash_base", bits: int = 64, pretrained: Optional[str] = None,
                 **overrides: Any) -> HybridHash:
    """Build a registered preset.

    Args:
        name: a name from :func:`list_models`.
        bits: code length, a multiple of 8 from 8 to 256 (:func:`hybridhash.codes.check_bits`).
        pretrained: None; ``"imagenet"`` for timm's ImageNet NesT weights of the preset; or a path to
            a NesT state dict (.safetensors, or .pth read with ``weights_only=True``).
        overrides: any :class:`HybridHashConfig` field (embed_dims, num_heads, depths, img_size,
            patch_size, drop_path_rate, global_tokens, ...).
    """
    model = HybridHash(build_config(name, bits, **overrides))
    if pretrained:
        model.load_report = load_nest_weights(model, pretrained)
    return model


def from_pretrained(path: PathLike, *, bits: Optional[int] = None, preset: Optional[str] = None,
                    map_location: str = "cpu") -> HybridHash:
    """Load a model saved with :func:`~.weights.save_pretrained` (``HybridHash.save_pretrained``).

    ``path`` is the directory (or its ``model.safetensors``). ``bits``/``preset``, when given, must
    match the checkpoint, else CheckpointMismatchError names both.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    meta = read_config(path)
    weights = (path if path.is_dir() else path.parent) / WEIGHTS_NAME
    cfg_path = weights.with_name(CONFIG_NAME)
    try:  # checked before the model is built, so an absurd size never allocates anything
        if not isinstance(meta["config"], dict):
            raise ConfigError(f"config is a {type(meta['config']).__name__}, not an object")
        cfg = HybridHashConfig.from_dict(meta["config"])
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{cfg_path}: not a usable model config: {one_line(err)}") from None
    if bits is not None and cfg.bits != bits:
        raise CheckpointMismatchError(f"{path} makes {cfg.bits}-bit codes, {bits} bits were asked for")
    if preset is not None and cfg.preset != preset:
        raise CheckpointMismatchError(f"{path} is a {cfg.preset} checkpoint, {preset} was asked for")
    model = HybridHash(cfg)
    state = read_state_dict(weights)
    load_checked(model, state, str(path))
    model.fingerprint = meta.get("fingerprint") or fingerprint_state_dict(state)
    model.checkpoint_meta = meta
    return model.to(map_location)
