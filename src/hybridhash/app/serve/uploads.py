"""Request and upload limits of the service: a bound on the requests answered at once and a
body-size and stall guard, both in front of the app, and the decode of an uploaded image with its
error types mapped to HTTP statuses."""
import asyncio
import logging
from typing import Optional

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from PIL import Image

from ...data.images import CorruptImageError, NotAnImageError, TooManyPixelsError, open_image
from ...errors import DataError
from ...limits import BODY_TIMEOUT

log = logging.getLogger(__name__)

DEFAULT_BODY_TIMEOUT = BODY_TIMEOUT
# room for the multipart envelope and the ``k`` field around an upload of the maximum size
ENVELOPE_BYTES = 64 * 2**10
# a rejected body is read to its end (up to this much) so the client sees the 413, not a reset
_DRAIN_BYTES = 64 * 2**20


class TooLarge(HTTPException):
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


async def _receive_within(receive, timeout: Optional[float]):
    """The next message, or _Stalled when none comes within ``timeout`` seconds (None: no limit)."""
    if timeout is None:
        return await receive()
    try:
        return await asyncio.wait_for(receive(), timeout)
    except asyncio.TimeoutError:
        raise _Stalled(timeout) from None


async def drain_body(receive, seen: int, limit: int, timeout: Optional[float]) -> None:
    """Read and drop the rest of a request body (until ``limit`` bytes in all, or a stall), so a
    client still sending receives the refusal instead of a connection reset."""
    while seen <= limit:
        try:
            message = await _receive_within(receive, timeout)
        except _Stalled:  # the refusal is sent all the same, and the connection closed
            return
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class RequestLimitMiddleware:
    """ASGI middleware: at most ``limit`` HTTP requests are answered at once; one more gets 503
    with ``Retry-After`` before its body is buffered or any work is queued for it.

    Each request in progress holds a worker thread, sockets and a spooled upload; this bounds them
    (and the wait behind the decoders) whatever the number of clients.
    """

    def __init__(self, app, limit: int, retry_after: int = 1, drain: int = _DRAIN_BYTES,
                 timeout: Optional[float] = DEFAULT_BODY_TIMEOUT):
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.app, self.limit, self.retry_after, self.drain, self.timeout = app, limit, retry_after, drain, timeout
        self.active = 0  # changed on the event loop only: no lock
        self.refused = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            self.refused += 1
            await drain_body(receive, 0, self.drain, self.timeout)
            response = JSONResponse(
                {"detail": f"busy: {self.limit} requests are being answered; retry in {self.retry_after} s"},
                status_code=503, headers={"Retry-After": str(self.retry_after)})
            return await response(scope, receive, send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


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
        return await _receive_within(receive, self.timeout)

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
                    raise TooLarge(self.reported_limit)
            return message

        await self.app(scope, limited_receive, send)

    async def _drain(self, receive, seen: int) -> None:
        await drain_body(receive, seen, self.drain, self.timeout)

    async def _reject(self, scope, receive, send) -> None:
        response = JSONResponse({"detail": TooLarge(self.reported_limit).detail}, status_code=413)
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
