"""Where the service decodes images, and how their memory goes back to the system.

Decoding a large image allocates hundreds of MB. glibc's malloc gives each thread that allocates
under contention an arena of its own and keeps what is freed there for reuse, so decodes spread
over a web server's many request threads left GBs resident after the load had passed. Here every
decode runs on one of a fixed few threads (:class:`DecodePool`), the process uses few arenas
(:func:`limit_arenas`), and freed memory is handed back whenever the decoders go idle
(:func:`release_memory`). Elsewhere than glibc the last two do nothing.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# mallopt's parameter number for the most arenas (glibc malloc.h)
_M_ARENA_MAX = -8
# arenas when the environment does not say (MALLOC_ARENA_MAX): the main one and one for the threads
ARENAS = 2


def _libc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # glibc's; absent from musl and macOS
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas for the threads created from now on, unless ``MALLOC_ARENA_MAX``
    already says how many (the person's choice stands). True when the cap was set here."""
    if _LIBC is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, int(arenas)))


def release_memory() -> None:
    """Give the pages malloc holds free back to the system (``malloc_trim(0)``: every arena)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class DecodePool:
    """``run(fn, *args)``: ``fn(*args)`` on one of ``workers`` decoding threads; the caller waits.

    At most ``workers`` images are decoded at once, always on the same threads (so in the same few
    malloc arenas); the rest wait their turn in order. When the last queued job finishes, freed
    memory is released to the system. ``close()`` stops the threads; a later ``run`` starts them
    again (an app may be started more than once, as tests do).
    """

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._pool: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()
        self._pending = 0

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="hybridhash-decode")
            self._pending += 1
            future = self._pool.submit(self._job, fn, args)
        return future.result()

    def _job(self, fn: Callable[..., T], args: tuple) -> T:
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._pending -= 1
                idle = self._pending == 0
            if idle:
                release_memory()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)  # queued jobs still run: their callers are waiting
