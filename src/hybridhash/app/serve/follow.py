"""The service following a living collection: a thread that notices a new generation (an update by
``hybridhash encode``) and switches the retriever to it between requests, without a restart.

The check is :meth:`~hybridhash.collection.Collection.is_current`, one ``stat`` of the manifest, made
every ``interval`` seconds on a thread of its own that sleeps in between (no request waits for it).
When the manifest names another generation, :meth:`~hybridhash.retrieval.Retriever.refresh` opens it
with its index on this thread and swaps the pair in one assignment: a search in flight finishes on
the generation it took, the next one gets the new one. A refresh that fails (a new generation of
another model, a generation removed while it was being opened by an update right behind it) keeps
the served generation, is logged once per distinct reason, and is tried again after a pause that
doubles up to :data:`MAX_RETRY` seconds, so a broken collection costs no more than that.
"""
from __future__ import annotations

import datetime
import logging
import threading
from typing import Any, Callable, Dict, Optional

from ...errors import one_line

log = logging.getLogger(__name__)

MAX_RETRY = 60.0  # seconds between attempts at most, while switching to a new generation fails


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class GenerationFollower:
    """Keeps ``retriever`` on its collection's current generation.

    Args:
        retriever: has ``refresh() -> bool`` and ``collection`` (``is_current()``, ``generation``,
            ``count``); one without ``refresh`` (a fixed retriever) is served as it is.
        interval: seconds between checks; None or 0 never checks (the generation opened is served).
        on_switch: called with the new collection after each switch, on the follower's thread.

    ``status()`` says what is served: the generation's number and count, since when (ISO 8601, UTC),
    how many switches so far, the interval, and the last failed switch's reason (None once one succeeds).
    """

    def __init__(self, retriever, interval: Optional[float], on_switch: Optional[Callable[[Any], None]] = None):
        if interval is not None and interval < 0:
            raise ValueError(f"interval must be positive, 0 or None, got {interval!r}")
        self.retriever = retriever
        can = callable(getattr(retriever, "refresh", None)) and hasattr(retriever.collection, "is_current")
        self.interval = interval if can and interval else None
        self.on_switch = on_switch
        self.since = _now()
        self.switches = 0
        self.error: Optional[str] = None
        self._wait = self.interval  # seconds until the next check: longer while switching fails
        self._lock = threading.Lock()  # one check at a time (the thread's, or a caller's)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def check(self) -> bool:
        """Check now and switch when there is a new generation; whether it switched."""
        with self._lock:
            try:
                switched = bool(self.retriever.refresh())
            except Exception as err:  # noqa: BLE001 - whatever it is, the served generation stays
                reason = one_line(err)
                if reason != self.error:
                    log.warning("not switching to the new generation of %s: %s; still serving generation %s",
                                self.retriever.collection.directory, reason, self.generation)
                self.error = reason
                if self.interval is not None:
                    self._wait = min(max(MAX_RETRY, self.interval), max(self._wait or self.interval, self.interval) * 2)
                return False
            self.error = None
            self._wait = self.interval
            if not switched:
                return False
            self.switches += 1
            self.since = _now()
            collection = self.retriever.collection
            log.info("serving generation %s of %s: %d items", self.generation, collection.directory,
                     collection.count)
            if self.on_switch is not None:
                self.on_switch(collection)
            return True

    @property
    def generation(self) -> int:
        return int(getattr(self.retriever.collection, "generation", 0) or 0)

    def status(self) -> Dict[str, Any]:
        collection = self.retriever.collection  # one generation for the whole answer
        return {"number": int(getattr(collection, "generation", 0) or 0), "count": int(collection.count),
                "since": self.since, "switches": self.switches, "follow_interval": self.interval,
                "error": self.error}

    def start(self) -> "GenerationFollower":
        """Start the checking thread (nothing when not following)."""
        if self.interval is not None and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="hybridhash-follow", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._wait):
            if not self.retriever.collection.is_current():
                self.check()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=30)
