"""The HTTP service and its web page: ``create_app(retriever)`` (:mod:`.app`, the routes), its upload
limits (:mod:`.uploads`), query batching (:mod:`.batching`), the stored images (:mod:`.items`) and
their thumbnails (:mod:`.thumbnails`), following updates of the collection (:mod:`.follow`) and ways
to run it (:mod:`.server`)."""
from .app import DEFAULT_MAX_K, DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES, create_app
from .batching import SearchBatcher
from .thumbnails import ThumbnailCache
from .uploads import decode_upload
from .server import BackgroundServer, bind_socket, run_server, socket_url

__all__ = [
    "DEFAULT_MAX_K", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_BYTES", "BackgroundServer", "SearchBatcher",
    "ThumbnailCache", "bind_socket", "create_app", "decode_upload", "run_server", "socket_url",
]
