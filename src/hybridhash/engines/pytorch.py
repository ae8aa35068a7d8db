"""The PyTorch engine: a checkpoint's own model, eager, whose CPU linears run on oneDNN
(:mod:`hybridhash.models.cpu_gemm`). It is the engine for every device, and the one the export
engines are checked against: an export stands for a checkpoint only when both hold the same weights
(:func:`weights_beside`)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

from ..errors import CheckpointError

_log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def open_pytorch(checkpoint: PathLike):
    """The model of a project checkpoint directory, on the CPU (the caller moves it to its device
    and sets its mode); ``model.fingerprint`` is that of its weights file."""
    from ..models import from_pretrained

    return from_pretrained(checkpoint)


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
    """The checkpoint's PyTorch model, after a warning saying why ``--runtime auto`` passed its export over."""
    _log.warning(why + "; running PyTorch instead", *args)
    return open_pytorch(checkpoint)
