"""``load_protocol``: a dataset by name, split into train / val / query / database, and the record
that re-creates exactly that split later (so evaluation uses the split training used)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..errors import DataError
from ..fileio import atomic_path, read_json, write_bytes
from .protocols import LIST_FILES, WITH_PATH, ProtocolSpec, get_spec
from .images import DEFAULT_MAX_PIXELS
from .sets import FilePool, Pool, RetrievalSet
from .splits import STREAM_SPLIT, STREAM_VAL, decode_rows, draw_val, encode_rows, rng_for, split_per_class

log = logging.getLogger(__name__)

SPLIT_FORMAT = "hybridhash-split/1"
SET_NAMES = ("train", "val", "query", "database")


@dataclass
class Protocol:
    """A dataset split for retrieval.

    ``train`` feeds the loss (item index = memory-bank row), ``val`` (drawn from the training images
    and removed from ``train``) selects the model, ``query`` is searched against ``database``
    with mAP@``topk`` (None: the whole database).
    """

    name: str
    n_class: int
    multi_label: bool
    topk: Optional[int]
    train: RetrievalSet
    val: RetrievalSet
    query: RetrievalSet
    database: RetrievalSet
    seed: int = 0
    val_fraction: float = 0.1
    class_names: Optional[List[str]] = None
    spec: Optional[ProtocolSpec] = None
    root: Optional[str] = None
    image_root: Optional[str] = None
    # per-class sizes the split was drawn with (per-class protocols), e.g. {"query": 20, "train": 50}
    sizes: Optional[Dict[str, object]] = None
    # memory-bank rows of the original code for this dataset (None: the training set's size)
    original_bank_rows: Optional[int] = None
    pools: Dict[str, Pool] = field(default_factory=dict, repr=False)
    # what makes the split's figures misleading (e.g. a single class), also logged when loaded
    warnings: List[str] = field(default_factory=list)
    # False for images without labels (its labels are one pseudo-class: see data.sets.Pool)
    labelled: bool = True

    @property
    def sets(self) -> Dict[str, RetrievalSet]:
        return {"train": self.train, "val": self.val, "query": self.query, "database": self.database}

    @property
    def val_database(self) -> RetrievalSet:
        """The database without the val images (same rows, or on disk the same files), for model
        selection: a val query must not retrieve itself at distance 0."""
        db, val = self.database, self.val
        if db.pool is val.pool:
            keep = ~np.isin(db.rows, val.rows)
        elif db.pool.on_disk and val.pool.on_disk:
            held_out = set(val.paths)
            keep = np.array([p not in held_out for p in db.paths], dtype=bool)
        else:
            return db
        return RetrievalSet("database", db.pool, db.rows[keep], db.transform)

    @property
    def pipeline(self) -> str:
        """The image pipeline family of this data (see :func:`~hybridhash.data.transforms.pipeline_for`)."""
        from .transforms import pipeline_for
        return pipeline_for(self.name)

    def summary(self) -> dict:
        """JSON-able description for logs: sizes, label space, metric, seed."""
        return {
            "name": self.name,
            "description": self.spec.description if self.spec else "",
            "n_class": self.n_class,
            "labelled": self.labelled,
            "multi_label": self.multi_label,
            "topk": "all" if self.topk is None else self.topk,
            "sizes": {k: len(v) for k, v in self.sets.items()},
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "per_class": self.sizes,
            "root": self.root,
            "image_root": self.image_root,
            "pipeline": self.pipeline,
            "class_names": self.class_names,
            "original_bank_rows": self.original_bank_rows,
            "warnings": list(self.warnings),
            **self._distortion(),
        }

    describe = summary

    def split_record(self) -> dict:
        """Everything needed to re-create these sets: which rows of which data, and a fingerprint
        of that data so a changed dataset is refused rather than silently re-split.

        Rows are written as sorted ranges (``"0-99,105,..."``) of each pool (the in-memory images,
        a folder's sorted file list, or the lines of one list file).
        """
        pools = {key: {"size": len(pool), "fingerprint": pool.fingerprint()} for key, pool in self.pools.items()}
        sets = {name: {"pool": s.pool.name, "size": len(s), "rows": encode_rows(s.rows)}
                for name, s in self.sets.items()}
        return {
            "format": SPLIT_FORMAT,
            "name": self.name,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "per_class": self.sizes,
            "n_class": self.n_class,
            "sizes": {name: len(s) for name, s in self.sets.items()},
            "pools": pools,
            "sets": sets,
            "hash": _record_hash(pools, sets),
            **self._distortion(),  # its pixels are fingerprinted with the pools; the parameters for the reader
        }

    def _distortion(self) -> dict:
        d = self.spec.distortion if self.spec else None
        return {} if d is None else {"distortion": dataclasses.asdict(d)}

    def save_split(self, path) -> dict:
        """Write :meth:`split_record` as JSON (atomically) and return it."""
        record = self.split_record()
        if os.path.lexists(path) and not _is_split_record(path):  # never replace a file of someone else's
            raise DataError(f"{path} exists and is not a split record of hybridhash; choose another path")
        write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())
        return record

    def export_images(self, directory, sets: Iterable[str] = ("query", "train", "database")) -> Dict[str, List[str]]:
        """Write in-memory images (digits, CIFAR-10) as PNG files plus DeepHash-style list files.

        Images go to ``directory/images/<class>/<row>.png`` (single-label; ``images/<row>.png``
        otherwise; ``row`` is the image's row in the whole data set, so an image in two sets is written
        once; ``images/<pool>/...`` where the sets come from several pools, as ``digits_hard``'s), and ``<set>.txt`` lists each set (the queries as ``test.txt``), so exporting query,
        train and database makes ``directory`` a valid ``list:<directory>`` root.
        PNG is lossless: the files decode to exactly the in-memory pixels.

        Returns:
            {set name: absolute image paths in the set's row order}.
        """
        from ..outdir import claim

        directory = os.path.abspath(os.fspath(directory))
        sets = list(sets)
        unknown = [s for s in sets if s not in SET_NAMES]
        if unknown:
            raise DataError(f"unknown set {unknown[0]!r}; sets are {', '.join(SET_NAMES)}")
        claim(directory, "data export")  # a folder of other files is refused, never written into
        written: Dict[Tuple[str, int], str] = {}
        made: set = set()
        out: Dict[str, List[str]] = {}
        for set_name in sets:
            rs = self.sets[set_name]
            if rs.pool.on_disk:
                raise DataError(f"{self.name}: the {set_name} images are already files; use its list files")
            digits = len(str(max(len(rs.pool) - 1, 0)))
            rels, lines = [], []
            top = f"images/{_safe_name(rs.pool.name)}" if len(self.pools) > 1 else "images"
            for i, row in enumerate(rs.rows):
                row = int(row)
                label = rs.labels[i]
                if (rs.pool.name, row) not in written:
                    if not self.multi_label and self.class_names:
                        sub = _safe_name(self.class_names[int(label.argmax())])
                        rel = f"{top}/{sub}/{row:0{digits}d}.png"
                    else:
                        rel = f"{top}/{row:0{digits}d}.png"
                    # the list files, written after their images, are what make the export usable, so
                    # an interrupted export is never taken for a whole one
                    target = os.path.join(directory, rel)
                    parent = os.path.dirname(target)
                    if parent not in made:
                        os.makedirs(parent, exist_ok=True)
                        made.add(parent)
                    with atomic_path(target) as tmp:
                        rs.image(i).save(tmp, format="PNG")
                    written[rs.pool.name, row] = rel
                rel = written[rs.pool.name, row]
                rels.append(os.path.join(directory, rel))
                lines.append(rel + " " + " ".join("1" if v > 0 else "0" for v in label))
            write_bytes(os.path.join(directory, LIST_FILES.get(set_name, f"{set_name}.txt")), ("\n".join(lines) + "\n").encode())
            out[set_name] = rels
        return out


def _is_split_record(path) -> bool:
    try:
        record = read_json(path)
    except (OSError, ValueError, UnicodeDecodeError, DataError):
        return False
    return isinstance(record, dict) and record.get("format") == SPLIT_FORMAT


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"


def _record_hash(pools: dict, sets: dict) -> str:
    body = json.dumps({"pools": pools, "sets": sets}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
def _build_pools(spec: ProtocolSpec, name: str, root, image_root, download: bool, seed: int = 0):
    """Read the data (``seed``: a derived protocol's distortion). Returns (pools by key, root used, image root used)."""
    if spec.kind == "digits":
        from .digits import digits_pools
        return digits_pools(spec.distortion, seed), None, None
    if spec.kind == "cifar":
        from .cifar import cifar_pool, cifar_root
        pool = cifar_pool(root, download)
        return {pool.name: pool}, cifar_root(root), None
    if spec.kind == "folder" or spec.kind == "images":
        from .folder import folder_pool, has_class_folders, image_pool
        if spec.kind == "folder" and (root is None or has_class_folders(root)):
            pool = folder_pool(root)
        else:  # images:, or a folder of images with no class sub-folders: no labels
            pool = image_pool(root)
            if spec.kind == "folder":
                log.info("%s: no class sub-folders, so its images have no labels", name)
        return {pool.name: pool}, pool.image_root, pool.image_root
    from .listfile import find_list_dir, read_list_dir
    from .sets import FilePool
    list_dir = find_list_dir(root, spec.name if spec.name != "list" else None)
    image_root = os.path.abspath(os.fspath(image_root)) if image_root is not None else list_dir
    files = read_list_dir(list_dir, spec.n_class, protocol=name)
    pools = {}
    for set_name, lf in files.items():
        key = LIST_FILES[set_name]
        pools[key] = FilePool(key, image_root, lf.rel_paths, lf.labels, lf.source)
    return pools, list_dir, image_root


def _check_sizes(spec: ProtocolSpec, sizes: Optional[dict]) -> Optional[dict]:
    if not spec.per_class:
        if sizes:
            raise DataError(f"{spec.name}: its sets come from its list files; sizes= applies to per-class "
                            "protocols (digits, cifar10*, folder)")
        return None
    out = {"query": spec.query, "train": spec.train}
    for key, value in (sizes or {}).items():
        if key not in out:
            raise DataError(f"sizes: unknown key {key!r}; use 'query' and 'train' (per-class counts or fractions)")
        out[key] = value
    q, t = (sizes or {}).get("query"), (sizes or {}).get("train")
    if all(isinstance(v, float) for v in (q, t)) and q + t > 1:
        # counts that ask for more than a class holds are refused when drawn; fractions are refused here
        raise DataError(f"--sizes query={q:g},train={t:g}: fractions of a class summing to {q + t:g}, over 1; give "
                        f"fractions that sum to at most 1 (train is then taken from what the queries leave)")
    return out


def load_protocol(name: str, root=None, *, image_root=None, seed: int = 0, download: bool = False,
                  split_file=None, val_fraction: float = 0.1, sizes: Optional[dict] = None,
                  max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Protocol:
    """Load a dataset and split it by its retrieval protocol.

    Args:
        name: ``digits``, ``cifar10``, ``cifar10-1``, ``cifar10-2``, ``nuswide_21``, ``nuswide_21_m``,
            ``nuswide_81_m``, ``coco``, ``imagenet``, ``list:<dir>`` or ``folder:<dir>``
            (``list``/``folder`` with ``root`` also work).
        root: the data directory: the one holding ``cifar-10-batches-py``, the list files (or a
            DeepHash-style ``data/`` folder with a ``<name>/`` sub-folder), or the class folders.
            Not needed for ``digits``.
        image_root: where list-file paths start (default: the list files' directory).
        seed: draws of queries, training and validation images (independent streams).
        download: fetch CIFAR-10 through torchvision when absent.
        split_file: a :meth:`Protocol.split_record` JSON; re-creates exactly that split (seed,
            val_fraction and sizes are then taken from it) and refuses data that changed.
        val_fraction: share of the training images held out as ``val`` (0: empty val).
        sizes: per-class protocols only: override the per-class ``query``/``train`` sizes (an int
            count, or a float fraction of the class; train counts from what the queries leave),
            e.g. ``sizes=dict(query=2, train=5)`` for a small test copy of CIFAR-10.
        max_pixels: the largest image (width * height) decoded from files; larger ones are refused
            unread (see :func:`~hybridhash.data.images.decode_image`).
    """
    spec, name_dir = get_spec(name)
    if name_dir is not None:
        if root is not None and os.path.abspath(os.fspath(root)) != os.path.abspath(name_dir):
            raise DataError(f"{name}: names a directory and root={root} names another; give one")
        root = name_dir
    per_class = _check_sizes(spec, sizes)
    record = _read_record(split_file, spec, name) if split_file is not None else None
    drawn_with = seed if record is None else record.get("seed")  # a derived protocol's pixels depend on it
    pools, root_used, image_root_used = _build_pools(spec, name, root, image_root, download, drawn_with)
    for pool in pools.values():
        if isinstance(pool, FilePool):
            pool.max_pixels = max_pixels

    if record is not None:
        rows, seed, val_fraction, per_class = _rows_from_record(record, pools, split_file)
        log.info("%s: split re-created from %s (hash %s)", name, split_file, record["hash"][:12])
    else:
        rows = _draw(spec, name, pools, per_class, seed, val_fraction)

    sets = {s: RetrievalSet(s, pools[key], r) for s, (key, r) in rows.items()}
    if len(sets["train"]) == 0:
        raise DataError(f"{name}: no training images left (val_fraction {val_fraction})")
    any_pool = next(iter(pools.values()))
    n_class = any_pool.n_class
    multi_label = spec.multi_label
    if multi_label is None:
        multi_label = any(bool(np.any(p.labels.sum(1) != 1)) for p in pools.values())
    labelled = all(p.labelled for p in pools.values())
    warnings = label_warnings(name, sets, any_pool.class_names) if labelled else []
    for w in warnings:
        log.warning("%s", w)
    return Protocol(
        name=name, n_class=n_class, multi_label=bool(multi_label), topk=spec.topk,
        train=sets["train"], val=sets["val"], query=sets["query"], database=sets["database"],
        seed=int(seed), val_fraction=float(val_fraction), class_names=any_pool.class_names, spec=spec,
        root=root_used, image_root=image_root_used, sizes=per_class, labelled=labelled,
        original_bank_rows=spec.original_bank_rows, pools=pools, warnings=warnings,
    )


def label_warnings(name: str, sets: Dict[str, RetrievalSet], class_names: Optional[List[str]] = None) -> List[str]:
    """Warnings for a split whose figures mean nothing: every image carries the same labels.

    With one label set among the queries and the database every database image is relevant to
    every query, so mAP is 1.0 whatever the codes; with one among the training images the loss
    has no dissimilar pair to learn from.
    """
    def only_labels(*names: str) -> Optional[np.ndarray]:
        """The label row every image of these sets has, or None when they differ (or there are none)."""
        rows = [sets[n].labels > 0 for n in names if len(sets[n])]
        if not rows:
            return None
        first = rows[0][0]
        return first if all(bool(np.all(r == first)) for r in rows) else None

    def which(labels: np.ndarray) -> str:
        ids = np.flatnonzero(labels)
        return ", ".join(repr(class_names[i]) if class_names else str(i) for i in ids) or "no label"

    searched, trained = only_labels("query", "database"), only_labels("train", "val")
    if searched is not None:
        return [f"{name}: every query and database image has the same label ({which(searched)}): mAP is "
                f"meaningless with one class (every database image is relevant to every query, so mAP is 1.0 "
                f"whatever the codes); use data with two or more classes"]
    if trained is not None:
        return [f"{name}: every training image has the same label ({which(trained)}): the model learns nothing "
                f"that tells classes apart and the validation mAP that selects it is meaningless (1.0); use "
                f"training data with two or more classes"]
    return []


def _draw(spec, name, pools, per_class, seed, val_fraction) -> Dict[str, Tuple[str, np.ndarray]]:
    """Seeded sets as {set name: (pool key, sorted rows)}."""
    if spec.per_class:
        # the first pool is drawn from; a derived protocol searches (and validates on) its second, distorted one
        key, pool = next(iter(pools.items()))
        val_key = searched = list(pools)[-1]
        classes = pool.labels.argmax(1)  # (N,) single-label
        q, t, rest = split_per_class(classes, pool.n_class, per_class["query"], per_class["train"],
                                     rng_for(seed, STREAM_SPLIT), where=name)
        database = {"rest": rest, "non_query": np.sort(np.concatenate([t, rest])), "train": t}[spec.database]
        rows = {"query": (searched, q), "database": (searched, database)}
        train_key, train_rows = key, t
    else:
        rows = {"query": ("test.txt", np.arange(len(pools["test.txt"]), dtype=np.int64)),
                "database": ("database.txt", np.arange(len(pools["database.txt"]), dtype=np.int64))}
        train_key, train_rows = "train.txt", np.arange(len(pools["train.txt"]), dtype=np.int64)
        val_key = train_key
    pos = draw_val(pools[train_key].labels[train_rows], val_fraction, rng_for(seed, STREAM_VAL))
    rows["val"] = (val_key, train_rows[pos])
    rows["train"] = (train_key, np.delete(train_rows, pos))
    return rows


def _read_record(split_file, spec: ProtocolSpec, name: str) -> dict:
    try:
        record = read_json(split_file)
    except FileNotFoundError:
        raise DataError(f"{split_file}: split file missing") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{split_file}: not a split record ({' '.join(str(err).split())})") from None
    if not isinstance(record, dict) or record.get("format") != SPLIT_FORMAT:
        raise DataError(f"{split_file}: not a split record (format is not {SPLIT_FORMAT})")
    recorded = str(record.get("name", ""))
    # list:/folder: data may have moved; the fingerprint, not the path, decides
    same = recorded.partition(":")[0] == spec.name if spec.name in WITH_PATH else recorded == name
    if not same:
        raise DataError(f"{split_file}: records a split of {recorded!r}, not of {name!r}")
    return record


def _rows_from_record(record: dict, pools: Dict[str, Pool], split_file):
    try:
        rec_pools, rec_sets = record["pools"], record["sets"]
        if _record_hash(rec_pools, rec_sets) != record["hash"]:
            raise DataError(f"{split_file}: hash mismatch, the record was edited or is corrupt")
        for key, info in rec_pools.items():
            pool = pools.get(key)
            if pool is None:
                raise DataError(f"{split_file}: recorded on data with a part {key!r} this data lacks")
            if len(pool) != info["size"]:
                raise DataError(f"{split_file}: the data changed since the split was recorded: "
                                f"{key} has {len(pool)} images, the split was drawn from {info['size']}")
            if pool.fingerprint() != info["fingerprint"]:
                raise DataError(f"{split_file}: the data changed since the split was recorded: "
                                f"the content of {key} differs (fingerprint mismatch)")
        rows = {}
        for set_name in SET_NAMES:
            info = rec_sets[set_name]
            key = info["pool"]
            if key not in rec_pools:
                raise DataError(f"{split_file}: set {set_name} names an unrecorded part {key!r}")
            r = decode_rows(info["rows"], len(pools[key]), f"{split_file}: {set_name} rows")
            if r.size != info["size"]:
                raise DataError(f"{split_file}: {set_name} lists {r.size} rows but says {info['size']}")
            rows[set_name] = (key, r)
        return rows, record["seed"], record["val_fraction"], record.get("per_class")
    except (KeyError, TypeError) as err:
        raise DataError(f"{split_file}: incomplete split record (missing {err})") from None
