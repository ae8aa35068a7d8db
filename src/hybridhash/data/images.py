"""Safe image loading: one function that turns a file (or uploaded bytes) into an RGB PIL image.

Every failure becomes a :class:`~hybridhash.errors.DataError` whose one-line message names the
file and the reason (missing, empty, not an image, truncated or corrupt, over the pixel limit),
so a long encoding run or a web request fails with something a person can act on.
"""
from __future__ import annotations

import io
import os
from typing import BinaryIO, Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..limits import MAX_PIXELS

# above the project's pixel limit (hybridhash.limits) an image is refused before it is decoded
DEFAULT_MAX_PIXELS: int = MAX_PIXELS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")

Source = Union[str, os.PathLike, bytes, bytearray, BinaryIO]


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _read_source(source: Source, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if hasattr(source, "read"):
        return source.read()
    path = os.fspath(source)
    try:
        # read the bytes up front so no file handle outlives this call (multi-frame images keep one)
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a directory, not an image") from None
    except OSError as err:
        raise DataError(f"{name}: cannot read ({_one_line(err)})") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16"):
        # 16-bit grey: keep the top byte instead of clipping everything above 255 to white
        arr = (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def open_image(source: Source, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, *,
               name: Optional[str] = None) -> Image.Image:
    """Decode an image and return it as an RGB ``PIL.Image`` (first frame of an animation).

    Args:
        source: a path, the file's bytes, or a binary file object.
        max_pixels: refuse images whose header claims more than this many pixels (width * height)
            before any pixel is decoded; ``None`` disables the check (PIL's own limit of twice
            ``Image.MAX_IMAGE_PIXELS`` still applies).
        name: how the messages call the image (default: the path, or ``"<bytes>"``).

    Raises:
        DataError: one line naming the file and why it cannot be used.
    """
    if name is None:
        name = "<bytes>" if isinstance(source, (bytes, bytearray)) or hasattr(source, "read") else os.fspath(source)
    data = _read_source(source, name)
    if not data:
        raise DataError(f"{name}: empty file")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image (no known image format)") from None
    except Image.DecompressionBombError as err:
        raise DataError(f"{name}: over the pixel limit ({_one_line(err)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DataError(f"{name}: truncated or corrupt image (header: {_one_line(err)})") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise DataError(f"{name}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise DataError(f"{name}: {width}x{height} = {width * height} pixels is over the limit of {max_pixels}")
    try:
        img.load()  # the decode happens here; truncated and corrupt data fail here
        return _to_rgb(img)
    except Image.DecompressionBombError as err:
        raise DataError(f"{name}: over the pixel limit ({_one_line(err)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as err:
        raise DataError(f"{name}: truncated or corrupt image ({_one_line(err)})") from None


def is_image_file(filename: str) -> bool:
    """True for a file name with a known image extension (case-insensitive), hidden files excluded."""
    base = os.path.basename(filename)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)
