"""Helpers of the living-collection tests: digit images written and rewritten on disk, list files,
a collection as a mapping path -> (code, label), and search results as sets of (path, distance)."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image


@lru_cache(maxsize=1)
def _digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images  # (1797, 8, 8) in 0..16


def digit_png(path: Path, i: int) -> None:
    """Digit ``i`` (mod 1797) upscaled to 32 px as an RGB PNG at ``path``."""
    a = (_digits()[i % len(_digits())] * (255 / 16)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).resize((32, 32), Image.BILINEAR).convert("RGB").save(path)


def change(path: Path, i: int) -> None:
    """Rewrite ``path`` in place with digit ``i``, its mtime moved on by a second (so it differs)."""
    old = os.stat(path).st_mtime_ns
    digit_png(path, i)
    os.utime(path, ns=(old + 10**9, old + 10**9))


def write_list(path: Path, entries: dict) -> None:
    """A list file: ``rel l0 l1 ...`` per line from {rel: labels}."""
    path.write_text("".join(f"{p} {' '.join(map(str, v))}\n" for p, v in sorted(entries.items())))


def as_mapping(col) -> dict:
    """{path: (packed code bytes, label)} of every item of the collection."""
    return {col.path(int(i)): (bytes(np.asarray(col.codes[r])), col.label(int(i)))
            for r, i in enumerate(col.item_ids)}


def ids_by_path(col) -> dict:
    return {col.path(int(i)): int(i) for i in col.item_ids}


def result_sets(col, index, queries: np.ndarray) -> list:
    """Per query (packed (q, bits/8)): the set of (path, distance) of every item the index returns at
    k = the collection's size (no cut among ties, so ids, which differ by design, do not matter)."""
    dist, ids = index.search(queries, col.count)
    return [{(col.path(int(i)), int(d)) for d, i in zip(drow, irow) if i >= 0} for drow, irow in zip(dist, ids)]


def snapshot_stats(directory: Path) -> dict:
    """{relative path: (size, mtime_ns)} of everything under ``directory`` (folders too)."""
    return {str(p.relative_to(directory)): (p.lstat().st_size if p.is_file() else 0, p.lstat().st_mtime_ns)
            for p in sorted(Path(directory).rglob("*"))}
