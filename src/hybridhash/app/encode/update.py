"""Updating a finished collection in place: the images of a new list (a folder or list file scanned
again, or paths an application adds and removes) against the current generation, only the new and
changed ones encoded (in resumable shards, as a fresh encode), then generation N+1 written and
switched to (:mod:`hybridhash.generations`).

The shards of an update hold the codes of the images it encodes, under a plan of just those images
(``shards/plan.json``); a killed update run again finds the same images to encode and keeps the
shards already written. Once switched, the update's shards are removed.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ... import collection as coll
from ...data.imagelist import ImageList, file_stats
from ...data.images import unusable_name
from ...data.transforms import model_preprocess
from ...errors import ConfigError, DataError, IndexMismatchError
from ...generations import Changes, UpdateReport, diff_images, remove_stale_generations, stop_point, write_update
from ...locking import exclusive
from ...models.weights import model_fingerprint
from .plan import (UPDATE_KEYS, EncodePlan, PathLike, _clear, _mismatch, check_shard, load_plan, plan_encode,
                   read_output)


def recorded_engine(out: PathLike, manifest: Optional[Dict[str, Any]], runtime: str,
                    precision: str) -> Tuple[str, str]:
    """The runtime and precision to update the collection of ``manifest`` with: the recorded ones
    for ``auto`` (:func:`hybridhash.precision.recorded_choice`); an explicit other choice would give
    codes unlike the collection's, a one-line ConfigError. No manifest: as asked."""
    from ...precision import recorded_choice

    if manifest is None:
        return runtime, precision
    runtime, precision, mismatch = recorded_choice(manifest.get("runtime"), manifest.get("precision"), runtime,
                                                   precision)
    if mismatch:
        raise ConfigError(f"{out}: {mismatch}; an update keeps the collection's codes: leave --runtime and "
                          f"--precision at auto, or pass --no-resume to encode every image again")
    return runtime, precision


def update_mismatch(manifest: Dict[str, Any], model: torch.nn.Module, image_root: Path,
                    max_pixels: Optional[int]) -> Optional[str]:
    """What keeps the collection of ``manifest`` from being updated with ``model`` (another model, bit
    length, preprocessing, image root or pixel limit), or None."""
    from ...engines import runs_at

    runtime, precision = runs_at(model)
    now = {"bits": int(model.bits), "fingerprint": model_fingerprint(model), "preprocess": model_preprocess(model),
           "image_root": str(image_root), "max_pixels": max_pixels, "runtime": runtime, "precision": precision}
    return _mismatch(manifest, now, UPDATE_KEYS)


def refuse(out: PathLike, why: str) -> IndexMismatchError:
    return IndexMismatchError(f"{out} holds codes of {why}; pass --no-resume to replace them, "
                              f"or choose another output directory")


def todo_list(changes: Changes) -> ImageList:
    """The images an update encodes, as the list its shard plan covers (no labels: codes only)."""
    images = changes.images
    return ImageList(images.root, [images.paths[p] for p in changes.todo], None, None, None, images.source, [])


def plan_update(out: Path, col: "coll.Collection", changes: Changes, model: torch.nn.Module,
                checkpoint: Optional[PathLike], shard_size: int, max_pixels: Optional[int]) -> Optional[EncodePlan]:
    """Write the shard plan of the images ``changes`` encodes (None when there are none)."""
    out = Path(out)
    remove_stale_generations(out, col.generation)  # what a killed update left after or before its switch
    if not changes.todo.size:
        _, old_plan, _ = read_output(out)
        if old_plan is not None and old_plan.get("images_sha256") != col.manifest.get("images_sha256"):
            _clear(out, old_plan, None)  # an update's shards, applied before it was killed
        return None
    plan = plan_encode(out, todo_list(changes), model, checkpoint, shard_size=shard_size, max_pixels=max_pixels,
                       update=True)
    stop_point("planned")
    return plan


def finish_update(out: Path, col: "coll.Collection", changes: Changes, planned: bool,
                  manifest: Dict[str, Any]) -> Tuple["coll.Collection", UpdateReport]:
    """Gather the encoded shards of the update planned in ``out`` and write generation N+1."""
    out = Path(out)
    nbytes = (col.bits + 7) // 8
    pos: List[np.ndarray] = [np.zeros(0, np.int64)]
    codes: List[np.ndarray] = [np.zeros((0, nbytes), np.uint8)]
    stats: List[np.ndarray] = [np.zeros((0, 2), np.int64)]
    bad: List[Tuple[int, str, np.ndarray]] = []
    if planned:
        plan, _ = load_plan(out)
        for s in range(plan.num_shards):
            problem, z = check_shard(out, plan, s)
            if problem is not None:
                raise DataError(f"{out}: shard {s} of the update {problem}; run the same encode command again")
            start, _ = plan.shard_range(s)
            pos.append(changes.todo[z["index"]])
            codes.append(z["codes"])
            stats.append(z["stat"][z["index"] - start])
            bad += [(int(changes.todo[i]), str(r), z["stat"][i - start])
                    for i, r in zip(z["skipped_index"], z["skipped_reason"])]
    stop_point("encoded")
    new, report = write_update(col, changes, np.concatenate(pos), np.concatenate(codes), np.concatenate(stats),
                               bad, manifest)
    if planned:
        _clear(out, load_plan(out)[0].to_dict(), None)  # applied: the update's shards are not needed again
    return new, report


def new_fields(images: ImageList, checkpoint: Optional[PathLike]) -> Dict[str, Any]:
    """The manifest fields an update sets from its image list and checkpoint (without one, the
    checkpoint recorded before stays: the model is the same, its fingerprint checked)."""
    import datetime

    fields = {"source": images.source, "images_sha256": images.digest(),
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if checkpoint is not None:
        fields["checkpoint"] = str(Path(checkpoint).resolve())
    return fields


def dry_report(col: "coll.Collection", changes: Changes, seconds: Dict[str, float]) -> UpdateReport:
    return UpdateReport(str(col.directory), col.generation + (0 if changes.nothing else 1), added=changes.added,
                        removed=int(changes.removed_ids.size), changed=int(changes.changed_ids.size),
                        relabelled=changes.relabelled, kept=changes.kept, seconds=seconds, dry_run=True)


# ------------------------------------------------------------------------------------------------
# the Python API for applications that manage their own files

def _relative(rel: str, root: Path) -> str:
    path = os.path.normpath(str(rel).lstrip("/")).replace(os.sep, "/")
    why = unusable_name(path) or (f"it leaves the image root {root}" if path in (".", "..")
                                  or path.startswith("../") else None)
    if why:
        raise DataError(f"{rel!r}: cannot be added or removed: {why}")
    return path


def _names(col: "coll.Collection", r: int) -> List[str]:
    """The class names of row ``r`` of ``col``."""
    classes = col.classes or []
    row = col.labels[r]
    ids = [int(row)] if col.labels.ndim == 1 else [int(c) for c in np.flatnonzero(row)]
    return [classes[c] if c < len(classes) else str(c) for c in ids]


def changed_list(col: "coll.Collection", add: Sequence[str], remove: Sequence[str],
                 labels: Optional[Mapping[str, Union[str, Sequence[str]]]]) -> Tuple[ImageList, np.ndarray, np.ndarray]:
    """The image list after adding ``add`` and removing ``remove`` (paths relative to the image root),
    with ``labels`` (path -> class name, or names for multi-hot) for added or relabelled paths; its
    stats (the recorded ones for the paths not added) and which positions to encode again."""
    add = [_relative(p, col.root) for p in add]
    gone = {_relative(p, col.root) for p in remove} - set(add)
    labels = {_relative(p, col.root): v for p, v in (labels or {}).items()}
    kind, classes = col.manifest.get("labels"), list(col.classes or [])
    if kind is None and labels:
        raise ConfigError(f"{col.directory} holds no labels; add images without them")
    old = col.all_paths()
    names: Dict[str, List[str]] = {}
    for r, p in enumerate(old):
        if p not in gone and kind is not None:
            names[p] = _names(col, r)
    for p in add + list(labels):
        if kind is not None and p not in labels and p not in names:
            raise ConfigError(f"{p}: {col.directory} holds labels; give its class name in labels")
        if p in labels:
            v = labels[p]
            names[p] = [v] if isinstance(v, str) else [str(x) for x in v]
            if kind == "class" and len(names[p]) != 1:
                raise ConfigError(f"{p}: a class collection takes one class name per image, got {names[p]}")
    paths = sorted((set(old) - gone) | set(add))
    classes += sorted({c for p in paths for c in names.get(p, []) if c not in classes})
    col_of = {c: i for i, c in enumerate(classes)}
    lab = None
    if kind == "class":
        lab = np.asarray([col_of[names[p][0]] for p in paths], dtype=np.int64)
    elif kind == "multi-hot":
        lab = np.zeros((len(paths), len(classes)), dtype=np.uint8)
        for i, p in enumerate(paths):
            lab[i, [col_of[c] for c in names[p]]] = 1
    images = ImageList(col.root, paths, lab, kind, classes if kind else None, col.manifest.get("source") or "", [])
    recorded = col.all_stats()
    stats = np.full((len(paths), 2), -1, dtype=np.int64)
    at = {p: i for i, p in enumerate(paths)}
    if recorded is not None:
        for r, p in enumerate(old):
            if p in at:
                stats[at[p]] = recorded[r]
    fresh = [at[p] for p in add]
    stats[fresh] = file_stats(col.root, add)
    force = np.zeros(len(paths), dtype=bool)
    force[fresh] = True
    return images, stats, force


def update_collection(collection: PathLike, add: Sequence[str] = (), remove: Sequence[str] = (), *,
                      labels: Optional[Mapping[str, Union[str, Sequence[str]]]] = None,
                      checkpoint: Optional[PathLike] = None, model: Optional[torch.nn.Module] = None,
                      batch_size: int = 64, workers: int = 0, device: str = "cpu", runtime: str = "auto",
                      threads: Optional[int] = None, progress: bool = False, dry_run: bool = False,
                      precision: str = "auto") -> UpdateReport:
    """Add (or encode again) the images ``add`` and drop the images ``remove`` of a collection, by
    path relative to its image root, without scanning the folder; ``labels`` names the class(es) of
    added or relabelled paths (required for new images of a labelled collection).

    The model is ``model`` or the checkpoint (default: the one the manifest names) on the runtime
    and at the precision the collection records (:func:`recorded_engine`); it must be
    the collection's; images are read under the pixel limit it was encoded with. Returns what was
    done (or, ``dry_run``, what would be; nothing is written).
    """
    from .shards import encode_shards

    t0 = time.perf_counter()
    out = Path(collection)
    col = coll.open_collection(out)
    if model is None:
        from ...engines import open_encoder

        checkpoint = checkpoint if checkpoint is not None else col.checkpoint
        if checkpoint is None:
            raise ConfigError(f"{out}: the manifest names no checkpoint; pass one")
        runtime, precision = recorded_engine(out, col.manifest, runtime, precision)
        model = open_encoder(checkpoint, runtime, str(device), threads=threads, precision=precision)
    max_pixels = col.manifest.get("max_pixels")
    why = update_mismatch(col.manifest, model, col.root, max_pixels)
    if why:
        raise refuse(out, why)
    images, stats, force = changed_list(col, add, remove, labels)
    changes = diff_images(col, images, stats, force)
    if dry_run or changes.nothing:
        report = dry_report(col, changes, {}) if dry_run else UpdateReport(str(out), col.generation, kept=col.count)
        report.seconds = {"total": round(time.perf_counter() - t0, 3)}
        return report
    with exclusive(out, what="code collection"):
        col = coll.open_collection(out)  # the current generation, now that no one else writes
        changes = diff_images(col, images, stats, force)
        planned = plan_update(out, col, changes, model, checkpoint, shard_size=max(1, changes.todo.size),
                              max_pixels=max_pixels) is not None
        t1 = time.perf_counter()
        if planned:
            encode_shards(out, model, batch_size=batch_size, workers=workers, device=device, progress=progress)
        t2 = time.perf_counter()
        _, report = finish_update(out, col, changes, planned, new_fields(images, checkpoint))
    report.seconds = {"stat": round(t1 - t0, 3), "encode": round(t2 - t1, 3), **report.seconds,
                      "total": round(time.perf_counter() - t0, 3)}
    return report
