"""Image pools and the retrieval sets drawn from them.

A *pool* is the whole collection an image can come from (all 60000 CIFAR-10 images, the lines of
one list file, the files under a folder): labels for every row, a way to get row ``j``'s image,
and a fingerprint of its content. A :class:`RetrievalSet` is a torch ``Dataset`` over some rows of
one pool; its items are ``(image, target, i)`` with ``i`` the row *within the set*.
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import DEFAULT_MAX_PIXELS, open_image


class Pool:
    """Base: ``labels`` float32 (N, n_class) multi-hot, ``image(j)`` -> RGB PIL image.

    An unlabelled pool (``labelled`` False: a folder of photos, a list of paths) holds one column of
    ones, a single pseudo-class, so that seeded splits and shapes work unchanged; nothing may read
    those labels as classes (training refuses label-based methods, evaluation reports label-free scores).
    """

    name: str
    labels: np.ndarray
    class_names: Optional[List[str]] = None
    labelled: bool = True

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def n_class(self) -> int:
        return self.labels.shape[1]

    def image(self, j: int) -> Image.Image:
        raise NotImplementedError

    def path(self, j: int) -> Optional[str]:
        return None

    def rel_path(self, j: int) -> Optional[str]:
        return None

    @property
    def on_disk(self) -> bool:
        return False

    def fingerprint(self) -> str:
        """Hex sha256 of what defines the pool's rows; cached after the first call."""
        if getattr(self, "_fingerprint", None) is None:
            h = hashlib.sha256()
            self._hash_content(h)
            h.update(np.ascontiguousarray(self.labels, dtype=np.float32).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def _hash_content(self, h) -> None:
        raise NotImplementedError


class ArrayPool(Pool):
    """Images held in memory: ``images`` uint8 (N, H, W, 3) (digits, CIFAR-10)."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray,
                 class_names: Optional[List[str]] = None):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} label rows")
        self.name = name
        self.images = images  # (N, H, W, 3) uint8
        self.labels = np.ascontiguousarray(labels, dtype=np.float32)  # (N, n_class)
        self.class_names = class_names

    def image(self, j: int) -> Image.Image:
        return Image.fromarray(self.images[j])

    def _hash_content(self, h) -> None:
        h.update(repr(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).data)


class FilePool(Pool):
    """Images on disk: ``rel_paths`` relative to ``image_root`` (list files, folders).

    ``source`` is the text that defines the pool (a list file's bytes, a folder's file listing);
    the fingerprint hashes it, not the images, so a split stays valid when the images move.
    ``max_pixels``: the largest image decoded (set by ``load_protocol``).
    """

    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS

    def __init__(self, name: str, image_root: str, rel_paths: Sequence[str], labels: np.ndarray,
                 source: bytes, class_names: Optional[List[str]] = None, labelled: bool = True):
        if len(rel_paths) != labels.shape[0]:
            raise ValueError(f"{len(rel_paths)} paths but {labels.shape[0]} label rows")
        self.name = name
        self.image_root = os.fspath(image_root)
        self.rel_paths = list(rel_paths)
        self.labels = np.ascontiguousarray(labels, dtype=np.float32)  # (N, n_class)
        self.source = source
        self.class_names = class_names
        self.labelled = labelled

    def rel_path(self, j: int) -> str:
        return self.rel_paths[j]

    def path(self, j: int) -> str:
        return resolve_path(self.image_root, self.rel_paths[j])

    @property
    def on_disk(self) -> bool:
        return True

    def image(self, j: int) -> Image.Image:
        return open_image(self.path(j), self.max_pixels)

    def _hash_content(self, h) -> None:
        h.update(self.source)


def resolve_path(image_root: str, rel: str) -> str:
    """Join a list-file path to the image root. A leading ``/`` is part of the relative path, as the
    original code concatenates root and path."""
    return os.path.normpath(os.path.join(image_root, rel.lstrip("/")))


class RetrievalSet(Dataset):
    """Rows of one pool as a torch ``Dataset``.

    Items: ``(image, target, i)``: the RGB PIL image (or ``transform(image)``), target float32 (n_class,)
    multi-hot, and ``i`` the row within this set (what the loss's memory bank is indexed by).

    Attributes:
        name: "train", "val", "query" or "database".
        rows: int64 (n,) rows of the pool.
        labels: float32 (n, n_class).
        paths: image paths (list of str) or None for in-memory pools.
    """

    def __init__(self, name: str, pool: Pool, rows: np.ndarray,
                 transform: Optional[Callable] = None):
        self.name = name
        self.pool = pool
        self.rows = np.asarray(rows, dtype=np.int64)  # (n,)
        self.labels = pool.labels[self.rows]  # (n, n_class) float32
        self.transform = transform
        self._paths: Optional[List[str]] = None

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def n_class(self) -> int:
        return self.pool.n_class

    @property
    def paths(self) -> Optional[List[str]]:
        if not self.pool.on_disk:
            return None
        if self._paths is None:
            self._paths = [self.pool.path(j) for j in self.rows]
        return self._paths

    @property
    def rel_paths(self) -> Optional[List[str]]:
        if not self.pool.on_disk:
            return None
        return [self.pool.rel_path(j) for j in self.rows]

    def image(self, i: int) -> Image.Image:
        """The untransformed RGB image of set row ``i``."""
        return self.pool.image(int(self.rows[i]))

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name} set has {len(self)} rows, asked for {i}")
        i = int(i) % len(self)
        img = self.image(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, torch.tensor(self.labels[i]), i  # target (n_class,) float32

    def with_transform(self, transform: Optional[Callable]) -> "RetrievalSet":
        """The same rows with items ``(transform(image), target, i)``."""
        return RetrievalSet(self.name, self.pool, self.rows, transform)

    def subset(self, indices: Sequence[int]) -> "RetrievalSet":
        """Set rows ``indices`` (positions within this set) as a new set; its rows renumber from 0."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"subset indices outside 0..{len(self) - 1}")
        return RetrievalSet(self.name, self.pool, self.rows[idx], self.transform)

    def __repr__(self) -> str:
        return f"RetrievalSet({self.name!r}, n={len(self)}, n_class={self.n_class}, pool={self.pool.name!r})"
