"""CIFAR-10 through ``torchvision.datasets.CIFAR10``: train and test batches joined into one pool.

torchvision re-checks every batch's md5 each time it loads (about half a second, and it refuses
any other copy of the data in the same format). Here the md5 is checked when downloading (by
torchvision) and by ``hybridhash data check --verify-images``; loading only needs the batch files
to be present and well-formed.
"""
from __future__ import annotations

import os
import pickle
from typing import List, Tuple

import numpy as np

from ..errors import DataError
from .sets import ArrayPool

BASE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
META_FILE = "batches.meta"


def cifar_root(root) -> str:
    """The directory that holds ``cifar-10-batches-py`` (``root`` itself may be that folder)."""
    if root is None:
        raise DataError("CIFAR-10 needs a root: the directory holding cifar-10-batches-py "
                        "(or where to download it with download=True)")
    root = os.path.abspath(os.fspath(root))
    if os.path.basename(root) == BASE_FOLDER and os.path.isfile(os.path.join(root, "data_batch_1")):
        return os.path.dirname(root)
    return root


def _present_cifar10():
    from torchvision.datasets import CIFAR10

    class PresentCIFAR10(CIFAR10):
        """torchvision's reader, asking only that the files exist (md5 is checked elsewhere)."""

        def _check_integrity(self) -> bool:
            folder = os.path.join(self.root, self.base_folder)
            return all(os.path.isfile(os.path.join(folder, name)) for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            with open(path, "rb") as f:
                meta = pickle.load(f, encoding="latin1")
            self.classes = meta[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return PresentCIFAR10


def missing_files(root: str) -> List[str]:
    folder = os.path.join(root, BASE_FOLDER)
    return [os.path.join(folder, name) for name in TRAIN_FILES + TEST_FILES + [META_FILE]
            if not os.path.isfile(os.path.join(folder, name))]


def read_cifar10(root, download: bool = False) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Read all 60000 images.

    Returns:
        images uint8 (N, 32, 32, 3) (the 50000 training batches first, then the 10000 test images),
        classes int64 (N,), class names (10).
    """
    root = cifar_root(root)
    if download:
        from torchvision.datasets import CIFAR10 as reader  # downloads if needed, checks md5
    else:
        missing = missing_files(root)
        if missing:
            raise DataError(f"CIFAR-10 file missing: {missing[0]} "
                            f"({len(missing)} of 7 files missing; pass download=True to fetch the data)")
        reader = _present_cifar10()
    parts = []
    try:
        for train in (True, False):
            ds = reader(root, train=train, download=download)
            parts.append((np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64)))
        names = [str(c) for c in ds.classes]
    except DataError:
        raise
    except Exception as err:  # torchvision raises RuntimeError, pickle and numpy many others
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"cannot read CIFAR-10 under {os.path.join(root, BASE_FOLDER)}: {reason}") from None
    images = np.concatenate([p[0] for p in parts])  # (N, 32, 32, 3)
    classes = np.concatenate([p[1] for p in parts])  # (N,)
    if images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise DataError(f"CIFAR-10 under {root}: images are {images.dtype} {images.shape[1:]}, expected uint8 32x32x3")
    if images.shape[0] != classes.shape[0]:
        raise DataError(f"CIFAR-10 under {root}: {images.shape[0]} images but {classes.shape[0]} labels")
    if classes.size and (classes.min() < 0 or classes.max() > 9):
        raise DataError(f"CIFAR-10 under {root}: labels outside 0..9 (min {classes.min()}, max {classes.max()})")
    if len(names) != 10:
        raise DataError(f"CIFAR-10 under {root}: batches.meta names {len(names)} classes, expected 10")
    return images, classes, names


def cifar_pool(root, download: bool = False) -> ArrayPool:
    """All CIFAR-10 images as one pool: rows 0..49999 the training batches, then the test batch."""
    images, classes, names = read_cifar10(root, download)
    labels = np.eye(10, dtype=np.float32)[classes]  # (N, 10)
    return ArrayPool("cifar10", np.ascontiguousarray(images), labels, names)


def verify_md5(root) -> List[str]:
    """Files whose md5 differs from the published CIFAR-10 archive's (empty when all match)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_md5

    folder = os.path.join(cifar_root(root), BASE_FOLDER)
    expected = CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    return [os.path.join(folder, name) for name, md5 in expected
            if os.path.isfile(os.path.join(folder, name)) and not check_md5(os.path.join(folder, name), md5)]
