"""A fitted training-free baseline (``lsh``, ``pcah``, ``itq``, ``sh``) as an ordinary hashing network.

``ShallowHashModel`` (arch ``"shallow"``) = a feature network + a :class:`ShallowHead` holding the
baseline's fitted tensors as buffers, so its checkpoint is a ``config.json`` and a
``model.safetensors`` like every model's, and evaluation, encoding, search, serving and the ONNX
export use it unchanged. The feature network is one of:

- :class:`Pixels` (arch ``"pixels"``): the image resized to ``img_size``, values in [0, 1],
  flattened to (B, 3 * img_size^2), the raw-pixel features of the baselines' papers (docs/baselines.md);
- :class:`PreHash` around any network of the registry (HybridHash, a timm backbone, the small
  CNN): its pre-hash features, ``forward_features`` globally average-pooled where it is a map
  (HybridHash's (B, D, b, b)), with the hash head dropped (its weights are not saved).

The head's output h (B, bits) float32 has exactly the signs of the baseline's codes under the
project's sign rule (``>= 0`` is +1): the scores are computed in float64 by the same
``ShallowHash.score`` the fit uses, then SH's exact zeros (a -1 bit, ``> 0`` rule) and values too
small for float32 are moved off zero on their own side.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..configs import from_json_dict, to_json_dict
from ..errors import CheckpointError, ConfigError, HybridHashError, one_line
from ..limits import MAX_IMG_SIZE
from ..methods.shallow import ShallowHash, load_shallow, shallow_class
from .backbone import INTERPOLATIONS, BackboneConfig, BackboneHash, _is_int, make_preprocess
from .base import HashNetMixin
from .cnn import CnnConfig, CnnHash
from .hybridhash import HybridHash, HybridHashConfig
from .weights import LoadReport

__all__ = ["PixelsConfig", "Pixels", "PreHash", "ShallowConfig", "ShallowHead", "ShallowHashModel",
           "feature_module", "features_record"]

# smallest float32 magnitude h takes: a float64 score below it keeps its sign (float32 would make it 0)
TINY = 1e-30


@dataclass
class PixelsConfig:
    """Raw pixels as features: images resized to ``img_size`` (bilinear by default), RGB in [0, 1]."""

    arch: str = "pixels"
    img_size: int = 32
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.arch != "pixels":
            raise ConfigError(f"arch must be 'pixels' for raw-pixel features, got {self.arch!r}")
        if not _is_int(self.img_size) or not 1 <= self.img_size <= MAX_IMG_SIZE:
            raise ConfigError(f"pixels: img_size must be a whole number of pixels from 1 to {MAX_IMG_SIZE}, "
                              f"got {self.img_size!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"pixels: interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                              f"got {self.interpolation!r}")

    preset = "pixels"
    in_chans = 3

    @property
    def preprocess(self) -> Dict[str, Any]:
        # mean 0, std 1: the network sees the pixel values themselves, in [0, 1]
        return make_preprocess(self.img_size, 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), self.interpolation, 3)

    def to_dict(self) -> Dict[str, Any]:
        return to_json_dict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PixelsConfig":
        return from_json_dict(cls, d, "pixels options")


class Pixels(nn.Module):
    """(B, 3, S, S) images in [0, 1] -> (B, 3 * S * S) features (channel-major flattening)."""

    def __init__(self, config: Optional[PixelsConfig] = None):
        super().__init__()
        self.config = config or PixelsConfig()
        self.n_features = 3 * self.config.img_size ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _hash_layer_width(net: nn.Module) -> Optional[int]:
    """The width of the features a network's hash layer reads, None if it has no such layer."""
    layer = getattr(getattr(net, "hash_head", None), "to_bits", None)
    return getattr(layer, "in_features", None) or getattr(layer, "in_channels", None)


class PreHash(nn.Module):
    """A registry network's pre-hash features: ``net.forward_features(x)``, a (B, D, h, w) map
    averaged over h and w, so (B, D). The network's hash head is dropped."""

    def __init__(self, net: nn.Module):
        super().__init__()
        width = _hash_layer_width(net)
        if width is None or not callable(getattr(net, "forward_features", None)):
            raise ConfigError(f"{type(net).__name__} has no pre-hash features (no forward_features before a hash "
                              f"layer); fit the baseline on --model pixels, a timm backbone or a trained checkpoint")
        net.hash_head = nn.Identity()  # never run: its weights would only weigh down the checkpoint
        self.net = net
        self.config = net.config
        self.n_features = int(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.forward_features(x)
        return f.mean((2, 3)) if f.dim() == 4 else f


# the feature networks a baseline can be fitted on: config.json "arch" -> (config class, network)
FEATURE_ARCHS = {"pixels": (PixelsConfig, Pixels), "hybridhash": (HybridHashConfig, HybridHash),
                 "timm": (BackboneConfig, BackboneHash), "cnn": (CnnConfig, CnnHash)}


def features_record(module: nn.Module) -> Dict[str, Any]:
    """{"arch", "config"} of a :class:`Pixels` or :class:`PreHash` module (what config.json keeps)."""
    return {"arch": getattr(module.config, "arch", "hybridhash"), "config": module.config.to_dict()}


def feature_module(record: Dict[str, Any]) -> nn.Module:
    """The (randomly initialised) feature network of a :func:`features_record`; ConfigError otherwise."""
    if not isinstance(record, dict) or sorted(record) != ["arch", "config"]:
        raise ConfigError("shallow model: features must be an object with arch and config")
    arch = record["arch"]
    if not isinstance(arch, str) or arch not in FEATURE_ARCHS:
        raise ConfigError(f"shallow model: features arch {arch!r} is not one of {', '.join(FEATURE_ARCHS)}")
    if not isinstance(record["config"], dict):
        raise ConfigError("shallow model: the features' config must be an object")
    cfg_cls, net = FEATURE_ARCHS[arch]
    try:
        cfg = cfg_cls.from_dict(record["config"])
    except TypeError as err:
        raise ConfigError(f"shallow model features: {one_line(err)}") from None
    return Pixels(cfg) if arch == "pixels" else PreHash(net(cfg))


@dataclass
class ShallowConfig:
    """A fitted baseline on a feature network: ``features`` ({"arch", "config"}) and ``baseline``
    (``ShallowHash.config()`` of the fit: name, bits, seed, n_features, options)."""

    arch: str = "shallow"
    bits: int = 64
    features: Dict[str, Any] = field(default_factory=lambda: {"arch": "pixels", "config": PixelsConfig().to_dict()})
    baseline: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch != "shallow":
            raise ConfigError(f"arch must be 'shallow' for a fitted baseline, got {self.arch!r}")
        if not isinstance(self.baseline, dict) or not isinstance(self.baseline.get("name"), str):
            raise ConfigError("shallow model: baseline must be the fitted baseline's config (with its name)")
        shallow_class(self.baseline["name"])
        if self.baseline.get("bits") != self.bits:
            raise ConfigError(f"shallow model: bits {self.bits!r} differ from the baseline's {self.baseline.get('bits')!r}")
        if not isinstance(self.features, dict) or not isinstance(self.features.get("config"), dict):
            raise ConfigError("shallow model: features must be an object with arch and config")
        self._features = FEATURE_ARCHS.get(self.features.get("arch"), (None,))[0]
        if self._features is None:
            raise ConfigError(f"shallow model: features arch {self.features.get('arch')!r} is not one of "
                              f"{', '.join(FEATURE_ARCHS)}")
        self._features = self._features.from_dict(dict(self.features["config"]))

    @property
    def feature_config(self):
        return self._features

    @property
    def preset(self) -> str:
        """E.g. ``itq-pixels``, ``pcah-resnet50``: the baseline and the features' preset."""
        return f"{self.baseline['name']}-{self._features.preset}"

    @property
    def img_size(self) -> int:
        return self._features.img_size

    @property
    def in_chans(self) -> int:
        return self._features.in_chans

    @property
    def preprocess(self) -> Dict[str, Any]:
        return self._features.preprocess

    def to_dict(self) -> Dict[str, Any]:
        return {"arch": self.arch, "bits": self.bits, "features": self.features, "baseline": self.baseline}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ShallowConfig":
        return from_json_dict(cls, d, "shallow model options")


class ShallowHead(nn.Module):
    """The fitted tensors of baseline ``config`` (a fitted ``ShallowHash.config()``) as buffers.

    ``forward(features (B, n_features)) -> h (B, bits) float32`` whose signs (``>= 0`` is +1) are the
    baseline's codes. The buffers stay float64 whatever ``.float()`` or ``.half()`` asks: the codes
    must equal the fit's bit for bit, and these tensors are small (O(d * bits))."""

    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        cls = shallow_class(config.get("name"))
        options = config.get("options")
        unfitted = cls(config.get("bits"), config.get("seed", 0),
                       cls.Config.from_dict(dict(options) if isinstance(options, dict) else {}, cls.name))
        if config.get("n_features") is None:
            raise ConfigError(f"{cls.name}: a shallow head needs a fitted baseline (n_features is unset)")
        d = unfitted.check_width(config["n_features"])
        self.kind, self.config = cls, dict(config)
        self.keys = list(unfitted.state_shapes(d))
        for key, (shape, dtype) in unfitted.state_shapes(d).items():
            self.register_buffer(key, torch.zeros(shape, dtype=dtype))

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.keys}

    def baseline(self) -> ShallowHash:
        """The fitted ``ShallowHash`` these buffers hold (their values checked as a checkpoint's)."""
        return load_shallow(self.config, {k: v.detach().cpu() for k, v in self.tensors().items()})

    def _apply(self, fn, recurse: bool = True):
        # moves go through (the device fn gives), dtype changes do not: see the class doc
        for key, buf in self._buffers.items():
            if buf is not None:
                self._buffers[key] = buf.to(fn(buf[..., :0]).device)
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        s = self.kind.score(self.tensors(), features.to(torch.float64))  # (B, bits) float64
        positive = s > 0 if self.kind.strict else s >= 0
        magnitude = s.abs().to(torch.float32).clamp_min(TINY)
        return torch.where(positive, magnitude, -magnitude)


class ShallowHashModel(HashNetMixin, nn.Module):
    """A fitted baseline on a feature network. ``forward(images (B, 3, S, S)) -> (B, bits)``: tanh of
    the head's h (``activate=True``) or h itself; both have the baseline's code signs."""

    def __init__(self, config: ShallowConfig):
        super().__init__()
        self.config = config
        self.features = feature_module(config.features)
        if self.features.n_features != config.baseline.get("n_features"):
            raise ConfigError(f"shallow model: the {config.feature_config.preset} features are "
                              f"{self.features.n_features} wide, the baseline was fitted on "
                              f"{config.baseline.get('n_features')!r}")
        self.head = ShallowHead(config.baseline)
        self.fingerprint: Optional[str] = None  # of the checkpoint it was loaded from
        self.checkpoint_meta: Dict[str, Any] = {}  # that checkpoint's config.json
        self.load_report: Optional[LoadReport] = None

    @classmethod
    def from_fit(cls, features: nn.Module, baseline: ShallowHash) -> "ShallowHashModel":
        """The model of ``baseline`` fitted on the outputs of ``features`` (a :class:`Pixels` or
        :class:`PreHash`, whose weights are taken over)."""
        config = ShallowConfig(bits=baseline.bits, features=features_record(features), baseline=baseline.config())
        with torch.device("meta"):  # the feature network is replaced by the given one just below
            model = cls(config)
        model.features = features
        model.head = ShallowHead(config.baseline)
        with torch.no_grad():
            for k, v in baseline.state_tensors().items():
                getattr(model.head, k).copy_(v)
        return model

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        try:
            self.head.baseline()  # values a safetensors file may hold but no fit gives (SH's modes)
        except HybridHashError as err:
            raise CheckpointError(f"shallow model weights: {one_line(err)}") from None
        return out

    def baseline(self) -> ShallowHash:
        """The fitted baseline (a ``ShallowHash`` whose ``encode`` takes the features)."""
        return self.head.baseline()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> the features the baseline was fitted on (B, n_features) float32."""
        return self.features(x)

    def forward(self, x: torch.Tensor, activate: bool = True) -> torch.Tensor:
        h = self.head(self.features(x))  # (B, bits) float32, never 0
        return torch.tanh(h) if activate else h
