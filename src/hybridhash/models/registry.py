"""Name -> preset registry, timm-style: ``create_model("hybridhash_base", bits=64)``."""
from __future__ import annotations

import fnmatch
from typing import Callable, Dict, Optional, Tuple

from ..errors import ConfigError

_PRESETS: Dict[str, Callable[..., dict]] = {}


def register_preset(fn: Callable[..., dict]) -> Callable[..., dict]:
    """Register a function returning the preset's keyword arguments under its own name."""
    _PRESETS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*", arch: str = "hybridhash") -> list[str]:
    """Registered preset names matching a shell-style ``pattern``, sorted.

    ``arch`` picks the architectures, also shell-style: ``"hybridhash"`` (the default) HybridHash's
    presets, ``"cnn"`` the small CNN's, ``"*"`` every preset the project registers.
    """
    names = [(n, "hybridhash") for n in _PRESETS] + [(n, a) for n, (a, _) in _ARCH_PRESETS.items()]
    return sorted(n for n, a in names if fnmatch.fnmatch(a, arch) and fnmatch.fnmatch(n, pattern))


def preset_kwargs(name: str) -> dict:
    """The keyword arguments of a preset (a fresh dict)."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return dict(_PRESETS[name]())


# presets of the other architectures the project ships (the small CNN): name -> (arch, kwargs)
_ARCH_PRESETS: Dict[str, Tuple[str, Callable[..., dict]]] = {}


def register_arch_preset(arch: str) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    """Register a preset of architecture ``arch`` (``"cnn"``) under the function's name."""
    def wrap(fn: Callable[..., dict]) -> Callable[..., dict]:
        _ARCH_PRESETS[fn.__name__] = (arch, fn)
        return fn
    return wrap


def preset_arch(name: str) -> Optional[str]:
    """``"hybridhash"`` for a HybridHash preset, the architecture of another registered preset,
    None for a name the project does not register (perhaps a timm model)."""
    if name in _PRESETS:
        return "hybridhash"
    return _ARCH_PRESETS[name][0] if name in _ARCH_PRESETS else None


def arch_preset_kwargs(name: str) -> dict:
    """The keyword arguments of a non-HybridHash preset (a fresh dict)."""
    return dict(_ARCH_PRESETS[name][1]())
