"""The fast default: a checkpoint exported, quantized and calibrated on first use, where it may pay.

``--precision auto`` takes a reduced precision only from measured figures
(:func:`hybridhash.precision.choose_precision`), and those need an export. :func:`auto_export`
writes one without a manual step: when the checkpoint has no export yet and this CPU has bf16 or
int8 units that the runtime ``auto`` would take can use, it writes ``model.onnx``, its int8
quantization and ``calibration.json`` (:mod:`hybridhash.calibration`) into the weights' cache folder
(:func:`hybridhash.engines.exports.cache_dir`), never into the user's checkpoint folder.

The work is done in a temporary folder inside the cache folder, under the folder's writer's lock
(:func:`hybridhash.locking.exclusive`: a second process skips instead of racing), and the files are
moved into place with ``model.onnx`` last, so a reader finds either no export or a complete one. A
file in the way that the project did not write is never replaced: the export is skipped, said in a
warning. ``HYBRIDHASH_NO_AUTO_EXPORT=1`` (or ``encode --no-auto-export``) turns it off.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, FrozenSet, Optional, Union

import torch

from .engines import onnx_available, openvino_available
from .engines.exports import CALIBRATION_FORMAT, CALIBRATION_NAME, INT8_NAME, ONNX_NAME, cache_dir, export_dir
from .errors import HybridHashError
from .precision import AGREEMENT_THRESHOLD, RUNTIME_PRECISIONS, has_units, unit_flags

_log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
NO_AUTO_EXPORT_ENV = "HYBRIDHASH_NO_AUTO_EXPORT"
# images of the collection per half: int8's ranges are calibrated on one half, agreement is measured
# on the other (``hybridhash export --calibrate-images`` takes the same default)
CALIBRATION_IMAGES = 256
MIN_IMAGES = 32  # fewer held-out images than half of this say too little about a flipped bit's rate
WRITTEN = (CALIBRATION_NAME, INT8_NAME, ONNX_NAME)  # in the order they are put in place: the export last
SKIP_HINT = f"skip with --no-auto-export or {NO_AUTO_EXPORT_ENV}=1"

# (transform, count) -> float32 (m, 3, S, S) preprocessed images, m <= count, spread over the collection
ImageSource = Callable[[Callable, int], torch.Tensor]


def auto_export_disabled() -> bool:
    """Whether ``HYBRIDHASH_NO_AUTO_EXPORT`` is set to something other than empty, 0, false or no."""
    return os.environ.get(NO_AUTO_EXPORT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def units_to_gain(flags: Optional[FrozenSet[str]] = None) -> Optional[str]:
    """The reduced precisions with units here that the runtime ``auto`` takes once an export exists
    (OpenVINO where installed, else PyTorch) runs, in words ("int8, bf16"); None when there are none."""
    runtime = "openvino" if openvino_available() else "torch"
    gain = [p for p in ("int8", "bf16") if p in RUNTIME_PRECISIONS[runtime] and has_units(p, flags)]
    return ", ".join(gain) or None


def _ours(path: Path) -> bool:
    """Whether ``path`` is absent or a file the project wrote (an export or calibration figures)."""
    if not path.exists() and not path.is_symlink():
        return True
    if path.is_symlink() or not path.is_file():
        return False
    if path.name == CALIBRATION_NAME:
        from .fileio import read_json

        try:
            doc = read_json(path)
        except (OSError, ValueError, UnicodeDecodeError, HybridHashError):
            return False
        return isinstance(doc, dict) and doc.get("format") == CALIBRATION_FORMAT
    from .engines.exported import is_project_onnx

    return is_project_onnx(path)


def auto_export(checkpoint: PathLike, images: ImageSource, *, flags: Optional[FrozenSet[str]] = None,
                threads: Optional[int] = None) -> Optional[Path]:
    """Export, quantize and calibrate ``checkpoint`` into its weights' cache folder when it has no
    export and this CPU has units to gain from one; the folder written, or None when nothing was.

    Args:
        checkpoint: a project checkpoint directory.
        images: gives preprocessed images of the data to be encoded (:data:`ImageSource`); called
            only when an export is made, for up to ``2 * CALIBRATION_IMAGES``.
        flags: CPU flags (default: this CPU's, :func:`hybridhash.precision.cpu_flags`).
        threads: the export runtimes' threads while calibrating.

    Never raises for a failed export: the checkpoint still encodes at fp32, and a warning says why.
    """
    path = Path(checkpoint)
    if auto_export_disabled() or path.suffix == ".onnx" or export_dir(path) is not None:
        return None
    gain = units_to_gain(flags)
    if gain is None:
        return None  # nothing faster could be measured: auto stays fp32, as without an export
    if not onnx_available():
        _log.info("no automatic export: it needs onnxruntime (pip install 'hybridhash[onnx]'); --precision auto "
                  "runs fp32")
        return None
    from .engines.pytorch import weights_beside
    from .locking import LockedError, exclusive

    fingerprint = weights_beside(path)
    if fingerprint is None:
        return None
    folder = cache_dir(fingerprint)
    try:
        with exclusive(folder, what="export cache"):
            if export_dir(path) is not None:  # another process finished it while this one waited
                return None
            return _export_into(path, folder, images, gain, flags, threads)
    except LockedError as err:
        _log.warning("no automatic export (%s); this run goes on without it", err)
    except HybridHashError as err:
        _log.warning("no automatic export: %s; --precision auto runs fp32 (%s)", err, SKIP_HINT)
    except Exception as err:  # an exporter's own failure: an optional speed-up must not stop the encode
        _log.warning("no automatic export: %s: %s; --precision auto runs fp32 (%s)", type(err).__name__,
                     " ".join(str(err).split())[:200], SKIP_HINT)
    return None


def _export_into(path: Path, folder: Path, images: ImageSource, gain: str, flags, threads) -> Optional[Path]:
    """The locked part of :func:`auto_export`: write in a temporary folder, then move into ``folder``."""
    from .calibration import calibrate
    from .data.transforms import eval_transform
    from .export import export_onnx
    from .models import from_pretrained

    foreign = [str(folder / n) for n in WRITTEN if not _ours(folder / n)]
    if foreign:
        _log.warning("no automatic export: %s was not written by hybridhash and is not replaced; move it away "
                     "(or %s)", ", ".join(foreign), SKIP_HINT)
        return None
    t0 = time.perf_counter()
    model = from_pretrained(path).eval()
    x = images(eval_transform(model), 2 * CALIBRATION_IMAGES)
    if x is None or len(x) < MIN_IMAGES:
        _log.info("no automatic export: %d readable images, calibration needs %d; `hybridhash export "
                  "--calibrate DATA` measures on other data", 0 if x is None else len(x), MIN_IMAGES)
        return None
    shown = ", ".join(unit_flags(flags))
    _log.info("exporting %s once to %s because this CPU has %s units (%s) that --precision auto may take: "
              "an ONNX export, its int8 quantization on %d of this collection's images, and %d more encoded "
              "on every runtime and precision here to measure them against fp32 (the time of a few such "
              "encodes, said when done); %s", path, folder, gain, shown, len(x[0::2]), len(x[1::2]), SKIP_HINT)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        export_onnx(model, work / ONNX_NAME)
        doc = calibrate(path, work, x[1::2], calibration_images=x[0::2].numpy(), threads=threads,
                        dataset="images of the first collection encoded")
        bad = [e for e in doc["paths"] if e["precision"] == "fp32" and e["agreement"] < AGREEMENT_THRESHOLD]
        if bad:  # the fp32 graph itself disagrees with PyTorch: never where `--runtime auto` would find it
            _log.warning("no automatic export: the ONNX graph gives other codes than PyTorch at fp32 on %s "
                         "(agreement %.4f); please report this with the model's config", bad[0]["runtime"],
                         bad[0]["agreement"])
            return None
        for name in WRITTEN:
            if (work / name).is_file():
                if not _ours(folder / name):  # appeared since the check above
                    _log.warning("no automatic export: %s appeared and is not replaced", folder / name)
                    return None
                os.replace(work / name, folder / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the temporary folder this function made
    _log.info("exported and calibrated %s in %.1f s into %s", path, time.perf_counter() - t0, folder)
    return folder
