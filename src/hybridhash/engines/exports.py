"""Where a checkpoint's exports live and what is measured about them.

A checkpoint's exports sit in one folder: beside the checkpoint (``hybridhash export`` writes them
there) or, when the checkpoint's folder has none, in the cache folder of its weights
(:func:`cache_dir`; :mod:`hybridhash.autoexport` writes it when ``encode`` runs a checkpoint
without an export on a CPU with bf16 or int8 units). That folder holds the
fp32 graph :data:`ONNX_NAME`, optionally the quantized graph :data:`INT8_NAME` and the calibration
figures :data:`CALIBRATION_NAME` (:mod:`hybridhash.calibration` writes them; ``--precision auto``
reads them through :func:`read_calibration`). The cache is
``$HYBRIDHASH_CACHE``, else ``$XDG_CACHE_HOME/hybridhash``, else ``~/.cache/hybridhash``, with
one folder per weights fingerprint under ``exports/``: the same weights always find the same graphs.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

_log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

ONNX_NAME = "model.onnx"  # the fp32 export
INT8_NAME = "model.int8.onnx"  # its int8 quantization (QDQ), run by onnxruntime and OpenVINO
CALIBRATION_NAME = "calibration.json"  # bit agreement (and mAP) of each runtime and precision
CALIBRATION_FORMAT = "hybridhash-calibration"
CALIBRATION_VERSION = 1
CACHE_ENV = "HYBRIDHASH_CACHE"


def cache_root() -> Path:
    """The project's cache folder (see the module docstring); it may not exist."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hybridhash"


def cache_dir(fingerprint: str) -> Path:
    """The cache folder of the exports of the weights with ``fingerprint``."""
    safe = "".join(c for c in str(fingerprint) if c.isalnum() or c in "-_")
    return cache_root() / "exports" / (safe or "unknown")


def _checkpoint_dir(checkpoint: PathLike) -> Path:
    p = Path(checkpoint)
    return p if p.is_dir() else p.parent


def export_dir(checkpoint: PathLike) -> Optional[Path]:
    """The folder of ``checkpoint``'s exports: the folder of an ``.onnx`` file named itself, the
    checkpoint's folder when it holds :data:`ONNX_NAME`, else its weights' cache folder when that
    does; None without an export."""
    p = Path(checkpoint)
    if p.suffix == ".onnx":
        return p.parent
    here = _checkpoint_dir(p)
    if (here / ONNX_NAME).is_file():
        return here
    if not (cache_root() / "exports").is_dir():  # nothing cached: no need to read the weights
        return None
    from .pytorch import weights_beside

    fingerprint = weights_beside(p)
    if fingerprint is None:
        return None
    cached = cache_dir(fingerprint)
    return cached if (cached / ONNX_NAME).is_file() else None


def onnx_beside(checkpoint: PathLike) -> Optional[Path]:
    """The fp32 ONNX export that goes with ``checkpoint``: the file itself, or :data:`ONNX_NAME` in its
    export folder (:func:`export_dir`)."""
    p = Path(checkpoint)
    if p.suffix == ".onnx":
        return p
    where = export_dir(p)
    return None if where is None else where / ONNX_NAME


def int8_beside(checkpoint: PathLike) -> Optional[Path]:
    """The int8 graph that goes with ``checkpoint`` (an ``.onnx`` file named is itself), or None."""
    p = Path(checkpoint)
    if p.suffix == ".onnx":
        return p
    where = export_dir(p)
    return where / INT8_NAME if where is not None and (where / INT8_NAME).is_file() else None


def read_calibration(checkpoint: PathLike, fingerprint: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The calibration figures in ``checkpoint``'s export folder, or None when there are none, they
    are unreadable, or they were measured on other weights than ``fingerprint`` (a warning says so)."""
    from ..fileio import read_json

    where = export_dir(checkpoint)
    path = None if where is None else where / CALIBRATION_NAME
    if path is None or not path.is_file():
        return None
    try:
        doc = read_json(path)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        _log.warning("%s: not used, unreadable (%s)", path, type(err).__name__)
        return None
    if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT or not isinstance(doc.get("paths"), list):
        _log.warning("%s: not used, not calibration figures of hybridhash", path)
        return None
    if fingerprint is not None and doc.get("fingerprint") != fingerprint:
        _log.warning("%s: not used, measured on other weights (%s, the model is %s); calibrate again",
                     path, doc.get("fingerprint"), fingerprint)
        return None
    return doc
