"""Reading and writing weights: the project format, ImageNet NesT weights, and checked loading.

Never unpickles: project checkpoints are safetensors + JSON; foreign ``.pth`` files are read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from timm.models.nest import resize_pos_embed

from ..errors import CheckpointError, CheckpointMismatchError
from ..fileio import read_json, write_json, write_safetensors

if TYPE_CHECKING:  # the model file imports this one, never the reverse
    from .hybridhash import HybridHash, HybridHashConfig

_log = logging.getLogger(__name__)

FORMAT = "hybridhash"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------------
# raw state dicts

def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` file (weights only).

    A ``.pth`` holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise _unreadable(path, err) from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or corrupt files
        if "weights_only" in str(err) or "Weights only" in str(err):
            # torch's own text advises weights_only=False, i.e. running whatever the file holds: never say that
            raise CheckpointError(_objects_message(path, err)) from None
        raise CheckpointError(f"{path}: not a weights-only PyTorch checkpoint ({_first_line(err)})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return obj


def read_shapes(path: PathLike) -> Dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file as meta tensors (names and shapes, no data): read from
    its header only, so a network can be compared with a file before either is allocated."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _unreadable(path, err) from None


def check_finite(state_dict: Dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError (one line) naming the first floating tensor holding a NaN or an infinity:
    one such weight makes every image's code the same."""
    for k, t in state_dict.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{source}: weight {k} holds {bad} values that are not finite (NaN or infinite); "
                                  f"the model cannot be used, retrain it or load an earlier checkpoint")


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable safetensors file ({_first_line(err)})")


def _objects_message(path: Path, err: BaseException) -> str:
    """One line for a ``.pth`` that ``torch.load(weights_only=True)`` refuses: it pickles other objects."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    example = f" (e.g. {found.group(1)})" if found else ""
    return (f"{path}: holds Python objects other than tensors{example}, which are not loaded because unpickling "
            f"them can run code; in an environment you trust, re-save only the weights with "
            f"torch.save(model.state_dict(), path), or convert them to .safetensors")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def check_state_dict(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointMismatchError (one line) unless ``state_dict`` has exactly the model's keys and shapes."""
    own = model.state_dict()
    cfg: Optional["HybridHashConfig"] = getattr(model, "config", None)
    bits_key = "hash_head.to_bits.weight"
    if cfg is not None and bits_key in state_dict and bits_key in own:
        got = state_dict[bits_key].shape[0]
        if got != cfg.bits:
            raise CheckpointMismatchError(f"{source} makes {got}-bit codes, the model {cfg.bits}-bit ones")
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    name = cfg.preset if cfg is not None else type(model).__name__
    if wrong:
        k = wrong[0]
        raise CheckpointMismatchError(
            f"{source} is not a checkpoint of this {name} model: {len(wrong)} tensors differ in shape, "
            f"e.g. {k} is {tuple(state_dict[k].shape)} there and {tuple(own[k].shape)} here")
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointMismatchError(f"{source} does not fit this {name} model: keys {', '.join(parts)}")


def load_checked(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` after :func:`check_state_dict` and :func:`check_finite`, so
    errors are one line."""
    check_state_dict(model, state_dict, source)
    check_finite(state_dict, source)
    model.load_state_dict(state_dict, strict=True)


def _digest(names: Iterable[str], tensor: Callable[[str], torch.Tensor]) -> str:
    """The fingerprint of the tensors ``tensor(name)``, taken one at a time in name order."""
    h = hashlib.sha256()
    for k in sorted(names):
        t = tensor(k).detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype};".encode())
        # flattened first: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def fingerprint_state_dict(state_dict: Dict[str, torch.Tensor]) -> str:
    """A short stable hash of tensor names, shapes, dtypes and values (identifies a trained model)."""
    return _digest(state_dict, state_dict.__getitem__)


# (resolved path, device, inode, size, mtime_ns, ctime_ns) -> fingerprint: a file replaced or
# rewritten changes one of them, so a cached value is always that of the file's current bytes
_fingerprints: Dict[Tuple[Any, ...], str] = {}
_fingerprints_lock = threading.Lock()


def weights_fingerprint(path: PathLike, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> str:
    """The fingerprint of the weights in a ``.safetensors`` file: what identifies the model a code
    collection or an export was made with (config.json's record is only a note, as a file beside
    the weights may be stale). ``state_dict``, the file's tensors when they are already loaded,
    saves reading them again. Kept per process until the file changes (size, mtime, inode)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the weights ({err.strerror})") from None
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _fingerprints_lock:
        if key in _fingerprints:
            return _fingerprints[key]
    if state_dict is not None:
        fp = fingerprint_state_dict(state_dict)
    else:
        try:  # one tensor in memory at a time
            with safe_open(str(path), framework="pt") as f:
                fp = _digest(f.keys(), f.get_tensor)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise _unreadable(path, err) from None
    with _fingerprints_lock:
        _fingerprints[key] = fp
    return fp


def model_fingerprint(model: Any) -> str:
    """What identifies ``model``'s weights, as code collections, indexes and exports record it.

    A model loaded by :func:`~.factory.from_pretrained` and an export engine carry the fingerprint of
    the file they were read from (``model.fingerprint``); any other model's is computed from its
    state dict on every call. Nothing is kept on the model: a model being trained changes its
    weights, and a kept value would then name weights it no longer has.
    """
    fp = getattr(model, "fingerprint", None)
    return fp if fp else fingerprint_state_dict(model.state_dict())


# --------------------------------------------------------------------------------------------
# the project format

def save_pretrained(model: "HybridHash", directory: PathLike, **extra: Any) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (arch, preset, overrides, bits, preprocessing, and
    ``head``: the record of a hashing method's own head, see :mod:`.heads`).

    ``arch`` ("hybridhash", "timm", "cnn") tells :func:`~.factory.from_pretrained` which network to build.

    ``extra`` is stored under ``"extra"`` in the JSON (e.g. training metadata). Both writes are atomic;
    the weights are written first, so a config always describes complete weights.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_safetensors(directory / WEIGHTS_NAME, state, metadata={"format": FORMAT})
    head = getattr(model, "method_head", None)  # a hashing method's head in place of the bits layer
    write_json(directory / CONFIG_NAME, {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": getattr(model.config, "arch", "hybridhash"),
        "preset": model.config.preset,
        "bits": model.config.bits,
        "config": model.config.to_dict(),
        "preprocess": model.config.preprocess,
        "fingerprint": fingerprint_state_dict(state),
        **({"head": head} if head else {}),
        "extra": extra,
    })
    return directory


def read_config(directory: PathLike) -> Dict[str, Any]:
    """The ``config.json`` of a project checkpoint directory, validated."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME if directory.is_dir() else directory.with_name(CONFIG_NAME)
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: not a hybridhash checkpoint (no {CONFIG_NAME})")
    try:
        meta = read_json(cfg_path)
    except ValueError as err:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({_first_line(err)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"{cfg_path}: not a hybridhash checkpoint config")
    version = meta.get("format_version", FORMAT_VERSION)  # every version so far wrote it
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{cfg_path}: format_version must be a whole number from 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path}: checkpoint format version {version} is newer than this hybridhash reads "
                              f"({FORMAT_VERSION}); upgrade hybridhash")
    return meta


# --------------------------------------------------------------------------------------------
# ImageNet NesT weights

_BEYOND = re.compile(r"^levels\.(\d+)\.transformer_encoder\.(\d+)\.")


@dataclass
class LoadReport:
    """What happened to each tensor when NesT weights were loaded into a HybridHash model."""

    source: str
    loaded: List[str] = field(default_factory=list)
    resized: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    left_at_init: List[str] = field(default_factory=list)

    @staticmethod
    def _groups(keys: List[str]) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for k in keys:
            if k.startswith("hash_head."):
                g = "hash_head"
            elif ".pool.conv_glo." in k or ".pool.global_attention." in k:
                g = k.split(".pool.")[0] + ".pool (global branch)"
            elif k.startswith("head."):
                g = "head (classifier)"
            elif _BEYOND.match(k):
                m = _BEYOND.match(k)
                g = f"levels.{m.group(1)}.transformer_encoder beyond the configured depth"
            else:
                g = k.rsplit(".", 1)[0]
            out[g] = out.get(g, 0) + 1
        return out

    @property
    def left_at_init_groups(self) -> Dict[str, int]:
        return self._groups(self.left_at_init)

    @property
    def dropped_groups(self) -> Dict[str, int]:
        return self._groups(self.dropped)

    def __str__(self) -> str:
        def fmt(d: Dict[str, int]) -> str:
            return "; ".join(f"{k}: {v}" for k, v in d.items()) or "none"
        return (f"weights from {self.source}: loaded {len(self.loaded)} tensors "
                f"({len(self.resized)} position embeddings resized); dropped {len(self.dropped)} "
                f"[{fmt(self.dropped_groups)}]; left at init {len(self.left_at_init)} "
                f"[{fmt(self.left_at_init_groups)}]")


def _imagenet_state_dict(source_name: str, **kwargs: Any) -> Dict[str, torch.Tensor]:
    """timm's pretrained weights of ``source_name`` (a model built with ``kwargs``), as a state dict."""
    import timm

    try:  # timm downloads the weights from the Hugging Face hub on a user's machine
        nest = timm.create_model(source_name, pretrained=True, **kwargs)
    except Exception as err:
        raise CheckpointError(
            f"could not fetch ImageNet weights {source_name!r} through timm ({_first_line(err)}); "
            f"download them elsewhere and pass the file as pretrained=<path>") from None
    return nest.state_dict()


def _resize_nest_pos_embed(key: str, value: torch.Tensor, own: torch.Tensor) -> Optional[torch.Tensor]:
    """NesT's (1, T, N, C) position embeddings at another image size, resized; None if not one."""
    if key.endswith(".pos_embed") and value.dim() == 4 and value.shape[1] == own.shape[1] \
            and value.shape[3] == own.shape[3]:
        return resize_pos_embed(value.float(), own)
    return None


def load_matching(model: torch.nn.Module, state: Dict[str, torch.Tensor], name: str, *, prefix: str = "",
                  resize: Optional[Callable[[str, torch.Tensor, torch.Tensor], Optional[torch.Tensor]]] = None,
                  kind: str = "") -> LoadReport:
    """Load the tensors of ``state`` whose names (after ``prefix``) are the model's; report the rest.

    Tensors the model lacks (a classifier, deeper layers) are dropped; the model's tensors the
    state lacks (the hash layer, new branches) keep their init; ``resize(key, value, own)`` may
    adapt a tensor of another shape (position embeddings) or return None. Any other shape
    difference, or no tensor in common, raises CheckpointMismatchError naming the culprit.
    """
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    check_finite(state, name)
    own = model.state_dict()
    report = LoadReport(source=name)
    new_state = dict(own)
    wrong = []
    for k, v in state.items():
        mk = prefix + k
        if mk not in own:
            report.dropped.append(k)
            continue
        if v.shape != own[mk].shape:
            resized = resize(mk, v, own[mk]) if resize is not None else None
            if resized is None or resized.shape != own[mk].shape:
                wrong.append(k)
                continue
            v = resized
            report.resized.append(mk)
        new_state[mk] = v.to(own[mk].dtype)
        report.loaded.append(mk)
    model_name = model.config.preset
    if wrong:
        k = wrong[0]
        raise CheckpointMismatchError(
            f"{name} does not fit {model_name}: {len(wrong)} tensors differ in shape, e.g. {k} is "
            f"{tuple(state[k].shape)} there and {tuple(own[prefix + k].shape)} here (another model size?)")
    if not report.loaded:
        raise CheckpointMismatchError(f"{name}: no tensor matches a parameter of {model_name}; "
                                      f"is it a {kind + ' ' if kind else ''}state dict of that model?")
    loaded = set(report.loaded)
    report.left_at_init = [k for k in own if k not in loaded]
    model.load_state_dict(new_state, strict=True)
    return report


def load_nest_weights(model: "HybridHash", source: Union[str, Path, Dict[str, torch.Tensor]]) -> LoadReport:
    """Load NesT weights (timm names) into the matching parameters of ``model``.

    ``source`` is ``"imagenet"`` (timm's weights for the preset), a file path, or a state dict.
    Position embeddings are resized to the model's image size; NesT's classifier and layers beyond
    the configured depth are dropped; the global branches and the hash head keep their init.
    Raises CheckpointMismatchError if tensors of the same name do not fit (another model size).
    """
    if isinstance(source, dict):
        state, name = source, "state dict"
    elif str(source) == "imagenet":
        if not model.config.pretrained_source:
            raise CheckpointError(f"preset {model.config.preset} has no ImageNet weights")
        state, name = _imagenet_state_dict(model.config.pretrained_source), f"timm:{model.config.pretrained_source}"
    else:
        state, name = read_state_dict(source), str(source)
    report = load_matching(model, state, name, resize=_resize_nest_pos_embed, kind="NesT")
    _log.info("%s", report)
    return report
