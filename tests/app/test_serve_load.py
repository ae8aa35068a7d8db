"""A bounded load test: 8 concurrent clients, 50 searches each, against a real server on loopback.
Every request must succeed and return what the same query returned alone."""
from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from hybridhash.retrieval import Retriever
from hybridhash.app.serve import BackgroundServer, create_app


CLIENTS = 8
PER_CLIENT = 50
K = 10


@pytest.fixture(scope="module")
def served(serve_collection):
    built = serve_collection
    app = create_app(Retriever.open(built["codes"]))
    with BackgroundServer(app) as server:
        yield built, app, server


def test_load_every_request_succeeds(served, record_property):
    built, app, server = served
    queries = [(built["images"] / built["paths"][3 * c]).read_bytes() for c in range(CLIENTS)]
    with httpx.Client(base_url=server.url, timeout=60) as c:
        reference = [c.post("/search", files={"image": ("q.png", q)}, data={"k": str(K)}).json()["results"]
                     for q in queries]
    latencies = [[] for _ in range(CLIENTS)]
    failures = []
    start_line = threading.Barrier(CLIENTS)

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            start_line.wait()
            for _ in range(PER_CLIENT):
                t0 = time.perf_counter()
                try:
                    r = c.post("/search", files={"image": (f"q{i}.png", queries[i])}, data={"k": str(K)})
                except httpx.HTTPError as err:
                    failures.append(f"client {i}: {type(err).__name__}: {err}")
                    continue
                latencies[i].append(time.perf_counter() - t0)
                if r.status_code != 200:
                    failures.append(f"client {i}: HTTP {r.status_code} {r.text[:200]}")
                elif r.json()["results"] != reference[i]:
                    failures.append(f"client {i}: results differ from the same query alone")

    batches0, queries0 = app.state.batcher.batches, app.state.batcher.queries
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0

    assert failures == []
    ms = np.array([x for per in latencies for x in per]) * 1e3
    assert ms.size == CLIENTS * PER_CLIENT
    forwards = app.state.batcher.batches - batches0
    assert app.state.batcher.queries - queries0 == CLIENTS * PER_CLIENT
    p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
    for name, value in (("p50_ms", p50), ("p99_ms", p99), ("requests_per_s", ms.size / wall),
                        ("queries_per_forward", ms.size / forwards)):
        record_property(name, round(float(value), 2))
    print(f"\nload: {ms.size} searches by {CLIENTS} clients in {wall:.2f} s ({ms.size / wall:.0f}/s), "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, {ms.size / forwards:.2f} queries per model forward")
