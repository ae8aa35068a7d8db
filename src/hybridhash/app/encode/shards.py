"""Encoding shards: a dataset that never raises, a collate that drops what could not be read, the
per-shard loop (each shard written whole), and the merge of finished shards into a collection."""
from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ... import collection as coll
from ...codes import pack_pm1
from ...data.imagelist import file_stats
from ...data.images import DEFAULT_MAX_PIXELS, open_image, printable
from ...data.transforms import eval_transform
from ...engines.encoding import encode_batch
from ...generations import skip_entry
from ...errors import ConfigError, DataError, IndexMismatchError
from ...index import remove_saved_index
from ...models.weights import model_fingerprint
from .plan import (EncodePlan, PathLike, check_shard, disk_full, load_plan, shard_path, shards_of_rank)

_log = logging.getLogger(__name__)


class EncodeDataset(Dataset):
    """Items ``(i, image (3, H, W) float32 or None, reason or None)`` for positions ``i`` of an image list."""

    def __init__(self, root: PathLike, paths: Sequence[str], transform: Callable,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS):
        self.root = str(root)
        self.paths = paths
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tuple[int, Optional[torch.Tensor], Optional[str]]:
        rel = self.paths[i]
        try:
            img = open_image(os.path.join(self.root, rel), self.max_pixels, name=rel)
            return i, self.transform(img), None
        except DataError as err:
            msg = str(err)
            return i, None, msg[len(rel) + 2:] if msg.startswith(rel + ": ") else msg
        except Exception as err:  # a transform failing on an odd image must not end the run
            return i, None, f"cannot be preprocessed ({type(err).__name__}: {' '.join(str(err).split())})"


def collate_drop_bad(items: List[Tuple[int, Optional[torch.Tensor], Optional[str]]]) -> Dict[str, Any]:
    """Stack the readable images; return ``{"index": int64 (b,), "images": (b, 3, H, W) or None,
    "bad": [(i, reason)]}``."""
    good = [(i, x) for i, x, _ in items if x is not None]
    return {
        "index": torch.tensor([i for i, _ in good], dtype=torch.int64),  # (b,)
        "images": torch.stack([x for _, x in good]) if good else None,  # (b, 3, H, W)
        "bad": [(i, r) for i, x, r in items if x is None],
    }


def spread_images(root: PathLike, paths: Sequence[str], max_pixels: Optional[int] = DEFAULT_MAX_PIXELS):
    """An image source for :func:`hybridhash.autoexport.auto_export`: ``(transform, count)`` -> float32
    (m, 3, S, S), the readable ones of ``count`` images evenly spread over ``paths`` (the same ones
    for the same list), None when none is readable."""
    def source(transform: Callable, count: int) -> Optional[torch.Tensor]:
        picks = np.unique(np.linspace(0, len(paths) - 1, num=min(count, len(paths))).round().astype(np.int64))
        dataset = EncodeDataset(root, paths, transform, max_pixels)
        return collate_drop_bad([dataset[int(i)] for i in picks])["images"] if len(paths) else None

    return source


class ShardBatches(Sampler):
    """Batches of list positions that never cross a shard boundary, for the given shards in order."""

    def __init__(self, shards: Sequence[Tuple[int, int]], batch_size: int):
        self.shards = list(shards)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[List[int]]:
        for start, end in self.shards:
            for s in range(start, end, self.batch_size):
                yield list(range(s, min(s + self.batch_size, end)))

    def __len__(self) -> int:
        return sum(-(-(e - s) // self.batch_size) for s, e in self.shards)


def _write_shard(out: Path, s: int, plan: EncodePlan, index: List[np.ndarray], codes: List[np.ndarray],
                 bad: List[Tuple[int, str]], stats: np.ndarray) -> None:
    nbytes = (plan.bits + 7) // 8
    bad.sort()
    with disk_full(shard_path(out, s), "finished shards are kept"):
        coll.save_npz(
            shard_path(out, s),
            index=np.concatenate(index) if index else np.zeros(0, np.int64),  # (m,) list positions
            codes=np.concatenate(codes) if codes else np.zeros((0, nbytes), np.uint8),  # (m, bits/8)
            skipped_index=np.asarray([i for i, _ in bad], dtype=np.int64),  # (s,)
            skipped_reason=np.asarray([r for _, r in bad], dtype=str),  # (s,)
            fingerprint=np.asarray(plan.fingerprint),
            images_sha256=np.asarray(plan.images_sha256),
            stat=stats,  # (end - start, 2) size, mtime_ns of every file of the shard, taken before decoding
        )


def encode_shards(out: PathLike, model: torch.nn.Module, rank: int = 0, world_size: int = 1, *,
                  batch_size: int = 64, workers: int = 0, strict: bool = False, device: Union[str, torch.device] = "cpu",
                  progress: bool = True, on_shard: Optional[Callable[[int], None]] = None) -> List[int]:
    """Encode the missing shards of rank ``rank`` (of ``world_size``) planned in ``out``.

    Args:
        model: the plan's model (its fingerprint is checked); moved to ``device`` and put in eval mode.
        workers: DataLoader worker processes decoding images (0: decode in this process).
        strict: raise DataError at the first unreadable image instead of skipping it.
        on_shard: called with the shard number after each shard file is written.

    Returns:
        the shards encoded by this call (finished shards of an earlier run are not redone).
    """
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"batch size must be at least 1 and workers at least 0, got {batch_size} and {workers}")
    out = Path(out)
    plan, images = load_plan(out)
    fp = model_fingerprint(model)
    if fp != plan.fingerprint or int(model.bits) != plan.bits:
        raise IndexMismatchError(f"{out} was planned for the {plan.bits}-bit model {plan.fingerprint}, "
                                 f"this is the {model.bits}-bit model {fp}")
    todo = [s for s in shards_of_rank(plan, rank, world_size) if not shard_path(out, s).is_file()]
    if not todo:
        return []
    ranges = [plan.shard_range(s) for s in todo]
    # taken before any decoding: a file changed meanwhile then differs at the next resume
    stats = [file_stats(images.root, images.paths[a:b]) for a, b in ranges]
    dataset = EncodeDataset(images.root, images.paths, eval_transform(model), plan.max_pixels)
    device = torch.device(device)
    loader = DataLoader(dataset, batch_sampler=ShardBatches(ranges, batch_size), num_workers=workers,
                        collate_fn=collate_drop_bad, pin_memory=device.type == "cuda")
    model = model.to(device).eval()

    from tqdm.auto import tqdm

    bar = tqdm(total=sum(e - s for s, e in ranges), unit="img", disable=not progress,
               desc=f"encode rank {rank}" if world_size > 1 else "encode")
    written: List[int] = []
    pos = 0  # which of `todo` the incoming batches belong to
    index: List[np.ndarray] = []
    codes: List[np.ndarray] = []
    bad: List[Tuple[int, str]] = []
    seen = 0
    try:
        for batch in loader:
            if strict and batch["bad"]:
                i, reason = batch["bad"][0]
                raise DataError(f"{printable(str(images.root / images.paths[i]))}: {reason} (strict: stopping)")
            if batch["images"] is not None:
                out_codes = encode_batch(model, batch["images"], device=device)  # (b, width) int8 +-1
                if out_codes.shape[1] != plan.bits:  # encoding again would write the same wrong shard
                    raise IndexMismatchError(
                        f"{plan.checkpoint or 'the model'}: the encoder gives {out_codes.shape[1]}-bit codes, "
                        f"the model says {plan.bits} bits; its export does not match it: encode with "
                        f"--runtime torch, or export the checkpoint again (hybridhash export)")
                codes.append(pack_pm1(out_codes))  # (b, bits/8)
                index.append(batch["index"].numpy())
            bad += batch["bad"]
            n = len(batch["index"]) + len(batch["bad"])
            seen += n
            bar.update(n)
            start, end = ranges[pos]
            if seen == end - start:  # the shard is complete: write it before going on
                _write_shard(out, todo[pos], plan, index, codes, bad, stats[pos])
                written.append(todo[pos])
                if on_shard is not None:
                    on_shard(todo[pos])
                pos, seen, index, codes, bad = pos + 1, 0, [], [], []
    finally:
        bar.close()
    return written


def merge_shards(out: PathLike) -> "coll.Collection":
    """Join all shards of the plan in ``out`` into the collection files and the manifest."""
    out = Path(out)
    plan, images = load_plan(out)
    missing = [s for s in range(plan.num_shards) if not shard_path(out, s).is_file()]
    if missing:
        raise DataError(f"{out}: {len(missing)} of {plan.num_shards} shards are not encoded yet "
                        f"(first: {shard_path(out, missing[0]).name}); run the encode command again")
    index, codes, skipped, shards, stats = [], [], [], [], []
    for s in range(plan.num_shards):
        problem, z = check_shard(out, plan, s)
        if problem is not None:
            # a shard of another run or of the wrong width would be kept or written the same way again
            hint = ("encode again with --no-resume, or into another --collection"
                    if problem == "belongs to another encoding run" or problem.startswith("holds codes of shape")
                    else "run the same encode command again to re-encode it")
            raise DataError(f"{shard_path(out, s)}: {problem}; {hint}")
        index.append(z["index"])
        codes.append(z["codes"])
        start, end = plan.shard_range(s)
        skipped += [(int(i), str(r), None if z["stat"] is None else z["stat"][i - start])
                    for i, r in zip(z["skipped_index"], z["skipped_reason"])]
        stats.append(None if z["stat"] is None else z["stat"][z["index"] - start])  # (m, 2) of the encoded ones
        shards.append({"file": f"{coll.SHARDS}/{shard_path(out, s).name}", "start": start, "end": end,
                       "encoded": int(z["index"].size), "skipped": int(z["skipped_index"].size)})
    kept = np.concatenate(index).astype(np.int64)  # (n,) list positions, increasing
    all_codes = np.concatenate(codes)  # (n, bits/8)
    all_stats = None if any(st is None for st in stats) else np.concatenate(stats).astype(np.int64)  # (n, 2)
    labels = images.labels[kept] if images.labels is not None else None
    skipped.sort(key=lambda t: t[0])
    skipped_list = list(plan.rejected) + [skip_entry(images.paths[i], r, st) for i, r, st in skipped]
    manifest = {
        "bits": plan.bits,
        "fingerprint": plan.fingerprint,
        "checkpoint": plan.checkpoint,
        "preset": plan.preset,
        "runtime": plan.runtime,
        "precision": plan.precision or "fp32",
        "preprocess": plan.preprocess,
        "image_root": plan.image_root,
        "source": plan.source,
        "images_sha256": plan.images_sha256,
        "labels": plan.label_kind,
        "num_classes": len(plan.classes) if plan.classes is not None else None,
        "skipped": len(skipped_list),
        "max_pixels": plan.max_pixels,
        "shard_size": plan.shard_size,
        "shards": shards,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

    with disk_full(out, "the encoded shards are kept"):
        col = coll.write_collection(out, manifest, all_codes, [images.paths[i] for i in kept], labels,
                                    plan.classes, skipped_list, stats=all_stats)
    remove_saved_index(coll.index_path(out), keep_sha256=col.codes_sha256)  # an index of other codes must not answer for these
    return col
