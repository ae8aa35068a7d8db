"""Safe image loading, for the whole project: one decoder that turns a file (or uploaded bytes)
into a PIL image, used by training, encoding, search and the service (queries and thumbnails).

A path is read only when it leads (through any links) to a regular file no larger than the byte
limit: a device (``/dev/zero``), a named pipe or a socket given an image's name is refused without
being read, and the file is opened non-blocking and checked again once open, so swapping one in
between the check and the open cannot block or exhaust memory either.

Every failure becomes a :class:`~hybridhash.errors.DataError` whose one-line message names the
file and the reason, so a long encoding run or a web request fails with something a person can
act on. The image-specific failures have their own subclasses, which the service maps to HTTP
statuses: :class:`NotAnImageError` (empty, or no known format), :class:`TooManyPixelsError` (over
the pixel limit, refused from the header before any pixel is decoded) and
:class:`CorruptImageError` (a broken header, truncated or corrupt data).

The EXIF orientation tag is applied (a phone photo stored sideways with "rotate 90" comes out
upright), so codes and thumbnails see the picture as a viewer shows it.
"""
from __future__ import annotations

import io
import logging
import os
import stat
from typing import BinaryIO, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError, one_line
from ..limits import MAX_FILE_BYTES, MAX_PIXELS

__all__ = [
    "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "NotAnImageError", "TooManyPixelsError",
    "TooManyBytesError", "CorruptImageError", "decode_image", "open_image", "is_image_file", "unusable_name",
    "printable",
]

_log = logging.getLogger(__name__)

# The project's one pixel limit (width * height, hybridhash.limits), for training, encoding, search
# and the service. Above it an image is refused before it is decoded.
DEFAULT_MAX_PIXELS: int = MAX_PIXELS

# The most bytes read from an image file (hybridhash.limits.MAX_FILE_BYTES): a file that never ends
# (a link to /dev/zero, a file still growing) costs at most this much memory. Uploads have their
# own, smaller limit in the service.
DEFAULT_MAX_BYTES: int = MAX_FILE_BYTES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")

Source = Union[str, os.PathLike, bytes, bytearray, BinaryIO]


class NotAnImageError(DataError):
    """Empty data, or data in no image format PIL knows."""


class TooManyPixelsError(DataError):
    """An image whose header claims more pixels than the limit (refused before decoding)."""


class TooManyBytesError(DataError):
    """An image file larger than the byte limit (refused before it is read)."""


class CorruptImageError(DataError):
    """An image whose header or data is broken or truncated."""


def _display_name(source: Source, name: Optional[str]) -> str:
    if name is not None:
        return name
    return "<bytes>" if isinstance(source, (bytes, bytearray)) or hasattr(source, "read") else os.fspath(source)


_SPECIAL = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _require_regular(mode: int, name: str) -> None:
    """Refuse a file that is not a regular one (a directory, device, pipe or socket)."""
    if not stat.S_ISREG(mode):
        kind = next((what for test, what in _SPECIAL if test(mode)), "not a regular file")
        raise DataError(f"{name}: is {kind}, not an image file; only regular files are read as images")


def _check_size(size: int, max_bytes: Optional[int], name: str) -> None:
    if max_bytes is not None and size > max_bytes:
        raise TooManyBytesError(f"{name}: larger than the limit of {max_bytes} bytes ({max_bytes / 2**20:g} MiB) "
                                f"for an image file")


def _read_bounded(f: BinaryIO, max_bytes: Optional[int], name: str) -> bytes:
    """All of ``f``, refused once it passes ``max_bytes`` (one byte over is enough to know)."""
    data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    _check_size(len(data), max_bytes, name)
    return data


def _read_file(path: str, name: str, max_bytes: Optional[int]) -> bytes:
    """The bytes of the regular file at ``path`` (links followed), at most ``max_bytes`` of them."""
    try:
        st = os.stat(path)
        _require_regular(st.st_mode, name)  # before any open: opening a device can act on it
        _check_size(st.st_size, max_bytes, name)
        # non-blocking: a pipe swapped in after the stat must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except OSError as err:
        raise DataError(f"{name}: cannot read ({one_line(err)})") from None
    # read the bytes up front so no file handle outlives this call (multi-frame images keep one)
    with open(fd, "rb") as f:
        try:
            _require_regular(os.fstat(fd).st_mode, name)  # the file opened is the one checked
            return _read_bounded(f, max_bytes, name)  # bounded again: the file may grow
        except OSError as err:
            raise DataError(f"{name}: cannot read ({one_line(err)})") from None


def _read_source(source: Source, name: str, max_bytes: Optional[int]) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)  # already in memory: whoever read it bounded it
    if hasattr(source, "read"):
        return _read_bounded(source, max_bytes, name)
    return _read_file(os.fspath(source), name, max_bytes)


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


def decode_image(source: Source, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, *,
                 name: Optional[str] = None, draft: Optional[Tuple[int, int]] = None,
                 max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> Image.Image:
    """Decode an image (first frame of an animation), EXIF orientation applied, in its own mode.

    Args:
        source: a path, the file's bytes, or a binary file object.
        max_pixels: refuse images whose header claims more than this many pixels (width * height)
            before any pixel is decoded; ``None`` disables the check (PIL's own limit of twice
            ``Image.MAX_IMAGE_PIXELS`` still applies).
        name: how the messages call the image (default: the path, or ``"<bytes>"``).
        draft: ``(width, height)``: let the decoder work at a reduced scale no smaller than this
            (JPEG only; much faster for thumbnails). The pixel limit applies to the full size.
        max_bytes: the most bytes read from a path or file object (bytes given are not checked:
            they are already in memory); ``None`` reads any size.

    Raises:
        NotAnImageError, TooManyPixelsError, TooManyBytesError, CorruptImageError: as their names say;
        DataError: a file that is missing, cannot be read, or is no regular file (a device, a pipe).
    """
    name = _display_name(source, name)
    data = _read_source(source, name, max_bytes)
    if not data:
        raise NotAnImageError(f"{name}: empty file")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise NotAnImageError(f"{name}: not an image (no known image format)") from None
    except Image.DecompressionBombError:  # PIL's own, higher limit, hit while reading the header
        limit = max_pixels if max_pixels is not None else 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise TooManyPixelsError(f"{name}: over the pixel limit: the image header claims more pixels than the "
                                 f"limit of {limit} (a decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise CorruptImageError(f"{name}: truncated or corrupt image (header: {one_line(err)})") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"{name}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise TooManyPixelsError(f"{name}: {width}x{height} = {width * height} pixels is over the limit of {max_pixels}")
    try:
        if draft is not None:
            img.draft(img.mode, draft)
        img.load()  # the decode happens here; truncated and corrupt data fail here
    except Image.DecompressionBombError as err:
        raise TooManyPixelsError(f"{name}: over the pixel limit ({one_line(err)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as err:
        raise CorruptImageError(f"{name}: truncated or corrupt image ({one_line(err)})") from None
    return _upright(img, name)


def _upright(img: Image.Image, name: str) -> Image.Image:
    """The image as a viewer shows it: its EXIF orientation applied (and the tag dropped)."""
    try:
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of an image already upright
    except Exception as err:  # a broken EXIF block is common and harmless: keep the stored pixels
        _log.debug("%s: EXIF orientation not applied (%s)", name, one_line(err))
    return img


def open_image(source: Source, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, *,
               name: Optional[str] = None, max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> Image.Image:
    """Decode an image and return it as an RGB ``PIL.Image``: :func:`decode_image`, then RGB.

    Raises:
        DataError (or one of its subclasses above): one line naming the file and why it cannot be used.
    """
    name = _display_name(source, name)
    img = decode_image(source, max_pixels, name=name, max_bytes=max_bytes)
    try:
        return _to_rgb(img)
    except (OSError, ValueError, TypeError) as err:
        raise CorruptImageError(f"{name}: cannot be converted to RGB ({one_line(err)})") from None


def is_image_file(filename: str) -> bool:
    """True for a file name with a known image extension (case-insensitive), hidden files excluded."""
    base = os.path.basename(filename)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def unusable_name(name: str) -> Optional[str]:
    """Why a file name cannot stand on one line of a UTF-8 listing (a collection's paths.txt, a
    dataset's fingerprint), or None when it can. Images with such names are left out, with a warning."""
    if "\n" in name or "\r" in name:
        return "file name contains a line break"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in the name, kept by Python as lone surrogates
        return "file name is not valid UTF-8"
    return None


def printable(name: str) -> str:
    """``name`` as it can stand on one line of a message (quoted and escaped when needed)."""
    return name if name.isprintable() else repr(name)
