"""A small real collection for the service tests: tiny checkpoint -> ``hybridhash encode`` ->
``hybridhash index`` -> :class:`~hybridhash.retrieval.Retriever`, plus a few image payloads."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circles", "squares", "stripes")
PER_CLASS = 8
BITS = 32


def _draw(kind: str, rng: np.random.Generator, size) -> Image.Image:
    w, h = size
    bg = tuple(int(c) for c in rng.integers(0, 256, 3))
    fg = tuple(int(c) for c in rng.integers(0, 256, 3))
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    if kind == "circles":
        for _ in range(int(rng.integers(1, 4))):
            r = int(rng.integers(w // 8, w // 3))
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            d.ellipse([x - r, y - r, x + r, y + r], fill=fg)
    elif kind == "squares":
        for _ in range(int(rng.integers(1, 4))):
            s = int(rng.integers(w // 6, w // 2))
            x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
            d.rectangle([x, y, x + s, y + s], fill=fg)
    else:
        step = int(rng.integers(3, 8))
        for x in range(int(rng.integers(0, step)), w, step):
            d.line([x, 0, x + int(rng.integers(-8, 9)), h], fill=fg, width=max(1, step // 2))
    noise = rng.integers(-12, 13, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def make_images(root: Path, seed: int = 0) -> list[str]:
    """``root/<class>/<name>`` images (PNG, one JPEG per class, mixed sizes); relative paths, sorted."""
    rng = np.random.default_rng(seed)
    paths = []
    for kind in CLASSES:
        (root / kind).mkdir(parents=True)
        for i in range(PER_CLASS):
            size = (32, 32) if i % 3 else (48, 40)
            img = _draw(kind, rng, size)
            name = f"{kind}_{i:02d}.jpg" if i == PER_CLASS - 1 else f"{kind}_{i:02d}.png"
            img.save(root / kind / name, quality=90) if name.endswith(".jpg") else img.save(root / kind / name)
            paths.append(f"{kind}/{name}")
    return sorted(paths)


def build_collection(base: Path, bits: int = BITS) -> dict:
    """Images, a tiny untrained checkpoint, the encoded and indexed collection under ``base``.

    Returns {"images": root, "checkpoint": dir, "codes": dir, "paths": relative paths}.
    """
    import torch

    import hybridhash
    from hybridhash.app import cli

    images = base / "images"
    paths = make_images(images)
    torch.manual_seed(0)
    checkpoint = base / "ckpt"
    hybridhash.create_model("hybridhash_cpu", bits=bits).save_pretrained(str(checkpoint))
    codes = base / "codes"
    assert cli.main(["encode", "--checkpoint", str(checkpoint), "--images", str(images), "--collection", str(codes),
                     "--workers", "0", "--no-progress"]) == 0
    assert cli.main(["index", "--collection", str(codes)]) == 0
    return {"images": images, "checkpoint": checkpoint, "codes": codes, "paths": paths}


def png_bytes(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header claims ``width x height`` pixels (a decompression bomb's header).

    A real 1x1 PNG with its IHDR chunk rewritten (and its CRC recomputed); nothing past the
    header needs to be valid, because a server must refuse it before decoding.
    """
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    # signature (8) | length (4) | "IHDR" (4) | width (4) | height (4) | ... 5 bytes | crc (4)
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def hamming_ranking(query_code: np.ndarray, codes: np.ndarray, k: int) -> list[tuple[int, int]]:
    """Brute force: (distance, id) of the k nearest packed codes, ties by id.

    ``query_code`` packed uint8 (bits/8,), ``codes`` packed uint8 (n, bits/8).
    """
    bits = np.unpackbits(np.asarray(codes), axis=1)  # (n, bits)
    q = np.unpackbits(np.asarray(query_code)[None], axis=1)  # (1, bits)
    dist = (bits != q).sum(1)  # (n,)
    order = sorted(range(len(dist)), key=lambda i: (int(dist[i]), i))
    return [(int(dist[i]), i) for i in order[:k]]
