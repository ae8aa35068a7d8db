"""Helpers shared by the project's typed configs (model, training, methods): JSON in and out, and
the range of a numeric setting."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Type, TypeVar

from .errors import ConfigError
from .limits import MAX_INT_OPTION, MAX_PIXELS_CAP, MAX_THREADS, MAX_WORKERS

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


@dataclass(frozen=True)
class Bounds:
    """The range of a numeric setting: a finite number (an ``int`` when ``integer``) with
    ``low <= value <= high``; ``low_open`` / ``high_open`` make an end strict, ``None`` leaves it open."""

    low: Optional[float] = None
    high: Optional[float] = None
    integer: bool = False
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """E.g. "an integer from 1 to 1024", "a finite number > 0"."""
        if self.integer and self.low is not None and self.high is not None and not (self.low_open or self.high_open):
            return f"an integer from {self.low} to {self.high}"
        ends = []
        if self.low is not None:
            ends.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            ends.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return ("an integer" if self.integer else "a finite number") + (" " + " and ".join(ends) if ends else "")

    def check(self, name: str, value: Any) -> None:
        """Raise ConfigError "NAME must be <range>, got VALUE" unless ``value`` lies in the range."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and self.integer:
            ok = isinstance(value, int)
        if ok and not self.integer:  # nan, inf, and ints too large for a float
            try:
                ok = math.isfinite(float(value))
            except OverflowError:
                ok = False
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if not ok:
            raise ConfigError(f"{name} must be {self.describe()}, got {value!r}")


# ranges shared by the options of several commands and configs
COUNT = Bounds(1, MAX_INT_OPTION, integer=True)  # epochs, sizes, intervals
NONNEGATIVE_INT = Bounds(0, MAX_INT_OPTION, integer=True)  # seeds, counts that may be 0
POSITIVE = Bounds(0, low_open=True)
NONNEGATIVE = Bounds(0)
FRACTION = Bounds(0, 1, high_open=True)  # a share of a set, e.g. the validation images
WORKERS = Bounds(0, MAX_WORKERS, integer=True)  # data-loading processes
THREADS = Bounds(1, MAX_THREADS, integer=True)  # threads of one process
PIXELS = Bounds(1, MAX_PIXELS_CAP, integer=True)  # width * height of the largest image decoded
