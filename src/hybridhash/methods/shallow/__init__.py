"""Training-free hashing baselines, fitted in one or two passes over the features of the training
images (raw pixels, a backbone's pooled features, a trained model's pre-hash features):

- ``lsh``: sign random projections, centred on the training mean unless ``center=False``;
- ``pcah``: signs of the top principal components;
- ``itq``: PCA then the rotation of Iterative Quantization (50 iterations, 51 updates);
- ``sh``: Spectral Hashing's one-dimensional eigenfunctions along the principal directions.

    >>> from hybridhash.methods.shallow import make_shallow, load_shallow
    >>> itq = make_shallow("itq", bits=64, seed=0)
    >>> itq.fit(lambda: iter(train_batches), n_features=512, progress=True)   # (B, 512) tensors
    >>> codes = itq.encode(features)                   # int8 +-1 (B, 64)
    >>> save_file(itq.state_tensors(), "shallow.safetensors"); config = itq.config()  # JSON
    >>> same = load_shallow(config, load_file("shallow.safetensors"))   # same codes

Fitting is exact (the full covariance, not a sketch) and deterministic for a seed: the random
draws (LSH's W, ITQ's R_0) come from ``torch.Generator().manual_seed(seed)``, eigenvectors have a
fixed sign, and batches of any size give the same codes. Memory is O(d^2 + d * bits) floats for
the covariance methods (d at most ``limits.MAX_COVARIANCE_FEATURES``), plus O(n * bits) for ITQ's
projected training rows. Codes use the project's sign rule (+1 where the projection is >= 0),
except SH's (+1 where the eigenfunction is > 0, as its authors' code). Everything is fitted on the
training set only and applied unchanged to queries and database.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Type

from torch import Tensor

from ...errors import CheckpointError, ConfigError
from .base import ShallowHash
from .projections import ITQ, LSH, PCAH, initial_rotation, itq_rotation
from .spectral import SH, spectral_modes

__all__ = ["SHALLOW", "ShallowHash", "LSH", "PCAH", "ITQ", "SH", "make_shallow", "load_shallow",
           "shallow_class", "is_training_free", "initial_rotation", "itq_rotation", "spectral_modes"]

SHALLOW: Dict[str, Type[ShallowHash]] = {"lsh": LSH, "pcah": PCAH, "itq": ITQ, "sh": SH}


def shallow_class(name: str) -> Type[ShallowHash]:
    """The class of baseline ``name``; ConfigError listing the known ones otherwise."""
    if not isinstance(name, str) or name not in SHALLOW:
        raise ConfigError(f"unknown training-free baseline {name!r}; known: {', '.join(sorted(SHALLOW))}")
    return SHALLOW[name]


def is_training_free(name: str) -> bool:
    """Whether ``name`` is a training-free baseline (fitted by ``train`` instead of trained)."""
    return isinstance(name, str) and name in SHALLOW


def make_shallow(name: str, bits: int, seed: int = 0, **options: Any) -> ShallowHash:
    """An unfitted baseline ``name`` with ``bits`` bits, ``seed`` and its ``options`` (lsh:
    ``center``; itq: ``iterations``); an unknown name or option is a one-line ConfigError."""
    cls = shallow_class(name)
    return cls(bits, seed, cls.Config.from_dict(options, name))


def load_shallow(config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> ShallowHash:
    """The fitted baseline that ``config()`` and ``state_tensors()`` describe (both checked)."""
    if not isinstance(config, Mapping) or "name" not in config:
        raise CheckpointError("a training-free baseline's config needs its name")
    return shallow_class(config["name"]).from_state(config, tensors)
