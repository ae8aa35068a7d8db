"""Numeric precisions the project runs a network at, and what the CPU at hand has for each.

``fp32`` runs everywhere. ``bf16`` pays only where the hardware has bf16 matrix units: CUDA devices
that support it, and x86 CPUs with AVX512-BF16 or AMX-BF16; elsewhere bf16 is emulated and slower
than fp32. ``int8`` pays where the CPU has int8 dot-product units (VNNI or AMX-INT8); without them an
int8 graph still runs, only without a speed-up worth its quality cost.

The flags are read from ``/proc/cpuinfo`` (Linux); on other systems none are known, and ``auto``
choices built on them stay at fp32.

Which runtime offers which precision (:data:`RUNTIME_PRECISIONS`), the one-line refusals of the
pairs that do not exist (:func:`check_runtime_precision`), and the rule by which ``auto`` picks one
from measured calibration figures (:func:`choose_precision`, threshold :data:`AGREEMENT_THRESHOLD`)
live here too; the figures themselves are measured by :mod:`hybridhash.calibration`.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, FrozenSet, Mapping, Optional, Tuple

from .errors import ConfigError

__all__ = ["AGREEMENT_THRESHOLD", "PRECISIONS", "PRECISION_CHOICES", "RUNTIME_PRECISIONS", "check_precision",
           "check_runtime_precision", "choose_precision", "cpu_flags", "cpu_has_bf16_units", "cpu_has_int8_units",
           "cpu_model", "figure_for", "has_units", "recorded_choice", "unit_flags"]

PRECISIONS = ("fp32", "bf16", "int8")
PRECISION_CHOICES = PRECISIONS + ("auto",)
# the CPU flags (as /proc/cpuinfo spells them) that make each reduced precision fast
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# the share of code bits a reduced precision must give exactly as fp32 does, on held-out images, for
# ``auto`` to take it: at 64 bits, one flipped bit in three images on average
AGREEMENT_THRESHOLD = 0.995
# what each runtime can run: torch autocasts to bf16 (int8 needs a quantized graph, which only the
# export runtimes run); onnxruntime has no bf16 kernels on the CPU worth the name
RUNTIME_PRECISIONS: Dict[str, Tuple[str, ...]] = {
    "torch": ("fp32", "bf16"), "onnx": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}
# the order ``auto`` prefers among precisions that pass, fastest first where the units exist
SPEED_ORDER = ("int8", "bf16", "fp32")


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


@functools.lru_cache(maxsize=None)
def cpu_model(path: str = "/proc/cpuinfo") -> str:
    """The first processor's model name ("AMD EPYC", ...), "unknown" where the file does not say."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


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


def has_units(precision: str, flags: FrozenSet[str] = None, *, cuda_bf16: bool = False) -> bool:
    """Whether ``precision`` runs on units of its own here: fp32 always; bf16 on a CUDA device that
    supports it (``cuda_bf16``) or a CPU with bf16 units; int8 on a CPU with int8 units."""
    if precision == "bf16":
        return cuda_bf16 or cpu_has_bf16_units(flags)
    if precision == "int8":
        return cpu_has_int8_units(flags)
    return True


def check_runtime_precision(runtime: str, precision: str) -> str:
    """``precision`` if ``runtime`` (torch, onnx, openvino) runs it (``auto`` always), else a one-line ConfigError."""
    check_precision(precision)
    if precision == "auto" or precision in RUNTIME_PRECISIONS[runtime]:
        return precision
    if runtime == "torch":  # int8
        raise ConfigError("--precision int8 needs a quantized graph, which PyTorch does not run here; use "
                          "--runtime onnx or --runtime openvino (after `hybridhash export --calibrate DATA`)")
    raise ConfigError(f"--runtime {runtime} has no --precision {precision}; use --runtime openvino or torch for bf16")


def figure_for(figures: Optional[Mapping[str, Any]], runtime: str, precision: str) -> Optional[Mapping[str, Any]]:
    """The measured figures of one runtime and precision in a calibration document, or None."""
    for entry in (figures or {}).get("paths", []):
        if entry.get("runtime") == runtime and entry.get("precision") == precision:
            return entry
    return None


def choose_precision(runtime: str, figures: Optional[Mapping[str, Any]], flags: FrozenSet[str] = None, *,
                     cuda_bf16: bool = False, threshold: float = AGREEMENT_THRESHOLD) -> Tuple[str, str]:
    """What ``--precision auto`` runs on ``runtime``, and why, in words.

    A reduced precision qualifies when the runtime runs it, the hardware has units for it
    (:func:`has_units`) and the calibration ``figures`` (:mod:`hybridhash.calibration`) measured a bit
    agreement with fp32 of at least ``threshold``. Among those, the fastest measured wins when the
    figures were timed on a CPU of this model, else the first of :data:`SPEED_ORDER`; with none, fp32.
    """
    flags = cpu_flags() if flags is None else flags
    offered = [p for p in SPEED_ORDER if p != "fp32" and p in RUNTIME_PRECISIONS[runtime]]
    if not any(has_units(p, flags, cuda_bf16=cuda_bf16) for p in offered):
        return "fp32", f"no {' or '.join(offered)} units here"
    if not figures:
        return "fp32", "no calibration figures (measure them with `hybridhash export --calibrate DATA`)"
    passed, refused = [], []
    for p in offered:
        entry = figure_for(figures, runtime, p)
        if not has_units(p, flags, cuda_bf16=cuda_bf16):
            refused.append(f"{p}: no units")
        elif entry is None or entry.get("agreement") is None:
            refused.append(f"{p}: not calibrated")
        elif float(entry["agreement"]) < threshold:
            refused.append(f"{p}: agreement {float(entry['agreement']):.4f} < {threshold}")
        else:
            passed.append((p, entry))
    if not passed:
        return "fp32", "; ".join(refused)
    timed = figures.get("cpu") == cpu_model() and all(e.get("images_per_s") for _, e in passed)
    base = figure_for(figures, runtime, "fp32") or {}
    if timed:
        p, entry = max(passed, key=lambda pe: pe[1]["images_per_s"])
        if base.get("images_per_s") and base["images_per_s"] >= entry["images_per_s"]:
            return "fp32", f"fp32 measured fastest here ({base['images_per_s']:.1f} images/s)"
        why = f"fastest measured here ({entry['images_per_s']:.1f} images/s)"
    else:
        p, entry = passed[0]
        why = "the fastest kind of units this CPU has"
    return p, f"{why}; agreement with fp32 {float(entry['agreement']):.4f} >= {threshold}"


def recorded_choice(recorded_runtime: Optional[str], recorded_precision: Optional[str], runtime: str,
                    precision: str) -> Tuple[str, str, Optional[str]]:
    """(runtime, precision, mismatch) to encode with against a collection encoded on ``recorded_runtime``
    at ``recorded_precision`` (None in a manifest written before they were recorded: fp32, any runtime).

    ``auto`` takes the recorded value (the runtime only where the precision is not fp32: at fp32 every
    runtime gives the same codes within float rounding). An explicit other choice is kept, and
    ``mismatch`` says in one sentence that the codes may differ from the collection's; else None.
    """
    rec_p = recorded_precision or "fp32"
    rec_r = recorded_runtime if rec_p != "fp32" else None
    if precision == "auto":
        # the recorded precision, unless the runtime named does not run it
        precision = rec_p if rec_p in RUNTIME_PRECISIONS.get(runtime, PRECISIONS) else "fp32"
    if runtime == "auto" and rec_r is not None:
        runtime = rec_r
    differs = precision != rec_p or (rec_r is not None and runtime != rec_r)
    if not differs:
        return runtime, precision, None
    was = f"{rec_p}" + (f" on {rec_r}" if rec_r else "")
    now = f"{precision}" + (f" on {runtime}" if runtime != "auto" else "")
    return runtime, precision, (f"the collection was encoded at {was}, this runs at {now}: codes may differ from "
                                f"the collection's in a few bits")
