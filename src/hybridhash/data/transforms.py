"""Image pipelines built from the ``preprocess`` dict that travels with a model.

``preprocess`` = {"img_size": int, "resize": int, "mean": [3], "std": [3],
"interpolation": "bilinear" | "bicubic" | "nearest", optional "pipeline"}. Three families:

- ``standard`` (list-file data, folders, uploads): train Resize(resize) -> RandomCrop(img_size) ->
  RandomHorizontalFlip; eval Resize(resize) -> CenterCrop(img_size). Resize sets the shorter edge.
- ``cifar``: Resize to img_size x img_size only, for train and eval (the original's CIFAR-10 setting).
- ``digits``: Resize to img_size x img_size; train adds a random shift of up to img_size/16 px
  (2 px at 32 px, half a source pixel) per image, padding with the black background. No flip: a
  mirrored digit is another glyph.

All end with ToImage -> ToDtype(float32, scaled to [0, 1]) -> Normalize(mean, std), giving a
plain float tensor (3, img_size, img_size).

The family comes from ``preprocess["pipeline"]`` when set (so a model trained on digits encodes
digit files from any folder the way it was evaluated), else from the dataset name.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Dict

import torch
from torchvision.transforms import InterpolationMode, v2

from ..errors import ConfigError
from ..limits import MAX_RESIZE
from .protocols import PROTOCOLS

PIPELINES = ("standard", "cifar", "digits")
INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def pipeline_for(dataset: Any = None) -> str:
    """Family for a dataset name (or anything with ``.name``): ``cifar`` for cifar10*, ``digits``
    for digits and digits_hard, ``standard`` otherwise (and for None)."""
    name = dataset if isinstance(dataset, str) or dataset is None else getattr(dataset, "name", None)
    if not name:
        return "standard"
    base = name.partition(":")[0]
    if base.startswith("cifar10"):
        return "cifar"
    spec = PROTOCOLS.get(base)
    if spec is not None and spec.kind == "digits":  # digits and the protocols derived from it
        return "digits"
    return "standard"


def with_pipeline(preprocess: Dict[str, Any], dataset: Any) -> Dict[str, Any]:
    """A copy of ``preprocess`` recording the pipeline family of ``dataset`` (store it with the model)."""
    out = dict(preprocess)
    out["pipeline"] = pipeline_for(dataset)
    return out


def _checked(preprocess: Dict[str, Any]) -> Dict[str, Any]:
    if not isinstance(preprocess, dict):
        raise ConfigError(f"preprocess must be a dict, got {type(preprocess).__name__}")
    try:
        img_size = int(preprocess["img_size"])
        mean = [float(v) for v in preprocess["mean"]]
        std = [float(v) for v in preprocess["std"]]
        resize = int(preprocess.get("resize") or img_size)
    except KeyError as err:
        raise ConfigError(f"preprocess lacks {err.args[0]!r} (needs img_size, mean, std)") from None
    except (TypeError, ValueError, OverflowError) as err:  # int() of an infinity overflows
        raise ConfigError(f"preprocess: malformed img_size/resize/mean/std ({err})") from None
    interpolation = preprocess.get("interpolation", "bilinear")
    pipeline = preprocess.get("pipeline")
    if img_size <= 0:
        raise ConfigError(f"preprocess: img_size must be positive, got {img_size}")
    if resize < img_size:
        raise ConfigError(f"preprocess: resize {resize} is smaller than img_size {img_size}")
    if resize > MAX_RESIZE:  # every image is resized to this edge first: the memory it takes grows with its square
        raise ConfigError(f"preprocess: resize {resize} is larger than the limit of {MAX_RESIZE} px")
    if not all(math.isfinite(v) for v in mean + std):
        raise ConfigError(f"preprocess: mean and std must be finite numbers; got {mean}, {std}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"preprocess: mean and std need 3 values each, std positive; got {mean}, {std}")
    if preprocess.get("in_chans", 3) != 3:
        raise ConfigError(f"preprocess: images are RGB, in_chans {preprocess['in_chans']} is not supported")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"preprocess: interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
    if pipeline is not None and pipeline not in PIPELINES:
        raise ConfigError(f"preprocess: pipeline {pipeline!r} is not one of {', '.join(PIPELINES)}")
    return dict(img_size=img_size, resize=resize, mean=mean, std=std,
                interpolation=INTERPOLATIONS[interpolation], pipeline=pipeline)


def build_transform(preprocess: Dict[str, Any], train: bool, dataset: Any = None) -> Callable:
    """PIL RGB image -> float32 tensor (3, img_size, img_size), normalised.

    Args:
        preprocess: the model's preprocessing dict (see the module doc).
        train: random augmentation (crop/flip or shift) if True, deterministic otherwise.
        dataset: a dataset name or :class:`~hybridhash.data.Protocol`, used when ``preprocess``
            names no pipeline.
    """
    p = _checked(preprocess)
    family = p["pipeline"] or pipeline_for(dataset)
    size, interp = p["img_size"], p["interpolation"]
    if family == "standard":
        steps = [v2.Resize(p["resize"], interpolation=interp, antialias=True)]
        steps += [v2.RandomCrop(size), v2.RandomHorizontalFlip()] if train else [v2.CenterCrop(size)]
    else:
        # a fixed square size (not the shorter edge), so any upload gives the model's input shape
        steps = [v2.Resize((size, size), interpolation=interp, antialias=True)]
        if family == "digits" and train:
            steps.append(v2.RandomCrop(size, padding=digits_shift(size), fill=0))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(p["mean"], p["std"]),
              v2.ToPureTensor()]
    return v2.Compose(steps)


def digits_shift(img_size: int) -> int:
    """Largest random shift of the digits training pipeline: img_size / 16 px, at least 1."""
    return max(1, round(img_size / 16))


def model_preprocess(model: torch.nn.Module) -> Dict[str, Any]:
    """The model's preprocessing dict, with the pipeline family its checkpoint recorded (if any).

    This is what evaluation uses, so encoding and search build their eval transform from it.
    """
    pre = dict(model.preprocess)
    meta = getattr(model, "checkpoint_meta", None) or {}
    for recorded in (meta.get("preprocess"), (meta.get("extra") or {}).get("preprocess")):
        if isinstance(recorded, dict) and recorded.get("pipeline"):
            pre["pipeline"] = recorded["pipeline"]
    return json.loads(json.dumps(pre))  # JSON types, as a plan or manifest stores it


def eval_transform(model: torch.nn.Module) -> Callable:
    """PIL RGB image -> float32 (3, H, W): the model's deterministic evaluation pipeline."""
    return build_transform(model_preprocess(model), train=False)
