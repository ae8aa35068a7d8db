"""The HTTP service and its web page: ``create_app(retriever)`` and ways to run it."""
from .app import (
    DEFAULT_MAX_K,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    SearchBatcher,
    ThumbnailCache,
    create_app,
    decode_upload,
)
from .server import BackgroundServer, bind_socket, run_server, socket_url

__all__ = [
    "DEFAULT_MAX_K", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_BYTES", "BackgroundServer", "SearchBatcher",
    "ThumbnailCache", "bind_socket", "create_app", "decode_upload", "run_server", "socket_url",
]
