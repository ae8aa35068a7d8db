"""Name -> preset registry, timm-style: ``create_model("hybridhash_base", bits=64)``."""
from __future__ import annotations

import fnmatch
from typing import Callable, Dict

from ..errors import ConfigError

_PRESETS: Dict[str, Callable[..., dict]] = {}


def register_preset(fn: Callable[..., dict]) -> Callable[..., dict]:
    """Register a function returning the preset's keyword arguments under its own name."""
    _PRESETS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered preset names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _PRESETS if fnmatch.fnmatch(n, pattern))


def preset_kwargs(name: str) -> dict:
    """The keyword arguments of a preset (a fresh dict)."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return dict(_PRESETS[name]())
