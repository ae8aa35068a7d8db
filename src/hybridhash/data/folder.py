"""A folder with one sub-folder per class (sorted names are class ids 0, 1, ...) as a pool."""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np

from ..errors import DataError
from .images import is_image_file
from .listfile import Problem
from .sets import FilePool


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


def folder_pool(root) -> FilePool:
    """Every image under ``root/<class>/`` as one pool; the fingerprint hashes the file listing."""
    class_names, rel_paths, classes, _ = scan_folder(root)
    labels = np.eye(len(class_names), dtype=np.float32)[classes]  # (N, n_class)
    listing = "\n".join(f"{p}\t{c}" for p, c in zip(rel_paths, classes)).encode()
    return FilePool("folder", os.path.abspath(os.fspath(root)), rel_paths, labels, listing, class_names)
