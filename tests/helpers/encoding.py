"""Helpers of the encoding and retrieval tests: a folder of small class images with unreadable ones
among them, a tiny saved checkpoint, and codes recomputed without the encoder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import hybridhash

BITS = 32
MAX_PIXELS = 2000  # above the 32x32 test images, below the 64x64 "too large" one
# the unreadable files and a word their reason must contain
BAD = {
    "3/truncated.jpg": "truncated",
    "4/empty.jpg": "empty",
    "5/notes.jpg": "not an image",
    "6/huge.png": "over the limit",
}


def make_images(root: Path, per_class: int = 6, classes: int = 10, bad: bool = True) -> list:
    """Digits upscaled to 32 px as PNG/JPEG files in class folders; returns the good paths (sorted, relative)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    good = []
    for c in range(classes):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(digits.target == c)[:per_class]
        for j, i in enumerate(idx):
            a = (digits.images[i] * (255 / 16)).astype(np.uint8)
            img = Image.fromarray(a).resize((32, 32), Image.BILINEAR).convert("RGB")
            ext = "jpg" if j % 3 == 2 else "png"
            rel = f"{c}/img_{i:04d}.{ext}"
            img.save(root / rel, quality=90) if ext == "jpg" else img.save(root / rel)
            good.append(rel)
    if bad:
        full = root / good[2]  # a JPEG, cut short
        data = full.read_bytes()
        (root / "3/truncated.jpg").write_bytes(data[: len(data) // 2])
        (root / "4/empty.jpg").write_bytes(b"")
        (root / "5/notes.jpg").write_text("these are not pixels\n")
        Image.new("RGB", (64, 64), (200, 10, 10)).save(root / "6/huge.png")
    return sorted(good)


def save_model(path: Path, seed: int = 0, bits: int = BITS) -> Path:
    torch.manual_seed(seed)
    hybridhash.create_model("hybridhash_cpu", bits=bits).eval().save_pretrained(str(path))
    return path


def expected_codes(model, root: Path, rels: list) -> np.ndarray:
    """Packed codes recomputed without the encoder: PIL decode, [0, 1], normalise, model.encode, np.packbits."""
    pre = model.preprocess
    mean = torch.tensor(pre["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(pre["std"], dtype=torch.float32).view(3, 1, 1)
    xs = []
    for rel in rels:
        with Image.open(root / rel) as img:
            a = np.asarray(img.convert("RGB"))  # (32, 32, 3), already the model's input size
        assert a.shape == (pre["img_size"], pre["img_size"], 3)
        x = torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255.0
        xs.append((x - mean) / std)
    codes = model.encode(torch.stack(xs)).numpy()  # (n, bits) int8 +-1
    return np.packbits(codes > 0, axis=1)
