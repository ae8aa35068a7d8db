"""The project's limits and size defaults, in one place and importable without torch (the command
line reads them to build its ``--help``)."""
from __future__ import annotations

# Largest image (width * height) decoded anywhere: training, encoding, search, serving and
# thumbnails alike, so an image that was encoded can always be shown. PIL's own bomb limit.
MAX_PIXELS: int = 89_478_485

# images per shard of an encoded collection (the unit of resume)
SHARD_SIZE: int = 4096

# the HTTP service
MAX_UPLOAD_BYTES: int = 20 * 2**20  # largest accepted upload
# the most --max-upload-mb may raise it to: an image under MAX_PIXELS is at most 716 MB even stored
# uncompressed (16-bit RGBA TIFF, 8 bytes a pixel)
UPLOAD_BYTES_CAP: int = 1024 * 2**20
MAX_K: int = 100  # most results one search may ask for
MAX_BATCH: int = 16  # most concurrent queries encoded in one forward
MAX_DECODES: int = 2  # images decoded at once (a 49 MP PNG costs ~190 MB while it decodes)
MAX_REQUESTS: int = 32  # requests answered at once; more get 503 with Retry-After
BODY_TIMEOUT: float = 30.0  # seconds an upload may stall between two chunks before a 408
KEEP_ALIVE_TIMEOUT: int = 5  # seconds an idle keep-alive connection stays open

# the oldest ONNX opset the export writes (and its default)
ONNX_OPSET: int = 17
