"""Encoding an image set into a code collection: discovery, batched decoding, resumable shards, ranks.

The work is cut into shards of ``shard_size`` consecutive images of the (sorted) image list. Each
shard is encoded and written on its own (``CODES/shards/shard-00000.npz``), so a killed run resumes
at the first missing shard; under ``torchrun`` rank r encodes shards r, r + W, r + 2W, ... and rank 0
merges them into one collection (:mod:`hybridhash.collection`) when every rank is done.

Decoding runs in DataLoader workers. An unreadable image (missing, empty, not an image, truncated,
over the pixel limit) does not stop the run: the worker returns no tensor, the collate function
drops it and records why, and the merged collection lists it in ``skipped.json`` (``strict=True``
stops at the first one instead). Item ids are positions among the images that were encoded.

Modules: :mod:`hybridhash.data.imagelist` (the images), :mod:`.plan` (the shard plan and what
may be kept), :mod:`.shards` (decoding, encoding and merging shards); this module runs the whole.
"""
from __future__ import annotations

import datetime
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, List, Optional

import torch

from ... import collection as coll
from ...data.imagelist import ImageList, file_stats, find_images, read_image_list, scan_image_folder
from ...data.images import DEFAULT_MAX_PIXELS, printable
from ...data.transforms import eval_transform, model_preprocess
from ...environment import dist_env
from ...errors import DataError, HybridHashError
from ...locking import exclusive
from .plan import (DEFAULT_SHARD_SIZE, EncodePlan, PathLike, check_shard, done_shards, load_plan, plan_encode,
                   read_output, shard_path, shards_of_rank, _mismatch)
from .shards import EncodeDataset, ShardBatches, collate_drop_bad, encode_shards, merge_shards

__all__ = [
    "DEFAULT_SHARD_SIZE", "EncodeDataset", "EncodePlan", "ImageList", "ShardBatches", "check_shard",
    "collate_drop_bad", "done_shards", "encode_collection", "encode_shards", "eval_transform", "file_stats",
    "find_images", "load_plan", "merge_shards", "model_preprocess", "plan_encode", "read_image_list",
    "scan_image_folder", "shard_path", "shards_of_rank",
]


def _all_ok(error: Optional[BaseException], world_size: int) -> List[Optional[str]]:
    """Every rank's error message (None where it succeeded), gathered on all ranks."""
    if world_size == 1:
        return [None if error is None else str(error)]
    import torch.distributed as dist

    gathered: List[Optional[str]] = [None] * world_size
    dist.all_gather_object(gathered, None if error is None else str(error))
    return gathered


def encode_collection(images: PathLike, out: PathLike, checkpoint: Optional[PathLike] = None, *,
                      model: Optional[torch.nn.Module] = None, root: Optional[PathLike] = None,
                      batch_size: int = 64, workers: int = 0, strict: bool = False,
                      shard_size: int = DEFAULT_SHARD_SIZE, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                      device: str = "cpu", resume: bool = True, progress: bool = True,
                      on_shard: Optional[Callable[[int], None]] = None, runtime: str = "auto",
                      threads: Optional[int] = None) -> Optional["coll.Collection"]:
    """Encode a folder or list file of images into the collection ``out``.

    The model is ``model`` or loaded from the project checkpoint ``checkpoint`` on ``runtime``
    (``torch``, ``onnx``, ``openvino`` or ``auto``: :func:`hybridhash.engines.open_encoder`). Under torchrun
    (``WORLD_SIZE`` > 1) every rank runs this function: rank 0 plans, each rank encodes its
    shards, rank 0 merges; a CUDA ``device`` becomes ``cuda:<LOCAL_RANK>``.

    Returns:
        the merged :class:`~hybridhash.collection.Collection` on rank 0, None on the other ranks.
    """
    env = dist_env()
    rank, world_size, local_rank = env.rank, env.world_size, env.local_rank
    if model is None:
        if checkpoint is None:
            raise HybridHashError("encode needs a checkpoint or a model")
        from ...engines import open_encoder

        model = open_encoder(checkpoint, runtime, str(device), threads=threads)
    if world_size > 1 and str(device).startswith("cuda") and ":" not in str(device):
        device = f"cuda:{local_rank}"
    created_group = False
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            # gloo only carries the barriers; a long timeout lets a slow rank finish its shards
            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
            created_group = True
    writer = ExitStack()  # rank 0 holds the collection's writer's lock from planning to merging
    try:
        error: Optional[BaseException] = None
        if rank == 0:
            try:
                found = find_images(images, root)
                if strict and found.rejected:
                    first = found.rejected[0]
                    raise DataError(f"{printable(str(found.root / first['path']))}: {first['reason']} "
                                    f"(strict: stopping)")
                read_output(out)  # a directory that is not ours is refused before the lock's file is put in it
                writer.enter_context(exclusive(out, what="code collection"))
                plan_encode(out, found, model, checkpoint, shard_size=shard_size,
                            max_pixels=max_pixels, resume=resume)
            except HybridHashError as err:
                error = err
        _raise_first(_all_ok(error, world_size), error, rank, "planning")
        error = None
        try:
            encode_shards(out, model, rank, world_size, batch_size=batch_size, workers=workers, strict=strict,
                          device=device, progress=progress, on_shard=on_shard)
        except HybridHashError as err:
            error = err
        _raise_first(_all_ok(error, world_size), error, rank, "encoding")
        if rank != 0:
            return None
        if _finished(out):  # a complete, matching collection: nothing to merge again
            return coll.open_collection(out)
        return merge_shards(out)
    finally:
        writer.close()
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _finished(out: PathLike) -> bool:
    """True when ``out`` holds a merged collection of its current plan and every shard is there."""
    out = Path(out)
    if not coll.is_collection(out):
        return False
    plan, _ = load_plan(out)
    if _mismatch(coll.read_manifest(out) or {}, plan.to_dict()) is not None:
        return False
    merged = (out / coll.MANIFEST).stat().st_mtime_ns
    shards = [shard_path(out, s) for s in range(plan.num_shards)]
    return all(p.is_file() and p.stat().st_mtime_ns <= merged for p in shards)


def _raise_first(messages: List[Optional[str]], own: Optional[BaseException], rank: int, stage: str) -> None:
    if own is not None:
        raise own
    for r, msg in enumerate(messages):
        if msg is not None:
            raise HybridHashError(f"rank {r} failed while {stage}: {msg}")
