"""CIFAR-10's python batches, read without running anything they contain: one pool of 60000 images.

The batches are pickles, and unpickling a file runs whatever callables it names. They are read
here with an unpickler that resolves only the few globals a genuine batch needs (numpy's array
rebuilders, its dtype), so a file made to run code is refused with a one-line error before any
of it runs. torchvision is used only to download and unpack the archive (md5 of the archive
checked); ``hybridhash data check --verify-images`` checks each file's md5 without unpickling it.
"""
from __future__ import annotations

import importlib
import os
import pickle
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from ..errors import DataError
from .sets import ArrayPool

BASE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
META_FILE = "batches.meta"


class UnsafePickleError(DataError):
    """A batch file that names a global a CIFAR-10 batch never holds (it could run code)."""


def _numpy_global(name: str) -> Callable:
    """A function of numpy's array module, under its numpy 2 (``numpy._core``) or 1.x (``numpy.core``) home."""
    module, _, attr = name.rpartition(".")
    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module}"), attr)
        except (ImportError, AttributeError):
            continue
    raise DataError(f"this numpy has no {name}; cannot read CIFAR-10 batches")


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes under protocol 2 (latin-1 only: no codec lookups)."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only accepted for latin-1 text")
    return text.encode("latin-1")


def _allowed_globals() -> Dict[Tuple[str, str], Callable[[], Any]]:
    """(module, name) a genuine batch may name -> how to get it. Everything else is refused.

    numpy arrays pickle as ``_reconstruct`` + ``ndarray`` + ``dtype`` (protocols 0-4; Python 2's
    real batches say ``numpy.core.multiarray``, numpy 2 ``numpy._core.multiarray``), or
    ``_frombuffer`` + ``dtype`` (protocol 5); numpy scalars as ``scalar``; Python 3 bytes under
    protocol 2 as ``_codecs.encode(text, "latin1")``.
    """
    table: Dict[Tuple[str, str], Callable[[], Any]] = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: _latin1_encode,
    }
    for prefix in ("numpy.core", "numpy._core"):
        table[(f"{prefix}.multiarray", "_reconstruct")] = lambda: _numpy_global("multiarray._reconstruct")
        table[(f"{prefix}.multiarray", "scalar")] = lambda: _numpy_global("multiarray.scalar")
        table[(f"{prefix}.numeric", "_frombuffer")] = lambda: _numpy_global("numeric._frombuffer")
    return table


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, str/bytes, numbers and numpy arrays; any other global is refused."""

    def __init__(self, file, path: str) -> None:
        super().__init__(file, encoding="latin1")  # the real batches are Python 2 pickles
        self.path = path
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        get = self.allowed.get((module, name))
        if get is None:
            raise UnsafePickleError(f"{self.path} is not a CIFAR-10 batch: it asks to load {module}.{name}, "
                                    f"which a CIFAR batch never contains; re-download it")
        return get()


def load_batch_file(path: str) -> Any:
    """The object pickled in one batch file, read with :class:`_BatchUnpickler` (never runs its code)."""
    with open(path, "rb") as f:
        return _BatchUnpickler(f, path).load()


def _read_batch(path: str) -> Tuple[np.ndarray, List[int]]:
    """One batch: its rows uint8 (n, 3072) in CHW order and its n labels."""
    entry = load_batch_file(path)
    if not isinstance(entry, dict) or "data" not in entry or not ("labels" in entry or "fine_labels" in entry):
        raise DataError(f"{path} is not a CIFAR-10 batch: expected a dict with 'data' and 'labels'")
    data = entry["data"]
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path} is not a CIFAR-10 batch: its data is a {type(data).__name__}, not an array")
    labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
    return data, list(labels)


def _read_names(path: str) -> List[str]:
    meta = load_batch_file(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("label_names"), (list, tuple)):
        raise DataError(f"{path} is not CIFAR-10's batches.meta: no list of label_names")
    return [str(c) for c in meta["label_names"]]


def cifar_root(root) -> str:
    """The directory that holds ``cifar-10-batches-py`` (``root`` itself may be that folder)."""
    if root is None:
        raise DataError("CIFAR-10 needs a root: the directory holding cifar-10-batches-py "
                        "(or where to download it with download=True)")
    root = os.path.abspath(os.fspath(root))
    if os.path.basename(root) == BASE_FOLDER and os.path.isfile(os.path.join(root, "data_batch_1")):
        return os.path.dirname(root)
    return root


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
    missing = missing_files(root)
    if missing and download:
        _download(root)
        missing = missing_files(root)
    if missing:
        raise DataError(f"CIFAR-10 file missing: {missing[0]} "
                        f"({len(missing)} of 7 files missing; pass download=True to fetch the data)")
    folder = os.path.join(root, BASE_FOLDER)
    parts = []
    try:
        for files in (TRAIN_FILES, TEST_FILES):
            batches = [_read_batch(os.path.join(folder, name)) for name in files]
            data = np.vstack([b[0] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW -> HWC
            parts.append((data, np.asarray([y for b in batches for y in b[1]], dtype=np.int64)))
        names = _read_names(os.path.join(folder, META_FILE))
    except DataError:
        raise
    except Exception as err:  # pickle and numpy raise many types for malformed files
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"cannot read CIFAR-10 under {folder}: {reason}") from None
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


def _download(root: str) -> None:
    """Fetch and unpack the published archive (its md5 checked) through torchvision's downloader."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(CIFAR10.url, root, filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)


def verify_md5(root) -> List[str]:
    """Files whose md5 differs from the published CIFAR-10 archive's (empty when all match)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_md5

    folder = os.path.join(cifar_root(root), BASE_FOLDER)
    expected = CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    return [os.path.join(folder, name) for name, md5 in expected
            if os.path.isfile(os.path.join(folder, name)) and not check_md5(os.path.join(folder, name), md5)]
