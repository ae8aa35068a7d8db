"""The PyTorch engine: a checkpoint's own model, eager, whose CPU linears run on oneDNN
(:mod:`hybridhash.models.cpu_gemm`). It is the engine for every device, and the one the export
engines are checked against: an export stands for a checkpoint only when both hold the same weights
(:func:`weights_beside`). At bf16 its forward runs under autocast (:func:`set_precision`)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

from ..errors import CheckpointError

_log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def open_pytorch(checkpoint: PathLike, precision: str = "fp32", device: str = "cpu"):
    """The model of a project checkpoint directory, on the CPU (the caller moves it to its device
    and sets its mode); ``model.fingerprint`` is that of its weights file. ``precision``: fp32 or
    bf16 for ``device`` (:func:`set_precision`)."""
    from ..models import from_pretrained

    return set_precision(from_pretrained(checkpoint), precision, device)


def set_precision(model, precision: str, device: str = "cpu"):
    """``model`` marked to encode at ``precision`` on ``device`` (fp32, or bf16: autocast in
    :func:`hybridhash.engines.encoding.encode_batch`); int8 is a one-line ConfigError pointing to the
    export runtimes. bf16 where the hardware has no bf16 units runs, emulated, and says so once."""
    import torch

    from ..environment import bf16_autocast_available
    from ..precision import check_runtime_precision, has_units
    from .encoding import PRECISION_ATTR

    check_runtime_precision("torch", precision)
    if precision == "auto":
        raise ValueError("resolve --precision auto before set_precision (hybridhash.precision.choose_precision)")
    dev = torch.device(device)
    if precision == "bf16" and not has_units("bf16", cuda_bf16=bf16_autocast_available(dev)):
        where = "this GPU" if dev.type == "cuda" else "this CPU (no AVX512-BF16 or AMX-BF16)"
        _log.warning("bf16 on %s is emulated: it runs slower than fp32", where)
    setattr(model, PRECISION_ATTR, precision)
    return model


def weights_beside(checkpoint: PathLike) -> Optional[str]:
    """The fingerprint of the checkpoint's weights file (not config.json's record, which a replaced
    weights file leaves stale); None when they cannot be read."""
    from ..models import weights_fingerprint
    from ..models.weights import WEIGHTS_NAME

    checkpoint = Path(checkpoint)
    try:
        return weights_fingerprint((checkpoint if checkpoint.is_dir() else checkpoint.parent) / WEIGHTS_NAME)
    except CheckpointError:
        return None


def pytorch_instead(checkpoint: PathLike, why: str, *args):
    """The checkpoint's PyTorch model (fp32), after a warning saying why ``--runtime auto`` passed its export over."""
    _log.warning(why + "; running PyTorch (fp32) instead", *args)
    return open_pytorch(checkpoint)
