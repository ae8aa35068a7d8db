"""hybridhash: deep-hashing image retrieval with HybridHash.

The model API (``create_model``, ``from_pretrained``, ...) is imported on first use, so that
``import hybridhash`` (and so the command line's ``--help``) does not pay for torch and timm.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_FROM_MODELS = (
    "HybridHash", "HybridHashConfig", "convert_original_state_dict", "create_model", "from_pretrained",
    "list_models", "load_nest_weights",
)

__all__ = [*_FROM_MODELS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _FROM_MODELS:
        return getattr(importlib.import_module(".models", __name__), name)
    try:
        return importlib.import_module(f".{name}", __name__)  # hybridhash.metrics and the like
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
