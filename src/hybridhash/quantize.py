"""The fp32 export quantized to int8: ``quantize_int8(onnx_path, out, images)``.

onnxruntime's post-training static quantization, in the QDQ format (QuantizeLinear /
DequantizeLinear pairs around each quantized product), which onnxruntime runs with its int8 kernels
and OpenVINO reads as an int8 model: one file for both export runtimes. Weights are int8 per output
channel, activations uint8 per tensor, their ranges calibrated (min / max) on a few hundred
preprocessed images of the data the model will encode.

Only the products with a weight are quantized (convolutions and the linear layers' MatMul / Gemm):
the attention's activation-by-activation products and everything from the hash head on stay fp32.
Measured on a trained digits checkpoint, quantizing every product kept 97.6% of the code bits,
weight products only 99.0%, and sparing the hash head too 99.5% (the threshold ``auto`` asks for):
the head's small outputs decide the signs, so its rounding costs bits most directly.

The quantized graph keeps the export's ``hybridhash.*`` metadata and adds ``hybridhash.precision``
= ``int8``; writing needs ``onnx`` and ``onnxruntime`` (the optional extra ``hybridhash[onnx]``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator, List, Union

import numpy as np

from .engines.exported import INPUT_NAME, PREFIX, missing_package
from .errors import ConfigError, DataError
from .fileio import atomic_path

PathLike = Union[str, os.PathLike]
_log = logging.getLogger(__name__)

# the part of the graph kept at fp32: the exported model's hash head (every architecture names it so)
HEAD_SCOPE = "/model/hash_head/"
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
CALIBRATION_BATCH = 16


def _kept_fp32(proto) -> List[str]:
    """Names of the product nodes left at fp32: those without a constant operand (activation x
    activation, as in attention) and those in the hash head."""
    constants = {i.name for i in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in proto.graph.node if n.op_type in WEIGHT_OPS
            and (n.name.startswith(HEAD_SCOPE) or not any(i in constants for i in n.input))]


class _QuantizerAdvice(logging.Filter):
    """onnxruntime's quantizer gives advice on the root logger ("consider pre-processing before
    quantization", "Expected bias ... to be an initializer") about choices this module makes on
    purpose; it goes to this module's debug log instead of the user's terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = record.pathname.replace(os.sep, "/")
        if "/onnxruntime/quantization/" in path and record.levelno < logging.ERROR:
            _log.debug("onnxruntime quantizer: %s", record.getMessage())
            return False
        return True


@contextlib.contextmanager
def _quiet_quantizer():
    advice = _QuantizerAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


def quantize_int8(onnx_path: PathLike, out: PathLike, images: np.ndarray) -> Path:
    """Write the int8 (QDQ) quantization of the fp32 export ``onnx_path`` at ``out``, atomically.

    Args:
        onnx_path: an export of :func:`hybridhash.export.export_onnx`.
        images: float32 (N, 3, S, S) preprocessed calibration images (a few hundred; N >= 1).
    """
    try:
        import onnx
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
    except ImportError:
        raise missing_package("onnxruntime") from None
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[0] == 0:
        raise DataError(f"int8 calibration needs a batch of preprocessed images (N, 3, S, S), got {images.shape}")
    proto = onnx.load(str(onnx_path))
    if not any(p.key.startswith(PREFIX) for p in proto.metadata_props):
        raise ConfigError(f"{onnx_path}: not a hybridhash export; quantize the file `hybridhash export` wrote")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches: Iterator = iter(images[i:i + CALIBRATION_BATCH]
                                           for i in range(0, len(images), CALIBRATION_BATCH))

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=out.parent) as work, _quiet_quantizer():
        tmp_out = Path(work) / "int8.onnx"
        quantize_static(str(onnx_path), str(tmp_out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(WEIGHT_OPS),
                        nodes_to_exclude=_kept_fp32(proto))
        q = onnx.load(str(tmp_out))
    kept = {p.key: p.value for p in q.metadata_props}
    for p in proto.metadata_props:  # the export's metadata, whether or not the quantizer copied it
        kept.setdefault(p.key, p.value)
    kept[PREFIX + "precision"] = "int8"
    del q.metadata_props[:]
    for k, v in kept.items():
        entry = q.metadata_props.add()
        entry.key, entry.value = k, v
    q.doc_string = proto.doc_string + " (int8, QDQ)"
    with atomic_path(out) as tmp:
        tmp.write_bytes(q.SerializeToString())
    return out
