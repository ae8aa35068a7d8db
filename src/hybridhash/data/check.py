"""Find what is missing or malformed in a dataset before a long run starts.

``check_protocol`` collects every problem instead of stopping at the first: list-file lines with
the wrong number of labels or non-0/1 labels (file and line named), duplicate paths, absent or
empty images, images that do not decode (with ``verify_images``), CIFAR-10 batches that are
missing or differ from the published archive, classes too small for the protocol's sizes.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ..errors import DataError
from ..terminal import printable
from .images import DEFAULT_MAX_PIXELS, open_image
from .folder import has_class_folders
from .listfile import Problem
from .protocols import LIST_FILES, get_spec


@dataclass
class SetReport:
    """One set (or list file): how many images and what is wrong with them."""

    name: str
    source: str
    images: int
    n_class: Optional[int] = None
    missing: int = 0
    empty: int = 0
    unreadable: Optional[int] = None  # None: images not decoded
    duplicates: int = 0
    bad_lines: int = 0
    no_label: int = 0


@dataclass
class CheckReport:
    """Everything found. ``ok`` is False when any error was found (warnings do not count)."""

    name: str
    location: str
    sets: List[SetReport] = field(default_factory=list)
    errors: List[Problem] = field(default_factory=list)
    warnings: List[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, max_problems: int = 20) -> str:
        """Human-readable report: a table of sets, then the problems (at most ``max_problems`` each),
        each line :func:`~hybridhash.terminal.printable` (file names come from the data)."""
        out = [f"{self.name}: {self.location}"]
        head = f"  {'set':<9} {'source':<14} {'images':>8} {'classes':>7} {'missing':>7} {'empty':>6} " \
               f"{'corrupt':>7} {'dup':>5} {'badline':>7} {'nolabel':>7}"
        out.append(head)
        for s in self.sets:
            unread = "-" if s.unreadable is None else str(s.unreadable)
            out.append(f"  {s.name:<9} {s.source:<14} {s.images:>8} {s.n_class if s.n_class else '-':>7} "
                       f"{s.missing:>7} {s.empty:>6} {unread:>7} {s.duplicates:>5} {s.bad_lines:>7} {s.no_label:>7}")
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            if items:
                out.append(f"{title} ({len(items)}):")
                out += [f"  {p}" for p in items[:max_problems]]
                if len(items) > max_problems:
                    out.append(f"  ... and {len(items) - max_problems} more")
        out.append("OK" if self.ok else f"FAILED: {len(self.errors)} problem(s)")
        return "\n".join(printable(line) for line in out)


def _verify(paths: List[str], progress: bool, threads: int, max_pixels: Optional[int]) -> Dict[str, str]:
    """Decode every image on ``threads`` threads; returns {path: reason} for those that fail."""
    from tqdm import tqdm

    def attempt(path):
        try:
            open_image(path, max_pixels)
            return None
        except DataError as err:
            return str(err)

    failed = {}
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = pool.map(attempt, paths)
        for path, reason in tqdm(zip(paths, results), total=len(paths), desc="decoding images",
                                 unit="img", disable=not progress):
            if reason is not None:
                failed[path] = reason
    return failed


def _stat_files(paths: List[str]) -> Dict[str, str]:
    """{path: 'missing' | 'empty' | 'not a file'} for paths that cannot be images."""
    bad = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            bad[p] = "missing"
            continue
        if not os.path.isfile(p):
            bad[p] = "not a file"
        elif st.st_size == 0:
            bad[p] = "empty"
    return bad


def _check_split(report: CheckReport, spec, name, pools, sizes, val_fraction) -> None:
    """Draw the protocol's sets (seed 0) to see that every class is large enough; report sizes."""
    from .load import _check_sizes, _draw

    try:
        rows = _draw(spec, name, pools, _check_sizes(spec, sizes), 0, val_fraction)
    except DataError as err:
        report.errors.append(Problem(name, str(err)))
        return
    for set_name in ("query", "train", "val", "database"):
        key, r = rows[set_name]
        report.sets.append(SetReport(set_name, "split (seed 0)", int(r.size), pools[key].n_class))
    if sizes is None:
        drawn = {"query": rows["query"][1].size, "database": rows["database"][1].size,
                 "train": rows["train"][1].size + rows["val"][1].size}  # val comes out of the published train
        for key, value in spec.published.items():
            if drawn[key] != value:
                report.warnings.append(Problem(name, f"{key} has {drawn[key]} images, the published protocol {value}"))


def check_protocol(name: str, root=None, *, image_root=None, verify_images: bool = False,
                   progress: bool = False, threads: int = 4, sizes: Optional[dict] = None,
                   val_fraction: float = 0.1, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> CheckReport:
    """Check a dataset for its protocol; see the module doc. Never raises for bad data: reports it.
    ``verify_images`` decodes every image on ``threads`` threads, refusing those over ``max_pixels``.

    Raises :class:`~hybridhash.data.cifar.UnsafePickleError` for a CIFAR-10 batch that asks to run
    code: that is a hostile file, not a defect to list among others."""
    spec, name_dir = get_spec(name)
    if name_dir is not None:
        root = name_dir
    if spec.kind == "digits":
        from .digits import digits_pools
        pools = digits_pools(spec.distortion, 0)  # seed 0, as the split drawn below
        report = CheckReport(name, "scikit-learn's bundled digits" + (" (distorted copies)" if spec.distortion else ""))
        for key, pool in pools.items():
            report.sets.append(SetReport("all" if len(pools) == 1 else key, "load_digits", len(pool), pool.n_class))
        _check_split(report, spec, name, pools, sizes, val_fraction)
        return report
    if spec.kind == "cifar":
        return _check_cifar(spec, name, root, verify_images, sizes, val_fraction)
    if spec.kind == "images" or (spec.kind == "folder" and root is not None and os.path.isdir(root)
                                 and not has_class_folders(root)):
        return _check_images(spec, name, root, verify_images, (progress, threads, max_pixels), sizes, val_fraction)
    if spec.kind == "folder":
        return _check_folder(spec, name, root, verify_images, (progress, threads, max_pixels), sizes, val_fraction)
    return _check_lists(spec, name, root, image_root, verify_images, (progress, threads, max_pixels))


def _check_cifar(spec, name, root, verify_images, sizes, val_fraction) -> CheckReport:
    from .cifar import UnsafePickleError, cifar_pool, cifar_root, missing_files, verify_md5

    try:
        root = cifar_root(root)
    except DataError as err:
        report = CheckReport(name, "no root")
        report.errors.append(Problem(name, str(err)))
        return report
    report = CheckReport(name, f"CIFAR-10 batches under {root}")
    missing = missing_files(root)
    report.errors += [Problem(p, "missing") for p in missing]
    if missing:
        return report
    if verify_images:
        report.errors += [Problem(p, "md5 differs from the published CIFAR-10 archive") for p in verify_md5(root)]
    try:
        pool = cifar_pool(root)
    except UnsafePickleError:
        raise  # a file crafted to run code: stop here, as loading it would
    except DataError as err:
        report.errors.append(Problem(name, str(err)))
        return report
    report.sets.append(SetReport("all", "batches", len(pool), pool.n_class))
    _check_split(report, spec, name, {pool.name: pool}, sizes, val_fraction)
    return report


def _check_folder(spec, name, root, verify_images, decoding, sizes, val_fraction) -> CheckReport:
    """``decoding``: (progress, threads, max_pixels) of :func:`_verify`."""
    from .folder import folder_pool, scan_folder, usable_images

    report = CheckReport(name, f"class folders under {root}")
    try:
        class_names, rel_paths, classes, skipped = scan_folder(root, report.errors)
    except DataError as err:
        report.errors.append(Problem(name, str(err)))
        return report
    root = os.path.abspath(os.fspath(root))
    rel_paths, classes, left_out = usable_images(root, rel_paths, classes)
    report.warnings += left_out
    paths = [os.path.join(root, p) for p in rel_paths]
    _check_files(report, SetReport("all", "folders", len(paths), len(class_names)), paths, verify_images, decoding)
    if skipped:
        report.warnings.append(Problem(root, f"{skipped} file(s) without an image extension ignored"))
    if not report.errors:
        pool = folder_pool(root, left_out=[])  # the images it leaves out are reported above
        _check_split(report, spec, name, {pool.name: pool}, sizes, val_fraction)
    return report


def _check_files(report: CheckReport, s: SetReport, paths: List[str], verify_images: bool, decoding) -> None:
    """Every file of ``paths`` present and not empty (and decodable under ``verify_images``), counted
    into ``s``, appended to the report's sets, each failure one of its errors."""
    bad = _stat_files(paths)
    report.errors += [Problem(p, why) for p, why in bad.items()]
    s.missing = sum(v == "missing" for v in bad.values())
    s.empty = sum(v == "empty" for v in bad.values())
    if verify_images:
        failed = _verify([p for p in paths if p not in bad], *decoding)
        s.unreadable = len(failed)
        report.errors += [Problem(p, reason.partition(": ")[2] or reason) for p, reason in failed.items()]
    report.sets.append(s)


def _check_images(spec, name, root, verify_images, decoding, sizes, val_fraction) -> CheckReport:
    """Images without labels (a flat folder, a folder tree, a list file of paths); ``decoding``:
    (progress, threads, max_pixels) of :func:`_verify`."""
    from .folder import image_pool

    report = CheckReport(name, f"images without labels from {root}")
    try:
        pool = image_pool(root, left_out=report.warnings)
    except DataError as err:
        report.errors.append(Problem(name, str(err)))
        return report
    paths = [pool.path(j) for j in range(len(pool))]
    _check_files(report, SetReport("all", "no labels", len(paths), 0), paths, verify_images, decoding)
    if not report.errors:
        _check_split(report, spec, name, {pool.name: pool}, sizes, val_fraction)
    return report


def _check_lists(spec, name, root, image_root, verify_images, decoding) -> CheckReport:
    """``decoding``: (progress, threads, max_pixels) of :func:`_verify`."""
    from .listfile import find_list_dir, read_list_dir
    from .sets import resolve_path

    try:
        list_dir = find_list_dir(root, spec.name if spec.name != "list" else None)
    except DataError as err:
        report = CheckReport(name, "no list directory")
        report.errors.append(Problem(name, str(err)))
        return report
    image_root = os.path.abspath(os.fspath(image_root)) if image_root is not None else list_dir
    report = CheckReport(name, f"list files in {list_dir}, images under {image_root}")
    parse_problems: List[Problem] = []
    try:
        files = read_list_dir(list_dir, spec.n_class, protocol=name, problems=parse_problems)
    except DataError as err:  # unreadable or non-UTF-8 file
        report.errors.append(Problem(name, str(err)))
        return report
    report.errors += parse_problems

    # every distinct image once, however many files list it
    resolved = {set_name: [resolve_path(image_root, r) for r in lf.rel_paths] for set_name, lf in files.items()}
    unique = sorted({p for ps in resolved.values() for p in ps})
    bad = _stat_files(unique)
    failed = _verify([p for p in unique if p not in bad], *decoding) if verify_images else {}

    for set_name, lf in files.items():
        fname = LIST_FILES[set_name]
        s = SetReport(set_name, fname, len(lf.rel_paths), lf.width or None)
        s.bad_lines = sum(1 for p in parse_problems if p.where.startswith(lf.path + ":"))
        seen: Dict[str, int] = {}
        for rel, path, line in zip(lf.rel_paths, resolved[set_name], lf.lines):
            where = f"{lf.path}:{line}"
            if path in seen:
                s.duplicates += 1
                report.errors.append(Problem(where, f"{rel}: duplicate of line {seen[path]}"))
                continue
            seen[path] = line
            if path in bad:
                s.missing += bad[path] == "missing"
                s.empty += bad[path] == "empty"
                report.errors.append(Problem(where, f"{rel}: {bad[path]} ({path})"))
            elif path in failed:
                report.errors.append(Problem(where, failed[path]))
        if verify_images:
            s.unreadable = sum(1 for p in set(resolved[set_name]) if p in failed)
        if lf.labels.size:
            positives = lf.labels.sum(1)
            s.no_label = int(np.sum(positives == 0))
            if s.no_label:
                report.warnings.append(Problem(lf.path, f"{s.no_label} image(s) with no label (never relevant)"))
            if spec.multi_label is False and np.any(positives > 1):
                report.warnings.append(Problem(lf.path, f"{int(np.sum(positives > 1))} row(s) with several labels "
                                                        f"in a single-label protocol"))
        published = spec.published.get(set_name)
        if published is not None and published != s.images:
            report.warnings.append(Problem(lf.path, f"{s.images} images, the published {name} {set_name} set has {published}"))
        report.sets.append(s)
    if "query" in files and "database" in files:
        overlap = len(set(resolved["query"]) & set(resolved["database"]))
        if overlap:
            report.warnings.append(Problem(list_dir, f"{overlap} query image(s) are also in the database"))
    return report
