"""Name -> method registry, timm-style: ``create_method("dsh", bits=64, n_class=10, num_train=5000)``."""
from __future__ import annotations

import fnmatch
from typing import Any, Dict, Type

from ..errors import ConfigError
from .base import FAMILIES, TRAINS_ON, Method, MethodDefaults, UnsupervisedMethod

__all__ = ["register_method", "list_methods", "create_method", "method_class", "method_defaults"]

_METHODS: Dict[str, Type[Method]] = {}


def register_method(cls: Type[Method]) -> Type[Method]:
    """Class decorator: make ``cls`` available to ``create_method(cls.name, ...)``."""
    if cls.family not in FAMILIES:
        raise ConfigError(f"method {cls.name!r} has family {cls.family!r}; expected one of {FAMILIES}")
    if cls.trains_on not in TRAINS_ON:
        raise ConfigError(f"method {cls.name!r} trains on {cls.trains_on!r}; expected one of {TRAINS_ON}")
    if (cls.trains_on != "labels") != issubclass(cls, UnsupervisedMethod):
        raise ConfigError(f"method {cls.name!r}: a method trains on labels exactly when it is not an "
                          "UnsupervisedMethod (whose loss takes no labels)")
    if (cls.trains_on == "views") != (cls.views is not None):
        raise ConfigError(f"method {cls.name!r}: a method that trains on views declares their augmentation "
                          "(``views``), and only such a method does")
    if cls.streams not in (1, 2) or not 0 <= cls.encode_stream < cls.streams:
        raise ConfigError(f"method {cls.name!r}: streams must be 1 or 2 and encode_stream one of them")
    if cls.streams > 1 and (cls.trains_on != "labels" or cls.takes_features):
        raise ConfigError(f"method {cls.name!r}: a two-network method trains on labels without features")
    _METHODS[cls.name] = cls
    return cls


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def method_class(name: str) -> Type[Method]:
    """The class registered as ``name`` (its hooks a trainer asks before building it)."""
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(list_methods())}")
    return _METHODS[name]


def create_method(name: str, bits: int, n_class: int, num_train: int, **hparams: Any) -> Method:
    """The method ``name`` with its published hyper-parameters, overridden by ``hparams``."""
    cls = method_class(name)
    return cls(bits, n_class, num_train, cls.Config.from_dict(hparams, name))


def method_defaults(name: str, **hparams: Any) -> MethodDefaults:
    """The published training settings of method ``name`` under ``hparams``, which are checked (a
    one-line error for an unknown name or a bad value) without building the method: no bank or
    learned codes are allocated, whatever sizes they name."""
    cls = method_class(name)
    return cls.published(cls.Config.from_dict(hparams, name))
