"""Pixel targets: the target features of the methods that train on targets (docs/methods.md, bihalf),
when no pretrained network gives a feature space.

Their published form learns a projection of a frozen network's features x and asks the codes of two
images to be as similar (cosine) as their x. A model trained from random weights has no such space,
so the target is the image itself: its pixels, as the model is given them, minus the training set's
mean image, flattened. Subtracting the mean makes the cosine of two targets a correlation of their
pixels around the average image, rather than a measure of their common brightness.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from ..errors import DataError


def mean_image(batches: Iterable[Tensor]) -> Tensor:
    """The mean image (C, H, W), float64, of every image of ``batches`` ((B, C, H, W) tensors, e.g. the
    training set through the model's evaluation pipeline, so that it does not depend on augmentation)."""
    total, count, shape = None, 0, None
    for batch in batches:
        if not isinstance(batch, Tensor) or batch.dim() != 4:
            raise DataError(f"mean image: batches must be image tensors (B, C, H, W), got "
                            f"{tuple(getattr(batch, 'shape', ()))}")
        if shape is None:
            shape = tuple(batch.shape[1:])
        elif tuple(batch.shape[1:]) != shape:
            raise DataError(f"mean image: a batch of images {tuple(batch.shape[1:])} after images {shape}; "
                            "every image must have the model's input size")
        part = batch.detach().to(torch.float64).sum(0)
        total = part if total is None else total + part
        count += batch.shape[0]
    if not count:
        raise DataError("mean image: no images (the training set is empty)")
    return total / count


def pixel_targets(images: Tensor, mean: Tensor) -> Tensor:
    """images (B, C, H, W) minus ``mean`` (C, H, W), flattened: (B, C * H * W) in the images' dtype
    (at least float32), detached."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise DataError(f"pixel targets: images must be (B, C, H, W), got {tuple(getattr(images, 'shape', ()))}")
    if not isinstance(mean, Tensor) or tuple(mean.shape) != tuple(images.shape[1:]):
        raise DataError(f"pixel targets: the mean image is {tuple(getattr(mean, 'shape', ()))}, the images "
                        f"{tuple(images.shape[1:])}; compute the mean with the same pipeline")
    dtype = torch.promote_types(images.dtype, torch.float32)
    x = images.detach().to(dtype) - mean.to(device=images.device, dtype=dtype)
    return x.flatten(1)
