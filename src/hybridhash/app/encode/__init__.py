"""Encoding an image set into a code collection: discovery, batched decoding, resumable shards, ranks.

The work is cut into shards of ``shard_size`` consecutive images of the (sorted) image list. Each
shard is encoded and written on its own (``CODES/shards/shard-00000.npz``), so a killed run resumes
at the first missing shard; under ``torchrun`` rank r encodes shards r, r + W, r + 2W, ... and rank 0
merges them into one collection (:mod:`hybridhash.collection`) when every rank is done.

Decoding runs in DataLoader workers. An unreadable image (missing, empty, not an image, truncated,
over the pixel limit) does not stop the run: the worker returns no tensor, the collate function
drops it and records why, and the merged collection lists it in ``skipped.json`` (``strict=True``
stops at the first one instead). Item ids are positions among the images that were encoded.

Running it again onto a finished collection of the same model updates it (:mod:`.update`): only
the images that are new or changed are encoded, and a new generation is switched to
(:mod:`hybridhash.generations`); ``dry_run`` says what would change and writes nothing.

Modules: :mod:`hybridhash.data.imagelist` (the images), :mod:`.plan` (the shard plan and what
may be kept), :mod:`.shards` (decoding, encoding and merging shards), :mod:`.update` (updates in
place); this module runs the whole.
"""
from __future__ import annotations

import datetime
import time
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
from ...generations import UpdateReport, diff_images
from ...locking import exclusive
from .plan import (DEFAULT_SHARD_SIZE, EncodePlan, PathLike, check_shard, done_shards, load_plan, plan_encode,
                   read_output, shard_path, shards_of_rank, _mismatch)
from .shards import (EncodeDataset, ShardBatches, collate_drop_bad, encode_shards, merge_shards,
                     spread_images)
from .update import (dry_report, finish_update, new_fields, plan_update, recorded_engine, refuse,
                     update_collection, update_mismatch)

__all__ = [
    "DEFAULT_SHARD_SIZE", "EncodeDataset", "EncodePlan", "ImageList", "ShardBatches", "check_shard",
    "collate_drop_bad", "done_shards", "encode_collection", "encode_shards", "eval_transform", "file_stats",
    "find_images", "load_plan", "merge_shards", "model_preprocess", "plan_encode", "read_image_list",
    "scan_image_folder", "shard_path", "shards_of_rank", "update_collection",
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
                      threads: Optional[int] = None, dry_run: bool = False,
                      report: Optional[Callable[[UpdateReport], None]] = None,
                      precision: str = "auto", auto_export: bool = True) -> Optional["coll.Collection"]:
    """Encode a folder or list file of images into the collection ``out``, or update it in place.

    When ``out`` holds a finished collection of the same model (and ``resume``), only the images
    new in the list or changed since (size or mtime) are encoded, the gone ones are dropped, and
    generation N+1 is switched to; ``report`` is called with what was done (an
    :class:`~hybridhash.generations.UpdateReport`). With ``dry_run`` (one process) nothing is
    written and ``report`` gets what would be done; None is returned.

    The model is ``model`` or loaded from the project checkpoint ``checkpoint`` on ``runtime``
    (``torch``, ``onnx``, ``openvino`` or ``auto``: :func:`hybridhash.engines.open_encoder`) at
    ``precision`` (``fp32|bf16|int8|auto``); an update takes the collection's recorded ones
    (:func:`.update.recorded_engine`), and the manifest records them. A new collection at the default
    ``auto`` / ``auto`` on the CPU first has the checkpoint exported and calibrated on its images where
    that may pay (:func:`hybridhash.autoexport.auto_export`; not under torchrun, not with
    ``auto_export=False``); an existing one keeps its recorded pair. Under torchrun
    (``WORLD_SIZE`` > 1) every rank runs this function: rank 0 plans, each rank encodes its
    shards, rank 0 merges; a CUDA ``device`` becomes ``cuda:<LOCAL_RANK>``.

    Returns:
        the merged :class:`~hybridhash.collection.Collection` on rank 0, None on the other ranks.
    """
    env = dist_env()
    rank, world_size, local_rank = env.rank, env.world_size, env.local_rank
    if dry_run and rank != 0:
        return None
    t0 = time.perf_counter()
    if model is None:
        if checkpoint is None:
            raise HybridHashError("encode needs a checkpoint or a model")
        from ...engines import open_encoder

        if resume:
            runtime, precision = recorded_engine(out, read_output(out)[0], runtime, precision)
        if auto_export and not dry_run and world_size == 1:
            _export_on_first_use(images, out, checkpoint, root, runtime, precision, device, max_pixels, threads)
        model = open_encoder(checkpoint, runtime, str(device), threads=threads, precision=precision)
    if dry_run:
        _dry_run(images, out, model, root, max_pixels, resume, t0, report)
        return None
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
    update = None  # rank 0, updating in place: (the current generation, its changes, whether shards were planned)
    seconds = {}
    try:
        error: Optional[BaseException] = None
        if rank == 0:
            try:
                found = find_images(images, root)
                if strict and found.rejected:
                    first = found.rejected[0]
                    raise DataError(f"{printable(str(found.root / first['path']))}: {first['reason']} "
                                    f"(strict: stopping)")
                # a directory that is not ours is refused before the lock's file is put in it
                manifest, _, _ = read_output(out)
                seconds["list"] = time.perf_counter() - t0
                if manifest is not None and resume:
                    why = update_mismatch(manifest, model, found.root, max_pixels)
                    if why:
                        raise refuse(out, why)
                writer.enter_context(exclusive(out, what="code collection"))
                manifest = coll.read_manifest(out) if resume else None  # read again under the lock
                if manifest is not None:
                    update = _plan_update(out, found, model, checkpoint, shard_size, max_pixels, seconds)
                else:
                    plan_encode(out, found, model, checkpoint, shard_size=shard_size,
                                max_pixels=max_pixels, resume=resume)
            except HybridHashError as err:
                error = err
        _raise_first(_all_ok(error, world_size), error, rank, "planning")
        error = None
        t1 = time.perf_counter()
        if _share(update is None or update[2], world_size):  # skipped when an update has nothing to encode
            try:
                encode_shards(out, model, rank, world_size, batch_size=batch_size, workers=workers, strict=strict,
                              device=device, progress=progress, on_shard=on_shard)
            except HybridHashError as err:
                error = err
            _raise_first(_all_ok(error, world_size), error, rank, "encoding")
        if rank != 0:
            return None
        seconds["encode"] = time.perf_counter() - t1
        if update is not None:
            col, changes, planned = update
            if changes.nothing:
                done = UpdateReport(str(out), col.generation, kept=col.count)
                new = col
            else:
                new, done = finish_update(out, col, changes, planned, new_fields(found, checkpoint))
            if report is not None:
                done.seconds = {k: round(v, 3) for k, v in {**seconds, **done.seconds,
                                                            "total": time.perf_counter() - t0}.items()}
                report(done)
            return new
        if _finished(out):  # a complete, matching collection: nothing to merge again
            return coll.open_collection(out)
        return merge_shards(out)
    finally:
        writer.close()
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _export_on_first_use(images: PathLike, out: PathLike, checkpoint: PathLike, root: Optional[PathLike],
                         runtime: str, precision: str, device: str, max_pixels: Optional[int],
                         threads: Optional[int]) -> None:
    """:func:`hybridhash.autoexport.auto_export` on the images to encode, for a new collection only
    (neither a manifest nor a plan in ``out``): an existing one's codes keep their recorded pair."""
    manifest, plan, plan_error = read_output(out)
    if (runtime, precision) != ("auto", "auto") or str(device) != "cpu" or manifest is not None \
            or plan is not None or plan_error is not None:
        return
    from ...autoexport import auto_export

    found = find_images(images, root)
    auto_export(checkpoint, spread_images(found.root, found.paths, max_pixels), threads=threads)


def _plan_update(out: PathLike, found: ImageList, model: torch.nn.Module, checkpoint: Optional[PathLike],
                 shard_size: int, max_pixels: Optional[int], seconds: dict):
    """Rank 0 of an update: the current generation, its changes (files stat-ed now), the shard plan."""
    t0 = time.perf_counter()
    col = coll.open_collection(out)
    changes = diff_images(col, found, file_stats(found.root, found.paths))
    seconds["stat"] = time.perf_counter() - t0
    planned = plan_update(Path(out), col, changes, model, checkpoint, shard_size, max_pixels) is not None
    return col, changes, planned


def _dry_run(images: PathLike, out: PathLike, model: torch.nn.Module, root: Optional[PathLike],
             max_pixels: Optional[int], resume: bool, t0: float,
             report: Optional[Callable[[UpdateReport], None]]) -> None:
    """What ``encode`` would do to ``out``, said through ``report``; nothing is written (no lock either)."""
    found = find_images(images, root)
    manifest, _, _ = read_output(out)
    if manifest is None or not resume:  # a fresh encode: every image
        done = UpdateReport(str(out), 0, added=len(found), removed=(manifest or {}).get("count", 0), dry_run=True)
    else:
        why = update_mismatch(manifest, model, found.root, max_pixels)
        if why:
            raise refuse(out, why)
        col = coll.open_collection(out)
        done = dry_report(col, diff_images(col, found, file_stats(found.root, found.paths)), {})
    done.seconds = {"total": round(time.perf_counter() - t0, 3)}
    if report is not None:
        report(done)


def _share(flag: bool, world_size: int) -> bool:
    """Rank 0's ``flag``, on every rank."""
    if world_size == 1:
        return flag
    import torch.distributed as dist

    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


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
