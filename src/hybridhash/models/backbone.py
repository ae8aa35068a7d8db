"""Any timm backbone as a hashing network: pooled features -> one linear hash layer.

``BackboneHash`` wraps ``timm.create_model(name, num_classes=0)`` (which returns pooled features
(B, F)) and adds ``hash_head.to_bits`` = Linear(F, bits), so the methods of the field can be
compared on ResNets, ViTs, ConvNeXts, ... with the same trainer, checkpoints and retrieval code as
HybridHash. The pieces shared with the other architectures live here too: the linear hash head (the
small CNN's, :mod:`.cnn`), the preprocessing dict and the checks of the fields every config has (a
config.json may come from anywhere), and loading foreign weights by name with a
:class:`~.weights.LoadReport`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

import torch
from timm.layers import trunc_normal_
from torch import nn

from ..codes import check_bits
from ..configs import from_json_dict, to_json_dict
from ..errors import CheckpointError, ConfigError
from ..limits import IMAGENET_MEAN, IMAGENET_STD, MAX_IMG_SIZE, MAX_RESIZE
from .base import HashNetMixin
from .cpu_gemm import adopt
from .weights import LoadReport, PathLike, _imagenet_state_dict, load_matching, read_state_dict

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # what hybridhash.data.transforms can resize with
UNKNOWN_MODEL = "unknown model {name!r}: not a hybridhash preset and not a timm model; see `hybridhash models`"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float: a NaN or an infinity in mean, std or an eps gives every image the same code."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def resize_edge(img_size: int, crop_pct: float) -> int:
    """The edge images are resized to before the centre crop to ``img_size``."""
    return int(math.floor(img_size / crop_pct + 0.5))


def make_preprocess(img_size: int, crop_pct: float, mean, std, interpolation: str, in_chans: int) -> Dict[str, Any]:
    """The ``preprocess`` dict of a model (see :mod:`hybridhash.data.transforms`)."""
    return {
        "img_size": img_size,
        "resize": resize_edge(img_size, crop_pct),
        "mean": list(mean),
        "std": list(std),
        "interpolation": interpolation,
        "in_chans": in_chans,
    }


def check_common(cfg: Any) -> None:
    """Raise ConfigError (one line) on the fields every model config has (code length, input and
    preprocessing, dropout rates); tuples made. A config.json may come from anywhere."""
    cfg.mean, cfg.std = tuple(cfg.mean), tuple(cfg.std)
    cfg.bits = check_bits(cfg.bits)
    if not _is_int(cfg.img_size) or not 1 <= cfg.img_size <= MAX_IMG_SIZE:
        raise ConfigError(f"img_size must be a whole number of pixels from 1 to {MAX_IMG_SIZE}, got {cfg.img_size!r}")
    if not _is_int(cfg.in_chans) or not 1 <= cfg.in_chans <= 16:
        raise ConfigError(f"in_chans must be a whole number from 1 to 16, got {cfg.in_chans!r}")
    if len(cfg.mean) != 3 or len(cfg.std) != 3 or not all(_is_number(v) for v in cfg.mean + cfg.std) \
            or min(cfg.std) <= 0:
        raise ConfigError(f"mean and std need 3 finite numbers each, std positive; got {list(cfg.mean)}, "
                          f"{list(cfg.std)}")
    if not _is_number(cfg.crop_pct) or not 0.1 <= cfg.crop_pct <= 2.0:
        raise ConfigError(f"crop_pct must be a number from 0.1 to 2, got {cfg.crop_pct!r}")
    resize = resize_edge(cfg.img_size, cfg.crop_pct)
    if resize > MAX_RESIZE:
        raise ConfigError(f"img_size {cfg.img_size} with crop_pct {cfg.crop_pct} resizes images to {resize} px, more "
                          f"than the limit of {MAX_RESIZE}; use a crop_pct of at least {cfg.img_size / MAX_RESIZE:.3g}")
    if cfg.interpolation not in INTERPOLATIONS:
        raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {cfg.interpolation!r}")
    for name in ("drop_rate", "drop_path_rate"):
        v = getattr(cfg, name, None)
        if v is not None and (not _is_number(v) or not 0.0 <= v < 1.0):
            raise ConfigError(f"{name} must be a number from 0 to below 1, got {v!r}")


# --------------------------------------------------------------------------------------------
# timm names

def is_timm_model(name: Any) -> bool:
    """Whether timm builds ``name`` (an architecture, optionally with a ``.tag``)."""
    import timm

    return isinstance(name, str) and bool(name) and timm.is_model(name)


def timm_defaults(name: str) -> Dict[str, Any]:
    """Input size and normalisation of timm's default pretrained weights for ``name``
    (ImageNet's 224 px, mean/std, crop 0.875, bicubic when timm lists none)."""
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(name)
    d = pcfg.to_dict() if pcfg is not None else {}
    interpolation = d.get("interpolation") or "bicubic"
    return {
        "img_size": int(d.get("input_size", (3, 224, 224))[-1]),
        "mean": tuple(float(v) for v in d.get("mean", IMAGENET_MEAN)),
        "std": tuple(float(v) for v in d.get("std", IMAGENET_STD)),
        "crop_pct": float(d.get("crop_pct") or 0.875),
        # timm also knows "random" etc.; anything the pipelines do not offer resizes bicubically
        "interpolation": interpolation if interpolation in INTERPOLATIONS else "bicubic",
        "fixed_input_size": bool(d.get("fixed_input_size", False)),
    }


# --------------------------------------------------------------------------------------------
# config

@dataclass
class BackboneConfig:
    """A timm backbone with a linear hash layer, and the preprocessing it expects.

    ``img_size`` is what images are cropped to; models with a fixed input size (ViTs) are also built
    for it. ``pretrained_source`` names the timm weights ``pretrained="imagenet"`` loads (default:
    ``backbone`` itself, i.e. timm's default tag).
    """

    arch: str = "timm"
    backbone: str = "resnet50"
    bits: int = 64
    img_size: int = 224
    in_chans: int = 3
    drop_rate: float = 0.0
    drop_path_rate: Optional[float] = None  # None: timm's default for the model
    fixed_input_size: bool = False  # from timm: the network is built for img_size
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    pretrained_source: Optional[str] = None

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def for_timm(cls, name: str, bits: int = 64, **overrides: Any) -> "BackboneConfig":
        """The config of timm model ``name``: its pretrained weights' preprocessing, then ``overrides``."""
        if not is_timm_model(name):
            raise ConfigError(UNKNOWN_MODEL.format(name=name))
        names = {f.name for f in dataclasses.fields(cls)} - {"arch", "backbone", "bits", "fixed_input_size"}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown model options {unknown} for timm model {name!r}; "
                              f"valid: {', '.join(sorted(names))}")
        return cls(backbone=name, bits=bits, **{**timm_defaults(name), **overrides})

    @property
    def preset(self) -> str:
        """The name the model was made by (what checkpoints and collections record)."""
        return self.backbone

    @property
    def preprocess(self) -> Dict[str, Any]:
        return make_preprocess(self.img_size, self.crop_pct, self.mean, self.std, self.interpolation, self.in_chans)

    def timm_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of ``timm.create_model`` besides the name and ``num_classes``."""
        kw: Dict[str, Any] = {"in_chans": self.in_chans, "drop_rate": self.drop_rate}
        if self.drop_path_rate is not None:
            kw["drop_path_rate"] = self.drop_path_rate
        if self.fixed_input_size:
            kw["img_size"] = self.img_size
        return kw

    def validate(self) -> None:
        if self.arch != "timm":
            raise ConfigError(f"arch must be 'timm' for a timm backbone, got {self.arch!r}")
        if not is_timm_model(self.backbone):
            raise ConfigError(UNKNOWN_MODEL.format(name=self.backbone))
        if self.pretrained_source is not None and not isinstance(self.pretrained_source, str):
            raise ConfigError(f"pretrained_source must be a timm model name, got {self.pretrained_source!r}")
        if not isinstance(self.fixed_input_size, bool):
            raise ConfigError(f"fixed_input_size must be true or false, got {self.fixed_input_size!r}")
        check_common(self)

    def to_dict(self) -> Dict[str, Any]:
        return to_json_dict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BackboneConfig":
        return from_json_dict(cls, d, "model options")


# --------------------------------------------------------------------------------------------
# the network

class LinearHashHead(nn.Module):
    """Pooled features (B, F) -> tanh codes (B, bits), or the raw outputs with ``activate=False``."""

    def __init__(self, features: int, bits: int):
        super().__init__()
        self.to_bits = nn.Linear(features, bits)
        trunc_normal_(self.to_bits.weight, std=0.02, a=-2.0, b=2.0)
        nn.init.zeros_(self.to_bits.bias)

    def forward(self, x: torch.Tensor, activate: bool = True) -> torch.Tensor:
        x = self.to_bits(x)  # (B, bits)
        return torch.tanh(x) if activate else x


class BackboneHash(HashNetMixin, nn.Module):
    """A timm backbone and a linear hash layer. ``forward(images (B, C, H, W)) -> (B, bits)`` tanh outputs."""

    def __init__(self, config: Optional[BackboneConfig] = None, **kwargs: Any):
        import timm

        super().__init__()
        if config is None:
            config = BackboneConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        self.config = config
        try:
            self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, **config.timm_kwargs())
        except TypeError as err:  # an option this architecture's constructor does not take
            raise ConfigError(f"timm model {config.backbone!r} does not take these options: {err}") from None
        patch = getattr(getattr(self.backbone, "patch_embed", None), "patch_size", None)
        if config.fixed_input_size and patch and (config.img_size % patch[0] or config.img_size % patch[-1]):
            # timm would only say so at the first forward, as an AssertionError
            raise ConfigError(f"img_size {config.img_size} is not a multiple of {config.backbone}'s patch size "
                              f"{patch[0]}")
        features = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.hash_head = LinearHashHead(features, config.bits)
        adopt(self)  # linears on oneDNN in CPU inference (cpu_gemm)
        # set by whoever loads weights into the model (hybridhash.models.factory)
        self.fingerprint: Optional[str] = None  # of the checkpoint it was loaded from
        self.checkpoint_meta: Dict[str, Any] = {}  # that checkpoint's config.json
        self.load_report: Optional[LoadReport] = None  # what pretrained weights filled

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        fn = getattr(self.backbone, "no_weight_decay", None)
        return {f"backbone.{n}" for n in fn()} if callable(fn) else set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        fn = getattr(self.backbone, "set_grad_checkpointing", None)
        if callable(fn):
            fn(enable)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> pooled features (B, F)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor, activate: bool = True) -> torch.Tensor:
        """(B, in_chans, H, W) -> tanh outputs (B, bits); raw hash-layer outputs with ``activate=False``."""
        return self.hash_head(self.forward_features(x), activate)


# --------------------------------------------------------------------------------------------
# foreign weights

def _resized_pos_embed(model: nn.Module, key: str, value: torch.Tensor, own: torch.Tensor) -> Optional[torch.Tensor]:
    """A ViT's absolute position embedding (1, prefix + g*g, D) resampled to the model's grid, or None."""
    from timm.layers import resample_abs_pos_embed

    backbone = getattr(model, "backbone", None)
    grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
    if not key.endswith("pos_embed") or value.dim() != 3 or own.dim() != 3 or value.shape[-1] != own.shape[-1] \
            or grid is None:
        return None
    prefix = 0 if getattr(backbone, "no_embed_class", False) else int(getattr(backbone, "num_prefix_tokens", 0))
    old = math.isqrt(value.shape[1] - prefix)
    if old * old != value.shape[1] - prefix:
        return None
    out = resample_abs_pos_embed(value.float(), new_size=list(grid), old_size=[old, old], num_prefix_tokens=prefix)
    return out if out.shape == own.shape else None


def load_timm_weights(model: BackboneHash, source: Union[PathLike, Dict[str, torch.Tensor]]) -> LoadReport:
    """Load timm weights into ``model.backbone``: ``"imagenet"`` (timm downloads those of
    ``config.pretrained_source`` or the backbone), a ``.safetensors``/``.pth`` file of a timm
    model's state dict (``.pth`` read weights-only), or a state dict."""
    cfg = model.config
    if isinstance(source, dict):
        state, name = source, "state dict"
    elif str(source) == "imagenet":
        src = cfg.pretrained_source or cfg.backbone
        kw = cfg.timm_kwargs()  # built like the backbone, so timm adapts e.g. position embeddings itself
        state, name = _imagenet_state_dict(src, **kw), f"timm:{src}"
    else:
        state, name = read_state_dict(source), str(source)
    return load_matching(model, state, name, prefix="backbone.",
                         resize=lambda key, value, own: _resized_pos_embed(model, key, value, own))


def no_imagenet(name: str) -> CheckpointError:
    return CheckpointError(f"{name} has no ImageNet weights; train it from scratch or pass a state-dict file")
