"""The process's environment: device choice, seeding, usable cores, mixed precision, the torchrun environment.

One home for these, used by training, evaluation, encoding, the index and the metrics alike.
torch is imported inside the functions that need it, so the index and the CLI can use this module
without paying for it.

Named for what it holds, the conditions the work runs under. Not ``runtime``: that word names the
inference engines (``--runtime torch|onnx|openvino``, :mod:`hybridhash.engines`). Not ``platform``:
a module of that name is one relative-import slip away from shadowing the standard library's. Not
``device``: besides devices it seeds the generators, counts the cores and reads torchrun's variables.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import FrozenSet, NamedTuple, Optional

from .errors import ConfigError
from .precision import BF16_FLAGS, cpu_flags, cpu_has_bf16_units

__all__ = ["DistEnv", "autocast_context", "bf16_autocast_available", "device_option", "dist_env", "pick_device",
           "precision_autocast", "seed_everything", "TrainingPrecision", "training_precision", "usable_cores"]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def pick_device(name: str = "auto"):
    """A ``torch.device`` from a ``--device`` value: ``auto`` is the first CUDA device when there is
    one, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` (and ``mps`` where PyTorch has it) as named.
    Anything else is a one-line ConfigError."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    mps = getattr(torch.backends, "mps", None)
    usable = ("cpu", "cuda") + (("mps",) if mps is not None and mps.is_available() else ())
    if device is None or device.type not in usable:
        raise ConfigError(f"--device {name!r} is not a device this program can use; choose {DEVICE_CHOICES}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: this machine has no CUDA GPU (or PyTorch was built without CUDA); "
                              f"use --device cpu, or --device auto to take a GPU only when there is one")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
                              f"choose one of those, cuda, or cpu")
    return device


def device_option(name: str) -> str:
    """A ``--device`` value checked by :func:`pick_device`, as the string to pass on: itself, or for
    ``auto`` the device chosen (``cuda`` stays ``cuda``, which torchrun runs read as cuda:LOCAL_RANK)."""
    device = pick_device(name)
    return str(device) if name == "auto" else name


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), NumPy's and Python's global generators."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


def bf16_autocast_available(device) -> bool:
    """bf16 autocast is used on CUDA devices that support it, and nowhere else."""
    import torch

    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast_context(device, enabled: bool):
    """bf16 autocast for inference on CUDA devices that support bf16; nothing elsewhere (float16
    would need loss scaling, and on a CPU autocast takes the linears off oneDNN's fp32 path, which
    was the faster even on a CPU with AMX)."""
    if not enabled or not bf16_autocast_available(device):
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16)


class TrainingPrecision(NamedTuple):
    """The precision of a run's training forward passes, and why it was chosen (a few words)."""

    name: str  # "bf16" or "fp32"
    why: str
    emulated: bool = False  # bf16 on a CPU without bf16 units: correct, and slower than fp32


def training_precision(device, amp: Optional[bool] = None, flags: Optional[FrozenSet[str]] = None) -> TrainingPrecision:
    """The precision a training run's forward passes take on ``device``.

    bf16 means autocast with the parameters (the master weights), gradients and optimiser state kept
    in fp32. ``amp`` unset (None): bf16 where the device has bf16 units, a CUDA GPU that supports
    bf16 or a CPU with AVX512-BF16 or AMX-BF16, and fp32 elsewhere, so a CPU without the units
    trains as it always has. ``True`` (``--amp``): bf16 on those, and on a CPU without the units too,
    emulated (correct, and slower than fp32). ``False`` (``--no-amp``): fp32. ``flags``: the CPU's
    feature flags (default: this machine's, :func:`hybridhash.precision.cpu_flags`).
    """
    if amp is False:
        return TrainingPrecision("fp32", "--no-amp")
    if device.type == "cuda":
        if bf16_autocast_available(device):
            return TrainingPrecision("bf16", "the GPU supports bf16")
        return TrainingPrecision("fp32", "the GPU does not support bf16")
    if device.type != "cpu":
        return TrainingPrecision("fp32", f"bf16 autocast is used on CUDA and CPUs, not on {device.type}")
    flags = cpu_flags() if flags is None else flags
    if cpu_has_bf16_units(flags):
        return TrainingPrecision("bf16", f"the CPU has bf16 units ({', '.join(f for f in BF16_FLAGS if f in flags)})")
    if amp:
        return TrainingPrecision("bf16", "--amp on a CPU without bf16 units (AVX512-BF16, AMX-BF16): bf16 is "
                                 "emulated, slower than fp32", emulated=True)
    return TrainingPrecision("fp32", "the CPU has no bf16 units (AVX512-BF16, AMX-BF16); --amp would emulate "
                             "bf16, slower")


def precision_autocast(device, precision: str):
    """The context of a forward pass at ``precision``: bf16 autocast on ``device``'s type (CUDA or CPU)
    for "bf16", whatever the hardware, nothing for any other precision. Training takes its precision
    from :func:`training_precision`; inference from the user's explicit choice
    (:mod:`hybridhash.precision` says where it pays)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a ``torchrun`` job, read from its environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer (set by torchrun or by hand?)") from None


def dist_env() -> DistEnv:
    """(rank, world size, local rank) from torchrun's environment; one process outside it."""
    env = DistEnv(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if env.world_size < 1 or not 0 <= env.rank < env.world_size:
        raise ConfigError(f"RANK={env.rank}, WORLD_SIZE={env.world_size}: not a valid torchrun environment")
    return env
