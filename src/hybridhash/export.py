"""The model written as an ONNX graph, for onnxruntime, OpenVINO and other runtimes.

``export_onnx(model, path)`` writes a graph ``images (B, 3, S, S) float32 -> outputs (B, bits) float32``
(the tanh outputs, before the sign) and ``codes (B, bits) int8`` (+-1, an output >= 0 is +1, as
``HybridHash.encode``), with a dynamic batch dimension. What a consumer needs to feed it travels in
the ONNX ``metadata_props`` under ``hybridhash.*`` keys (:data:`~hybridhash.engines.exported.META_KEYS`):
the code length, the model fingerprint (the one code collections record), the preprocessing dict
(input size, resize edge, mean, std, interpolation, pipeline family) as JSON and, for readers in
other languages, its main fields as plain strings.

The file's names and metadata keys are those the engines read (:mod:`hybridhash.engines.exported`);
:class:`hybridhash.engines.onnx.OnnxEncoder` and :class:`hybridhash.engines.openvino.OpenVinoEncoder`
run it in place of the torch model. Writing needs ``onnx`` (the optional extra ``hybridhash[onnx]``).
"""
from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any, Dict

import torch

from .codes import binarize
from .engines.exported import (CODES_NAME, FORMAT, FORMAT_VERSION, INPUT_NAME, OUTPUT_NAME, PREFIX, PathLike,
                               missing_package)
from .errors import ConfigError
from .fileio import atomic_path
from .limits import ONNX_OPSET

# 17 is the first opset with LayerNormalization as one node; onnxruntime >= 1.14 runs it
MIN_OPSET = DEFAULT_OPSET = ONNX_OPSET


# --------------------------------------------------------------------------------------------
# export

class _WithCodes(torch.nn.Module):
    """images (B, 3, S, S) -> (tanh outputs (B, bits), int8 +-1 codes (B, bits))."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        u = self.model(x)
        return u, binarize(u)  # traced into the graph as a where(u >= 0) node


def _torchscript_exporter() -> Dict[str, Any]:
    """``dynamo=False`` where torch.onnx.export has the switch (torch >= 2.5; the default from 2.9 is
    the torch.export-based exporter, which needs the onnxscript package); older torch has only the
    TorchScript one."""
    import inspect

    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def _max_opset() -> int:
    """The newest opset the TorchScript exporter of this torch writes (it keeps the figure privately)."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", 17)))


def export_metadata(model: torch.nn.Module) -> Dict[str, str]:
    """The ``hybridhash.*`` metadata_props of ``model``'s export (all values strings)."""
    from . import __version__
    from .data.transforms import model_preprocess
    from .models import model_fingerprint

    pre = model_preprocess(model)  # with the pipeline family a checkpoint recorded
    cfg = model.config
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "bits": str(int(model.bits)),
        "fingerprint": model_fingerprint(model),
        "preset": cfg.preset,
        "preprocess": json.dumps(pre, sort_keys=True),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        # the same facts as plain strings, for readers that do not parse JSON
        "img_size": str(pre["img_size"]),
        "mean": ",".join(repr(float(v)) for v in pre["mean"]),
        "std": ",".join(repr(float(v)) for v in pre["std"]),
        "interpolation": str(pre.get("interpolation", "bilinear")),
        "input": INPUT_NAME,
        "outputs": OUTPUT_NAME,
        "codes": CODES_NAME,
        "hybridhash_version": str(__version__),
        "torch_version": torch.__version__,
    }
    return {PREFIX + k: v for k, v in meta.items()}


def export_onnx(model: torch.nn.Module, path: PathLike, *, opset: int = DEFAULT_OPSET,
                batch_dynamic: bool = True) -> Path:
    """Write ``model`` as an ONNX graph at ``path`` (atomically) and return the path.

    Args:
        model: a project model of any architecture (left untouched: a float32 CPU copy in eval mode
            is exported, with the attention kernel it is configured with).
        opset: the ONNX opset (17 or later).
        batch_dynamic: a free batch dimension named ``batch``; False fixes it to 1.

    The graph has input ``images`` (B, 3, S, S) float32, already preprocessed (see
    :func:`hybridhash.data.transforms.build_transform`), and outputs ``outputs`` (B, bits) float32
    (tanh) and ``codes`` (B, bits) int8 +-1. The exporter is the TorchScript-based one
    (``dynamo=False``): it needs no extra package and handles timm's attention.
    """
    try:
        import onnx
    except ImportError:
        raise missing_package("onnx") from None
    if opset < MIN_OPSET:
        raise ConfigError(f"opset {opset} is too old; the export needs opset {MIN_OPSET} or later")
    if opset > _max_opset():
        raise ConfigError(f"torch {torch.__version__} exports up to opset {_max_opset()}, not {opset}")
    if not hasattr(model, "config") or not hasattr(model, "bits"):
        raise ConfigError(f"export_onnx needs a hybridhash model (with a config and bits), got {type(model).__name__}")
    meta = export_metadata(model)
    net = copy.deepcopy(model).float().cpu().eval()
    size, chans = net.config.img_size, net.config.in_chans
    # a batch of 2, so no size-1 dimension gets folded into the graph as a constant
    example = torch.zeros(2 if batch_dynamic else 1, chans, size, size)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}, CODES_NAME: {0: "batch"}} if batch_dynamic else None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the tracer warns about shape arithmetic on the (fixed) spatial sizes, and torch about the
        # exporter being the TorchScript one; neither concerns the user of the file
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad():
                torch.onnx.export(_WithCodes(net), (example,), buf, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME, CODES_NAME],
                                  dynamic_axes=axes, do_constant_folding=True, **_torchscript_exporter())
        except Exception as err:  # the exporter raises RuntimeError, ValueError, its own types
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ConfigError(f"torch {torch.__version__} could not export the model at opset {opset} ({first}); "
                              f"opset {DEFAULT_OPSET} is known to work") from None
    proto = onnx.load_from_string(buf.getvalue())
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.doc_string = (f"hybridhash {meta[PREFIX + 'preset']} {meta[PREFIX + 'bits']}-bit hashing model "
                        f"{meta[PREFIX + 'fingerprint']}: images (B, 3, {size}, {size}) preprocessed as in "
                        f"{PREFIX}preprocess -> {OUTPUT_NAME} (B, bits) tanh, {CODES_NAME} (B, bits) int8 +-1")
    onnx.checker.check_model(proto)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return path
