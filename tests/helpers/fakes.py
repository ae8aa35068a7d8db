"""Small fake datasets written in the real on-disk formats, for the data tests."""
from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_fake_cifar(root: Path, train_per_class: int = 1, test_per_class: int = 2, seed: int = 0
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """Write ``root/cifar-10-batches-py`` in CIFAR-10's python pickle format.

    Each of the 5 training batches holds ``train_per_class`` images of every class, the test batch
    ``test_per_class``; batches are shuffled. Keys are ``str``, as Python 3 reads the real
    (Python 2 pickled) files with ``encoding="latin1"``.

    Returns:
        images uint8 (N, 32, 32, 3) and classes int64 (N,) in the order train batches 1..5, test.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    all_images, all_classes = [], []
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        per_class = test_per_class if name == "test_batch" else train_per_class
        classes = rng.permutation(np.repeat(np.arange(10), per_class))
        data = rng.integers(0, 256, size=(classes.size, 3072), dtype=np.uint8)  # CHW rows
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": classes.tolist(), "data": data,
                         "filenames": [f"{name}_{i}.png" for i in range(classes.size)]}, f, protocol=2)
        all_images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        all_classes.append(classes)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES, "num_cases_per_batch": 10 * train_per_class, "num_vis": 3072}, f,
                    protocol=2)
    return np.concatenate(all_images), np.concatenate(all_classes).astype(np.int64)


def tiny_image(value: int, size: int = 6) -> Image.Image:
    """A small RGB image whose pixels encode ``value`` (different values, different images)."""
    rng = np.random.default_rng(value)
    return Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))


def write_list_dir(directory: Path, sets: Dict[str, Sequence[Sequence[int]]], *, fmt: str = "png",
                   prefix: str = "images") -> Dict[str, List[str]]:
    """Write images and DeepHash list files.

    Args:
        sets: {"train.txt": [labels, ...], "test.txt": [...], "database.txt": [...]}; every row gets
            its own image ``<prefix>/<file stem>_<row>.<fmt>``.

    Returns:
        {list file name: relative image paths}.
    """
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    counter = 0
    for fname, rows in sets.items():
        stem = fname.split(".")[0]
        lines, rels = [], []
        for i, labels in enumerate(rows):
            rel = f"{prefix}/{stem}_{i}.{fmt}"
            path = directory / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tiny_image(counter).save(path)
            counter += 1
            rels.append(rel)
            lines.append(rel + " " + " ".join(str(int(v)) for v in labels))
        (directory / fname).write_text("\n".join(lines) + "\n")
        out[fname] = rels
    return out


def write_multilabel_lists(directory: Path, seed: int = 0, n_class: int = 5) -> Dict[str, np.ndarray]:
    """A small NUS-WIDE-style list-file directory: 12 train, 6 query and 40 database images with
    multi-hot labels (query 0 shares no label with anything, query 1 carries every label).

    Returns:
        {list file name: labels int (n, n_class)}.
    """
    rng = np.random.default_rng(seed)
    sets = {name: (rng.random((n, n_class)) < 0.4).astype(int)
            for name, n in (("train.txt", 12), ("test.txt", 6), ("database.txt", 40))}
    sets["test.txt"][0] = 0
    sets["test.txt"][1] = 1
    write_list_dir(directory, sets)
    return sets


def write_folder(directory: Path, per_class: Dict[str, int]) -> Dict[str, List[str]]:
    """``directory/<class>/<i>.png`` for each class; returns {class: relative paths}."""
    out = {}
    counter = 1000
    for cname, n in per_class.items():
        (directory / cname).mkdir(parents=True, exist_ok=True)
        out[cname] = []
        for i in range(n):
            rel = f"{cname}/{i:03d}.png"
            tiny_image(counter).save(directory / rel)
            counter += 1
            out[cname].append(rel)
    return out


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` 1-bit pixels but carries almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def noise_image(size: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))
