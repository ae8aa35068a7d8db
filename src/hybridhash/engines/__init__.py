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

``precision`` (``fp32|bf16|int8|auto``, :mod:`hybridhash.precision`) says at what the engine runs:
bf16 is autocast on PyTorch and the inference hint on OpenVINO; int8 is the quantized graph
(:mod:`.exports`) on onnxruntime or OpenVINO (``--runtime auto`` takes OpenVINO for it when
installed); ``auto`` is :func:`hybridhash.precision.choose_precision` on the export's calibration
figures (fp32 without them, or without bf16 / int8 units). The encoder's ``inference_precision``
says what it runs; :func:`runs_at` gives (runtime, precision) for any encoder.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Optional, Tuple, Union

from ..errors import CheckpointError, CheckpointMismatchError, ConfigError
from .exports import CALIBRATION_NAME, INT8_NAME, ONNX_NAME, int8_beside, onnx_beside, read_calibration  # noqa: F401  (re-exported)

_log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx", "openvino")
EXPORT_RUNTIMES = ("onnx", "openvino")  # the ones that run model.onnx

PathLike = Union[str, os.PathLike]


def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _available(runtime: str) -> bool:
    return onnx_available() if runtime == "onnx" else openvino_available()


def _install_hint(runtime: str) -> str:
    return {"onnx": "onnxruntime: pip install 'hybridhash[onnx]'",
            "openvino": "OpenVINO: pip install 'hybridhash[openvino]'"}[runtime]


def runs_at(model: Any) -> Tuple[str, str]:
    """(runtime, precision) an encoder of :func:`open_encoder` runs: ``torch`` for a PyTorch model."""
    from .encoding import model_precision

    return getattr(model, "runtime", "torch"), model_precision(model)


def _pick_int8(path, runtime: str) -> str:
    """The export runtime that runs the int8 graph of ``path`` (``runtime``: auto or one of them)."""
    names = [n for n in ("openvino", "onnx") if runtime in ("auto", n)]
    installed = [n for n in names if _available(n)]
    if not installed:
        raise ConfigError(f"--precision int8 needs {_install_hint(names[-1])}")
    if int8_beside(path) is None:
        raise CheckpointError(f"{path}: no {INT8_NAME} beside the checkpoint; write one with "
                              f"`hybridhash export --checkpoint {path} --calibrate DATA`")
    return installed[0]


def pick_runtime(checkpoint: PathLike, runtime: str = "auto", device: str = "cpu", precision: str = "fp32") -> str:
    """The runtime ``open_encoder`` will use: ``torch``, ``onnx`` or ``openvino``.

    ``precision`` int8 takes an export runtime that runs the quantized graph (``auto``: OpenVINO
    where installed), bf16 and fp32 take what ``runtime`` says.

    Raises:
        ConfigError: an unknown runtime, an export runtime on another device than the CPU, or a
            runtime that is not installed.
        CheckpointError: an export runtime asked for and no export beside the checkpoint.
    """
    from ..precision import check_precision, check_runtime_precision

    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    check_precision(precision)
    path = Path(checkpoint)
    on_cpu = str(device) == "cpu"
    if runtime != "auto":
        check_runtime_precision(runtime, precision)
    if precision == "int8":
        if not on_cpu:
            raise ConfigError(f"--precision int8 runs on the CPU only, not --device {device}")
        if runtime == "torch":
            check_runtime_precision("torch", "int8")
        return _pick_int8(path, runtime)
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
                 threads: Optional[int] = None, precision: str = "fp32"):
    """The model of ``checkpoint`` on the runtime and at the precision asked for (see :func:`pick_runtime`).

    Args:
        checkpoint: a project checkpoint directory, or an exported ``.onnx`` file.
        runtime: ``torch``, ``onnx``, ``openvino`` or ``auto`` (see the module docstring).
        device: where the model will run (a torch model is returned on the CPU for the caller to
            move); the export runtimes run on the CPU only.
        threads: the export runtime's threads (None: its default).
        precision: ``fp32``, ``bf16``, ``int8`` or ``auto`` (one log line says what auto took and why).

    Raises:
        ConfigError, CheckpointError: as :func:`pick_runtime`; a precision the runtime does not run.
        CheckpointMismatchError: an export runtime named and an export of other weights than the
            checkpoint's beside it (``auto`` warns and runs PyTorch instead, as it does over an
            export it cannot open).
    """
    from .pytorch import open_pytorch, pytorch_instead, weights_beside

    path = Path(checkpoint)
    chosen = pick_runtime(path, runtime, device, precision)
    expected = weights_beside(path) if path.suffix != ".onnx" else None
    if precision == "auto":
        precision = auto_precision(path, chosen, device, expected)
    if chosen == "torch":
        return open_pytorch(path, precision, str(device))  # on the CPU; the caller moves it to its device
    onnx_file = int8_beside(path) if precision == "int8" else onnx_beside(path)
    if chosen == "openvino":
        from .openvino import OpenVinoEncoder as Encoder
    else:
        from .onnx import OnnxEncoder as Encoder
    try:
        enc = Encoder.open(onnx_file, threads=threads, precision=precision)
    except CheckpointError as err:
        if runtime != "auto" or path.suffix == ".onnx":
            raise
        # the checkpoint itself still works: an unusable export beside it must not stop it
        return pytorch_instead(path, "cannot use %s (%s)", onnx_file, err)
    if expected is not None and enc.fingerprint != expected:
        if runtime != "auto":
            raise CheckpointMismatchError(f"{onnx_file} was exported from other weights (fingerprint "
                                          f"{enc.fingerprint}) than {path} ({expected}); export it again")
        return pytorch_instead(path, "%s is an export of other weights than %s", onnx_file, path)
    _log.info("running %s on %s at %s", onnx_file, enc.engine, enc.inference_precision)
    return enc


def auto_precision(path: PathLike, runtime: str, device: str, fingerprint: Optional[str] = None) -> str:
    """``--precision auto`` on ``runtime``: :func:`hybridhash.precision.choose_precision` on the
    calibration figures of ``path``'s export, said in one log line."""
    from ..precision import choose_precision

    cuda_bf16 = False
    if str(device).startswith("cuda"):
        from ..environment import bf16_autocast_available, pick_device

        cuda_bf16 = bf16_autocast_available(pick_device(str(device)))
    path = Path(path)
    figures = read_calibration(path, fingerprint)
    precision, why = choose_precision(runtime, figures, cuda_bf16=cuda_bf16)
    if precision == "int8" and int8_beside(path) is None:
        precision, why = "fp32", f"int8 was measured, but {INT8_NAME} is gone"
    _log.info("--precision auto: %s on %s (%s)", precision, runtime, why)
    return precision
