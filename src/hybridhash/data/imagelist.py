"""The images to encode: a folder scanned (classes from its sub-folders) or a list file read, with
the names that cannot be stored left out and said why, and each file's size and time for resume."""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ..errors import DataError
from .images import is_image_file, unusable_name

_log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


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
    from .folder import scan_folder

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
    from .listfile import read_list_file

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
    bad = [(i, r) for i, r in ((i, unusable_name(p)) for i, p in enumerate(images.paths)) if r]
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
            raise DataError(f"{images}: --image-root applies to list files; a folder is its own image root")
        return scan_image_folder(p)
    if p.is_file():
        return read_image_list(p, root)
    raise DataError(f"{images}: no such folder or list file")
