"""Building models by name: preset configs, ``create_model``, and loading saved checkpoints.

timm's split: the architecture file (:mod:`.hybridhash`) defines the network and registers its
presets; this module depends on it and on :mod:`.weights`, never the reverse.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..errors import CheckpointError, CheckpointMismatchError, ConfigError, one_line
from .backbone import UNKNOWN_MODEL, BackboneConfig, BackboneHash, is_timm_model, load_timm_weights, no_imagenet
from .cnn import CnnConfig, CnnHash
from .heads import rebuild_head
from .hybridhash import HybridHash, HybridHashConfig
from .shallow import ShallowConfig, ShallowHashModel
from .registry import arch_preset_kwargs, preset_arch, preset_kwargs
from .weights import (
    CONFIG_NAME, WEIGHTS_NAME, PathLike, check_finite, check_state_dict, load_matching,
    load_nest_weights, read_config, read_shapes, read_state_dict, weights_fingerprint,
)

__all__ = ["build_config", "config_from_dict", "create_model", "from_pretrained"]

_log = logging.getLogger(__name__)


ModelConfig = Union[HybridHashConfig, BackboneConfig, CnnConfig, ShallowConfig]
# config.json "arch" -> (config class, network); checkpoints without one are HybridHash's
ARCHS = {"hybridhash": (HybridHashConfig, HybridHash), "timm": (BackboneConfig, BackboneHash),
         "cnn": (CnnConfig, CnnHash), "shallow": (ShallowConfig, ShallowHashModel)}


def build_config(name: str, bits: int = 64, **overrides: Any) -> ModelConfig:
    """The config of ``name`` with ``bits`` and keyword ``overrides`` applied: a HybridHash preset,
    another registered preset (``cnn_cpu``), or any timm model name (a :class:`BackboneConfig`)."""
    arch = preset_arch(name)
    if arch is None:
        if not is_timm_model(name):
            raise ConfigError(UNKNOWN_MODEL.format(name=name))
        return BackboneConfig.for_timm(name, bits, **overrides)
    if arch == "cnn":
        return _checked_options(CnnConfig, name, bits, {**arch_preset_kwargs(name), **overrides})
    kwargs = preset_kwargs(name)
    kwargs.update(overrides)
    names = {f.name for f in dataclasses.fields(HybridHashConfig)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ConfigError(f"unknown model options {unknown}; valid: {', '.join(sorted(names - {'preset'}))}")
    return HybridHashConfig(preset=name, bits=bits, **kwargs)


def _checked_options(cls, name: str, bits: int, kwargs: dict):
    names = {f.name for f in dataclasses.fields(cls)} - {"arch", "preset", "bits"}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ConfigError(f"unknown model options {unknown}; valid: {', '.join(sorted(names))}")
    return cls(preset=name, bits=bits, **kwargs)


def build_model(config: ModelConfig) -> nn.Module:
    """The network of a config (randomly initialised)."""
    for cfg_cls, net in ARCHS.values():
        if isinstance(config, cfg_cls):
            return net(config)
    raise ConfigError(f"not a model config: {type(config).__name__}")


def create_model(name: str = "hybridhash_base", bits: int = 64, pretrained: Optional[str] = None,
                 **overrides: Any) -> nn.Module:
    """Build a registered preset or a timm backbone with a linear hash layer.

    Args:
        name: a preset from :func:`list_models` (``list_models(arch="*")`` lists the other
            architectures' too, ``cnn_cpu``), or any timm model name (``resnet50``, ``vit_base_patch16_224``, ...).
        bits: code length, a multiple of 8 from 8 to 256 (:func:`hybridhash.codes.check_bits`).
        pretrained: None; ``"imagenet"`` for timm's ImageNet weights (NesT for the HybridHash
            presets, the backbone's own for timm names); or a path to such a state dict
            (.safetensors, or .pth read with ``weights_only=True``). ``model.load_report`` then says
            what was loaded, dropped (the classifier) and left at init (the hash layer).
        overrides: any field of the model's config (:class:`HybridHashConfig`: embed_dims, depths,
            img_size, ...; :class:`BackboneConfig`: img_size, drop_path_rate, mean, std, crop_pct, ...).
    """
    model = build_model(build_config(name, bits, **overrides))
    if pretrained:
        if isinstance(model, HybridHash):
            model.load_report = load_nest_weights(model, pretrained)
        elif isinstance(model, BackboneHash):
            model.load_report = load_timm_weights(model, pretrained)
        elif str(pretrained) == "imagenet":
            raise no_imagenet(name)
        else:
            model.load_report = load_matching(model, read_state_dict(pretrained), str(pretrained))
    return model


def config_from_dict(d: Any, arch: Optional[str] = None) -> ModelConfig:
    """The config of a saved ``config.to_dict()``, of the architecture ``arch`` names (default: the
    dict's own ``"arch"``, HybridHash when it has none). ConfigError (one line) if it is not one."""
    if not isinstance(d, dict):
        raise ConfigError(f"config is a {type(d).__name__}, not an object")
    arch = d.get("arch", "hybridhash") if arch is None else arch
    if not isinstance(arch, str) or arch not in ARCHS:
        raise ConfigError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")
    try:
        return ARCHS[arch][0].from_dict(d)
    except TypeError as err:  # a field of the wrong JSON type, met before its own check
        raise ConfigError(str(err)) from None


def from_pretrained(path: PathLike, *, bits: Optional[int] = None, preset: Optional[str] = None,
                    map_location: str = "cpu") -> nn.Module:
    """Load a model saved with :func:`~.weights.save_pretrained` (``HybridHash.save_pretrained``).

    ``path`` is the directory (or its ``model.safetensors``). ``bits``/``preset``, when given, must
    match the checkpoint, else CheckpointMismatchError names both. The network is the one config.json's
    ``"arch"`` names (HybridHash when absent, as in checkpoints written before there were others).

    Nothing large is allocated before the config is known to describe the weights: the network is
    first built on the meta device and its tensor names and shapes compared with the weights file's
    header. Weights holding NaN or infinities are refused. ``model.fingerprint`` is computed from the
    weights themselves (:func:`~.weights.weights_fingerprint`), whatever config.json recorded.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    meta = read_config(path)
    weights = (path if path.is_dir() else path.parent) / WEIGHTS_NAME
    cfg_path = weights.with_name(CONFIG_NAME)
    try:  # checked before the model is built, so an absurd size never allocates anything
        arch = meta.get("arch", "hybridhash")
        cfg = config_from_dict(meta["config"], arch)
        net = ARCHS[arch][1]
        with torch.device("meta"):  # sizes only: no memory, no initialisation
            skeleton = net(cfg)
            rebuild_head(skeleton, meta.get("head"))  # a hashing method's own head (cibhash's)
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{cfg_path}: not a usable model config: {one_line(err)}") from None
    if bits is not None and cfg.bits != bits:
        raise CheckpointMismatchError(f"{path} makes {cfg.bits}-bit codes, {bits} bits were asked for")
    if preset is not None and cfg.preset != preset:
        raise CheckpointMismatchError(f"{path} is a {cfg.preset} checkpoint, {preset} was asked for")
    try:
        check_state_dict(skeleton, read_shapes(weights), str(weights))
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"{err}; {CONFIG_NAME} and {WEIGHTS_NAME} are not of the same model") from None
    state = read_state_dict(weights)
    check_finite(state, str(weights))  # before the network is built for real
    model = net(cfg)
    rebuild_head(model, meta.get("head"))
    model.load_state_dict(state, strict=True)  # names and shapes were checked on the skeleton
    model.fingerprint = weights_fingerprint(weights, state)
    recorded = meta.get("fingerprint")
    if recorded and recorded != model.fingerprint:
        _log.warning("%s records fingerprint %s, but its weights are %s (replaced since?); the weights' own is used",
                     cfg_path, recorded, model.fingerprint)
    model.checkpoint_meta = meta
    return model.to(map_location)
