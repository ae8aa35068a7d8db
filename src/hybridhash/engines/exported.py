"""What the engines of an ONNX export share: the file's names and metadata, their checks, and the
torch model's interface over a graph.

A hybridhash export (written by :func:`hybridhash.export.export_onnx`) is a graph
``images (B, 3, S, S) float32 -> outputs (B, bits) float32`` (the tanh outputs, before the sign) and
``codes (B, bits) int8`` (+-1, an output >= 0 is +1), whose ``metadata_props`` carry, under
``hybridhash.*`` keys (:data:`META_KEYS`), the code length, the model fingerprint, the
preprocessing and the model's config. The writer takes the names from here, and every reader
(:mod:`.onnx`, :mod:`.openvino`) checks a file with :func:`parse_metadata` and :func:`check_graph`
and offers the torch model's interface through :class:`ExportEncoder`.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError, DataError, HybridHashError
from ..fileio import loads_json

PathLike = Union[str, os.PathLike]

FORMAT = "hybridhash-onnx"
FORMAT_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAME = "outputs"
CODES_NAME = "codes"
PREFIX = "hybridhash."
META_KEYS = (
    "format", "format_version", "bits", "fingerprint", "preset", "preprocess", "config",
    "img_size", "mean", "std", "interpolation", "input", "outputs", "codes", "hybridhash_version", "torch_version",
    "precision",  # only in a quantized graph ("int8", written by hybridhash.quantize); absent: fp32
)


def missing_package(package: str) -> HybridHashError:
    """The error for an optional ONNX package that is not installed (``onnx`` or ``onnxruntime``)."""
    return ConfigError(f"the ONNX export needs the {package!r} package; install it with "
                       f"`pip install 'hybridhash[onnx]'`")


def read_metadata(path: PathLike) -> Optional[Dict[str, str]]:
    """The ``hybridhash.*`` metadata of an ONNX file (prefix stripped), {} for an ONNX file without
    it, None for a file that is not ONNX at all. Needs ``onnx``; reads no external data."""
    try:
        import onnx
    except ImportError:
        raise missing_package("onnx") from None
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


def parse_metadata(path: Path, meta: Dict[str, str]) -> Dict[str, Any]:
    """Validated bits, fingerprint, preprocess and config of an export's metadata, else CheckpointError.

    The config is that of the architecture it names (HybridHash, a timm backbone, the small CNN),
    checked as a config.json's is; the preprocessing is checked as every pipeline checks it (sizes
    within :data:`hybridhash.limits.MAX_RESIZE`)."""
    from ..data.transforms import build_transform
    from ..models import config_from_dict

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
    precision = meta.get("precision", "fp32")
    if precision not in ("fp32", "int8"):
        raise CheckpointError(f"{path}: malformed hybridhash metadata (precision {precision!r})")
    return dict(bits=bits, fingerprint=fingerprint, preprocess=preprocess, config=config, graph_precision=precision)


def run_precision(path: Path, meta: Dict[str, Any], asked: str) -> str:
    """The precision an engine runs the graph at: int8 for a quantized graph (asked int8 or auto),
    else ``asked`` (fp32 or bf16; auto is fp32). A ConfigError for int8 asked of an fp32 graph, or
    another precision of a quantized one."""
    from ..precision import check_precision

    check_precision(asked)
    if meta["graph_precision"] == "int8":
        if asked not in ("int8", "auto"):
            raise ConfigError(f"{path} is an int8 graph; --precision {asked} runs model.onnx beside it")
        return "int8"
    if asked == "int8":
        raise ConfigError(f"{path} is not quantized; --precision int8 runs model.int8.onnx, written by "
                          f"`hybridhash export --calibrate DATA`")
    return "fp32" if asked == "auto" else asked


def check_open(path: PathLike, threads: Optional[int]) -> Path:
    """``path`` as a Path, once it names a file and ``threads`` is usable (for every export engine)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    if threads is not None and threads < 0:
        raise ConfigError(f"threads must be 0 or more, got {threads}")
    return path


def check_graph(path: Path, inputs: list, outputs: list, input_shape: list, img_size: int) -> None:
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


class ExportEncoder(ABC):
    """An export run by some engine on the CPU, standing in for the torch model: what encoding and
    serving use of it (``bits``, ``preprocess``, ``fingerprint``, ``config``, ``encode``,
    ``__call__``, ``eval``/``to``). An engine supplies :meth:`open` and :meth:`_infer`.

    Attributes:
        path: the ONNX file.
        bits, fingerprint, preprocess, config: read from the file's metadata (``config`` is the model's
            config, :class:`~hybridhash.models.HybridHashConfig` or another architecture's, so
            ``config.preset`` names the model).
        session: the engine's runnable model.
    """

    training = False  # the torch model's flag, always off here
    engine = "an export engine"  # how messages name it
    runtime = "export"  # its --runtime name

    def __init__(self, session: Any, path: Path, meta: Dict[str, Any]):
        self.session = session
        self.path = path
        self.bits: int = meta["bits"]
        self.fingerprint: str = meta["fingerprint"]
        self.preprocess: Dict[str, Any] = meta["preprocess"]
        self.config = meta["config"]
        self.checkpoint_meta = {"preprocess": self.preprocess, "fingerprint": self.fingerprint}
        self.img_size = int(self.preprocess["img_size"])
        # what the engine runs: set by the engine's open (see run_precision)
        self.inference_precision: str = meta.get("run_precision", "fp32")

    @abstractmethod
    def _infer(self, x: np.ndarray):
        """A non-empty float32 batch (B, 3, S, S) -> (outputs float32 (B, bits), codes int8 (B, bits))."""

    # the torch model's interface ------------------------------------------------------------
    def eval(self) -> "ExportEncoder":
        return self

    def train(self, mode: bool = True) -> "ExportEncoder":
        if mode:
            raise ConfigError(f"{self.path}: an ONNX export cannot be trained")
        return self

    def to(self, device: Union[str, torch.device, None] = None, *args: Any, **kwargs: Any) -> "ExportEncoder":
        """Only the CPU: the engine runs this export there (other arguments are ignored)."""
        if device is not None and torch.device(device).type != "cpu":
            raise ConfigError(f"{self.engine} runs on the CPU, not {device}; use the torch model for it")
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
        return self._infer(x)

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
        return (f"{type(self).__name__}({str(self.path)!r}, {self.config.preset}, bits={self.bits}, "
                f"fingerprint={self.fingerprint}, precision={self.inference_precision})")
