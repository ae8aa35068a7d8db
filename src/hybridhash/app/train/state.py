"""Training state as safetensors + JSON: optimizer state, loss bank, RNG states, counters. No pickle.

Tensors go into the safetensors file under flat names; everything else (param groups, scalar
optimizer entries, counters, Python and NumPy RNG states) is one JSON document stored in the
file's metadata, so a state is one file and is written atomically. A checkpoint directory (``last/``)
holds a model's weights and config beside the state written with them (:func:`save_checkpoint`).
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors import safe_open

from ...errors import CheckpointError
from ...fileio import loads_json, read_json, write_safetensors
from ..rundir import CONFIG_NAME

STATE_NAME = "training_state.safetensors"
STATE_FORMAT = "hybridhash-training-state"
STATE_VERSION = 1
PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------------
# optimizer state <-> (tensors, JSON)

def flatten_optimizer_state(state_dict: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into flat tensors ``optim.<param id>.<name>`` and JSON.

    Returns ``(tensors, meta)``; ``meta`` holds the param groups and any non-tensor per-parameter
    entries. :func:`unflatten_optimizer_state` inverts it exactly (tensor values bit for bit).
    """
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = _jsonable(value, f"optimizer state {name}")
    groups = [{k: _jsonable(v, f"optimizer param group {k}") for k, v in g.items()}
              for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Dict[str, Any]:
    """Rebuild an ``optimizer.state_dict()`` from :func:`flatten_optimizer_state`'s output."""
    state: Dict[int, Dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):  # JSON has no tuples; Adam-style optimizers unpack a pair
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _jsonable(value: Any, what: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, what) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise CheckpointError(f"{what}: cannot store a {type(value).__name__} without pickle")


# --------------------------------------------------------------------------------------------
# RNG states

def capture_rng() -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Torch (CPU and CUDA) RNG states as tensors; Python's and NumPy's global states as JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [version, list(mt), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def restore_rng(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only where as many devices are present)."""
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    if "python" in meta:
        version, mt, gauss = meta["python"]
        random.setstate((version, tuple(mt), gauss))
    if "numpy" in meta:
        name, keys, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# --------------------------------------------------------------------------------------------
# the state file

def _method_state(method: torch.nn.Module) -> Dict[str, torch.Tensor]:
    if hasattr(method, "state_tensors"):
        return method.state_tensors()
    return dict(method.state_dict())


def save_training_state(path: PathLike, *, optimizer: torch.optim.Optimizer, loss: torch.nn.Module,
                        counters: Dict[str, Any]) -> Path:
    """Write optimizer state, the method's state (memory banks, learned codes, centers: its
    ``state_tensors()``), RNG states and ``counters``.

    Args:
        path: the ``.safetensors`` file to write (atomically).
        counters: JSON-able run facts (epoch, step, best metric, model fingerprint, ...).
    """
    path = Path(path)
    tensors, optim_meta = flatten_optimizer_state(optimizer.state_dict())
    for name, buf in _method_state(loss).items():
        tensors[f"loss.{name}"] = buf.detach().cpu().contiguous()
    rng_tensors, rng_meta = capture_rng()
    tensors.update(rng_tensors)
    meta = {"format": STATE_FORMAT, "version": STATE_VERSION, "optimizer": optim_meta, "rng": rng_meta,
            "counters": counters}
    write_safetensors(path, tensors, metadata={"hybridhash": json.dumps(meta)})
    return path


def read_training_state(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(tensors, meta)`` of a file written by :func:`save_training_state`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("hybridhash")
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable training state ({str(err).splitlines()[0][:200]})") from None
    try:
        meta = loads_json(raw, f"{path}: its metadata") if raw else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a hybridhash training state")
    return tensors, meta


def load_training_state(path: PathLike, *, optimizer: torch.optim.Optimizer, loss: torch.nn.Module,
                        restore_rng_states: bool = True) -> Dict[str, Any]:
    """Restore what :func:`save_training_state` wrote into ``optimizer`` and ``loss``; return the counters."""
    tensors, meta = read_training_state(path)
    optimizer.load_state_dict(unflatten_optimizer_state(tensors, meta["optimizer"]))
    bufs = {k[len("loss."):]: v for k, v in tensors.items() if k.startswith("loss.")}
    own = _method_state(loss)
    if set(bufs) != set(own) and {f"criterion.{k}" for k in bufs} == set(own):
        bufs = {f"criterion.{k}": v for k, v in bufs.items()}  # a bank saved before methods had names
    if set(bufs) != set(own) or any(bufs[k].shape != own[k].shape for k in own):
        shapes = {k: tuple(v.shape) for k, v in bufs.items()}
        raise CheckpointError(f"{path}: its method state {shapes} does not fit this run "
                              f"({ {k: tuple(v.shape) for k, v in own.items()} })")
    if hasattr(loss, "load_state_tensors"):
        loss.load_state_tensors(bufs)
    else:
        loss.load_state_dict(bufs, strict=True)
    if restore_rng_states:
        restore_rng(tensors, meta.get("rng", {}))
    return meta.get("counters", {})


# --------------------------------------------------------------------------------------------
# a checkpoint directory: weights, config and the training state written with them

def save_checkpoint(directory: PathLike, model: torch.nn.Module, meta: Dict[str, Any], *,
                    optimizer: torch.optim.Optimizer, loss: torch.nn.Module, counters: Dict[str, Any]) -> None:
    """``model``'s weights and config (``meta`` under "extra") into ``directory``, then the training
    state with ``counters`` and the weights' fingerprint, which :func:`resume_checkpoint` checks."""
    directory = Path(directory)
    model.save_pretrained(str(directory), **meta)
    fingerprint = read_json(directory / CONFIG_NAME)["fingerprint"]
    save_training_state(directory / STATE_NAME, optimizer=optimizer, loss=loss,
                        counters={**counters, "fingerprint": fingerprint})


def resume_checkpoint(directory: PathLike, model: torch.nn.Module, *, optimizer: torch.optim.Optimizer,
                      loss: torch.nn.Module, restore_rng_states: bool = True) -> Dict[str, Any]:
    """Load what :func:`save_checkpoint` wrote into ``model``, ``optimizer`` and ``loss`` (refusing a
    state written with other weights); returns the counters."""
    from ...models import load_checked, read_state_dict

    directory = Path(directory)
    load_checked(model, read_state_dict(directory / "model.safetensors"), str(directory))
    _, meta = read_training_state(directory / STATE_NAME)
    if meta.get("counters", {}).get("fingerprint") != read_json(directory / CONFIG_NAME).get("fingerprint"):
        raise CheckpointError(f"{directory}: the weights and the training state come from different saves")
    return load_training_state(directory / STATE_NAME, optimizer=optimizer, loss=loss,
                               restore_rng_states=restore_rng_states)
