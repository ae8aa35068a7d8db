"""Images on disk as pools: a folder with one sub-folder per class (sorted names are class ids 0, 1,
...), or images without labels (every image under a folder, or the paths of a list file)."""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

import numpy as np

from ..errors import DataError
from .images import IMAGE_EXTENSIONS as _EXTENSIONS, is_image_file, printable, unusable_name
from .listfile import Problem
from .sets import FilePool

_log = logging.getLogger(__name__)


def scan_folder(root, problems: Optional[List[Problem]] = None) -> Tuple[List[str], List[str], np.ndarray, int]:
    """Find the images under ``root/<class>/`` (sub-folders of a class included, hidden files not).

    Returns:
        (class names, relative paths sorted per class, classes int64 (N,), files skipped as not images).
        A class folder without images raises :class:`DataError` (or is reported to ``problems``).
    """
    if root is None:
        raise DataError("folder: needs a root, a directory with one sub-folder of images per class")
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such directory")
    class_names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not class_names:
        raise DataError(f"{root}: no class sub-folders (expected one folder of images per class)")
    rel_paths: List[str] = []
    classes: List[int] = []
    skipped = 0
    for c, cname in enumerate(class_names):
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, cname)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in filenames:
                if is_image_file(fn):
                    found.append(os.path.relpath(os.path.join(dirpath, fn), root))
                elif not fn.startswith("."):
                    skipped += 1
        if not found:
            message = "class folder has no images"
            if problems is None:
                raise DataError(f"{os.path.join(root, cname)}: {message}")
            problems.append(Problem(os.path.join(root, cname), message))
        found.sort()
        rel_paths += found
        classes += [c] * len(found)
    return class_names, rel_paths, np.asarray(classes, dtype=np.int64), skipped


def usable_images(root, rel_paths: List[str], classes: np.ndarray) -> Tuple[List[str], np.ndarray, List[Problem]]:
    """The images whose names a listing can hold (the rule encoding keeps, :func:`.images.unusable_name`).

    Returns:
        (relative paths kept, their classes int64 (n,), one :class:`Problem` per image left out).
    """
    keep, left_out = [], []
    for j, rel in enumerate(rel_paths):
        reason = unusable_name(rel)
        if reason is None:
            keep.append(j)
        else:
            left_out.append(Problem(printable(os.path.join(os.fspath(root), rel)), f"{reason}; left out"))
    return [rel_paths[j] for j in keep], classes[keep], left_out


def folder_pool(root, left_out: Optional[List[Problem]] = None) -> FilePool:
    """Every image under ``root/<class>/`` as one pool; the fingerprint hashes the file listing.

    Images whose names cannot be listed are left out: reported to ``left_out`` when given, else
    logged as warnings (as encoding does).
    """
    class_names, rel_paths, classes, _ = scan_folder(root)
    rel_paths, classes, dropped = usable_images(os.path.abspath(os.fspath(root)), rel_paths, classes)
    if left_out is None:
        for problem in dropped:
            _log.warning("%s", problem)
    else:
        left_out += dropped
    labels = np.eye(len(class_names), dtype=np.float32)[classes]  # (N, n_class)
    listing = "\n".join(f"{p}\t{c}" for p, c in zip(rel_paths, classes)).encode()
    return FilePool("folder", os.path.abspath(os.fspath(root)), rel_paths, labels, listing, class_names)


def has_class_folders(root) -> bool:
    """Whether ``root`` has a visible sub-folder (the class layout); False for a flat folder of images."""
    root = os.fspath(root)
    return os.path.isdir(root) and any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(root))


def _read_path_list(path: str) -> List[str]:
    """The paths of a list file of paths only, one a line (the whole line, spaces included; blank lines skipped)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise DataError(f"{printable(path)}: cannot read the list of paths ({err.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{printable(path)}: not UTF-8 text (byte {err.start}); a list of image paths, one a line, "
                        "is expected") from None
    paths = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if "\0" in line:
            raise DataError(f"{printable(path)}:{number}: a NUL character in a path")
        paths.append(line)
    return paths


def image_pool(source, left_out: Optional[List[Problem]] = None) -> FilePool:
    """Images without labels: every image under the directory ``source`` (sub-folders included,
    sorted), or the paths listed in the file ``source`` (relative to its directory, as given).

    The pool's labels are one column of ones (see :class:`~.sets.Pool`); its fingerprint hashes the
    listing. Images whose names a listing cannot hold are left out as :func:`folder_pool` does.
    """
    if source is None:
        raise DataError("images: needs a directory of images or a text file of image paths")
    source = os.path.abspath(os.fspath(source))
    if os.path.isdir(source):
        image_root, rel_paths = source, []
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_paths += [os.path.relpath(os.path.join(dirpath, fn), source)
                          for fn in filenames if is_image_file(fn) and not fn.startswith(".")]
        rel_paths.sort()
    elif os.path.isfile(source):
        image_root, rel_paths = os.path.dirname(source), _read_path_list(source)
    else:
        raise DataError(f"{printable(source)}: no such directory or list file")
    rel_paths, _, dropped = usable_images(image_root, rel_paths, np.zeros(len(rel_paths), np.int64))
    if left_out is None:
        for problem in dropped:
            _log.warning("%s", problem)
    else:
        left_out += dropped
    if not rel_paths:
        raise DataError(f"{printable(source)}: holds no images (files ending {', '.join(_EXTENSIONS[:3])}, ...)")
    labels = np.ones((len(rel_paths), 1), np.float32)  # one pseudo-class: no labels
    listing = "\n".join(rel_paths).encode()
    return FilePool("images", image_root, rel_paths, labels, listing, None, labelled=False)
