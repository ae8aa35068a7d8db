"""Inference engines, and the choice between them: a checkpoint's model on eager PyTorch
(:mod:`.pytorch`), or its ONNX export on onnxruntime (:mod:`.onnx`) or OpenVINO (:mod:`.openvino`),
which share the export's reading and checks (:mod:`.exported`). Batches of images become codes on
any of them through :mod:`.encoding`.

``open_encoder(checkpoint, runtime, device)`` (``--runtime auto|torch|onnx|openvino``) returns an
object with the model's encoding contract (``encode(x) -> int8 (B, bits)``, ``bits``, ``preprocess``,
``fingerprint``), so encoding, search and the service run on any of them. ``auto`` takes the fastest measured on this project's 2-core CPU
benchmark (benchmarks/results/encode_model.md, hybridhash_base): OpenVINO when it is installed and
the checkpoint has an export of the same weights beside it (``hybridhash export`` writes
``model.onnx`` there), else PyTorch, whose CPU linears run on oneDNN (models/cpu_gemm.py) and which
is then as fast as onnxruntime at one image and faster from a batch of 8 on. On a GPU ``auto`` is
always PyTorch. onnxruntime stays available by name (``--runtime onnx``). This module imports no torch: the command line reads :data:`RUNTIMES` to build its
parsers.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Optional, Union

from ..errors import CheckpointError, CheckpointMismatchError, ConfigError

_log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx", "openvino")
EXPORT_RUNTIMES = ("onnx", "openvino")  # the ones that run model.onnx
ONNX_NAME = "model.onnx"  # the export beside a checkpoint's config.json

PathLike = Union[str, os.PathLike]


def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def onnx_beside(checkpoint: PathLike) -> Optional[Path]:
    """The ONNX export that goes with ``checkpoint``: the file itself, or ``model.onnx`` in its directory."""
    p = Path(checkpoint)
    if p.suffix == ".onnx":
        return p
    candidate = (p if p.is_dir() else p.parent) / ONNX_NAME
    return candidate if candidate.is_file() else None


def _available(runtime: str) -> bool:
    return onnx_available() if runtime == "onnx" else openvino_available()


def _install_hint(runtime: str) -> str:
    return {"onnx": "onnxruntime: pip install 'hybridhash[onnx]'",
            "openvino": "OpenVINO: pip install 'hybridhash[openvino]'"}[runtime]


def pick_runtime(checkpoint: PathLike, runtime: str = "auto", device: str = "cpu") -> str:
    """The runtime ``open_encoder`` will use: ``torch``, ``onnx`` or ``openvino``.

    Raises:
        ConfigError: an unknown runtime, an export runtime on another device than the CPU, or a
            runtime that is not installed.
        CheckpointError: an export runtime asked for and no export beside the checkpoint.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    path = Path(checkpoint)
    on_cpu = str(device) == "cpu"
    if runtime == "torch" and path.suffix == ".onnx":
        raise ConfigError(f"{path} is an ONNX export; use --runtime onnx, openvino or auto, or pass the checkpoint "
                          f"directory")
    if runtime in EXPORT_RUNTIMES:
        if not on_cpu:
            raise ConfigError(f"--runtime {runtime} runs on the CPU only, not --device {device}; use --runtime torch")
        if not _available(runtime):
            raise ConfigError(f"--runtime {runtime} needs {_install_hint(runtime)}")
        if onnx_beside(path) is None:
            raise CheckpointError(f"{path}: no {ONNX_NAME} beside the checkpoint; write one with "
                                  f"`hybridhash export --checkpoint {path}`")
        return runtime
    if runtime == "torch":
        return "torch"
    # auto
    if path.suffix == ".onnx":  # only an export runtime can run the file itself
        for name in ("openvino", "onnx"):
            if _available(name):
                return name
        raise ConfigError(f"{path} is an ONNX export and neither OpenVINO nor onnxruntime is installed: "
                          f"pip install 'hybridhash[openvino]' or 'hybridhash[onnx]'")
    if on_cpu and onnx_beside(path) is not None and _available("openvino"):
        return "openvino"
    return "torch"


def open_encoder(checkpoint: PathLike, runtime: str = "auto", device: str = "cpu", *,
                 threads: Optional[int] = None):
    """The model of ``checkpoint`` on the runtime asked for (see :func:`pick_runtime`).

    Args:
        checkpoint: a project checkpoint directory, or an exported ``.onnx`` file.
        runtime: ``torch``, ``onnx``, ``openvino`` or ``auto`` (see the module docstring).
        device: where the model will run (a torch model is returned on the CPU for the caller to
            move); the export runtimes run on the CPU only.
        threads: the export runtime's threads (None: its default).

    Raises:
        ConfigError, CheckpointError: as :func:`pick_runtime`.
        CheckpointMismatchError: an export runtime named and an export of other weights than the
            checkpoint's beside it (``auto`` warns and runs PyTorch instead, as it does over an
            export it cannot open).
    """
    from .pytorch import open_pytorch, pytorch_instead, weights_beside

    path = Path(checkpoint)
    chosen = pick_runtime(path, runtime, device)
    if chosen == "torch":
        return open_pytorch(path)  # on the CPU; the caller moves it to its device
    onnx_file = onnx_beside(path)
    if chosen == "openvino":
        from .openvino import OpenVinoEncoder as Encoder
    else:
        from .onnx import OnnxEncoder as Encoder
    try:
        enc = Encoder.open(onnx_file, threads=threads)
    except CheckpointError as err:
        if runtime != "auto" or path.suffix == ".onnx":
            raise
        # the checkpoint itself still works: an unusable export beside it must not stop it
        return pytorch_instead(path, "cannot use %s (%s)", onnx_file, err)
    if path.suffix != ".onnx":
        expected = weights_beside(path)
        if expected is not None and enc.fingerprint != expected:
            if runtime != "auto":
                raise CheckpointMismatchError(f"{onnx_file} was exported from other weights (fingerprint "
                                              f"{enc.fingerprint}) than {path} ({expected}); export it again")
            return pytorch_instead(path, "%s is an export of other weights than %s", onnx_file, path)
    _log.info("running %s on %s", onnx_file, enc.engine)
    return enc
