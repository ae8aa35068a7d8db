"""Inference engines: a checkpoint's model on eager PyTorch, or its ONNX export on onnxruntime.

``open_encoder(checkpoint, runtime, device)`` returns an object with the model's encoding contract
(``encode(x) -> int8 (B, bits)``, ``bits``, ``preprocess``, ``fingerprint``), so encoding, search and
the service run on either. ``auto`` takes onnxruntime on a CPU when the checkpoint has an export
of the same weights beside it (``hybridhash export`` writes ``model.onnx`` there): on this
project's 2-core benchmark (benchmarks/results/encode_model.md) it ran hybridhash_base 1.3-2x as
fast as eager PyTorch at every batch size from 1 to 64. Otherwise ``auto`` is PyTorch.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Optional, Union

from .errors import CheckpointError, CheckpointMismatchError, ConfigError

_log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx")
ONNX_NAME = "model.onnx"  # the export beside a checkpoint's config.json

PathLike = Union[str, os.PathLike]


def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def onnx_beside(checkpoint: PathLike) -> Optional[Path]:
    """The ONNX export that goes with ``checkpoint``: the file itself, or ``model.onnx`` in its directory."""
    p = Path(checkpoint)
    if p.suffix == ".onnx":
        return p
    candidate = (p if p.is_dir() else p.parent) / ONNX_NAME
    return candidate if candidate.is_file() else None


def _checkpoint_fingerprint(checkpoint: Path) -> Optional[str]:
    from .models import read_config

    try:
        return read_config(checkpoint).get("fingerprint")
    except CheckpointError:
        return None


def open_encoder(checkpoint: PathLike, runtime: str = "auto", device: str = "cpu", *,
                 threads: Optional[int] = None):
    """The model of ``checkpoint`` on the runtime asked for.

    Args:
        checkpoint: a project checkpoint directory, or an exported ``.onnx`` file.
        runtime: ``torch``, ``onnx`` or ``auto`` (see the module docstring).
        device: where the model will run (a torch model is returned on the CPU for the caller to
            move); onnxruntime runs on the CPU only.
        threads: onnxruntime's intra-op threads (None: its default).

    Raises:
        ConfigError: an unknown runtime, ONNX on another device than the CPU, or no onnxruntime.
        CheckpointError: ``onnx`` asked for and no export beside the checkpoint, or an export of
            other weights than the checkpoint's.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    path = Path(checkpoint)
    onnx_file = onnx_beside(path)
    on_cpu = str(device) == "cpu"
    if runtime == "torch" and path.suffix == ".onnx":
        raise ConfigError(f"{path} is an ONNX export; use --runtime onnx (or auto), or pass the checkpoint directory")
    if runtime == "onnx":
        if not on_cpu:
            raise ConfigError(f"--runtime onnx runs on the CPU only, not --device {device}; use --runtime torch")
        if not onnx_available():
            raise ConfigError("--runtime onnx needs onnxruntime: pip install 'hybridhash[onnx]'")
        if onnx_file is None:
            raise CheckpointError(f"{path}: no {ONNX_NAME} beside the checkpoint; write one with "
                                  f"`hybridhash export --checkpoint {path}`")
    use_onnx = runtime == "onnx" or (runtime == "auto" and on_cpu and onnx_file is not None and onnx_available())
    if not use_onnx:
        from .models import from_pretrained

        return from_pretrained(path)  # on the CPU; the caller moves it to its device
    from .export import OnnxEncoder

    enc = OnnxEncoder.open(onnx_file, threads=threads)
    if path.suffix != ".onnx":
        expected = _checkpoint_fingerprint(path)
        if expected is not None and enc.fingerprint != expected:
            if runtime == "onnx":
                raise CheckpointMismatchError(f"{onnx_file} was exported from other weights (fingerprint "
                                              f"{enc.fingerprint}) than {path} ({expected}); export it again")
            _log.warning("%s is an export of other weights than %s; running PyTorch instead", onnx_file, path)
            from .models import from_pretrained

            return from_pretrained(path)
    _log.info("running %s on onnxruntime", onnx_file)
    return enc
