"""``GET /items/{id}``: the stored image of an item, or its thumbnail, from the generation served now.

An id the served generation does not hold (removed by an update, or never given) is a 404, and so is
an item whose file is gone, is no longer a regular file, or is not an image. The file is opened and
checked while the request is answered and then sent from that open descriptor, so a file removed
meanwhile (an update switched and its image was deleted) is either sent whole, as it was when
opened, or answered 404: never a server error, never half a file. Thumbnails are cached by the
file's path, size and modification time, so a rewritten file gets a new one whatever its id.
"""
from __future__ import annotations

import logging
import os
import stat as stat_mod
from email.utils import formatdate
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Tuple

from fastapi import HTTPException
from fastapi.responses import Response, StreamingResponse
from PIL import Image
from starlette.background import BackgroundTask

from ...errors import DataError, one_line
from .thumbnails import ThumbnailCache

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # bytes read and sent at a time


def item_path(collection, item_id: int) -> Tuple[Path, os.stat_result]:
    """The file of item ``item_id`` (its listed path, read through links; see Collection.served_path)
    and its stat, or a 404."""
    if getattr(collection, "ids", None) is not None:  # an updated collection: ids stable across updates, not rows
        if not collection.has_id(item_id):
            raise HTTPException(404, f"no item {item_id} in generation {collection.generation} of this "
                                     f"collection (removed by an update, or never given)")
    elif not 0 <= item_id < collection.count:
        raise HTTPException(404, f"no item {item_id}: ids run from 0 to {collection.count - 1}")
    try:
        resolve = getattr(collection, "served_path", None) or collection.abspath  # abspath: an older collection shape
        path = Path(resolve(item_id))
    except DataError as err:
        log.warning("refused to serve %s", err)
        raise HTTPException(404, f"item {item_id}: not served (its path leaves the image root, or its link "
                                 f"no longer leads to the file that was encoded)") from None
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is None or not stat_mod.S_ISREG(st.st_mode):
        raise HTTPException(404, f"item {item_id}: its image file is missing")
    return path, st


def image_type(file: BinaryIO) -> Optional[str]:
    """The MIME type from the file's own header (not its name); None for a file that is no image."""
    try:
        with Image.open(file) as img:
            return Image.MIME.get(img.format or "", "application/octet-stream")
    except Exception:  # unreadable or not an image: never served
        return None


def _open_regular(path: Path) -> Optional[Tuple[BinaryIO, os.stat_result]]:
    """``path`` opened for reading and its stat, or None when it is gone or not a regular file
    (non-blocking, so a FIFO put in its place cannot hang the request)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat_mod.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb"), st


def _chunks(file: BinaryIO, size: int) -> Iterator[bytes]:
    left = size
    while left > 0:
        data = file.read(min(CHUNK, left))
        if not data:
            return
        left -= len(data)
        yield data


def image_response(collection, item_id: int, headers: dict) -> Response:
    """The stored image of item ``item_id``, sent from the file opened now; 404 when there is none."""
    path, _ = item_path(collection, item_id)
    opened = _open_regular(path)
    if opened is None:  # removed (or replaced by something else) since it was looked up
        raise HTTPException(404, f"item {item_id}: its image file is missing")
    file, st = opened
    try:
        media_type = image_type(file)
        file.seek(0)
    except OSError:
        media_type = None
    if media_type is None:
        file.close()
        raise HTTPException(404, f"item {item_id}: its image cannot be read")
    out = {**headers, "Content-Length": str(st.st_size), "Last-Modified": formatdate(st.st_mtime, usegmt=True)}
    return StreamingResponse(_chunks(file, st.st_size), media_type=media_type, headers=out,
                             background=BackgroundTask(file.close))


def thumbnail_response(collection, item_id: int, thumbs: ThumbnailCache, headers: dict) -> Response:
    """The cached or new thumbnail of item ``item_id``; 404 when its image is gone or unreadable."""
    path, st = item_path(collection, item_id)
    try:
        data, media_type = thumbs.get((str(path), st.st_size, st.st_mtime_ns), path)
    except (OSError, DataError, ValueError, SyntaxError) as err:
        log.warning("item %d: no thumbnail (%s)", item_id, one_line(err))
        raise HTTPException(404, f"item {item_id}: its image cannot be read") from None
    return Response(data, media_type=media_type, headers=headers)
