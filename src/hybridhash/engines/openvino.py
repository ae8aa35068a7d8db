"""The ONNX export run by OpenVINO's CPU plugin: a third inference engine beside PyTorch and onnxruntime.

OpenVINO compiles the same ``model.onnx`` that ``hybridhash export`` writes (no conversion step,
no second file), with its own fusions of the layer norms, GELUs and attention blocks. Precision is
what is asked, never OpenVINO's default: fp32 is pinned (on CPUs with bf16 or AMX units OpenVINO
would otherwise run bf16, and the codes would no longer equal the torch model's); bf16 sets the
inference precision hint (which OpenVINO honours only on CPUs with bf16 units, running f32
elsewhere); int8 is the quantized graph ``model.int8.onnx`` (QDQ, :mod:`hybridhash.quantize`), whose
other operations run at f32. The package is the optional extra ``hybridhash[openvino]``.
"""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import CheckpointError, ConfigError, one_line
from ..precision import cpu_has_bf16_units
from .exported import (CODES_NAME, INPUT_NAME, OUTPUT_NAME, ExportEncoder, PathLike, check_graph, check_open,
                       parse_metadata, read_metadata, run_precision)

_log = logging.getLogger(__name__)

# where in OpenVINO's C++ sources a check failed: "Exception from src/.../core.cpp:132:",
# "Check 'x' failed at src/.../conv.cpp:63:"; the reason follows on later lines
_SOURCE_LOCATION = re.compile(r"(Exception from|Check '.*?' failed at) \S+:\d+:?")


def openvino_reason(err: BaseException) -> str:
    """OpenVINO's message without its source locations, on one line: the summary when it gives one."""
    lines = [_SOURCE_LOCATION.sub("", line).strip(" -\t") for line in str(err).splitlines()]
    lines = [line for line in lines if line]
    if "Summary:" in lines:  # a conversion report: the summary names the operations
        lines = lines[lines.index("Summary:") + 1:]
    text = "".join(line + (" " if line.endswith(":") else "; ") for line in lines).rstrip("; ")
    return one_line(text or type(err).__name__, 240)


_core: Any = None
_core_lock = threading.Lock()


def shared_core() -> Any:
    """The process's one ``openvino.Core``, made on first use and never released.

    OpenVINO's CPU plugin gives the thread that makes a Core a new alternate signal stack and, when
    that Core is released, puts back the stack it replaced, freeing its own. Two Cores released in
    the order they were made leave the first one's freed stack installed, and the next signal Python
    handles on that thread (SIGCHLD from a finished child process, SIGINT) kills the process with a
    segmentation fault. One Core for the life of the process never restores anything (and later
    compilations skip loading the plugin again).
    """
    global _core
    with _core_lock:
        if _core is None:
            import openvino as ov

            _core = ov.Core()
        return _core


class OpenVinoEncoder(ExportEncoder):
    """A hybridhash ONNX export compiled by OpenVINO for the CPU; stands in for the torch model.

    Same attributes and methods as :class:`~.onnx.OnnxEncoder` (both are :class:`~.exported.ExportEncoder`);
    ``session`` is the compiled model. Runs are serialised by a lock: one infer request is reused,
    and OpenVINO's threads already fill the cores.
    """

    engine = "OpenVINO"
    runtime = "openvino"

    def __init__(self, compiled: Any, path: Path, meta: dict):
        super().__init__(compiled, path, meta)
        self._request = compiled.create_infer_request()
        self._outputs = compiled.output(OUTPUT_NAME), compiled.output(CODES_NAME)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: PathLike, *, threads: Optional[int] = None, precision: str = "fp32",
             **_: Any) -> "OpenVinoEncoder":
        """Compile an export of :func:`hybridhash.export.export_onnx` for the CPU.

        Args:
            threads: OpenVINO's inference threads (None or 0: its default, the physical cores).
            precision: fp32, bf16 (the inference precision hint), or int8 for a quantized graph.

        Raises:
            ConfigError: OpenVINO or onnx is not installed, or ``threads`` is negative.
            CheckpointError: no such file, not an ONNX model, or one without the project's metadata.
        """
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise ConfigError("--runtime openvino needs OpenVINO: pip install 'hybridhash[openvino]'") from None
        path = check_open(path, threads)
        raw = read_metadata(path)
        if raw is None:
            raise CheckpointError(f"{path}: not a readable ONNX model")
        meta = parse_metadata(path, raw)
        meta["run_precision"] = run_precision(path, meta, precision)
        config = {"INFERENCE_PRECISION_HINT": "bf16" if meta["run_precision"] == "bf16" else "f32"}
        if meta["run_precision"] == "bf16" and not cpu_has_bf16_units():
            _log.warning("OpenVINO runs bf16 only on CPUs with bf16 units (AVX512-BF16, AMX); this one runs it at f32")
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            compiled = shared_core().compile_model(str(path), "CPU", config)
        except Exception as err:  # OpenVINO raises RuntimeError and its own types for foreign graphs
            raise CheckpointError(f"{path}: OpenVINO could not compile it ({openvino_reason(err)})") from None
        inputs = compiled.inputs
        shape = [d.get_length() if d.is_static else None for d in inputs[0].get_partial_shape()] \
            if len(inputs) == 1 and inputs[0].get_partial_shape().rank.is_static else []
        check_graph(path, [i.any_name for i in inputs], [o.any_name for o in compiled.outputs], shape,
                    meta["config"].img_size)
        return cls(compiled, path, meta)

    def _infer(self, x: np.ndarray):
        with self._lock:
            result = self._request.infer({INPUT_NAME: x})
            # the request owns its output buffers and reuses them on the next run: copy out
            return np.array(result[self._outputs[0]]), np.array(result[self._outputs[1]], dtype=np.int8)
