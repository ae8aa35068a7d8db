"""DeepHash-style list files: one image a line, ``relative/path.jpg 0 1 0 ... 0`` (a 0/1 per class).

A directory holds ``train.txt`` (training images), ``test.txt`` (queries) and ``database.txt``.
Paths are split from labels on whitespace, as the original reads them, so they cannot contain spaces.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ..errors import DataError
from .protocols import LIST_FILES


@dataclass
class Problem:
    """One thing wrong with the data; ``where`` is ``file:line`` or a path."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class ListFile:
    """A parsed list file. ``labels`` float32 (n, width); ``lines`` the 1-based line of every row."""

    path: str
    rel_paths: List[str]
    labels: np.ndarray
    lines: List[int]
    width: int
    source: bytes


def find_list_dir(root, name: Optional[str] = None) -> str:
    """The directory holding the list files: ``root`` itself, or ``root/<name>`` (the layout of a
    DeepHash-style ``data/`` folder with one sub-folder per dataset)."""
    if root is None:
        raise DataError(f"{name or 'list'}: needs a root, the directory holding train.txt, test.txt and database.txt")
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such directory")
    if name and not os.path.isfile(os.path.join(root, LIST_FILES["query"])) \
            and os.path.isfile(os.path.join(root, name, LIST_FILES["query"])):
        return os.path.join(root, name)
    return root


def read_list_file(path: str, width: Optional[int] = None, *, problems: Optional[List[Problem]] = None,
                   width_origin: str = "") -> ListFile:
    """Parse one list file.

    Args:
        path: the list file.
        width: labels per line; None takes the first line's count.
        problems: if given, malformed lines are appended here and skipped; otherwise the first one
            raises :class:`DataError` naming the file and line.
        width_origin: says where ``width`` comes from, for messages (e.g. "nuswide_21 has 21 classes").

    Returns:
        the parsed rows (bad lines left out).
    """
    fname = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            source = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: list file missing") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({' '.join(str(err).split())})") from None
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None

    def report(lineno: int, message: str) -> None:
        problem = Problem(f"{path}:{lineno}", message)
        if problems is None:
            raise DataError(str(problem))
        problems.append(problem)

    rel_paths: List[str] = []
    codes: List[str] = []  # per row, its labels as one string of '0'/'1'
    lines: List[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        labels = tokens[1:]
        if width is None:
            if not labels:
                report(lineno, "no labels after the path (expected 'path 0 1 0 ...')")
                continue
            width = len(labels)
            width_origin = width_origin or f"as on {fname} line {lineno}"
        if len(labels) != width:
            report(lineno, f"{len(labels)} label entries, expected {width} ({width_origin})")
            continue
        code = "".join(labels)
        if len(code) != width or code.strip("01"):
            bad = next(t for t in labels if t not in ("0", "1"))
            report(lineno, f"label {bad!r} is not 0 or 1")
            continue
        rel_paths.append(tokens[0])
        codes.append(code)
        lines.append(lineno)
    if not rel_paths:
        if problems is None:
            raise DataError(f"{path}: lists no images")
        problems.append(Problem(path, "lists no images"))  # an empty set is a problem a check reports
    width = width or 0
    if codes:
        raw = np.frombuffer("".join(codes).encode("ascii"), dtype=np.uint8)
        labels_arr = (raw - ord("0")).reshape(len(codes), width).astype(np.float32)  # (n, width)
    else:
        labels_arr = np.zeros((0, width), np.float32)
    return ListFile(path, rel_paths, labels_arr, lines, width, source)


def read_list_dir(directory: str, n_class: Optional[int] = None, *, protocol: str = "list",
                  problems: Optional[List[Problem]] = None) -> dict:
    """Read ``train.txt``, ``test.txt`` and ``database.txt`` with one label width.

    Returns:
        {"train": ListFile, "query": ListFile, "database": ListFile}; a missing file raises (or,
        with ``problems``, is reported and left out).
    """
    origin = f"{protocol} has {n_class} classes" if n_class else ""
    out = {}
    width = n_class
    for set_name in ("train", "query", "database"):
        path = os.path.join(directory, LIST_FILES[set_name])
        if problems is not None and not os.path.isfile(path):
            problems.append(Problem(path, "list file missing"))
            continue
        lf = _inside_root(read_list_file(path, width, problems=problems, width_origin=origin), problems)
        if width is None and lf.width:
            width, origin = lf.width, f"as on the first line of {LIST_FILES[set_name]}"
        out[set_name] = lf
    return out


def leaves_root(rel: str) -> bool:
    """True for a list path that points outside the image root (``../x.jpg``, ``a/../../x.jpg``).

    A leading ``/`` is part of the relative path (see :func:`~.sets.resolve_path`), so it stays inside.
    """
    rel = os.path.normpath(rel.lstrip("/")).replace(os.sep, "/")
    return rel == ".." or rel.startswith("../")


def _inside_root(lf: ListFile, problems: Optional[List[Problem]]) -> ListFile:
    """``lf`` without the rows whose path leaves the image root: those are never opened, and the
    first raises :class:`DataError` naming the file and line (or, with ``problems``, each is reported)."""
    bad = [j for j, rel in enumerate(lf.rel_paths) if leaves_root(rel)]
    for j in bad:
        problem = Problem(f"{lf.path}:{lf.lines[j]}", f"{lf.rel_paths[j]}: leaves the image root (a list path "
                                                      f"is relative to it)")
        if problems is None:
            raise DataError(str(problem))
        problems.append(problem)
    if not bad:
        return lf
    keep = [j for j in range(len(lf.rel_paths)) if j not in set(bad)]
    return ListFile(lf.path, [lf.rel_paths[j] for j in keep], lf.labels[keep], [lf.lines[j] for j in keep],
                    lf.width, lf.source)
