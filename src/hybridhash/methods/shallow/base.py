"""``ShallowHash``, the base of the training-free baselines: settings, fitting over streamed
features, encoding, and the fitted tensors saved with a run and restored from it."""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, Iterator, Mapping, Optional, Tuple, Type, Union

import torch
from torch import Tensor

from ...codes import check_bits
from ...configs import Bounds
from ...errors import CheckpointError, CheckpointMismatchError, ConfigError
from ...limits import MAX_INT_OPTION
from ..base import MethodConfig
from .streams import FeatureStream, Progress, check_feature_count, check_features

__all__ = ["ShallowHash"]

SEED = Bounds(0, MAX_INT_OPTION, integer=True)
CONFIG_KEYS = ("name", "bits", "seed", "n_features", "options")


class ShallowHash:
    """A hashing function fitted in closed form (or a few passes) on training features, no training loop.

    Subclasses set ``name``, ``Config`` (their options, a :class:`MethodConfig`), ``covariance``
    (whether fitting needs the d x d covariance, which bounds d), ``bits_within_features`` (whether
    bits <= d is required), ``strict`` (whether a score of exactly 0 makes a -1 bit), and implement
    ``_fit``, ``score`` and ``state_shapes``.

    Args:
        bits: code length K (the project's rule: a multiple of 8 from 8 to 256).
        seed: seeds a ``torch.Generator`` for the method's random draws (same seed, same codes).
        options: an instance of the subclass's ``Config`` (defaults when None).

    Use: ``fit(batches, n_features)``, then ``encode(x)``; ``config()`` (JSON) and
    ``state_tensors()`` (safetensors) hold everything ``from_state`` needs to give the same codes.
    Fitting and encoding run on ``self.device`` (CPU unless moved with ``to``), in float64.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[Type[MethodConfig]] = MethodConfig
    covariance: ClassVar[bool] = True
    bits_within_features: ClassVar[bool] = False
    summary: ClassVar[str] = ""  # one sentence for `hybridhash methods`
    strict: ClassVar[bool] = False  # a bit is +1 where its score is > 0 (True, SH's rule) or >= 0 (the project's)

    def __init__(self, bits: int, seed: int = 0, options: Optional[MethodConfig] = None) -> None:
        self.bits = check_bits(bits, f"{self.name}: bits")
        SEED.check(f"{self.name}: seed", seed)
        self.seed = int(seed)
        self.options = options if options is not None else self.Config()
        self.n_features: Optional[int] = None
        self.n_train: Optional[int] = None  # rows the fit went over (not known after from_state)
        self.tensors: Dict[str, Tensor] = {}
        self.device = torch.device("cpu")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(bits={self.bits}, seed={self.seed}, {self.options}, "
                f"n_features={self.n_features})")

    # ------------------------------------------------------------------------------------ settings
    def config(self) -> Dict[str, Any]:
        """The settings as a JSON-ready dict: name, bits, seed, n_features (None before fitting), options."""
        return {"name": self.name, "bits": self.bits, "seed": self.seed, "n_features": self.n_features,
                "options": self.options.to_dict()}

    def facts(self) -> Dict[str, Any]:
        """What a run should record about the fit beyond its config (here the training rows)."""
        return {"n_train": self.n_train}

    def generator(self) -> torch.Generator:
        """A fresh CPU generator seeded with ``seed``; draws are moved to the device afterwards, so
        the codes do not depend on where the fit runs."""
        return torch.Generator().manual_seed(self.seed)

    def check_width(self, n_features: int) -> int:
        """``n_features`` checked for this method (a positive int; bounded when a covariance is
        needed; at least ``bits`` when ``bits_within_features``)."""
        d = check_feature_count(self.name, n_features, self.covariance)
        if self.bits_within_features and self.bits > d:
            raise ConfigError(f"{self.name}: {self.bits} bits need at least {self.bits} features, got {d} "
                              f"(choose bits <= {d}, or sh or lsh, which allow more bits than features)")
        return d

    def to(self, device: Union[str, torch.device]) -> "ShallowHash":
        """Fit and encode on ``device`` from now on (fitted tensors are moved); returns self."""
        self.device = torch.device(device)
        self.tensors = {k: v.to(self.device) for k, v in self.tensors.items()}
        return self

    # ------------------------------------------------------------------------------------ fitting
    def fit(self, batches: Callable[[], Iterator], n_features: int,
            progress: Union[None, bool, Progress] = None) -> "ShallowHash":
        """Fit on the training features; returns self.

        Args:
            batches: a callable returning a fresh iterator of (B, n_features) real tensors (or
                arrays) each time it is called, the same rows in the same order on every call; the
                fit takes one pass (lsh), or two (itq, sh) and never holds the whole set.
            n_features: d, the width of every batch.
            progress: None; True for tqdm bars; or a callable ``progress(stage, done, total)`` told
                after each batch (rows done, the pass's total or None while unknown) and each
                rotation update of itq.

        Raises ConfigError for settings that cannot work on d features, DataError for bad batches
        (named by their number), fewer than 2 rows, or passes that disagree in their rows.
        """
        d = self.check_width(n_features)
        stream = FeatureStream(self.name, batches, d, self.device, progress)
        try:
            tensors = self._fit(stream)
        finally:
            stream.close()
        self.n_features, self.n_train = d, stream.rows
        self.tensors = {k: v.contiguous() for k, v in tensors.items()}
        return self

    def _fit(self, stream: FeatureStream) -> Dict[str, Tensor]:
        """The fitted tensors (on the stream's device) from passes over ``stream``."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ encoding
    def encode(self, x) -> Tensor:
        """Features x (B, n_features), any real dtype -> int8 +-1 codes (B, bits) on ``self.device``.

        Computed in float64; a non-finite feature is refused (DataError naming its row).
        """
        if not self.tensors:
            raise ConfigError(f"{self.name}: not fitted; call fit(batches, n_features) or from_state(...) first")
        x = check_features(f"{self.name}: features to encode", x, self.n_features, self.device)
        return torch.where(self._positive(x), 1, -1).to(torch.int8)

    def _positive(self, x: Tensor) -> Tensor:
        """bool (B, bits): where the code bit is +1, for float64 features x (B, d)."""
        s = self.score(self.tensors, x)
        return s > 0 if self.strict else s >= 0

    @classmethod
    def score(cls, tensors: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """The real values (B, bits) float64 whose signs are the code bits (``strict``: > 0 is +1,
        else >= 0), for float64 features x (B, d) and the fitted ``tensors``. A classmethod so that
        a network holding the tensors as buffers computes exactly the same values."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ state
    def state_shapes(self, n_features: int) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
        """{state key: (shape, dtype)} of a fit on ``n_features`` features."""
        raise NotImplementedError

    def check_state(self) -> None:
        """Further checks of restored tensors (shapes and finiteness are already checked)."""

    def state_tensors(self) -> Dict[str, Tensor]:
        """The fitted tensors, CPU, contiguous and detached (``safetensors.torch.save_file``-ready)."""
        if not self.tensors:
            raise ConfigError(f"{self.name}: not fitted; nothing to save")
        return {k: v.detach().cpu().contiguous().clone() for k, v in self.tensors.items()}

    @classmethod
    def from_state(cls, config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> "ShallowHash":
        """A fitted instance from ``config()`` and ``state_tensors()`` of an earlier fit (read from a
        user's files: every key, shape and value is checked; CheckpointMismatchError otherwise)."""
        if not isinstance(config, Mapping) or sorted(config) != sorted(CONFIG_KEYS):
            got = sorted(config) if isinstance(config, Mapping) else type(config).__name__
            raise CheckpointError(f"{cls.name} config must have the keys {', '.join(CONFIG_KEYS)}; got {got}")
        if config["name"] != cls.name:
            raise CheckpointMismatchError(f"a {config['name']!r} config given to {cls.name}")
        options = config["options"]
        if not isinstance(options, Mapping):
            raise CheckpointError(f"{cls.name} config: options must be a mapping, got {type(options).__name__}")
        self = cls(config["bits"], config["seed"], cls.Config.from_dict(dict(options), cls.name))
        d = self.check_width(config["n_features"])
        expected = self.state_shapes(d)
        if set(tensors) != set(expected):
            missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
            raise CheckpointMismatchError(f"{cls.name} state: missing {missing}, unexpected {extra}")
        restored = {}
        for key, (shape, dtype) in expected.items():
            t = tensors[key]
            if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                raise CheckpointMismatchError(f"{cls.name} state {key} has shape {tuple(getattr(t, 'shape', ()))}, "
                                              f"expected {shape} ({self.bits} bits, {d} features)")
            if t.dtype.is_floating_point != dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
                raise CheckpointMismatchError(f"{cls.name} state {key} has dtype {t.dtype}, expected {dtype}")
            if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"{cls.name} state {key} holds non-finite values")
            restored[key] = t.detach().to("cpu", dtype).contiguous().clone()
        self.n_features, self.tensors = d, restored
        self.check_state()
        return self
