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
import errno
import hashlib
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
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
PLAN_FORMAT = "hybridhash-encode-plan"
PLAN_VERSION = 1
_SHARD_NAME = re.compile(r"shard-\d{5}\.npz")
# arrays every shard file holds ("stat" since file sizes and times are recorded)
_SHARD_ARRAYS = ("index", "codes", "skipped_index", "skipped_reason", "fingerprint", "images_sha256")


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


def file_stats(root: PathLike, paths: Sequence[str]) -> np.ndarray:
    """int64 (n, 2): size and mtime_ns of each file (through links), (-1, -1) where it cannot be read.

    What make and rsync compare: a file replaced in place gets another size or time.
    """
    out = np.full((len(paths), 2), -1, dtype=np.int64)
    for i, rel in enumerate(paths):
        try:
            st = os.stat(os.path.join(root, rel))
        except (OSError, ValueError):
            continue
        out[i] = (st.st_size, st.st_mtime_ns)
    return out


def _printable(name: str) -> str:
    """``name`` as it can stand on one line of an error message (quoted and escaped when needed)."""
    return name if name.isprintable() else repr(name)


@contextmanager
def _disk_full(what: PathLike, kept: str) -> Iterator[None]:
    """Turn a full disk (or quota) while writing ``what`` into a one-line DataError saying what was kept."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(f"no space left on device while writing {err.filename or what}: "
                            f"free space and rerun; {kept}") from None
        raise


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
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "EncodePlan":
        d = {k: v for k, v in d.items() if k not in ("format", "version")}
        return cls(**d)

    @staticmethod
    def is_plan(d: Any) -> bool:
        """True for a plan this project wrote: the format marker, or (before the marker) exactly the plan's fields."""
        if not isinstance(d, dict):
            return False
        if d.get("format") == PLAN_FORMAT:
            return d.get("version") == PLAN_VERSION
        return set(d) == {f.name for f in fields(EncodePlan)}


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


def _read_plan(plan_file: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str], bool]:
    """(plan dict, why it is unreadable, whether a file is there that is not a plan of this project)."""
    if not plan_file.is_file():
        return None, None, False
    try:
        d = read_json(plan_file)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return None, f"unreadable ({type(err).__name__}: {' '.join(str(err).split())[:120]})", False
    if not EncodePlan.is_plan(d):
        return None, None, True
    try:
        EncodePlan.from_dict(d)
    except TypeError as err:
        return None, f"not a complete plan ({err})", False
    return d, None, False


def _clear(out: Path, old_plan: Optional[Dict[str, Any]], manifest: Optional[Dict[str, Any]]) -> None:
    """Remove what an earlier run wrote to ``out``: exactly the files its plan and manifest name.

    A plan that cannot be read names nothing; then only files under ``shards/`` with the names this
    module gives them go (that folder and those names are the encoder's own).
    """
    from .retrieval import remove_own_index

    shards = out / coll.SHARDS
    if shards.is_dir():
        if old_plan is not None:
            plan = EncodePlan.from_dict(old_plan)
            names = [shard_path(out, s).name for s in range(plan.num_shards)] + [ITEMS, ITEM_LABELS, PLAN]
            for name in names:
                (shards / name).unlink(missing_ok=True)
        elif not (out / coll.SHARDS / PLAN).is_file() or _read_plan(shards / PLAN)[1] is not None:
            for f in shards.iterdir():
                if f.is_file() and (f.name in (PLAN, ITEMS, ITEM_LABELS) or _SHARD_NAME.fullmatch(f.name)):
                    f.unlink()
        if not any(shards.iterdir()):
            shards.rmdir()
    if manifest is not None:
        remove_own_index(out)  # it was built from the codes about to go
        for name in coll.written_files(manifest):
            (out / name).unlink(missing_ok=True)


def _encoder_leftovers_only(out: Path) -> bool:
    """True when ``out`` holds nothing but a ``shards/`` folder of files named as the encoder names them
    (a first run stopped before its plan was written)."""
    shards = out / coll.SHARDS
    if any(e.name != coll.SHARDS for e in out.iterdir()) or not shards.is_dir():
        return False
    return all(f.is_file() and (f.name in (ITEMS, ITEM_LABELS) or _SHARD_NAME.fullmatch(f.name)
                                or (f.name.startswith(".") and f.name.endswith(".tmp")))
               for f in shards.iterdir())


def _not_ours(out: Path) -> DataError:
    return DataError(f"--out {out} is not empty and is not a hybridhash collection (not a code collection this "
                     f"project wrote); choose an empty or new directory")


def plan_encode(out: PathLike, images: ImageList, model: torch.nn.Module, checkpoint: Optional[PathLike] = None,
                *, shard_size: int = DEFAULT_SHARD_SIZE, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                resume: bool = True) -> EncodePlan:
    """Write the shard plan and the image list under ``out/shards/`` (rank 0's job).

    ``out`` must be new, empty, or a collection (or encoding run) this project wrote; nothing else
    in it is ever removed. With ``resume``, an earlier plan (or finished collection) in ``out`` must
    describe the same model, images, shard size and pixel limit, else IndexMismatchError says what
    differs; its finished shards are then kept, except those whose images changed since (size or
    mtime) and those that are unreadable or do not hold the rows of their plan: those are removed
    and encoded again. Without ``resume`` earlier results are removed first.
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
    manifest = coll.read_manifest(out) if out.is_dir() else None
    old_plan, plan_error, foreign_plan = _read_plan(plan_file)
    foreign = foreign_plan or ((out / coll.MANIFEST).exists() and manifest is None)
    ours = manifest is not None or old_plan is not None or plan_error is not None \
        or (out.is_dir() and _encoder_leftovers_only(out))
    if out.is_dir() and any(out.iterdir()) and (foreign or not ours):
        raise _not_ours(out)
    if plan_error is not None and resume:
        raise DataError(f"{plan_file}: {plan_error}; pass --no-resume to start over")
    old = old_plan if old_plan is not None else manifest
    if old is not None or plan_error is not None:
        why = _mismatch(old, new) if old is not None else None
        if why and resume:
            raise IndexMismatchError(f"{out} holds codes of {why}; pass --no-resume to replace them, "
                                     f"or choose another output directory")
        if why or not resume or plan_error is not None:
            _clear(out, old_plan, manifest)
    kept = "nothing was encoded yet"
    with _disk_full(out / coll.SHARDS, kept):
        (out / coll.SHARDS).mkdir(parents=True, exist_ok=True)
        with coll.atomic_path(out / coll.SHARDS / ITEMS) as tmp:  # read back by every rank and by the merge
            tmp.write_text("".join(p + "\n" for p in images.paths), encoding="utf-8")
        if images.labels is not None:
            coll.save_npy(out / coll.SHARDS / ITEM_LABELS, images.labels)
        write_json(plan_file, new)
    if resume:
        _drop_stale_shards(out, plan, images)
    return plan


def _drop_stale_shards(out: Path, plan: EncodePlan, images: ImageList) -> List[int]:
    """Remove the finished shards that must be encoded again, say why, and return them.

    A shard goes when it is unreadable, does not hold exactly its plan's rows and ids, or any of
    its images has another size or mtime_ns now than when it was encoded.
    """
    present = [s for s in range(plan.num_shards) if shard_path(out, s).is_file()]
    if not present:
        return []
    stale, changed, problems = [], 0, []
    for s in present:
        start, end = plan.shard_range(s)
        problem, data = check_shard(out, plan, s)
        if problem is None and data.get("stat") is None:
            problem = "records no file sizes and times (written by an older hybridhash)"
        if problem is None:
            now = file_stats(images.root, images.paths[start:end])  # (m, 2)
            diff = int((now != data["stat"]).any(axis=1).sum())
            if diff:
                stale.append(s)
                changed += diff
            continue
        stale.append(s)
        problems.append(f"{shard_path(out, s).name} {problem}")
    if not stale:
        return []
    parts = []
    if changed:
        parts.append(f"{changed} image{'s' if changed != 1 else ''} changed since "
                     f"{'they were' if changed != 1 else 'it was'} encoded")
    parts += problems[:3] + ([f"{len(problems) - 3} more shards unusable"] if len(problems) > 3 else [])
    _log.warning("re-encoding %d of %d shards: %s", len(stale), plan.num_shards, "; ".join(parts))
    for s in stale:
        shard_path(out, s).unlink(missing_ok=True)
    return stale


def load_plan(out: PathLike) -> Tuple[EncodePlan, ImageList]:
    """The plan and image list that :func:`plan_encode` wrote to ``out/shards``."""
    shards = Path(out) / coll.SHARDS
    if not (shards / PLAN).is_file():
        raise DataError(f"{out}: no encoding plan ({coll.SHARDS}/{PLAN} missing)")
    d, why, foreign = _read_plan(shards / PLAN)
    if d is None:
        raise DataError(f"{shards / PLAN}: {why or 'not an encoding plan of hybridhash'}; "
                        f"encode again with --no-resume to start over")
    plan = EncodePlan.from_dict(d)
    try:
        paths = (shards / ITEMS).read_text(encoding="utf-8").split("\n")[:-1]
        labels = np.load(shards / ITEM_LABELS, allow_pickle=False) if plan.label_kind else None
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as err:
        raise DataError(f"{shards}: the image list of {PLAN} is unreadable ({type(err).__name__}); "
                        f"encode again with --no-resume") from None
    images = ImageList(Path(plan.image_root), paths, labels, plan.label_kind, plan.classes, plan.source,
                       list(plan.rejected))
    if len(images) != plan.count or images.digest() != plan.images_sha256:
        raise DataError(f"{shards}: the image list does not match {PLAN}; encode again with --no-resume")
    return plan, images


def shards_of_rank(plan: EncodePlan, rank: int = 0, world_size: int = 1) -> List[int]:
    """Shards rank ``rank`` of ``world_size`` is responsible for: rank, rank + W, ..."""
    return list(range(rank, plan.num_shards, world_size))


def done_shards(out: PathLike, plan: EncodePlan) -> List[int]:
    """The shards whose file is there and holds exactly the rows and ids of its plan."""
    return [s for s in range(plan.num_shards) if shard_path(out, s).is_file() and check_shard(out, plan, s)[0] is None]


def check_shard(out: PathLike, plan: EncodePlan, s: int) -> Tuple[Optional[str], Dict[str, Any]]:
    """(what is wrong with shard ``s``'s file or None, its arrays).

    A good shard belongs to this plan (model fingerprint and image list), and its encoded ids and
    skipped ids together are exactly the list positions ``shard_range(s)``, each once, with one
    code row of ``bits/8`` bytes per encoded id. The arrays: ``index`` (m,), ``codes`` (m, bits/8),
    ``skipped_index`` (k,), ``skipped_reason`` (k,), ``stat`` (end - start, 2) or None.
    """
    path = shard_path(out, s)
    start, end = plan.shard_range(s)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _SHARD_ARRAYS if k not in z.files]
            if missing:
                return f"lacks {', '.join(missing)}", {}
            data = {k: z[k] for k in _SHARD_ARRAYS}
            data["stat"] = z["stat"] if "stat" in z.files else None
    except Exception as err:  # any way a damaged file fails to parse
        return f"is unreadable ({type(err).__name__})", {}
    if str(data["fingerprint"]) != plan.fingerprint or str(data["images_sha256"]) != plan.images_sha256:
        return "belongs to another encoding run", data
    index, codes, sk = data["index"], data["codes"], data["skipped_index"]
    nbytes = (plan.bits + 7) // 8
    if index.ndim != 1 or sk.ndim != 1 or index.dtype.kind not in "iu" or sk.dtype.kind not in "iu":
        return "holds malformed ids", data
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape != (index.size, nbytes):
        return f"holds codes of shape {codes.shape} for {index.size} ids, expected ({index.size}, {nbytes})", data
    if data["skipped_reason"].shape != sk.shape:
        return f"holds {data['skipped_reason'].size} skip reasons for {sk.size} skipped ids", data
    if index.size + sk.size != end - start:
        return (f"holds {index.size + sk.size} rows ({index.size} encoded, {sk.size} skipped), "
                f"its plan {end - start}"), data
    ids = np.concatenate([index, sk]).astype(np.int64)
    if not np.array_equal(np.sort(ids), np.arange(start, end)) or bool((np.diff(index) <= 0).any()):
        return f"holds ids other than {start}..{end - 1} each once, in order", data
    st = data["stat"]
    if st is not None and (st.dtype != np.int64 or st.shape != (end - start, 2)):
        return f"holds file stats of shape {st.shape}, expected ({end - start}, 2)", data
    return None, data


# --------------------------------------------------------------------------------------------
# encoding

def _write_shard(out: Path, s: int, plan: EncodePlan, index: List[np.ndarray], codes: List[np.ndarray],
                 bad: List[Tuple[int, str]], stats: np.ndarray) -> None:
    nbytes = (plan.bits + 7) // 8
    bad.sort()
    with _disk_full(shard_path(out, s), "finished shards are kept"), \
            coll.atomic_path(shard_path(out, s)) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
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
                raise DataError(f"{_printable(str(images.root / images.paths[i]))}: {reason} (strict: stopping)")
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
            hint = ("encode with --no-resume" if problem == "belongs to another encoding run"
                    else "run the same encode command again to re-encode it")
            raise DataError(f"{shard_path(out, s)}: {problem}; {hint}")
        index.append(z["index"])
        codes.append(z["codes"])
        skipped += [(int(i), str(r)) for i, r in zip(z["skipped_index"], z["skipped_reason"])]
        start, end = plan.shard_range(s)
        stats.append(None if z["stat"] is None else z["stat"][z["index"] - start])  # (m, 2) of the encoded ones
        shards.append({"file": f"{coll.SHARDS}/{shard_path(out, s).name}", "start": start, "end": end,
                       "encoded": int(z["index"].size), "skipped": int(z["skipped_index"].size)})
    kept = np.concatenate(index).astype(np.int64)  # (n,) list positions, increasing
    all_codes = np.concatenate(codes)  # (n, bits/8)
    all_stats = None if any(st is None for st in stats) else np.concatenate(stats).astype(np.int64)  # (n, 2)
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
    from .retrieval import remove_own_index

    with _disk_full(out, "the encoded shards are kept"):
        col = coll.write_collection(out, manifest, all_codes, [images.paths[i] for i in kept], labels,
                                    plan.classes, skipped_list, stats=all_stats)
    remove_own_index(out, keep_sha256=col.codes_sha256)  # an index of other codes must not answer for these
    return col


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
                found = find_images(images, root)
                if strict and found.rejected:
                    first = found.rejected[0]
                    raise DataError(f"{_printable(str(found.root / first['path']))}: {first['reason']} "
                                    f"(strict: stopping)")
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
