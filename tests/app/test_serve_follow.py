"""The service following a living collection: a real uvicorn server answers a continuous stream of
searches and item requests while ``hybridhash encode`` updates its collection in another process
(images added, removed and rewritten), switches generation without one failed request, then answers
as a fresh Retriever on the new generation (and as a brute-force ranking of its codes); /health
names the generation served; removed items are 404 (also when the file goes while the request is
answered); ids of unchanged images keep their meaning; a new generation of another model is not
switched to and the old one is still served."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from hybridhash.app.encode import encode_collection
from hybridhash.app.serve import BackgroundServer, create_app, items
from hybridhash.retrieval import Retriever
from tests.helpers.collections import build_collection, hamming_ranking
from tests.helpers.encoding import save_model
from tests.helpers.living import change, digit_png, ids_by_path

pytestmark = pytest.mark.usefixtures("one_thread")

K = 30  # above the collection's size: every item is ranked, no cut among ties
FOLLOW = 0.1  # seconds between the service's checks
SRC = Path(__file__).resolve().parents[2] / "src"


def _search(client, data: bytes) -> httpx.Response:
    return client.post("/search", files={"image": ("q.png", data, "image/png")}, data={"k": str(K)})


def _answer(results) -> list:
    return [(h["id"], h["distance"], h["path"], h["label"]) for h in results]


def _retriever_answer(retriever, data: bytes) -> list:
    return [(h.id, h.distance, h.path, h.label) for h in retriever.search([data], k=K)[0]]


def _brute_force(retriever, data: bytes) -> list:
    """The ranking of the generation's codes by Hamming distance to the query's code, ties by id,
    from the rows (kept in increasing id order) and a per-item count of differing bits."""
    col = retriever.collection
    query = np.packbits(retriever.encode_images([data])[0] > 0)  # (bits/8,)
    ids = col.item_ids
    return [(int(ids[r]), d, col.path(int(ids[r])), col.label(int(ids[r])))
            for d, r in hamming_ranking(query, np.asarray(col.codes), col.count)]


def _encode_process(built) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "hybridhash.app.cli", "encode", "--checkpoint",
                             str(built["checkpoint"]), "--images", str(built["images"]), "--collection",
                             str(built["codes"]), "--workers", "0", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_the_service_follows_an_update_without_one_failed_request(tmp_path):
    built = build_collection(tmp_path)
    images, paths = built["images"], built["paths"]
    before = Retriever.open(built["codes"])
    old_ids = ids_by_path(before.collection)
    removed, rewritten = [paths[1], paths[9]], paths[2]
    added = ["squares/new_0.png", "stripes/new_1.png", "circles/new_2.png"]
    queries = [(images / p).read_bytes() for p in (paths[0], paths[1], paths[12], paths[20])]
    old_answers = [_retriever_answer(before, q) for q in queries]

    app = create_app(Retriever.open(built["codes"]), max_k=K, follow_interval=FOLLOW)
    log, failures, stop = [], [], threading.Event()
    item_ids = sorted(old_ids.values())

    def client() -> None:
        """Searches (each query in turn) and item requests, one at a time, until told to stop."""
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for n in range(5000):  # bounded, whatever happens
                if stop.is_set():
                    return
                r = _search(c, queries[n % len(queries)])
                if r.status_code != 200:
                    failures.append(("search", r.status_code, r.text))
                else:
                    log.append((time.monotonic(), n % len(queries), _answer(r.json()["results"])))
                item = item_ids[n % len(item_ids)]
                t = c.get(f"/items/{item}" + ("?thumb=1" if n % 2 else ""))
                gone = {old_ids[p] for p in [*removed, rewritten]}
                if t.status_code != 200 and not (t.status_code == 404 and item in gone):
                    failures.append(("item", item, t.status_code, t.text))

    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        h0 = c.get("/health").json()
        assert h0["generation"]["number"] == 0 and h0["generation"]["count"] == h0["count"] == 24
        assert h0["generation"]["switches"] == 0 and h0["generation"]["follow_interval"] == FOLLOW
        # the folder changes: 2 images deleted, 1 rewritten, 3 new
        for p in removed:
            (images / p).unlink()
        change(images / rewritten, 500)
        for i, p in enumerate(added):
            digit_png(images / p, 700 + i)
        queries += [(images / p).read_bytes() for p in (added[0], rewritten)]
        old_answers += [_retriever_answer(before, q) for q in queries[4:]]

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        while len(log) < 10 and thread.is_alive():
            time.sleep(0.01)
        started = time.monotonic()
        proc = _encode_process(built)
        out, _ = proc.communicate(timeout=180)
        ended = time.monotonic()
        assert proc.returncode == 0, out
        assert "added 3, removed 2, changed 1" in out, out
        deadline = time.monotonic() + 20
        while c.get("/health").json()["generation"]["number"] != 1:
            assert time.monotonic() < deadline, "the service did not switch to generation 1"
            time.sleep(0.05)
        switched = len(log)
        while len(log) < switched + 2 * len(queries) and thread.is_alive():
            time.sleep(0.01)
        stop.set()
        thread.join(timeout=60)

        assert failures == []
        assert sum(started <= t <= ended for t, _, _ in log) > 0  # queries were answered while it ran
        fresh = Retriever.open(built["codes"])
        assert fresh.generation == 1 and fresh.count == 24 - 2 + 3
        new_answers = [_retriever_answer(fresh, q) for q in queries]
        assert new_answers == [_brute_force(fresh, q) for q in queries]
        assert old_answers[:4] == [_brute_force(before, q) for q in queries[:4]]
        assert any(new != old for new, old in zip(new_answers, old_answers))
        # each answer came whole from one generation, the old one until the switch, the new one after
        seen_new = False
        for _, q, answer in log:
            assert answer in (old_answers[q], new_answers[q]), q
            if answer != old_answers[q]:
                seen_new = True
            assert not (seen_new and answer != new_answers[q]), "an old answer after a new one"
        assert [a for _, q, a in log[-len(queries):]] == [new_answers[q] for _, q, _ in log[-len(queries):]]
        assert [_answer(_search(c, q).json()["results"]) for q in queries] == new_answers

        h1 = c.get("/health").json()
        assert h1["generation"]["number"] == 1 and h1["generation"]["count"] == h1["count"] == 25
        assert h1["generation"]["switches"] == 1 and h1["generation"]["since"] > h0["generation"]["since"]
        assert h1["generation"]["error"] is None
        # removed and rewritten images: their old ids are gone, with a one-line reason
        for p in [*removed, rewritten]:
            for suffix in ("", "?thumb=1"):
                r = c.get(f"/items/{old_ids[p]}{suffix}")
                assert r.status_code == 404 and "no item" in r.json()["detail"], (p, suffix)
                assert "\n" not in r.json()["detail"]
        # unchanged images keep their ids and files; new ones (and the rewrite) have ids above all before
        new_ids = ids_by_path(fresh.collection)
        kept = [p for p in paths if p not in removed and p != rewritten]
        assert {p: new_ids[p] for p in kept} == {p: old_ids[p] for p in kept}
        assert min(new_ids[p] for p in [*added, rewritten]) >= before.collection.next_id
        for p in [*kept[::5], *added, rewritten]:
            assert c.get(f"/items/{new_ids[p]}").content == (images / p).read_bytes(), p
            assert c.get(f"/items/{new_ids[p]}?thumb=1").status_code == 200, p


def _copy(serve_collection, tmp_path) -> dict:
    """A copy of the shared collection whose files a test may delete (its paths start at the copy)."""
    import shutil

    shutil.copytree(serve_collection["images"], tmp_path / "images")
    shutil.copytree(serve_collection["codes"], tmp_path / "codes")
    return {**serve_collection, "images": tmp_path / "images", "codes": tmp_path / "codes"}


@pytest.mark.parametrize("when", ["after the lookup", "after the open"])
def test_an_image_removed_while_its_request_is_answered_is_404_or_whole(serve_collection, tmp_path, monkeypatch,
                                                                       when):
    built = _copy(serve_collection, tmp_path)
    retriever = Retriever.open(built["codes"], root=built["images"])
    target = built["images"] / built["paths"][4]
    data = target.read_bytes()
    name = "item_path" if when == "after the lookup" else "_open_regular"
    real = getattr(items, name)

    def racing(*args):
        out = real(*args)
        if os.path.exists(target):
            target.unlink()  # an update switched and removed the file just now
        return out

    monkeypatch.setattr(items, name, racing)
    with TestClient(create_app(retriever), base_url="http://127.0.0.1") as c:
        r = c.get("/items/4")
        if when == "after the lookup":
            assert r.status_code == 404 and r.json()["detail"] == "item 4: its image file is missing"
            digit_png(target, 4)
            t = c.get("/items/4?thumb=1")  # the thumbnail is made from a file gone by then
            assert t.status_code == 404 and "\n" not in t.json()["detail"]
        else:  # opened before it went: sent whole, as it was
            assert r.status_code == 200 and r.content == data
            assert r.headers["content-length"] == str(len(data))


def test_a_generation_of_another_model_is_not_switched_to(serve_collection, tmp_path):
    built = _copy(serve_collection, tmp_path)
    retriever = Retriever.open(built["codes"], root=built["images"])
    query = (built["images"] / built["paths"][3]).read_bytes()
    app = create_app(retriever, follow_interval=FOLLOW)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        want = _answer(_search(c, query).json()["results"])
        other = save_model(tmp_path / "other", seed=1)
        encode_collection(built["images"], built["codes"], other, resume=False, workers=0, progress=False)
        deadline = time.monotonic() + 20
        while c.get("/health").json()["generation"]["error"] is None:
            assert time.monotonic() < deadline, "the failed switch was not reported"
            time.sleep(0.05)
        h = c.get("/health").json()
        assert "encoded by model" in h["generation"]["error"] and h["generation"]["switches"] == 0
        assert h["count"] == 24 and retriever.collection.fingerprint == h["fingerprint"]
        assert _answer(_search(c, query).json()["results"]) == want  # the old generation, still served
        assert c.get("/items/3").status_code == 200


def test_the_follower_checks_by_stat_and_backs_off_while_switching_fails(caplog):
    """With nothing new it never refreshes; while refreshing fails it tries at doubling intervals,
    logs the reason once and reports it; once it succeeds the new generation is reported."""
    from hybridhash.app.serve.follow import GenerationFollower
    from hybridhash.errors import IndexMismatchError

    class Collection:
        directory, count = Path("codes"), 5

        def __init__(self, generation, current=True):
            self.generation, self.current = generation, current

        def is_current(self):
            return self.current

    class Fake:
        def __init__(self):
            self.collection, self.calls, self.fail = Collection(0), 0, True

        def refresh(self):
            self.calls += 1
            if self.fail:
                raise IndexMismatchError("codes was encoded by model b, the model is model a")
            self.collection = Collection(1)
            return True

    fake = Fake()
    follower = GenerationFollower(fake, 0.02).start()
    try:
        time.sleep(0.5)
        assert fake.calls == 0  # current: only the stat each time
        fake.collection.current = False
        time.sleep(1.0)
        # at 0.04, 0.12, 0.28, 0.6 s after it went stale (doubling), not every 0.02 s (50 times)
        assert 2 <= fake.calls <= 6, fake.calls
        status = follower.status()
        assert status["number"] == 0 and status["switches"] == 0 and "encoded by model b" in status["error"]
        assert sum("not switching" in r.getMessage() for r in caplog.records) == 1
        fake.fail = False
        deadline = time.monotonic() + 10
        while follower.status()["switches"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert follower.status()["number"] == 1 and follower.status()["error"] is None
    finally:
        follower.stop()
