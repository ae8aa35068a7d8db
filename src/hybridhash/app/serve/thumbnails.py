"""Thumbnails of collection items for the web page: made on first request with the project's image
decoder (under the limit the collection was encoded with), kept in a bounded LRU."""
import io
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Hashable, Optional, Tuple

from PIL import Image

from ...data.images import DEFAULT_MAX_PIXELS, decode_image

if TYPE_CHECKING:
    from .decodes import DecodePool

log = logging.getLogger(__name__)

THUMB_SIZE = 256


class ThumbnailCache:
    """Thumbnails of collection items, made on first request and kept in a bounded LRU.

    ``get(key, path) -> (bytes, media type)``: ``key`` names the file's content (the service uses its
    path, size and modification time, so a rewritten file is not answered from the cache). Bounded both in entries and in bytes; the least recently
    used thumbnails go first. Small images become PNG (lossless, a few kB), larger ones JPEG.
    """

    def __init__(self, size: int = THUMB_SIZE, max_items: int = 4096, max_bytes: int = 64 * 2**20,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, decoder: Optional["DecodePool"] = None):
        self.size, self.max_items, self.max_bytes = size, max_items, max_bytes
        self.max_pixels = max_pixels  # the limit the collection was encoded under: each item gets a thumbnail
        self._decoder = decoder  # shared with the uploads: the threads images are decoded on
        self._items: "OrderedDict[Hashable, Tuple[bytes, str]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable, path: Path) -> Tuple[bytes, str]:
        with self._lock:
            entry = self._items.get(key)
            if entry is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return entry
            self.misses += 1
        entry = self._make(path)  # outside the lock: two threads may both make it, both get the same
        with self._lock:
            if key not in self._items:
                self._items[key] = entry
                self._bytes += len(entry[0])
            while self._items and (len(self._items) > self.max_items or self._bytes > self.max_bytes):
                _, (data, _) = self._items.popitem(last=False)
                self._bytes -= len(data)
        return entry

    def _make(self, path: Path) -> Tuple[bytes, str]:
        if self._decoder is None:
            return self._render(path)
        return self._decoder.run(self._render, path)

    def _render(self, path: Path) -> Tuple[bytes, str]:
        # the project's decoder: the same pixel limit and EXIF orientation as the codes; JPEGs are
        # decoded at a reduced scale (draft), much faster
        img = decode_image(path, self.max_pixels, name=path.name, draft=(self.size, self.size))
        img = img.convert("RGBA") if img.mode in ("P", "LA", "PA") or "transparency" in img.info else img
        if img.mode == "RGBA":  # transparency onto white, as a browser shows it on the page
            canvas = Image.new("RGB", img.size, "white")
            canvas.paste(img, mask=img.getchannel("A"))
            img = canvas
        img = img.convert("RGB")
        img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        if img.size[0] * img.size[1] <= 96 * 96:
            img.save(out, format="PNG", optimize=True)
            return out.getvalue(), "image/png"
        img.save(out, format="JPEG", quality=85)
        return out.getvalue(), "image/jpeg"
