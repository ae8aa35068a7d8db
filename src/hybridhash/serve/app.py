"""The HTTP service: a FastAPI app over a :class:`~hybridhash.retrieval.Retriever`.

Routes::

    POST /search          multipart ``image`` (+ ``k``) -> the k nearest items as JSON
    GET  /items/{id}      the stored image of item ``id`` (``?thumb=1``: a small cached thumbnail)
    GET  /health          status, collection size, bits, model fingerprint, limits
    GET  /                the web page (static files under /static, no external resource)
    GET  /docs, /openapi.json

Items are addressed by id only; a file is served only when the collection's own path check
(:meth:`~hybridhash.collection.Collection.served_path`) allows it (the listed file, inside the image root
or the very file encoded through a link) and it is an image.
Uploads are bounded in bytes (before they are buffered) and in pixels (before they are decoded);
at most ``max_decodes`` images are decoded at once (a small PNG can decode to hundreds of MB), and
a client that stops sending its request body for ``body_timeout`` seconds gets 408 and a closed
connection. Images are decoded by :mod:`hybridhash.data.images`, the decoder the encoder uses,
under the project's one pixel limit; thumbnails too, so every encoded image has one.
"""
# no ``from __future__ import annotations``: FastAPI must evaluate the endpoint annotations, whose
# bounds (``le=max_k``) are closure variables of create_app

import asyncio
import io
import logging
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, List, Optional, Tuple

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel

from ..data.images import (DEFAULT_MAX_PIXELS, CorruptImageError, NotAnImageError, TooManyPixelsError, decode_image,
                           open_image)
from ..errors import DataError
from ..limits import BODY_TIMEOUT, MAX_BATCH, MAX_DECODES, MAX_K, MAX_UPLOAD_BYTES

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_BYTES = MAX_UPLOAD_BYTES
# DEFAULT_MAX_PIXELS is the project's one pixel limit (hybridhash.limits), re-exported here
DEFAULT_MAX_K = MAX_K
DEFAULT_MAX_BATCH = MAX_BATCH
DEFAULT_MAX_DECODES = MAX_DECODES
DEFAULT_BODY_TIMEOUT = BODY_TIMEOUT
THUMB_SIZE = 256
# room for the multipart envelope and the ``k`` field around an upload of the maximum size
_ENVELOPE_BYTES = 64 * 2**10
# a rejected body is read to its end (up to this much) so the client sees the 413, not a reset
_DRAIN_BYTES = 64 * 2**20

# the page and its files load nothing from outside this server
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


# ------------------------------------------------------------------------------------------------
# response models (they document the API at /docs)

class Problem(BaseModel):
    detail: str


class QueryInfo(BaseModel):
    width: int
    height: int


class Result(BaseModel):
    rank: int
    id: int
    distance: int
    path: str
    label: Optional[str]
    url: str
    thumbnail: str


class SearchResponse(BaseModel):
    query: QueryInfo
    k: int
    results: List[Result]
    took_ms: float


class Health(BaseModel):
    status: str
    count: int
    bits: int
    fingerprint: Optional[str]
    model: Optional[str]
    index: Optional[str]
    limits: dict
    stats: dict


# ------------------------------------------------------------------------------------------------
# upload size limit

class _TooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"upload too large: the limit is {_mb(limit)}")


def _mb(n: int) -> str:
    for unit, size in (("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


class _Stalled(HTTPException):
    def __init__(self, timeout: float):
        # Connection: close makes uvicorn drop the connection once the 408 is sent
        super().__init__(408, f"request body stalled: nothing arrived for {timeout:g} s",
                         headers={"Connection": "close"})


class BodyLimitMiddleware:
    """ASGI middleware: a POST body over ``limit`` bytes gets 413 before the app buffers it, and a
    body that stalls gets 408.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as it
    arrives. Either way the rest of the body is read and dropped (up to ``drain`` bytes) so the
    client, still sending, receives the 413 instead of a connection reset. When no part of the body
    arrives for ``timeout`` seconds (None: wait forever) the request is answered 408 and its
    connection closed, so a stalled client does not hold a worker and its buffers.
    """

    def __init__(self, app, limit: int, reported_limit: Optional[int] = None, drain: int = _DRAIN_BYTES,
                 timeout: Optional[float] = DEFAULT_BODY_TIMEOUT):
        self.app, self.limit, self.drain, self.timeout = app, limit, drain, timeout
        self.reported_limit = reported_limit or limit  # the upload limit the message names

    async def _receive(self, receive):
        """The next message, or _Stalled when none comes within the timeout."""
        if self.timeout is None:
            return await receive()
        try:
            return await asyncio.wait_for(receive(), self.timeout)
        except asyncio.TimeoutError:
            raise _Stalled(self.timeout) from None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._drain(receive, 0)
            return await self._reject(scope, receive, send)
        received = 0
        body_done = False

        async def limited_receive():
            nonlocal received, body_done
            if body_done:  # later receives wait for a disconnect, which has no deadline
                return await receive()
            message = await self._receive(receive)
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.limit:
                    if message.get("more_body", False):
                        await self._drain(receive, received)
                    # an HTTPException passes through the form parser and FastAPI's handlers unchanged
                    raise _TooLarge(self.reported_limit)
            return message

        await self.app(scope, limited_receive, send)

    async def _drain(self, receive, seen: int) -> None:
        while seen <= self.drain:
            try:
                message = await self._receive(receive)
            except _Stalled:  # the refusal is sent all the same, and the connection closed
                return
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _reject(self, scope, receive, send) -> None:
        response = JSONResponse({"detail": _TooLarge(self.reported_limit).detail}, status_code=413)
        await response(scope, receive, send)


# ------------------------------------------------------------------------------------------------
# decoding an upload

def decode_upload(data: bytes, max_pixels: int, name: str = "upload") -> Image.Image:
    """Uploaded bytes -> RGB PIL image, or an HTTPException whose status says why not.

    The decode is :func:`hybridhash.data.images.open_image`, the one the encoder uses (so a stored
    image uploaded again gives the same code); its error types map to statuses: 400 empty upload,
    415 :class:`~hybridhash.data.images.NotAnImageError`, 413
    :class:`~hybridhash.data.images.TooManyPixelsError` (over ``max_pixels``, refused from the
    header before decoding), 422 :class:`~hybridhash.data.images.CorruptImageError` and any other
    DataError. The detail is the decoder's one-line message, which names the upload.
    """
    if not data:
        raise HTTPException(400, f"{name}: empty upload (0 bytes)")
    try:
        return open_image(data, max_pixels=max_pixels, name=name)
    except TooManyPixelsError as err:
        raise HTTPException(413, str(err)) from None
    except NotAnImageError as err:
        raise HTTPException(415, str(err)) from None
    except (CorruptImageError, DataError) as err:
        raise HTTPException(422, str(err)) from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# ------------------------------------------------------------------------------------------------
# batching concurrent searches

class SearchBatcher:
    """Runs every search on one thread and coalesces queued queries into one batched forward.

    Under load, the requests waiting while a forward runs go together into the next one (at most
    ``max_batch``); an idle service answers a lone query at once, with no waiting for company.
    One thread also means one model forward at a time, whatever the retriever's own locking.
    The retriever searches with the largest k of the batch and each query keeps its first k hits,
    which for the exact index are exactly its k nearest (ties by id).
    """

    def __init__(self, retriever, max_batch: int = DEFAULT_MAX_BATCH):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.retriever, self.max_batch = retriever, max_batch
        self._queue: "queue.Queue[Optional[Tuple[Any, int, Future]]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self.batches = 0  # forwards run (a test and the benchmark read these)
        self.queries = 0

    def search(self, image: Image.Image, k: int) -> list:
        """One image -> its k hits (a list of :class:`~hybridhash.retrieval.Hit`)."""
        self._start()
        future: Future = Future()
        self._queue.put((image, k, future))
        return future.result()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="hybridhash-search", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._run(batch)

    def _run(self, batch: List[Tuple[Any, int, Future]]) -> None:
        try:
            hits = self.retriever.search([image for image, _, _ in batch], k=max(k for _, k, _ in batch))
        except Exception as err:
            if len(batch) > 1:  # one bad query must not fail the others: retry them one by one
                for item in batch:
                    self._run([item])
                return
            batch[0][2].set_exception(err)  # the waiting request gets the error, the thread lives on
            return
        self.batches += 1
        self.queries += len(batch)
        for (_, k, future), row in zip(batch, hits):
            future.set_result(row[:k])

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30)


# ------------------------------------------------------------------------------------------------
# thumbnails

class ThumbnailCache:
    """Thumbnails of collection items, made on first request and kept in a bounded LRU.

    ``get(id, path) -> (bytes, media type)``. Bounded both in entries and in bytes; the least recently
    used thumbnails go first. Small images become PNG (lossless, a few kB), larger ones JPEG.
    """

    def __init__(self, size: int = THUMB_SIZE, max_items: int = 4096, max_bytes: int = 64 * 2**20,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, decode_slots: Optional[threading.Semaphore] = None):
        self.size, self.max_items, self.max_bytes = size, max_items, max_bytes
        self.max_pixels = max_pixels  # the limit the collection was encoded under: each item gets a thumbnail
        self._slots = decode_slots  # shared with the uploads: bounds the images decoded at once
        self._items: "OrderedDict[int, Tuple[bytes, str]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, item_id: int, path: Path) -> Tuple[bytes, str]:
        with self._lock:
            entry = self._items.get(item_id)
            if entry is not None:
                self._items.move_to_end(item_id)
                self.hits += 1
                return entry
            self.misses += 1
        entry = self._make(path)  # outside the lock: two threads may both make it, both get the same
        with self._lock:
            if item_id not in self._items:
                self._items[item_id] = entry
                self._bytes += len(entry[0])
            while self._items and (len(self._items) > self.max_items or self._bytes > self.max_bytes):
                _, (data, _) = self._items.popitem(last=False)
                self._bytes -= len(data)
        return entry

    def _make(self, path: Path) -> Tuple[bytes, str]:
        if self._slots is None:
            return self._render(path)
        with self._slots:
            return self._render(path)

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


# ------------------------------------------------------------------------------------------------
# the app

def _validation_detail(exc: RequestValidationError) -> str:
    """FastAPI's list of errors as one line: ``k: Input should be less than or equal to 100``."""
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "form"))
        parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


# the Swagger UI files /docs needs, served from an installed package instead of a CDN
_SWAGGER_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}

_OFFLINE_DOCS = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>hybridhash - API docs</title></head>
<body><h1>hybridhash API</h1>
<p>The interactive Swagger UI needs its script files, which are not installed here
(<code>pip install fastapi-offline</code> provides them).</p>
<p>The API description is at <a href="{openapi}">{openapi}</a> (OpenAPI JSON).</p>
</body></html>
"""


def _swagger_assets() -> Optional[Path]:
    """The folder of locally installed Swagger UI files (from the fastapi-offline package), or None."""
    try:
        from importlib import resources

        folder = Path(str(resources.files("fastapi_offline") / "static"))
    except (ImportError, TypeError):
        return None
    return folder if all((folder / name).is_file() for name in _SWAGGER_FILES) else None


def create_app(retriever, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_k: int = DEFAULT_MAX_K, max_batch: int = DEFAULT_MAX_BATCH, thumb_size: int = THUMB_SIZE,
               thumb_cache_items: int = 4096, max_decodes: int = DEFAULT_MAX_DECODES,
               body_timeout: Optional[float] = DEFAULT_BODY_TIMEOUT) -> FastAPI:
    """The service for ``retriever`` (a :class:`~hybridhash.retrieval.Retriever` or the same shape).

    Args:
        retriever: has ``search(images, k) -> list[list[Hit]]``, ``collection`` (count, bits,
            path(id), served_path(id) or abspath(id)), ``bits``, ``count`` and ``model``.
        max_upload_bytes: the largest accepted upload (413 above it).
        max_pixels: the largest accepted image, width * height, checked before decoding (413); at most
            the retriever's own ``max_pixels``.
        max_k: the most results one search may ask for (422 above it).
        max_batch: the most queued queries run in one model forward.
        thumb_size: the longest side of a thumbnail, in pixels.
        thumb_cache_items: thumbnails kept in memory (also bounded to 64 MB).
        max_decodes: the most images (uploads and thumbnails) decoded at once; the others wait.
        body_timeout: seconds a request body may stall before the request gets 408 and its
            connection is closed (None: no limit).

    Thumbnails are made under the pixel limit the collection was encoded with (not the upload
    limit), so every item that has a code has a thumbnail.
    """
    if max_upload_bytes < 1 or max_pixels < 1 or max_k < 1 or max_decodes < 1:
        raise ValueError("max_upload_bytes, max_pixels, max_k and max_decodes must be positive")
    if body_timeout is not None and not body_timeout > 0:
        raise ValueError(f"body_timeout must be positive or None, got {body_timeout!r}")
    retriever_limit = getattr(retriever, "max_pixels", None)
    if retriever_limit is not None:  # the retriever refuses larger images anyway: say so up front
        max_pixels = min(max_pixels, int(retriever_limit))
    collection = retriever.collection
    batcher = SearchBatcher(retriever, max_batch=max_batch)
    decode_slots = threading.BoundedSemaphore(max_decodes)
    encoded_limit = getattr(collection, "manifest", {}).get("max_pixels", DEFAULT_MAX_PIXELS)
    thumbs = ThumbnailCache(size=thumb_size, max_items=thumb_cache_items, max_pixels=encoded_limit,
                            decode_slots=decode_slots)
    # the query's own preprocessing (to the model's small input) runs under the decode slot too,
    # so no full-size decoded image waits in the batcher's queue
    prepare = getattr(retriever, "prepare", None)
    model = getattr(retriever, "model", None)
    model_config = getattr(model, "config", None)
    health = {
        "status": "ok",
        "count": int(retriever.count),
        "bits": int(retriever.bits),
        "fingerprint": getattr(collection, "fingerprint", None) or getattr(model, "fingerprint", None),
        "model": getattr(model_config, "preset", None),
        "index": getattr(getattr(retriever, "index", None), "kind", None),
        "limits": {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "max_k": max_k},
    }
    swagger_assets = _swagger_assets()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(
        title="hybridhash",
        version=_version(),
        summary="Find the images of an indexed collection nearest to an uploaded one, by Hamming distance "
                "between HybridHash codes.",
        lifespan=lifespan,
        docs_url=None,  # served below from local files: FastAPI's own /docs and /redoc load a CDN
        redoc_url=None,
    )
    app.state.retriever = retriever
    app.state.batcher = batcher
    app.state.thumbnails = thumbs
    app.state.decode_slots = decode_slots
    app.add_middleware(BodyLimitMiddleware, limit=max_upload_bytes + _ENVELOPE_BYTES,
                       reported_limit=max_upload_bytes, timeout=body_timeout)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return JSONResponse({"detail": _validation_detail(exc)}, status_code=422)

    upload_errors = {
        400: {"model": Problem, "description": "empty upload"},
        408: {"model": Problem, "description": "the request body stalled"},
        413: {"model": Problem, "description": "upload or image too large"},
        415: {"model": Problem, "description": "not an image"},
        422: {"model": Problem, "description": "corrupt image, or k out of range"},
    }

    @app.post("/search", response_model=SearchResponse, responses=upload_errors, tags=["search"])
    def search(
        image: Annotated[UploadFile, File(description="the query image (any format PIL reads)")],
        k_form: Annotated[Optional[int], Form(alias="k", ge=1, le=max_k, description="results wanted")] = None,
        k_query: Annotated[Optional[int], Query(alias="k", ge=1, le=max_k, description="results wanted")] = None,
    ) -> dict:
        """The k items nearest to the uploaded image, nearest first (ties by id)."""
        start = time.perf_counter()
        k = k_form if k_form is not None else (k_query if k_query is not None else min(10, max_k))
        data = image.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise _TooLarge(max_upload_bytes)
        name = _display_name(image.filename)
        with decode_slots:  # bounds the full-size decoded images alive at once
            img = decode_upload(data, max_pixels, name=name)
            width, height = img.size
            try:
                query = prepare(img) if prepare is not None else img
            except DataError as err:
                raise HTTPException(422, str(err)) from None
            del img, data
        try:
            hits = batcher.search(query, k)
        except DataError as err:
            raise HTTPException(422, str(err)) from None
        results = []
        for hit in hits:
            d = hit.to_dict()
            d["url"] = f"/items/{hit.id}"
            d["thumbnail"] = f"/items/{hit.id}?thumb=1"
            results.append(d)
        took_ms = (time.perf_counter() - start) * 1e3
        log.debug("search %s %dx%d k=%d: %.1f ms", name, width, height, k, took_ms)
        return {"query": {"width": width, "height": height}, "k": k, "results": results,
                "took_ms": round(took_ms, 3)}

    @app.get("/items/{item_id}", responses={200: {"content": {"image/*": {}}, "description": "the image"},
                                            404: {"model": Problem, "description": "no such item"}},
             response_class=Response, tags=["items"])
    def item(item_id: int, thumb: Annotated[bool, Query(description="a small thumbnail instead")] = False):
        """The stored image of item ``item_id``, or its thumbnail (longest side ``thumb_size`` px)."""
        path = _item_path(collection, item_id)
        headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
        if thumb:
            try:
                data, media_type = thumbs.get(item_id, path)
            except (OSError, DataError, ValueError, SyntaxError) as err:
                log.warning("item %d: no thumbnail (%s)", item_id, _one_line(err))
                raise HTTPException(404, f"item {item_id}: its image cannot be read") from None
            return Response(data, media_type=media_type, headers=headers)
        media_type = _image_type(path)
        if media_type is None:
            raise HTTPException(404, f"item {item_id}: its image cannot be read")
        return FileResponse(path, media_type=media_type, headers=headers)

    @app.get("/health", response_model=Health, tags=["service"])
    def get_health() -> dict:
        """Liveness, the collection's size and code length, the limits uploads must keep, and counters
        (searches answered, model forwards run: their ratio is the batching achieved)."""
        return {**health, "stats": {"searches": batcher.queries, "forwards": batcher.batches,
                                    "thumbnails_cached": len(thumbs)}}

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request):
        root = request.scope.get("root_path", "")
        if swagger_assets is None:
            return HTMLResponse(_OFFLINE_DOCS.format(openapi=f"{root}/openapi.json"))
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json", title="hybridhash - API docs",
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/assets/favicon.png",
            # no spec validator badge: it would send the spec to an outside service
            swagger_ui_parameters={"validatorUrl": None})

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def docs_asset(name: str):
        if swagger_assets is None or name not in _SWAGGER_FILES:
            raise HTTPException(404, f"no docs asset {name!r}")
        return FileResponse(swagger_assets / name, media_type=_SWAGGER_FILES[name],
                            headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _item_path(collection, item_id: int) -> Path:
    """The file of item ``item_id`` (its listed path, read through links; see Collection.served_path), or a 404."""
    if not 0 <= item_id < collection.count:
        raise HTTPException(404, f"no item {item_id}: ids run from 0 to {collection.count - 1}")
    try:
        resolve = getattr(collection, "served_path", None) or collection.abspath  # abspath: an older collection shape
        path = Path(resolve(item_id))
    except DataError as err:
        log.warning("refused to serve %s", err)
        raise HTTPException(404, f"item {item_id}: not served (its path leaves the image root, or its link "
                                 f"no longer leads to the file that was encoded)") from None
    if not path.is_file():
        raise HTTPException(404, f"item {item_id}: its image file is missing")
    return path


def _image_type(path: Path) -> Optional[str]:
    """The MIME type from the file's own header (not its name); None for a file that is no image."""
    try:
        with Image.open(path) as img:
            return Image.MIME.get(img.format or "", "application/octet-stream")
    except Exception:  # unreadable or not an image: never served
        return None


def _display_name(filename: Optional[str]) -> str:
    name = (filename or "upload").replace("\n", " ").replace("\r", " ").strip() or "upload"
    return name if len(name) <= 80 else name[:77] + "..."


def _version() -> str:
    from .. import __version__

    return __version__
