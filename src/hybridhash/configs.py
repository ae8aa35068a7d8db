"""Helpers shared by the project's typed configs (model, training, methods): JSON in and out."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Type, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def to_json_dict(config: Any) -> Dict[str, Any]:
    """A dataclass as a JSON-ready dict, tuples as lists."""
    d = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def from_json_dict(cls: Type[T], d: Dict[str, Any], what: str) -> T:
    """``cls(**d)``, refusing keys that are not fields with a one-line error naming ``what``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {what}: {', '.join(unknown)}")
    return cls(**d)
