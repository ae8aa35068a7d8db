"""Images -> codes, on any engine: the one path from batches of decoded, preprocessed images to
+-1 codes (or the outputs before the sign) that evaluation, encoding runs and the Retriever share.

:func:`encode_batch` does one batch: to its device, the model's forward under inference mode (and
bf16 autocast when asked, :func:`hybridhash.environment.autocast_context`, or for a model opened at
bf16, :func:`model_precision`), the sign rule of
:mod:`hybridhash.codes`, back to the CPU. :func:`encode_images` runs it over a cached tensor or a
data set, with a progress bar. What differs between the callers stays with them: an encoding run
cuts its batches at shard boundaries and records unreadable images, the Retriever serialises
forwards behind its lock, evaluation asks for autocast during training.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..codes import binarize
from ..environment import autocast_context, precision_autocast

PRECISION_ATTR = "inference_precision"  # set on a PyTorch model opened at a precision (engines.pytorch)


def model_precision(model: Any) -> str:
    """The precision ``model`` encodes at: what it was opened with (an export engine or a PyTorch
    model of :func:`hybridhash.engines.open_encoder`), else fp32."""
    return getattr(model, PRECISION_ATTR, "fp32")


def encode_batch(model: Any, x: torch.Tensor, *, device: Union[str, torch.device, None] = None,
                 amp: bool = False, outputs: bool = False) -> np.ndarray:
    """One batch of preprocessed images ``(B, 3, H, W)`` -> int8 +-1 codes ``(B, bits)`` (an output
    of exactly 0 counts as +1), or with ``outputs`` the float32 outputs ``(B, bits)`` before the sign.

    Args:
        model: a project model or an export engine (:mod:`hybridhash.engines`), whose ``encode``
            gives the codes, or any module mapping images to ``(B, bits)`` outputs, whose sign is
            taken here; its device and mode are the caller's to set.
        device: where the batch is moved first (None: where it is).
        amp: bf16 autocast, on the CUDA devices that support it (a no-op elsewhere).

    A PyTorch model opened at bf16 runs under bf16 autocast on any device; an export engine runs
    its own precision.
    """
    if device is not None:
        x = x.to(torch.device(device), non_blocking=True)
    own = model_precision(model) if isinstance(model, torch.nn.Module) else "fp32"
    with torch.inference_mode(), autocast_context(x.device, amp and own == "fp32"), \
            precision_autocast(x.device, own):
        if outputs:
            result = model(x).float()  # (B, bits)
        elif hasattr(model, "encode"):  # the encoding contract: an export answers with its graph's codes
            result = model.encode(x)  # (B, bits) int8
        else:
            result = binarize(model(x))
    return result.cpu().numpy()


def _collate_images(batch):
    return torch.stack([b[0] for b in batch])


def encode_images(model: Any, images: Union[torch.Tensor, Dataset], *, batch_size: int = 256,
                  device: Union[str, torch.device] = "cpu", workers: int = 0, amp: bool = False,
                  progress: Optional[str] = None, outputs: bool = False) -> np.ndarray:
    """Codes (or outputs) of many images, :func:`encode_batch` batch by batch.

    Args:
        model: as :func:`encode_batch`, already on ``device``; put in eval mode for the call.
        images: preprocessed float tensor (N, 3, H, W), or a data set whose items start with one
            image tensor (3, H, W) (a ``RetrievalSet`` with the model's eval transform).
        workers: DataLoader processes decoding a data set (0: in this process).
        progress: a tqdm description, or None for no bar.

    Returns:
        int8 (N, bits) of +-1, or float32 (N, bits) with ``outputs``.
    """
    was_training = model.training
    model.eval()
    if isinstance(images, torch.Tensor):
        batches = (images[i:i + batch_size] for i in range(0, images.shape[0], batch_size))
        total = -(-images.shape[0] // batch_size)
    else:
        batches = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=workers,
                             collate_fn=_collate_images)
        total = len(batches)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=total, desc=progress, leave=False)
    out = []
    try:
        for x in batches:
            out.append(encode_batch(model, x, device=device, amp=amp, outputs=outputs))
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, getattr(model, "bits", 0)), np.float32 if outputs else np.int8)
    return np.concatenate(out)
