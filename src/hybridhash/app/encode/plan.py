"""The shard plan of an encoding run: what it will produce (``shards/plan.json``), which shards of an
earlier run can be kept (same plan, same files, complete and of this run), and clearing exactly
what the project wrote before."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ... import collection as coll
from ...data.imagelist import ImageList, file_stats
from ...data.images import DEFAULT_MAX_PIXELS
from ...data.transforms import model_preprocess
from ...errors import DataError, IndexMismatchError
from ...generations import remove_generation, remove_stale_generations
from ...fileio import disk_full, read_json, write_json  # noqa: F401  (disk_full re-exported)
from ...limits import SHARD_SIZE
from ...locking import LOCK_NAME
from ...engines import runs_at
from ...models.weights import model_fingerprint


_log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
DEFAULT_SHARD_SIZE = SHARD_SIZE
PLAN = "plan.json"
ITEMS = "items.txt"
ITEM_LABELS = "items.labels.npy"
# what must agree for finished shards to be reused
PLAN_KEYS = ("bits", "fingerprint", "preprocess", "image_root", "images_sha256", "shard_size", "max_pixels",
             "precision", "runtime")
# what must agree for a collection to be updated in place rather than encoded again
UPDATE_KEYS = ("bits", "fingerprint", "preprocess", "image_root", "max_pixels", "precision", "runtime")
PLAN_FORMAT = "hybridhash-encode-plan"
PLAN_VERSION = 1
_SHARD_NAME = re.compile(r"shard-\d{5}\.npz")
# arrays every shard file holds ("stat" since file sizes and times are recorded)
_SHARD_ARRAYS = ("index", "codes", "skipped_index", "skipped_reason", "fingerprint", "images_sha256")



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
    runtime: Optional[str] = None  # the engine and precision the codes come from (hybridhash.engines.runs_at)
    precision: Optional[str] = None

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


def _mismatch(old: Dict[str, Any], new: Dict[str, Any], keys: Tuple[str, ...] = PLAN_KEYS) -> Optional[str]:
    for k in keys:
        a, b = old.get(k), new.get(k)
        if k == "precision":  # not recorded before precisions were: fp32
            a, b = a or "fp32", b or "fp32"
        if k == "runtime" and (a is None or b is None or (old.get("precision") or "fp32") == "fp32"):
            continue  # at fp32 every runtime gives the same codes within float rounding
        if a != b:
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
    """Remove what an earlier run wrote to ``out``: the files under ``shards/`` with the names this
    module gives them (that folder and those names are the encoder's own), and of the files the
    manifest lists only those a collection can hold (:func:`~hybridhash.collection.written_files`).
    """
    shards = out / coll.SHARDS
    if shards.is_dir() and not shards.is_symlink():  # a link would lead outside the collection
        # names, not the plan's numbers: a plan can claim any count, and only these names are the encoder's
        if old_plan is not None or not (shards / PLAN).is_file() or _read_plan(shards / PLAN)[1] is not None:
            for f in shards.iterdir():
                if f.is_file() and (f.name in (PLAN, ITEMS, ITEM_LABELS) or _SHARD_NAME.fullmatch(f.name)):
                    f.unlink()
        if not any(shards.iterdir()):
            shards.rmdir()
    if manifest is not None:
        gen = coll.Collection.current_generation(out) or 0
        (out / coll.MANIFEST).unlink(missing_ok=True)  # first: no reader may pair it with half-removed files
        remove_generation(out, gen, manifest)  # its index too: it was built from the codes about to go
        remove_stale_generations(out, 0)


def _entries(out: Path) -> List[Path]:
    """What ``out`` holds besides the writer's lock file (:mod:`hybridhash.locking`)."""
    return [e for e in out.iterdir() if e.name != LOCK_NAME]


def _encoder_leftovers_only(out: Path) -> bool:
    """True when ``out`` holds nothing but a ``shards/`` folder of files named as the encoder names them
    (a first run stopped before its plan was written)."""
    shards = out / coll.SHARDS
    if any(e.name != coll.SHARDS for e in _entries(out)) or not shards.is_dir():
        return False
    return all(f.is_file() and (f.name in (ITEMS, ITEM_LABELS) or _SHARD_NAME.fullmatch(f.name)
                                or (f.name.startswith(".") and f.name.endswith(".tmp")))
               for f in shards.iterdir())


def _not_ours(out: Path) -> DataError:
    return DataError(f"--collection {out} is not empty and is not a hybridhash collection (not a code collection this "
                     f"project wrote); choose an empty or new directory")


def read_output(out: PathLike) -> Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]], Optional[str]]:
    """(manifest, earlier plan, why that plan is unreadable) of the encoding output ``out``, read only;
    DataError when ``out`` is not a directory, or holds files this project did not write."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    manifest = coll.read_manifest(out) if out.is_dir() else None
    old_plan, plan_error, foreign_plan = _read_plan(out / coll.SHARDS / PLAN)
    foreign = foreign_plan or ((out / coll.MANIFEST).exists() and manifest is None)
    ours = manifest is not None or old_plan is not None or plan_error is not None \
        or (out.is_dir() and _encoder_leftovers_only(out))
    if out.is_dir() and _entries(out) and (foreign or not ours):
        raise _not_ours(out)
    return manifest, old_plan, plan_error


def plan_encode(out: PathLike, images: ImageList, model: torch.nn.Module, checkpoint: Optional[PathLike] = None,
                *, shard_size: int = DEFAULT_SHARD_SIZE, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                resume: bool = True, update: bool = False) -> EncodePlan:
    """Write the shard plan and the image list under ``out/shards/`` (rank 0's job).

    ``out`` must be new, empty, or a collection (or encoding run) this project wrote; nothing else
    in it is ever removed. With ``resume``, an earlier plan (or finished collection) in ``out`` must
    describe the same model, images, shard size and pixel limit, else IndexMismatchError says what
    differs; its finished shards are then kept, except those whose images changed since (size or
    mtime) and those that are unreadable or do not hold the rows of their plan: those are removed
    and encoded again. Without ``resume`` earlier results are removed first. With ``update``, ``images``
    are the images an update of the finished collection in ``out`` encodes: an earlier plan of other
    images is cleared (its shards only; the collection stays) instead of refused.
    """
    if shard_size < 1:
        raise DataError(f"shard size must be at least 1, got {shard_size}")
    out = Path(out)
    plan = EncodePlan(
        bits=int(model.bits), fingerprint=model_fingerprint(model),
        checkpoint=str(Path(checkpoint).resolve()) if checkpoint is not None else None,
        preprocess=model_preprocess(model), images_sha256=images.digest(), count=len(images),
        shard_size=int(shard_size), max_pixels=max_pixels, image_root=str(images.root), source=images.source,
        label_kind=images.label_kind, classes=images.classes, rejected=list(images.rejected),
        preset=getattr(getattr(model, "config", None), "preset", None), runtime=runs_at(model)[0],
        precision=runs_at(model)[1])
    new = plan.to_dict()
    plan_file = out / coll.SHARDS / PLAN
    manifest, old_plan, plan_error = read_output(out)
    if plan_error is not None and resume:
        raise DataError(f"{plan_file}: {plan_error}; pass --no-resume to start over")
    old = old_plan if old_plan is not None or update else manifest
    if old is not None or plan_error is not None:
        why = _mismatch(old, new) if old is not None else None
        if update and (why or plan_error is not None):
            _clear(out, old_plan, None)
        elif why and resume:
            raise IndexMismatchError(f"{out} holds codes of {why}; pass --no-resume to replace them, "
                                     f"or choose another output directory")
        elif why or not resume or plan_error is not None:
            _clear(out, old_plan, manifest)
    kept = "nothing was encoded yet"
    with disk_full(out / coll.SHARDS, kept):
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
