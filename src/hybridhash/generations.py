"""Updating a code collection in generations: what changed between its current generation and a new
image list, and generation N+1 written beside N, its index carried over, then switched to.

What counts as a change (:func:`diff_images`): a path of the new list that generation N does not
hold (new, or skipped as unreadable before) is *added*; a path N holds that the list no longer
has is *removed*; a path in both whose file has another size or mtime_ns now than when it was
encoded (``files.stat.npy``), or cannot be read now, is *changed* and encoded again under a new id;
a path whose label names differ is *relabelled* without encoding; every other row is *kept*: its
code, id and stat are copied without decoding its image.

Writing (:func:`write_update`), each step safe to kill: generation N+1's files go into
``gen-0000{N+1}/`` (anything a killed attempt left there is removed first); the saved index of N,
if any and bound to N's codes, is loaded, the gone ids removed and the new ones added (ivf keeps
its trained cells) and saved there bound to N+1's digest; ``manifest.json`` is replaced (the
switch); then N's files and any leftover generation go, by the names the project gives them.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .collection import (GENERATION_DIR, INDEX_FILE, MANIFEST, OWN_FILES, Collection, generation_dir,
                         written_files)
from .collection_files import codes_digest, write_generation_files
from .data.imagelist import ImageList
from .errors import DataError, HybridHashError, IndexMismatchError
from .fileio import write_json
from .index import HashIndex, remove_saved_index
from .index_ids import add_with_ids, ivf_drift, remove_ids
from .limits import IVF_RETRAIN_SHARE

_log = logging.getLogger(__name__)

# For the tests of kill -9 safety only: ``HYBRIDHASH_TEST_STOP=<stage>`` kills the process with
# SIGKILL when an update reaches ``<stage>``; ``<stage>:pause`` stops it with SIGSTOP instead (so a
# test can try a second writer, then kill it). Unset, it does nothing.
STOP_ENV = "HYBRIDHASH_TEST_STOP"
STAGES = ("planned", "encoded", "files-written", "index-written", "switched")


def stop_point(stage: str) -> None:
    """Stop here when :data:`STOP_ENV` names ``stage`` (tests only; see above)."""
    want = os.environ.get(STOP_ENV)
    if not want or want.partition(":")[0] != stage:
        return
    os.kill(os.getpid(), signal.SIGSTOP if want.endswith(":pause") else signal.SIGKILL)


@dataclass
class Changes:
    """What an update of generation N to the image list ``images`` (n entries) does.

    Attributes:
        images: the new image list.
        stats: int64 (n, 2) size and mtime_ns of each listed file now.
        old_pos: int64 (count,) the list position of each row of N, -1 where its path is gone.
        kept_rows: int64 (k,) rows of N kept, increasing.
        todo: int64 (t,) list positions to encode (added and changed), increasing.
        removed_ids, changed_ids: int64 ids of N whose path is gone / whose file changed;
            ``changed_pos`` the list positions of the latter.
        added, relabelled: counts; ``labels_changed``: the label kind or class list differs too.
        still_skipped: (list position, reason, stat) of the images skipped as unreadable before whose
            file is as it was then: not tried again.
    """

    images: ImageList
    stats: np.ndarray
    old_pos: np.ndarray
    kept_rows: np.ndarray
    todo: np.ndarray
    removed_ids: np.ndarray
    changed_ids: np.ndarray
    changed_pos: np.ndarray
    added: int
    relabelled: int
    labels_changed: bool
    still_skipped: List[Tuple[int, str, np.ndarray]] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return int(self.kept_rows.size)

    @property
    def nothing(self) -> bool:
        """True when the list holds exactly generation N's images, unchanged, with the same labels."""
        return not (self.todo.size or self.removed_ids.size or self.relabelled or self.labels_changed)


@dataclass
class UpdateReport:
    """What an update did (or, with ``dry_run``, would do); ``seconds`` by step: list, stat,
    encode, write, index, total. ``ivf_drift``: the share of the ivf index's rows added since its
    cells were trained."""

    collection: str
    generation: int
    added: int = 0
    removed: int = 0
    changed: int = 0
    relabelled: int = 0
    kept: int = 0
    skipped: int = 0
    seconds: Dict[str, float] = field(default_factory=dict)
    index: Optional[str] = None
    ivf_drift: Optional[float] = None
    dry_run: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def lines(self) -> List[str]:
        """What the command prints: one summary line, and one more when the ivf cells should be trained again."""
        verbs = ("add", "remove", "change", "relabel", "keep") if self.dry_run \
            else ("added", "removed", "changed", "relabelled", "kept")
        counts = ", ".join(f"{v} {n}" for v, n in zip(verbs, (self.added, self.removed, self.changed,
                                                             self.relabelled, self.kept)))
        total = self.seconds.get("total", 0.0)
        if not self.dry_run and not (self.added or self.removed or self.changed or self.relabelled):
            out = [f"{self.collection} is up to date at generation {self.generation}: kept {self.kept} "
                   f"({total:.2f} s)"]
        elif self.dry_run:
            out = [f"dry run: {self.collection} would go to generation {self.generation}: {counts}; "
                   f"nothing written ({total:.2f} s)"]
        else:
            took = ", ".join(f"{k} {v:.2f}" for k, v in self.seconds.items() if k != "total")
            out = [f"updated {self.collection} to generation {self.generation}: {counts}"
                   + (f", skipped {self.skipped} unreadable" if self.skipped else "") + f" ({total:.2f} s: {took})"]
        if self.ivf_drift is not None and self.ivf_drift > IVF_RETRAIN_SHARE:
            out.append(f"note: {self.ivf_drift:.0%} of the ivf index's rows came after its cells were trained "
                       f"(over {IVF_RETRAIN_SHARE:.0%}): run `hybridhash index --kind ivf` again")
        return out


# ------------------------------------------------------------------------------------------------
# the diff

def skip_entry(path: str, reason: str, stat: Optional[np.ndarray]) -> Dict[str, Any]:
    """An entry of ``skipped.json``: the path, why, and its file's size and mtime_ns when it was tried
    (so an update tries it again only once the file changed)."""
    entry: Dict[str, Any] = {"path": path, "reason": reason}
    if stat is not None:
        entry.update(size=int(stat[0]), mtime_ns=int(stat[1]))
    return entry


def _label_matrix(labels: Optional[np.ndarray], classes: Optional[List[str]], rows: np.ndarray,
                  names: Dict[str, int]) -> Optional[np.ndarray]:
    """bool (len(rows), len(names)): each row's labels as class names, in the columns ``names`` gives."""
    if labels is None:
        return None
    cols = np.asarray([names[c] for c in (classes or [])], dtype=np.int64)
    out = np.zeros((rows.size, len(names)), dtype=bool)
    if labels.ndim == 1:
        out[np.arange(rows.size), cols[np.asarray(labels[rows], dtype=np.int64)]] = True
    else:
        out[:, cols] = np.asarray(labels[rows]) != 0
    return out


def _relabelled(col: Collection, images: ImageList, rows: np.ndarray, pos: np.ndarray) -> int:
    """How many of the kept ``rows`` of ``col`` (at list positions ``pos``) have other label names now."""
    if col.labels is None and images.labels is None:
        return 0
    if col.labels is None or images.labels is None:
        return int(rows.size)
    names = {c: i for i, c in enumerate(dict.fromkeys(list(col.classes or []) + list(images.classes or [])))}
    changed = 0
    for s in range(0, rows.size, 65536):  # bounded memory on large collections with many classes
        a = _label_matrix(col.labels, col.classes, rows[s:s + 65536], names)
        b = _label_matrix(images.labels, images.classes, pos[s:s + 65536], names)
        changed += int((a != b).any(axis=1).sum())
    return changed


def diff_images(col: Collection, images: ImageList, stats: np.ndarray,
                force: Optional[np.ndarray] = None) -> Changes:
    """The changes from generation ``col`` to the list ``images`` whose files have ``stats`` int64 (n, 2)
    now (-1 where unreadable); ``force`` bool (n,) marks positions to encode again whatever their stat."""
    n = len(images)
    pos = {p: i for i, p in enumerate(images.paths)}
    old_pos = np.fromiter((pos.get(p, -1) for p in col.all_paths()), dtype=np.int64, count=col.count)
    present = old_pos >= 0
    recorded = col.all_stats()
    changed = present.copy() if recorded is None else np.zeros(col.count, dtype=bool)
    if recorded is not None and present.any():
        now = stats[old_pos[present]]
        changed[present] = (now != recorded[present]).any(axis=1) | (now[:, 0] < 0)
    if force is not None and present.any():
        changed[present] |= force[old_pos[present]]
    kept_rows = np.flatnonzero(present & ~changed).astype(np.int64)
    covered = np.zeros(n, dtype=bool)
    covered[old_pos[kept_rows]] = True
    ids = col.item_ids
    changed_ids = ids[present & changed]
    still = []
    for e in col.skipped:  # tried before and unreadable, the file as it was: not tried again
        p = pos.get(e.get("path")) if isinstance(e, dict) and "size" in e else None
        if p is not None and not covered[p] and (int(stats[p, 0]), int(stats[p, 1])) == (e["size"], e["mtime_ns"]):
            covered[p] = True
            still.append((p, str(e.get("reason")), stats[p]))
    todo = np.flatnonzero(~covered).astype(np.int64)
    same_labels = (col.manifest.get("labels") == images.label_kind and list(col.classes or []) ==
                   list(images.classes or []))
    return Changes(images, stats, old_pos, kept_rows, todo, ids[~present], changed_ids, old_pos[present & changed],
                   int(todo.size - changed_ids.size), _relabelled(col, images, kept_rows, old_pos[kept_rows]),
                   not same_labels, still)


# ------------------------------------------------------------------------------------------------
# writing, switching, removing

def _own_leftover(name: str) -> bool:
    """A file name the project gives a generation's files, or the temporary file of one being written."""
    own = set(OWN_FILES) | {INDEX_FILE, INDEX_FILE + ".json"}
    return name in own or any(name.startswith(f".{o}.") and name.endswith(".tmp") for o in own)


def _clear_dir(d: Path, top: bool) -> None:
    """Remove the project's files from generation folder ``d`` (the manifest too unless ``top``),
    then ``d`` itself when it is a generation folder left empty; a person's files stay."""
    if not d.is_dir() or d.is_symlink():
        return
    for e in os.scandir(d):
        if e.is_file(follow_symlinks=False) and _own_leftover(e.name) and not (top and e.name == MANIFEST):
            os.unlink(e.path)
    if not top:
        try:
            d.rmdir()
        except OSError:
            _log.warning("%s: left in place, it holds files hybridhash did not write", d)


def remove_generation(directory: Path, generation: int, manifest: Dict[str, Any]) -> None:
    """Remove the files generation ``generation`` consists of (``manifest``'s list) and its index."""
    d = generation_dir(directory, generation)
    remove_saved_index(d / INDEX_FILE, why="its generation was replaced")
    for name in written_files(manifest):
        if name != MANIFEST:
            (d / name).unlink(missing_ok=True)
    if generation:
        _clear_dir(d, top=False)


def remove_stale_generations(directory: Path, keep: int) -> None:
    """Remove what earlier generations or killed updates left beside generation ``keep``."""
    directory = Path(directory)
    for e in os.scandir(directory):
        m = GENERATION_DIR.fullmatch(e.name)
        if m and int(m.group(1)) != keep and e.is_dir(follow_symlinks=False):
            _clear_dir(Path(e.path), top=False)
    if keep:  # generation 0's files at the top level
        _clear_dir(directory, top=True)


def _carry_index(col: Collection, gdir: Path, changes: Changes, new_codes: np.ndarray, new_ids: np.ndarray,
                 ids: np.ndarray, digest: str) -> Tuple[Optional[str], Optional[float]]:
    """Generation N's saved index, updated for N+1 and saved in ``gdir``: (its kind, ivf drift), or
    (None, None) when N has none usable (then the reader builds one in memory, as without an index)."""
    if not col.index_path.is_file():
        return None, None
    try:
        index = HashIndex.load(col.index_path, expect_bits=col.bits, expect_fingerprint=col.fingerprint,
                               expect_codes_sha256=col.codes_sha256)
    except (IndexMismatchError, DataError) as err:
        _log.warning("%s: not carried to the new generation; run `hybridhash index` again", err)
        return None, None
    remove_ids(index, np.concatenate([changes.removed_ids, changes.changed_ids]))
    add_with_ids(index, new_codes, new_ids)
    if index.ntotal != ids.size:
        raise HybridHashError(f"{col.index_path}: updated to {index.ntotal} codes for {ids.size} items; "
                              f"run `hybridhash index` again")
    index.save(gdir / INDEX_FILE, fingerprint=col.fingerprint, codes_sha256=digest)
    return index.kind, ivf_drift(index, ids)


def write_update(col: Collection, changes: Changes, new_pos: np.ndarray, new_codes: np.ndarray,
                 new_stats: np.ndarray, unreadable: Sequence[Tuple[int, str]],
                 manifest: Dict[str, Any]) -> Tuple[Collection, UpdateReport]:
    """Write generation N+1 of ``col`` (generation N), switch to it and remove N.

    Args:
        changes: :func:`diff_images` of ``col``.
        new_pos: int64 (m,) list positions of ``changes.todo`` that were encoded, increasing;
            ``new_codes`` uint8 (m, bits/8) their codes; ``new_stats`` int64 (m, 2) their stats
            when encoded.
        unreadable: (list position, reason, stat int64 (2,)) of the ``todo`` images that could not be encoded.
        manifest: fields of the new manifest to set (checkpoint, source, images_sha256, ...).

    Returns:
        (the new generation opened, the report; its ``seconds`` hold ``write`` and ``index``).
    """
    t0 = time.perf_counter()
    images, gen = changes.images, col.generation + 1
    gdir = generation_dir(col.directory, gen)
    _clear_dir(gdir, top=False)  # what a killed attempt at this generation left
    m = int(new_pos.size)
    new_ids = np.arange(col.next_id, col.next_id + m, dtype=np.int64)
    rows = changes.kept_rows
    pos = np.concatenate([changes.old_pos[rows], new_pos]).astype(np.int64)  # list position of each new row
    codes = np.ascontiguousarray(np.concatenate([np.asarray(col.codes[rows]), new_codes]), dtype=np.uint8)
    ids = np.concatenate([col.item_ids[rows], new_ids])  # increasing: kept rows keep their order, new ids above all
    stats = np.concatenate([changes.stats[changes.old_pos[rows]], new_stats]).astype(np.int64)
    labels = images.labels[pos] if images.labels is not None else None
    tried = sorted([*unreadable, *changes.still_skipped], key=lambda t: t[0])
    skipped = list(images.rejected) + [skip_entry(images.paths[p], r, st) for p, r, st in tried]
    files = write_generation_files(gdir, codes, [images.paths[p] for p in pos], labels, images.classes, skipped,
                                   stats, ids)
    digest = codes_digest(codes, ids)
    stop_point("files-written")
    t1 = time.perf_counter()
    kind, drift = _carry_index(col, gdir, changes, new_codes, new_ids, ids, digest)
    stop_point("index-written")
    t2 = time.perf_counter()
    report = UpdateReport(str(col.directory), gen, added=int(np.isin(new_pos, changes.changed_pos,
                                                                     invert=True).sum()),
                          removed=int(changes.removed_ids.size), changed=int(changes.changed_ids.size),
                          relabelled=changes.relabelled, kept=changes.kept, skipped=len(tried),
                          index=kind, ivf_drift=drift)
    new = {k: v for k, v in col.manifest.items() if k not in ("shards", "shard_size")}
    new.update(manifest)
    new.update({"generation": gen, "next_id": col.next_id + m, "count": int(codes.shape[0]), "codes_sha256": digest,
                "labels": images.label_kind, "num_classes": len(images.classes) if images.classes else None,
                "skipped": len(skipped), "files": files + [MANIFEST],
                "update": {k: getattr(report, k) for k in ("added", "removed", "changed", "relabelled", "kept",
                                                           "skipped")}})
    write_json(col.directory / MANIFEST, new)  # the switch
    stop_point("switched")
    remove_generation(col.directory, col.generation, col.manifest)
    remove_stale_generations(col.directory, gen)
    report.seconds = {"write": round(t1 - t0 + time.perf_counter() - t2, 3), "index": round(t2 - t1, 3)}
    return Collection(col.directory, root=col.root), report
