"""Numeric precisions the project runs a network at, and what the CPU at hand has for each.

``fp32`` runs everywhere. ``bf16`` pays only where the hardware has bf16 matrix units: CUDA devices
that support it, and x86 CPUs with AVX512-BF16 or AMX-BF16; elsewhere bf16 is emulated and slower
than fp32. ``int8`` pays where the CPU has int8 dot-product units (VNNI or AMX-INT8); without them an
int8 graph still runs, only without a speed-up worth its quality cost.

The flags are read from ``/proc/cpuinfo`` (Linux); on other systems none are known, and ``auto``
choices built on them stay at fp32.
"""
from __future__ import annotations

import functools
from typing import FrozenSet, Tuple

from .errors import ConfigError

__all__ = ["PRECISIONS", "PRECISION_CHOICES", "cpu_flags", "cpu_has_bf16_units", "cpu_has_int8_units",
           "check_precision", "unit_flags"]

PRECISIONS = ("fp32", "bf16", "int8")
PRECISION_CHOICES = PRECISIONS + ("auto",)
# the CPU flags (as /proc/cpuinfo spells them) that make each reduced precision fast
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=None)
def cpu_flags(path: str = "/proc/cpuinfo") -> FrozenSet[str]:
    """The first processor's feature flags; empty where the file is missing or unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags") and ":" in line:
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def unit_flags(flags: FrozenSet[str] = None) -> Tuple[str, ...]:
    """Which of the bf16 / int8 unit flags the CPU has, in a fixed order (for benchmark records)."""
    flags = cpu_flags() if flags is None else flags
    return tuple(f for f in (*BF16_FLAGS, *INT8_FLAGS) if f in flags)


def cpu_has_bf16_units(flags: FrozenSet[str] = None) -> bool:
    """Whether the CPU computes bf16 products natively (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def cpu_has_int8_units(flags: FrozenSet[str] = None) -> bool:
    """Whether the CPU has int8 dot-product units (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in INT8_FLAGS)


def check_precision(value: str, option: str = "--precision") -> str:
    """``value`` if it names a precision choice, else a one-line ConfigError listing them."""
    if value not in PRECISION_CHOICES:
        raise ConfigError(f"{option} {value!r}: choose one of {', '.join(PRECISION_CHOICES)}")
    return value
