"""The HTTP service: a FastAPI app over a :class:`~hybridhash.retrieval.Retriever`.

Routes::

    POST /search          multipart ``image`` (+ ``k``) -> the k nearest items as JSON
    GET  /items/{id}      the stored image of item ``id`` (``?thumb=1``: a small cached thumbnail)
    GET  /health          status, collection size, bits, model fingerprint, limits, the generation served
    GET  /                the web page (static files under /static, no external resource)
    GET  /docs, /openapi.json

Only requests whose Host header names this service (``allowed_hosts``: the loopback names by
default) are answered, and every response carries the same security headers (:mod:`.headers`).

Items are addressed by id only; a file is served only when the collection's own path check
(:meth:`~hybridhash.collection.Collection.served_path`) allows it (the listed file, inside the image root
or the very file encoded through a link) and it is an image.
Uploads are bounded in bytes (before they are buffered) and in pixels (before they are decoded);
images are decoded on ``max_decodes`` threads of their own (a small PNG can decode to hundreds of
MB; see :mod:`.decodes`), at most ``max_requests`` requests are answered at once (503 beyond), and
a client that stops sending its request body for ``body_timeout`` seconds gets 408 and a closed
connection. Images are decoded by :mod:`hybridhash.data.images`, the decoder the encoder uses,
under the project's one pixel limit; thumbnails too, so every encoded image has one.

The service follows its collection (:mod:`.follow`): an update by ``hybridhash encode`` is noticed
within ``follow_interval`` seconds and switched to between requests, with no restart; ``/health``
says which generation is served, and an item an update removed is a 404 (:mod:`.items`).
"""
# no ``from __future__ import annotations``: FastAPI must evaluate the endpoint annotations, whose
# bounds (``le=max_k``) are closure variables of create_app

import html
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, List, Optional, Sequence

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ...data.images import DEFAULT_MAX_PIXELS
from ...errors import ConfigError, DataError
from ...limits import FOLLOW_INTERVAL, K_CAP, MAX_DECODES, MAX_K, MAX_REQUESTS, MAX_UPLOAD_BYTES
from .batching import DEFAULT_MAX_BATCH, SearchBatcher
from .decodes import DecodePool
from .follow import GenerationFollower
from .headers import DOCS_PATH, LOOPBACK_HOSTS, SecurityHeadersMiddleware, host_pattern
from .items import image_response, thumbnail_response
from .thumbnails import THUMB_SIZE, ThumbnailCache
from .uploads import (DEFAULT_BODY_TIMEOUT, ENVELOPE_BYTES, BodyLimitMiddleware, RequestLimitMiddleware, TooLarge,
                      decode_upload)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_BYTES = MAX_UPLOAD_BYTES
# DEFAULT_MAX_PIXELS is the project's one pixel limit (hybridhash.limits), re-exported here
DEFAULT_MAX_K = MAX_K
DEFAULT_MAX_DECODES = MAX_DECODES
DEFAULT_MAX_REQUESTS = MAX_REQUESTS
DEFAULT_FOLLOW_INTERVAL = FOLLOW_INTERVAL


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


class Generation(BaseModel):
    number: int  # the generation of the collection served (0: as first encoded)
    count: int  # its items
    since: str  # when the service began answering from it (ISO 8601, UTC)
    switches: int  # generations switched to since the service started
    follow_interval: Optional[float]  # seconds between checks for a new one; None: not followed
    error: Optional[str]  # why the last switch to a newer generation failed, if it did


class Health(BaseModel):
    status: str
    count: int
    bits: int
    fingerprint: Optional[str]
    model: Optional[str]
    index: Optional[str]
    generation: Generation
    limits: dict
    stats: dict


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

# Swagger UI with no inline script: its start-up is static/docs.js, so the page's CSP allows
# scripts from this server only
_SWAGGER_DOCS = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1.0">
<link type="text/css" rel="stylesheet" href="{root}/docs/assets/swagger-ui.css">
<link rel="shortcut icon" href="{root}/docs/assets/favicon.png">
<title>hybridhash - API docs</title></head>
<body><div id="swagger-ui"></div>
<script src="{root}/docs/assets/swagger-ui-bundle.js"></script>
<script src="{root}/static/docs.js" data-openapi='{root}/openapi.json'></script>
</body></html>
"""

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
               body_timeout: Optional[float] = DEFAULT_BODY_TIMEOUT, max_requests: int = DEFAULT_MAX_REQUESTS,
               allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
               follow_interval: Optional[float] = DEFAULT_FOLLOW_INTERVAL) -> FastAPI:
    """The service for ``retriever`` (a :class:`~hybridhash.retrieval.Retriever` or the same shape).

    Args:
        retriever: has ``search(images, k) -> list[list[Hit]]``, ``collection`` (count, bits,
            path(id), served_path(id) or abspath(id)), ``bits``, ``count`` and ``model``.
        max_upload_bytes: the largest accepted upload (413 above it).
        max_pixels: the largest accepted image, width * height, checked before decoding (413); at most
            the retriever's own ``max_pixels``.
        max_k: the most results one search may ask for (422 above it), at most the index's cap.
        max_batch: the most queued queries run in one model forward.
        thumb_size: the longest side of a thumbnail, in pixels.
        thumb_cache_items: thumbnails kept in memory (also bounded to 64 MB).
        max_decodes: the threads decoding images (uploads and thumbnails); the others wait.
        body_timeout: seconds a request body may stall before the request gets 408 and its
            connection is closed (None: no limit).
        max_requests: the most requests answered at once; more get 503 with Retry-After.
        allowed_hosts: the Host header names answered (see :func:`.headers.allowed_hosts`); other
            requests get 400, so a web page that rebinds its own domain to this address cannot
            read the service.
        follow_interval: seconds between checks for a new generation of the collection, switched
            to between requests (:mod:`.follow`; while the app runs); None or 0: the generation
            opened is served until a restart.

    Thumbnails are made under the pixel limit the collection was encoded with (not the upload
    limit), so every item that has a code has a thumbnail.
    """
    if max_upload_bytes < 1 or max_pixels < 1 or max_k < 1 or max_decodes < 1 or max_requests < 1:
        raise ValueError("max_upload_bytes, max_pixels, max_k, max_decodes and max_requests must be positive")
    if max_k > K_CAP:
        raise ValueError(f"max_k must be at most {K_CAP}, got {max_k}")
    hosts = [host_pattern(h, "allowed host") for h in allowed_hosts]
    if body_timeout is not None and not body_timeout > 0:
        raise ValueError(f"body_timeout must be positive or None, got {body_timeout!r}")
    retriever_limit = getattr(retriever, "max_pixels", None)
    if retriever_limit is not None:  # the retriever refuses larger images anyway: say so up front
        max_pixels = min(max_pixels, int(retriever_limit))
    collection = retriever.collection  # the generation opened; requests take the served one each time
    batcher = SearchBatcher(retriever, max_batch=max_batch)
    decoder = DecodePool(max_decodes)
    encoded_limit = getattr(collection, "manifest", {}).get("max_pixels", DEFAULT_MAX_PIXELS)
    thumbs = ThumbnailCache(size=thumb_size, max_items=thumb_cache_items, max_pixels=encoded_limit,
                            decoder=decoder)
    # the query's own preprocessing (to the model's small input) runs on the decoding thread too,
    # so no full-size decoded image waits in the batcher's queue
    prepare = getattr(retriever, "prepare", None)
    model = getattr(retriever, "model", None)
    model_config = getattr(model, "config", None)
    health = {
        "status": "ok",
        "bits": int(retriever.bits),
        "fingerprint": getattr(collection, "fingerprint", None) or getattr(model, "fingerprint", None),
        "model": getattr(model_config, "preset", None),
        "limits": {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "max_k": max_k},
    }
    swagger_assets = _swagger_assets()

    def switched(new) -> None:  # a generation written with another pixel limit (--no-resume) thumbnails under it
        thumbs.max_pixels = getattr(new, "manifest", {}).get("max_pixels", DEFAULT_MAX_PIXELS)

    follower = GenerationFollower(retriever, follow_interval, on_switch=switched)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        follower.start()
        yield
        follower.stop()
        batcher.close()
        decoder.close()

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
    app.state.decoder = decoder
    app.state.follower = follower
    # the last added runs first: headers on every answer, then the Host check, then the bounds
    app.add_middleware(BodyLimitMiddleware, limit=max_upload_bytes + ENVELOPE_BYTES,
                       reported_limit=max_upload_bytes, timeout=body_timeout)
    app.add_middleware(RequestLimitMiddleware, limit=max_requests, timeout=body_timeout)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    app.add_middleware(SecurityHeadersMiddleware)

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

    def _decode_query(file, name: str):
        data = file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise TooLarge(max_upload_bytes)
        img = decode_upload(data, max_pixels, name=name)
        del data
        width, height = img.size
        try:
            return width, height, (prepare(img) if prepare is not None else img)
        except DataError as err:
            detail = str(err)
        del img  # not kept alive by the exception's traceback while the answer is sent
        raise HTTPException(422, detail)

    @app.post("/search", response_model=SearchResponse, responses=upload_errors, tags=["search"])
    def search(
        image: Annotated[UploadFile, File(description="the query image (any format PIL reads)")],
        k_form: Annotated[Optional[int], Form(alias="k", ge=1, le=max_k, description="results wanted")] = None,
        k_query: Annotated[Optional[int], Query(alias="k", ge=1, le=max_k, description="results wanted")] = None,
    ) -> dict:
        """The k items nearest to the uploaded image, nearest first (ties by id)."""
        start = time.perf_counter()
        k = k_form if k_form is not None else (k_query if k_query is not None else min(10, max_k))
        name = _display_name(image.filename)
        # read, decoded and prepared on a decoding thread: only max_decodes uploads are in memory
        # in full at once, the others wait spooled
        width, height, query = decoder.run(_decode_query, image.file, name)
        try:
            hits = batcher.search(query, k)
        except (DataError, ConfigError) as err:
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
        """The stored image of item ``item_id``, or its thumbnail (longest side ``thumb_size`` px), from
        the generation served now: 404 for an id it does not hold (an update removed it)."""
        collection = retriever.collection  # one generation for the whole request
        headers = {"Cache-Control": "public, max-age=3600"}
        if thumb:
            return thumbnail_response(collection, item_id, thumbs, headers)
        return image_response(collection, item_id, headers)

    @app.get("/health", response_model=Health, tags=["service"])
    def get_health() -> dict:
        """Liveness, the collection's size and code length, the generation served (its number, count,
        since when), the limits uploads must keep, and counters (searches answered, model forwards
        run: their ratio is the batching achieved)."""
        generation = follower.status()
        return {**health, "count": generation["count"], "generation": generation,
                "index": getattr(getattr(retriever, "index", None), "kind", None),
                "stats": {"searches": batcher.queries, "forwards": batcher.batches,
                          "thumbnails_cached": len(thumbs)}}

    @app.get(DOCS_PATH, include_in_schema=False)
    def docs(request: Request):
        root = html.escape(request.scope.get("root_path", ""))
        if swagger_assets is None:
            return HTMLResponse(_OFFLINE_DOCS.format(openapi=f"{root}/openapi.json"))
        return HTMLResponse(_SWAGGER_DOCS.format(root=root))

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def docs_asset(name: str):
        if swagger_assets is None or name not in _SWAGGER_FILES:
            raise HTTPException(404, f"no docs asset {name!r}")
        return FileResponse(swagger_assets / name, media_type=_SWAGGER_FILES[name],
                            headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _display_name(filename: Optional[str]) -> str:
    name = (filename or "upload").replace("\n", " ").replace("\r", " ").strip() or "upload"
    return name if len(name) <= 80 else name[:77] + "..."


def _version() -> str:
    from ... import __version__

    return __version__
