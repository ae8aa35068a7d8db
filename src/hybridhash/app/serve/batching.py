"""Batching concurrent searches of the service: one thread runs every model forward, coalescing the
queries that queue up meanwhile."""
import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any, List, Optional, Tuple

from PIL import Image

from ...limits import MAX_BATCH

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = MAX_BATCH


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
