"""Encoding an image set into a code collection: discovery, batched decoding, resumable shards, ranks.

The work is cut into shards of ``shard_size`` consecutive images of the (sorted) image list. Each
shard is encoded and written on its own (``CODES/shards/shard-00000.npz``), so a killed run resumes
at the first missing shard; under ``torchrun`` rank r encodes shards r, r + W, r + 2W, ... and rank 0
merges them into one collection (:mod:`hybridhash.collection`) when every rank is done.

Decoding runs in DataLoader workers. An unreadable image (missing, empty, not an image, truncated,
over the pixel limit) does not stop the run: the worker returns no tensor, the collate function
drops it and records why, and the merged collection lists it in ``skipped.json`` (``strict=True``
stops at the first one instead). Item ids are positions among the images that were encoded.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from . import collection as coll
from .data.images import DEFAULT_MAX_PIXELS, is_image_file, open_image
from .errors import ConfigError, DataError, HybridHashError, IndexMismatchError
from .fileio import read_json, write_json
from .limits import SHARD_SIZE
from .runtime import dist_env

_log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
DEFAULT_SHARD_SIZE = SHARD_SIZE
PLAN = "plan.json"
ITEMS = "items.txt"
ITEM_LABELS = "items.labels.npy"
# what must agree for finished shards to be reused
PLAN_KEYS = ("bits", "fingerprint", "preprocess", "image_root", "images_sha256", "shard_size", "max_pixels")


# --------------------------------------------------------------------------------------------
# the image list

@dataclass
class ImageList:
    """The images to encode, in id order before skipping.

    Attributes:
        root: absolute image root; ``paths`` are relative to it (POSIX separators).
        paths: n relative paths.
        labels: int64 (n,) class ids, uint8 (n, C) multi-hot, or None.
        label_kind: "class", "multi-hot" or None.
        classes: C class names, or None.
        source: the folder or list file the list came from (absolute).
        rejected: [{"path", "reason"}] files found but impossible to store (e.g. a line break in the name).
    """

    root: Path
    paths: List[str]
    labels: Optional[np.ndarray] = None
    label_kind: Optional[str] = None
    classes: Optional[List[str]] = None
    source: str = ""
    rejected: List[Dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def digest(self) -> str:
        """Hex sha256 of the paths and labels: two runs resume each other only if they agree."""
        h = hashlib.sha256()
        for p in self.paths:
            h.update(p.encode("utf-8") + b"\n")
        if self.labels is not None:
            h.update(f"{self.label_kind}:{self.labels.dtype}:{self.labels.shape}".encode())
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()


def _storable(rel: str) -> Optional[str]:
    """Why ``rel`` cannot be stored as a line of paths.txt, or None when it can."""
    if "\n" in rel or "\r" in rel:
        return "file name contains a line break"
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8"
    return None


def _walk_images(root: Path) -> List[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for fn in filenames:
            if is_image_file(fn):
                found.append(fn if rel_dir == "." else f"{rel_dir}/{fn}".replace(os.sep, "/"))
    return sorted(found)


def scan_image_folder(folder: PathLike) -> ImageList:
    """The images under ``folder`` (recursively, hidden files and folders left out, sorted).

    When every image lies in a sub-folder, the first-level folder names are the classes (sorted)
    and each image gets the class of its folder; an image directly in ``folder`` means no labels.
    """
    from .data.folder import scan_folder

    root = Path(folder).resolve()
    if not root.is_dir():
        raise DataError(f"{folder}: no such directory")
    top_images = any(e.is_file() and is_image_file(e.name) for e in os.scandir(root))
    has_subdirs = any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(root))
    if has_subdirs and not top_images:
        classes, paths, labels, _ = scan_folder(root, problems=[])  # empty class folders are fine here
        paths = [p.replace(os.sep, "/") for p in paths]
        images = ImageList(root, paths, labels.astype(np.int64), "class", list(classes), str(root))
    else:
        images = ImageList(root, _walk_images(root), source=str(root))
    return _drop_unstorable(images)


def read_image_list(list_file: PathLike, root: Optional[PathLike] = None) -> ImageList:
    """A DeepHash-style list file (``path 0 1 0 ...`` per line, or a bare path per line).

    Paths are relative to ``root`` (default: the list file's folder); a leading ``/`` is part of
    the relative path, as list files are written. Lines with labels must all have the same count.
    """
    from .data.listfile import read_list_file

    list_file = Path(list_file)
    root = Path(root if root is not None else list_file.parent).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: image root is not a directory")
    try:
        text = list_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{list_file}: no such list file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{list_file}: cannot read as UTF-8 text ({err})") from None
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{list_file}: lists no images")
    if all(len(t) == 1 for t in lines):
        paths, labels, kind = [t[0] for t in lines], None, None
    else:
        lf = read_list_file(str(list_file))  # raises DataError naming the line of a malformed entry
        paths, labels, kind = lf.rel_paths, lf.labels.astype(np.uint8), "multi-hot"  # (n, C)
    images = ImageList(root, [], None, kind, None, str(list_file.resolve()))
    keep = []
    for i, p in enumerate(paths):
        rel = os.path.normpath(p.lstrip("/")).replace(os.sep, "/")
        if rel == ".." or rel.startswith("../") or rel == ".":
            images.rejected.append({"path": p, "reason": f"path leaves the image root {root}"})
            continue
        images.paths.append(rel)
        keep.append(i)
    if labels is not None:
        images.labels = labels[keep]
        images.classes = [str(c) for c in range(labels.shape[1])]
    return _drop_unstorable(images)


def _drop_unstorable(images: ImageList) -> ImageList:
    bad = [(i, r) for i, r in ((i, _storable(p)) for i, p in enumerate(images.paths)) if r]
    if bad:
        for i, reason in bad:
            images.rejected.append({"path": images.paths[i].encode("utf-8", "replace").decode("utf-8"),
                                    "reason": reason})
            _log.warning("leaving out %r: %s", images.paths[i], reason)
        keep = sorted(set(range(len(images.paths))) - {i for i, _ in bad})
        images.paths = [images.paths[i] for i in keep]
        if images.labels is not None:
            images.labels = images.labels[keep]
    if not images.paths:
        raise DataError(f"{images.source}: no images found")
    return images


def find_images(images: PathLike, root: Optional[PathLike] = None) -> ImageList:
    """``images`` is a folder (scanned) or a list file (read, paths relative to ``root``)."""
    p = Path(images)
    if p.is_dir():
        if root is not None:
            raise DataError(f"{images}: --root applies to list files; a folder is its own image root")
        return scan_image_folder(p)
    if p.is_file():
        return read_image_list(p, root)
    raise DataError(f"{images}: no such folder or list file")


# --------------------------------------------------------------------------------------------
# decoding: a dataset that never raises, and a collate that drops what could not be read

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


# --------------------------------------------------------------------------------------------
# the shard plan

@dataclass
class EncodePlan:
    """What an encoding run produces; stored as ``shards/plan.json`` and checked before resuming."""

    bits: int
    fingerprint: str
    checkpoint: Optional[str]
    preprocess: Dict[str, Any]
    images_sha256: str
    count: int
    shard_size: int
    max_pixels: Optional[int]
    image_root: str
    source: str
    label_kind: Optional[str]
    classes: Optional[List[str]]
    rejected: List[Dict[str, str]]
    preset: Optional[str] = None

    @property
    def num_shards(self) -> int:
        return max(1, -(-self.count // self.shard_size))

    def shard_range(self, s: int) -> Tuple[int, int]:
        return s * self.shard_size, min((s + 1) * self.shard_size, self.count)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "EncodePlan":
        return cls(**d)


def shard_path(out: PathLike, s: int) -> Path:
    return Path(out) / coll.SHARDS / f"shard-{s:05d}.npz"


def _fingerprint(model: torch.nn.Module) -> str:
    from .models import model_fingerprint

    fp = getattr(model, "fingerprint", None)
    if not fp:
        fp = model.fingerprint = model_fingerprint(model)
    return fp


def model_preprocess(model: torch.nn.Module) -> Dict[str, Any]:
    """The model's preprocessing dict, with the pipeline family its checkpoint recorded (if any).

    This is what evaluation uses, so encoding and search build their eval transform from it.
    """
    pre = dict(model.preprocess)
    meta = getattr(model, "checkpoint_meta", None) or {}
    for recorded in (meta.get("preprocess"), (meta.get("extra") or {}).get("preprocess")):
        if isinstance(recorded, dict) and recorded.get("pipeline"):
            pre["pipeline"] = recorded["pipeline"]
    return _jsonable(pre)


def eval_transform(model: torch.nn.Module) -> Callable:
    """PIL RGB image -> float32 (3, H, W): the model's deterministic evaluation pipeline."""
    from .data.transforms import build_transform

    return build_transform(model_preprocess(model), train=False)


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj))


def _mismatch(old: Dict[str, Any], new: Dict[str, Any]) -> Optional[str]:
    for k in PLAN_KEYS:
        if old.get(k) != new.get(k):
            a, b = old.get(k), new.get(k)
            if k == "images_sha256":
                return "another image list (a different set of files or labels)"
            if k == "fingerprint":
                return f"another model (fingerprint {a} there, {b} now)"
            if k == "image_root":
                return f"images under another root ({a} there, {b} now)"
            return f"another {k} ({a} there, {b} now)"
    return None


def _clear(out: Path) -> None:
    """Remove what an earlier run wrote to ``out`` (only files this module names)."""
    shards = out / coll.SHARDS
    if shards.is_dir():
        for f in shards.iterdir():
            if f.name in (PLAN, ITEMS, ITEM_LABELS) or (f.name.startswith("shard-") and f.suffix == ".npz"):
                f.unlink()
        if not any(shards.iterdir()):
            shards.rmdir()
    for name in (coll.MANIFEST, coll.CODES, coll.PATHS, coll.OFFSETS, coll.LABELS, coll.CLASSES, coll.SKIPPED):
        (out / name).unlink(missing_ok=True)


def plan_encode(out: PathLike, images: ImageList, model: torch.nn.Module, checkpoint: Optional[PathLike] = None,
                *, shard_size: int = DEFAULT_SHARD_SIZE, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                resume: bool = True) -> EncodePlan:
    """Write the shard plan and the image list under ``out/shards/`` (rank 0's job).

    With ``resume``, an earlier plan (or finished collection) in ``out`` must describe the same
    model, images, shard size and pixel limit, else IndexMismatchError says what differs; its
    finished shards are then kept. Without ``resume`` earlier results are removed first.
    """
    if shard_size < 1:
        raise DataError(f"shard size must be at least 1, got {shard_size}")
    out = Path(out)
    plan = EncodePlan(
        bits=int(model.bits), fingerprint=_fingerprint(model),
        checkpoint=str(Path(checkpoint).resolve()) if checkpoint is not None else None,
        preprocess=model_preprocess(model), images_sha256=images.digest(), count=len(images),
        shard_size=int(shard_size), max_pixels=max_pixels, image_root=str(images.root), source=images.source,
        label_kind=images.label_kind, classes=images.classes, rejected=list(images.rejected),
        preset=getattr(getattr(model, "config", None), "preset", None))
    new = plan.to_dict()
    plan_file = out / coll.SHARDS / PLAN
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not plan_file.is_file() and not coll.is_collection(out):
        raise DataError(f"{out}: exists and is not a code collection; choose a new or empty directory")
    old = read_json(plan_file) if plan_file.is_file() else None
    if old is None and coll.is_collection(out):
        old = read_json(out / coll.MANIFEST)
    if old is not None:
        why = _mismatch(old, new)
        if why and resume:
            raise IndexMismatchError(f"{out} holds codes of {why}; pass --no-resume to replace them, "
                                     f"or choose another output directory")
        if why or not resume:
            _clear(out)
    (out / coll.SHARDS).mkdir(parents=True, exist_ok=True)
    with coll.atomic_path(out / coll.SHARDS / ITEMS) as tmp:  # read back by every rank and by the merge
        tmp.write_text("".join(p + "\n" for p in images.paths), encoding="utf-8")
    if images.labels is not None:
        coll.save_npy(out / coll.SHARDS / ITEM_LABELS, images.labels)
    write_json(plan_file, new)
    return plan


def load_plan(out: PathLike) -> Tuple[EncodePlan, ImageList]:
    """The plan and image list that :func:`plan_encode` wrote to ``out/shards``."""
    shards = Path(out) / coll.SHARDS
    if not (shards / PLAN).is_file():
        raise DataError(f"{out}: no encoding plan ({coll.SHARDS}/{PLAN} missing)")
    plan = EncodePlan.from_dict(read_json(shards / PLAN))
    paths = (shards / ITEMS).read_text(encoding="utf-8").split("\n")[:-1]
    labels = np.load(shards / ITEM_LABELS, allow_pickle=False) if plan.label_kind else None
    images = ImageList(Path(plan.image_root), paths, labels, plan.label_kind, plan.classes, plan.source,
                       list(plan.rejected))
    if len(images) != plan.count or images.digest() != plan.images_sha256:
        raise DataError(f"{shards}: the image list does not match {PLAN}; encode again with --no-resume")
    return plan, images


def shards_of_rank(plan: EncodePlan, rank: int = 0, world_size: int = 1) -> List[int]:
    """Shards rank ``rank`` of ``world_size`` is responsible for: rank, rank + W, ..."""
    return list(range(rank, plan.num_shards, world_size))


def done_shards(out: PathLike, plan: EncodePlan) -> List[int]:
    return [s for s in range(plan.num_shards) if shard_path(out, s).is_file()]


# --------------------------------------------------------------------------------------------
# encoding

def _write_shard(out: Path, s: int, plan: EncodePlan, index: List[np.ndarray], codes: List[np.ndarray],
                 bad: List[Tuple[int, str]]) -> None:
    nbytes = (plan.bits + 7) // 8
    bad.sort()
    with coll.atomic_path(shard_path(out, s)) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            index=np.concatenate(index) if index else np.zeros(0, np.int64),  # (m,) list positions
            codes=np.concatenate(codes) if codes else np.zeros((0, nbytes), np.uint8),  # (m, bits/8)
            skipped_index=np.asarray([i for i, _ in bad], dtype=np.int64),  # (s,)
            skipped_reason=np.asarray([r for _, r in bad], dtype=str),  # (s,)
            fingerprint=np.asarray(plan.fingerprint),
            images_sha256=np.asarray(plan.images_sha256),
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
    from .metrics import pack_codes

    if batch_size < 1 or workers < 0:
        raise ConfigError(f"batch size must be at least 1 and workers at least 0, got {batch_size} and {workers}")
    out = Path(out)
    plan, images = load_plan(out)
    fp = _fingerprint(model)
    if fp != plan.fingerprint or int(model.bits) != plan.bits:
        raise IndexMismatchError(f"{out} was planned for the {plan.bits}-bit model {plan.fingerprint}, "
                                 f"this is the {model.bits}-bit model {fp}")
    todo = [s for s in shards_of_rank(plan, rank, world_size) if not shard_path(out, s).is_file()]
    if not todo:
        return []
    ranges = [plan.shard_range(s) for s in todo]
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
                raise DataError(f"{images.root / images.paths[i]}: {reason} (strict: stopping)")
            if batch["images"] is not None:
                x = batch["images"].to(device, non_blocking=True)  # (b, 3, H, W)
                codes.append(pack_codes(model.encode(x).cpu().numpy()))  # (b, bits/8)
                index.append(batch["index"].numpy())
            bad += batch["bad"]
            n = len(batch["index"]) + len(batch["bad"])
            seen += n
            bar.update(n)
            start, end = ranges[pos]
            if seen == end - start:  # the shard is complete: write it before going on
                _write_shard(out, todo[pos], plan, index, codes, bad)
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
    index, codes, skipped, shards = [], [], [], []
    for s in range(plan.num_shards):
        with np.load(shard_path(out, s), allow_pickle=False) as z:
            if str(z["fingerprint"]) != plan.fingerprint or str(z["images_sha256"]) != plan.images_sha256:
                raise DataError(f"{shard_path(out, s)}: belongs to another encoding run; encode with --no-resume")
            index.append(z["index"])
            codes.append(z["codes"])
            skipped += [(int(i), str(r)) for i, r in zip(z["skipped_index"], z["skipped_reason"])]
            start, end = plan.shard_range(s)
            shards.append({"file": f"{coll.SHARDS}/{shard_path(out, s).name}", "start": start, "end": end,
                           "encoded": int(z["index"].size), "skipped": int(z["skipped_index"].size)})
    kept = np.concatenate(index)  # (n,) list positions, increasing
    all_codes = np.concatenate(codes)  # (n, bits/8)
    labels = images.labels[kept] if images.labels is not None else None
    skipped_list = list(plan.rejected) + [{"path": images.paths[i], "reason": r} for i, r in sorted(skipped)]
    manifest = {
        "bits": plan.bits,
        "fingerprint": plan.fingerprint,
        "checkpoint": plan.checkpoint,
        "preset": plan.preset,
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
    return coll.write_collection(out, manifest, all_codes, [images.paths[i] for i in kept], labels,
                                 plan.classes, skipped_list)


# --------------------------------------------------------------------------------------------
# the whole run, on one process or under torchrun

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
                      on_shard: Optional[Callable[[int], None]] = None) -> Optional["coll.Collection"]:
    """Encode a folder or list file of images into the collection ``out``.

    The model is ``model`` or loaded from the project checkpoint ``checkpoint``. Under torchrun
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
        from .models import from_pretrained

        model = from_pretrained(checkpoint)
    if world_size > 1 and str(device).startswith("cuda") and ":" not in str(device):
        device = f"cuda:{local_rank}"
    created_group = False
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            # gloo only carries the barriers; a long timeout lets a slow rank finish its shards
            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
            created_group = True
    try:
        error: Optional[BaseException] = None
        if rank == 0:
            try:
                plan_encode(out, find_images(images, root), model, checkpoint, shard_size=shard_size,
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
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _finished(out: PathLike) -> bool:
    """True when ``out`` holds a merged collection of its current plan and every shard is there."""
    out = Path(out)
    if not coll.is_collection(out):
        return False
    plan, _ = load_plan(out)
    if _mismatch(read_json(out / coll.MANIFEST), plan.to_dict()) is not None:
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
