"""Quality measured, never assumed: how each runtime and precision encodes held-out images next to fp32.

``calibrate(checkpoint, folder, queries)`` encodes the held-out ``queries`` (and, where labels
exist, a ``database``) with the checkpoint's PyTorch model at fp32 (the reference), then on every
runtime and precision this machine can run truly, and writes to ``folder/calibration.json``
(:data:`hybridhash.engines.exports.CALIBRATION_NAME`, atomically) one entry per path:

- ``agreement``: the share of the queries' code bits equal to the fp32 reference's;
- ``map`` and ``map_change`` (labelled data only): mAP of the queries over the database, both
  encoded on the path (:func:`hybridhash.metrics.mean_average_precision`), and its difference from fp32's;
- ``images_per_s``: the path's encoding speed on this CPU (``cpu`` and ``unit_flags`` record which).

With ``calibration_images`` the fp32 export in ``folder`` is first quantized to int8
(:func:`hybridhash.quantize.quantize_int8`) on those images, which must not be among the held-out
ones. OpenVINO bf16 is measured only on CPUs with bf16 units: elsewhere OpenVINO runs it at f32,
and the figure would describe fp32. ``--precision auto`` reads the file
(:func:`hybridhash.precision.choose_precision`).
"""
from __future__ import annotations

import datetime
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .engines import onnx_available, openvino_available
from .engines.encoding import encode_images
from .engines.exports import CALIBRATION_FORMAT, CALIBRATION_NAME, CALIBRATION_VERSION, INT8_NAME, ONNX_NAME
from .errors import CheckpointError, DataError
from .fileio import write_json
from .precision import AGREEMENT_THRESHOLD, RUNTIME_PRECISIONS, cpu_has_bf16_units, cpu_model, unit_flags

_log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
BATCH = 32


def bit_agreement(codes: np.ndarray, reference: np.ndarray) -> float:
    """The share of equal entries of two +-1 code arrays of one shape (n, bits); 1.0 for none."""
    codes, reference = np.asarray(codes), np.asarray(reference)
    if codes.shape != reference.shape:
        raise DataError(f"codes of shape {codes.shape} cannot be compared with {reference.shape}")
    return float((codes == reference).mean()) if codes.size else 1.0


def measurable_paths(folder: PathLike, flags=None) -> List[Tuple[str, str]]:
    """The (runtime, precision) pairs besides torch fp32 that :func:`calibrate` measures here: those
    whose runtime is installed and whose graph is in ``folder``, OpenVINO bf16 only with bf16 units."""
    folder = Path(folder)
    installed = {"torch": True, "onnx": onnx_available(), "openvino": openvino_available()}
    has = {"fp32": True, "bf16": True, "int8": (folder / INT8_NAME).is_file()}
    paths = []
    for runtime, precisions in RUNTIME_PRECISIONS.items():
        for p in precisions:
            if (runtime, p) == ("torch", "fp32") or not installed[runtime] or not has[p]:
                continue
            if runtime != "torch" and not (folder / ONNX_NAME).is_file():
                continue
            if (runtime, p) == ("openvino", "bf16") and not cpu_has_bf16_units(flags):
                continue  # OpenVINO would run f32 and the figure would say nothing about bf16
            paths.append((runtime, p))
    return paths


def _open(checkpoint: PathLike, folder: Path, runtime: str, precision: str, threads: Optional[int]):
    if runtime == "torch":
        from .engines.pytorch import open_pytorch

        return open_pytorch(checkpoint, precision)
    from .engines.onnx import OnnxEncoder
    from .engines.openvino import OpenVinoEncoder

    file = folder / (INT8_NAME if precision == "int8" else ONNX_NAME)
    encoder = OpenVinoEncoder if runtime == "openvino" else OnnxEncoder
    return encoder.open(file, threads=threads, precision=precision)


def _encode(model: Any, images: Sequence[torch.Tensor]) -> Tuple[List[np.ndarray], float]:
    """Codes of each image tensor (N, 3, S, S) of ``images`` and the images per second of all."""
    encode_images(model, images[0][:BATCH], batch_size=BATCH)  # untimed: first-call set-up (packing, compiling)
    t0 = time.perf_counter()
    codes = [encode_images(model, x, batch_size=BATCH) for x in images]
    seconds = time.perf_counter() - t0
    return codes, sum(len(x) for x in images) / max(seconds, 1e-9)


def calibrate(checkpoint: PathLike, folder: PathLike, queries: torch.Tensor, *,
              query_labels: Optional[np.ndarray] = None, database: Optional[torch.Tensor] = None,
              database_labels: Optional[np.ndarray] = None, topk: Optional[int] = None,
              calibration_images: Optional[np.ndarray] = None, paths: Optional[Sequence[Tuple[str, str]]] = None,
              threads: Optional[int] = None, dataset: Optional[str] = None) -> Dict[str, Any]:
    """Measure every path against fp32 and write ``folder/calibration.json``; returns its document.

    Args:
        checkpoint: the project checkpoint whose fp32 export is ``folder/model.onnx``.
        queries: float32 (N, 3, S, S) preprocessed held-out images (N >= 1).
        query_labels, database, database_labels: for mAP (class ids (n,) or multi-hot (n, C)); all
            three or none.
        topk: the K of mAP@K (None: the whole database).
        calibration_images: float32 (M, 3, S, S), not held out: quantize the export to int8 on them first.
        paths: the (runtime, precision) pairs to measure (default :func:`measurable_paths`).
        dataset: what the images are, for the record.
    """
    from .engines.pytorch import open_pytorch
    from .metrics import mean_average_precision
    from .quantize import quantize_int8

    folder = Path(folder)
    if not (folder / ONNX_NAME).is_file():
        raise CheckpointError(f"{folder}: no {ONNX_NAME} to calibrate; write it with `hybridhash export`")
    if len(queries) == 0:
        raise DataError("calibration needs at least one held-out image")
    labelled = query_labels is not None and database is not None and database_labels is not None
    if calibration_images is not None:
        quantize_int8(folder / ONNX_NAME, folder / INT8_NAME, calibration_images)
    sets = [queries] + ([database] if labelled else [])
    reference = open_pytorch(checkpoint).eval()
    ref_codes, ref_speed = _encode(reference, sets)

    def scored(codes: List[np.ndarray]) -> Optional[float]:
        return float(mean_average_precision(codes[0], codes[1], query_labels, database_labels, topk=topk)) \
            if labelled else None

    base_map = scored(ref_codes)
    entries = [{"runtime": "torch", "precision": "fp32", "agreement": 1.0, "map": base_map,
                "map_change": 0.0 if labelled else None, "images_per_s": round(ref_speed, 3)}]
    for runtime, precision in (measurable_paths(folder) if paths is None else paths):
        model = _open(checkpoint, folder, runtime, precision, threads)
        codes, speed = _encode(model, sets)
        m = scored(codes)
        entries.append({"runtime": runtime, "precision": precision,
                        "agreement": round(bit_agreement(codes[0], ref_codes[0]), 6), "map": m,
                        "map_change": None if m is None else m - base_map, "images_per_s": round(speed, 3)})
        _log.debug("calibrated %s %s: agreement %.4f%s", runtime, precision, entries[-1]["agreement"],
                  "" if m is None else f", mAP {m:.4f} ({m - base_map:+.4f})")
    doc = {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION,
           "fingerprint": getattr(reference, "fingerprint", None), "threshold": AGREEMENT_THRESHOLD,
           "dataset": dataset, "held_out": int(len(queries)), "database": int(len(database)) if labelled else 0,
           "calibration_images": None if calibration_images is None else int(len(calibration_images)),
           "topk": topk, "cpu": cpu_model(), "unit_flags": list(unit_flags()),
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "paths": entries}
    write_json(folder / CALIBRATION_NAME, doc)
    return doc
