"""The model as an ONNX graph, and an encoder that runs it with onnxruntime on the CPU.

``export_onnx(model, path)`` writes a graph ``images (B, 3, S, S) float32 -> outputs (B, bits) float32``
(the tanh outputs, before the sign) and ``codes (B, bits) int8`` (+-1, an output >= 0 is +1, as
``HybridHash.encode``), with a dynamic batch dimension. What a consumer needs to feed it travels in
the ONNX ``metadata_props`` under ``hybridhash.*`` keys (see :data:`META_KEYS`): the code length, the
model fingerprint (the one code collections record), the preprocessing dict (input size, resize
edge, mean, std, interpolation, pipeline family) as JSON and, for readers in other languages, its
main fields as plain strings.

``OnnxEncoder.open(path)`` reads such a file back; it offers what encoding and serving use of the
torch model (``bits``, ``preprocess``, ``fingerprint``, ``config``, ``encode``, ``__call__``,
``eval``/``to``), so it can stand in for it. Only ``onnxruntime`` is needed to run a graph; ``onnx``
only to write one. Both are the optional extra ``hybridhash[onnx]``.
"""
from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from .codes import binarize
from .limits import ONNX_OPSET
from .errors import CheckpointError, ConfigError, DataError, HybridHashError
from .fileio import atomic_path, loads_json

PathLike = Union[str, os.PathLike]

FORMAT = "hybridhash-onnx"
FORMAT_VERSION = 1
# 17 is the first opset with LayerNormalization as one node; onnxruntime >= 1.14 runs it
MIN_OPSET = DEFAULT_OPSET = ONNX_OPSET
INPUT_NAME = "images"
OUTPUT_NAME = "outputs"
CODES_NAME = "codes"
PREFIX = "hybridhash."
META_KEYS = (
    "format", "format_version", "bits", "fingerprint", "preset", "preprocess", "config",
    "img_size", "mean", "std", "interpolation", "input", "outputs", "codes", "hybridhash_version", "torch_version",
)


def _missing(package: str) -> HybridHashError:
    return ConfigError(f"the ONNX export needs the {package!r} package; install it with "
                       f"`pip install 'hybridhash[onnx]'`")


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
        "fingerprint": getattr(model, "fingerprint", None) or model_fingerprint(model),
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
        raise _missing("onnx") from None
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


def read_metadata(path: PathLike) -> Optional[Dict[str, str]]:
    """The ``hybridhash.*`` metadata of an ONNX file (prefix stripped), {} for an ONNX file without
    it, None for a file that is not ONNX at all. Needs ``onnx``; reads no external data."""
    try:
        import onnx
    except ImportError:
        raise _missing("onnx") from None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf raises DecodeError and others on foreign bytes
        return None
    if not proto.graph.node and not proto.metadata_props:
        return None  # an empty message parses from many foreign files
    return {p.key[len(PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(PREFIX)}


def is_project_onnx(path: PathLike) -> bool:
    """True when ``path`` is an ONNX file this project wrote (it carries the hybridhash metadata)."""
    meta = read_metadata(path)
    return bool(meta) and meta.get("format") == FORMAT


# --------------------------------------------------------------------------------------------
# inference

def _parse_metadata(path: Path, meta: Dict[str, str]) -> Dict[str, Any]:
    """Validated bits, fingerprint, preprocess and config of an export's metadata, else CheckpointError.

    The config is that of the architecture it names (HybridHash, a timm backbone, the small CNN),
    checked as a config.json's is; the preprocessing is checked as every pipeline checks it (sizes
    within :data:`hybridhash.limits.MAX_RESIZE`)."""
    from .data.transforms import build_transform
    from .models import config_from_dict

    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a hybridhash ONNX export (no {PREFIX}format metadata); "
                              f"write one with `hybridhash export`")
    try:
        version = int(meta.get("format_version", ""))
        bits = int(meta["bits"])
        fingerprint = meta["fingerprint"]
        preprocess = loads_json(meta["preprocess"], f"{path}: {PREFIX}preprocess")
        config = config_from_dict(loads_json(meta["config"], f"{path}: {PREFIX}config"))
        build_transform(preprocess, train=False)  # validates the dict
    except DataError as err:  # already names the file and the field
        raise CheckpointError(str(err)) from None
    except (KeyError, ValueError, TypeError) as err:
        what = f"no {PREFIX}{err.args[0]}" if isinstance(err, KeyError) else str(err).splitlines()[0][:200]
        raise CheckpointError(f"{path}: malformed hybridhash metadata ({what})") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: export format version {version} is newer than this hybridhash "
                              f"reads ({FORMAT_VERSION}); upgrade hybridhash")
    if bits <= 0 or bits != config.bits or int(preprocess["img_size"]) != config.img_size:
        raise CheckpointError(f"{path}: inconsistent hybridhash metadata (bits {bits}, config {config.bits} bits, "
                              f"img_size {preprocess['img_size']} vs {config.img_size})")
    return dict(bits=bits, fingerprint=fingerprint, preprocess=preprocess, config=config)


def _check_open(path: PathLike, threads: Optional[int]) -> Path:
    """``path`` as a Path, once it names a file and ``threads`` is usable (for every export runtime)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    if threads is not None and threads < 0:
        raise ConfigError(f"threads must be 0 or more, got {threads}")
    return path


def _check_graph(path: Path, inputs: list, outputs: list, input_shape: list, img_size: int) -> None:
    """A CheckpointError unless the graph has this project's input and output names, and an input of
    (batch, 3, img_size, img_size) as its metadata says (``input_shape``: ints, None where free)."""
    if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs or CODES_NAME not in outputs:
        raise CheckpointError(f"{path}: the graph has inputs {inputs} and outputs {outputs}, a hybridhash "
                              f"export has {INPUT_NAME!r} -> {OUTPUT_NAME!r}, {CODES_NAME!r}")
    want = [3, img_size, img_size]
    if len(input_shape) != 4 or any(d is not None and d != w for d, w in zip(input_shape[1:], want)):
        shown = ["?" if d is None else d for d in input_shape]
        raise CheckpointError(f"{path}: the graph's input {INPUT_NAME!r} is {shown}, but its metadata says images of "
                              f"{img_size}x{img_size} (B, 3, {img_size}, {img_size}); export the checkpoint again")


class OnnxEncoder:
    """A hybridhash ONNX export run by onnxruntime on the CPU; stands in for the torch model.

    Attributes:
        path: the ONNX file.
        bits, fingerprint, preprocess, config: read from the file's metadata (``config`` is the model's
            config, :class:`~hybridhash.models.HybridHashConfig` or another architecture's, so
            ``config.preset`` names the model).
        session: the ``onnxruntime.InferenceSession`` (its ``run`` is thread-safe).
    """

    training = False  # the torch model's flag, always off here

    def __init__(self, session: Any, path: Path, meta: Dict[str, Any]):
        self.session = session
        self.path = path
        self.bits: int = meta["bits"]
        self.fingerprint: str = meta["fingerprint"]
        self.preprocess: Dict[str, Any] = meta["preprocess"]
        self.config = meta["config"]
        self.checkpoint_meta = {"preprocess": self.preprocess, "fingerprint": self.fingerprint}
        self.img_size = int(self.preprocess["img_size"])

    @classmethod
    def open(cls, path: PathLike, *, threads: Optional[int] = None, inter_op_threads: int = 1,
             spinning: bool = True) -> "OnnxEncoder":
        """Load an export of :func:`export_onnx`.

        Args:
            threads: onnxruntime's intra-op threads (None or 0: its default, one per physical core).
            inter_op_threads: threads running independent graph nodes in parallel (1: sequential).
            spinning: let idle worker threads busy-wait for the next run (onnxruntime's default, the
                lowest latency). Turn it off where the process does other work between runs
                (decoding images, PyTorch's own threads): spinning threads take those cores.

        Raises:
            CheckpointError: no such file, not an ONNX model, or an ONNX model without the project's
                metadata (a foreign file), naming the file.
        """
        try:
            import onnxruntime as ort
        except ImportError:
            raise _missing("onnxruntime") from None
        path = _check_open(path, threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or 0)
        opts.inter_op_num_threads = max(1, int(inter_op_threads))
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
        opts.log_severity_level = 3  # errors only: the warnings about unused initialisers are noise
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for foreign bytes
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise CheckpointError(f"{path}: not a readable ONNX model ({first})") from None
        raw = session.get_modelmeta().custom_metadata_map
        meta = _parse_metadata(path, {k[len(PREFIX):]: v for k, v in raw.items() if k.startswith(PREFIX)})
        inputs = session.get_inputs()
        shape = [d if isinstance(d, int) else None for d in inputs[0].shape] if len(inputs) == 1 else []
        _check_graph(path, [i.name for i in inputs], [o.name for o in session.get_outputs()], shape,
                     meta["config"].img_size)
        return cls(session, path, meta)

    # the torch model's interface ------------------------------------------------------------
    def eval(self) -> "OnnxEncoder":
        return self

    def train(self, mode: bool = True) -> "OnnxEncoder":
        if mode:
            raise ConfigError(f"{self.path}: an ONNX export cannot be trained")
        return self

    def to(self, device: Union[str, torch.device, None] = None, *args: Any, **kwargs: Any) -> "OnnxEncoder":
        """Only the CPU: onnxruntime runs this export there (other arguments are ignored)."""
        if device is not None and torch.device(device).type != "cpu":
            raise ConfigError(f"the ONNX runtime runs on the CPU, not {device}; use the torch model for it")
        return self

    def _array(self, x: Any) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().float().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        s = self.img_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise DataError(f"a preprocessed batch must be (B, 3, {s}, {s}), got {tuple(x.shape)}")
        return x

    def _run(self, x: Any):
        x = self._array(x)
        if x.shape[0] == 0:
            return np.zeros((0, self.bits), np.float32), np.zeros((0, self.bits), np.int8)
        outputs, codes = self.session.run([OUTPUT_NAME, CODES_NAME], {INPUT_NAME: x})
        return outputs, codes

    def outputs(self, x: Any) -> np.ndarray:
        """Preprocessed images (B, 3, S, S) (tensor or array) -> float32 tanh outputs (B, bits)."""
        return self._run(x)[0]

    def __call__(self, x: Any) -> torch.Tensor:
        """As the torch model's forward: (B, 3, S, S) -> float32 tensor (B, bits) of tanh outputs."""
        return torch.from_numpy(self.outputs(x))

    def encode(self, x: Any) -> torch.Tensor:
        """(B, 3, S, S) -> int8 tensor (B, bits) of +-1 (an output >= 0 is +1), as ``HybridHash.encode``."""
        return torch.from_numpy(self._run(x)[1])

    def __repr__(self) -> str:
        return (f"OnnxEncoder({str(self.path)!r}, {self.config.preset}, bits={self.bits}, "
                f"fingerprint={self.fingerprint})")
