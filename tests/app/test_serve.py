"""The HTTP service against a real uvicorn server on loopback, over a real encoded and indexed
collection: search results equal a brute-force ranking of the model's codes, limits answer 4xx with
a reason, items are served byte for byte and nothing outside the collection is."""
from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import httpx
import numpy as np
import pytest
from PIL import Image

from hybridhash.app import cli
from hybridhash.collection import write_paths
from hybridhash.retrieval import Retriever
from hybridhash.app.serve import BackgroundServer, create_app

from tests.helpers.collections import BITS, hamming_ranking, png_bytes, png_claiming
from tests.helpers.serving import start_serve

MAX_UPLOAD = 256 * 1024
MAX_PIXELS = 1_000_000
MAX_K = 50  # above the collection's 24 items: k may exceed the collection


@pytest.fixture(scope="module")
def built(serve_collection):
    return serve_collection


@pytest.fixture(scope="module")
def retriever(built):
    return Retriever.open(built["codes"])


@pytest.fixture(scope="module")
def app(retriever):
    return create_app(retriever, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, max_k=MAX_K)


@pytest.fixture(scope="module")
def server(app):
    with BackgroundServer(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def upload(client, data: bytes, k=None, name="query.png", query=None):
    form = {} if k is None else {"k": str(k)}
    return client.post("/search" + (f"?{query}" if query else ""), files={"image": (name, data, "image/png")},
                       data=form)


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (httpx would normalise dot segments away)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# health, docs, page

def test_health(client, built):
    h = client.get("/health").json()
    manifest = json.loads((built["codes"] / "manifest.json").read_text())
    assert h["status"] == "ok"
    assert h["count"] == len(built["paths"]) == 24
    assert h["bits"] == BITS
    assert h["fingerprint"] == manifest["fingerprint"]
    assert h["model"] == "hybridhash_cpu"
    assert h["limits"] == {"max_upload_bytes": MAX_UPLOAD, "max_pixels": MAX_PIXELS, "max_k": MAX_K}
    before = h["stats"]["searches"]
    upload(client, (built["images"] / built["paths"][0]).read_bytes(), k=1)
    assert client.get("/health").json()["stats"]["searches"] == before + 1


def test_openapi_lists_the_routes(client):
    spec = client.get("/openapi.json").json()
    assert "post" in spec["paths"]["/search"]
    assert "get" in spec["paths"]["/items/{item_id}"]
    assert "get" in spec["paths"]["/health"]
    r = client.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()


def test_page_and_its_files_are_local(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        a = client.get(asset)
        assert a.status_code == 200 and kind in a.headers["content-type"]
    # shipped as package data, and no file of the page names another host
    static = resources.files("hybridhash.app.serve") / "static"
    for name in ("index.html", "app.js", "style.css"):
        text = (static / name).read_text()
        assert "http://" not in text and "https://" not in text and "src=\"//" not in text, name


# --------------------------------------------------------------------------------------------
# search

@pytest.mark.parametrize("item", [0, 7, 13])  # a 48x40 PNG, a JPEG, a 32x32 PNG
def test_a_collection_image_finds_itself_at_distance_zero(client, built, item):
    path = built["images"] / built["paths"][item]
    r = upload(client, path.read_bytes(), k=5, name=path.name)
    assert r.status_code == 200, r.text
    body = r.json()
    with Image.open(path) as img:
        assert body["query"] == {"width": img.width, "height": img.height}
    assert body["k"] == 5 and len(body["results"]) == 5
    hits = body["results"]
    assert hits[0]["distance"] == 0
    assert item in [h["id"] for h in hits if h["distance"] == 0]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    for h in hits:
        assert h["path"] == built["paths"][h["id"]]
        assert h["label"] == h["path"].split("/")[0]  # the class folder
        assert h["url"] == f"/items/{h['id']}" and h["thumbnail"] == f"/items/{h['id']}?thumb=1"
    assert body["took_ms"] > 0


def test_search_equals_brute_force_over_the_stored_codes(client, built, retriever):
    path = built["images"] / built["paths"][10]
    code = np.packbits(retriever.encode_images([path])[0] > 0)  # (bits/8,)
    stored = np.load(built["codes"] / "codes.npy")  # (n, bits/8)
    expected = hamming_ranking(code, stored, MAX_K)  # all 24: k exceeds the collection
    r = upload(client, path.read_bytes(), k=MAX_K)
    got = [(h["distance"], h["id"]) for h in r.json()["results"]]
    assert got == expected and len(got) == len(built["paths"])


def test_concurrent_searches_with_different_k_each_get_their_own(client, built):
    """Concurrent queries share model forwards; each must still get exactly its own k results."""
    data = [(built["images"] / built["paths"][i]).read_bytes() for i in range(8)]
    reference = {i: upload(client, data[i], k=MAX_K).json()["results"] for i in range(8)}
    jobs = [(i % 8, 1 + i % 13) for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: upload(client, data[job[0]], k=job[1]), jobs))
    for (i, k), r in zip(jobs, answers):
        assert r.status_code == 200
        assert r.json()["results"] == reference[i][:k]


def test_one_failing_query_does_not_fail_its_batch(built):
    from concurrent.futures import Future

    from hybridhash.errors import DataError
    from hybridhash.app.serve import SearchBatcher

    retriever = Retriever.open(built["codes"], max_pixels=1500)  # 32x32 passes, 48x40 does not
    batcher = SearchBatcher(retriever)
    with Image.open(built["images"] / built["paths"][1]) as img:
        good = img.convert("RGB")
    bad = Image.new("RGB", (48, 40))
    jobs = [(good, 3, Future()), (bad, 3, Future()), (good, 1, Future())]
    batcher._run(jobs)  # the batch the thread would run
    assert [h.id for h in jobs[0][2].result()][:1] == [h.id for h in jobs[2][2].result()]
    assert len(jobs[0][2].result()) == 3 and jobs[0][2].result()[0].distance == 0
    assert isinstance(jobs[1][2].exception(), DataError)


def test_k_defaults_and_bounds(client, built):
    data = (built["images"] / built["paths"][3]).read_bytes()
    assert len(upload(client, data).json()["results"]) == 10
    assert len(upload(client, data, k=1).json()["results"]) == 1
    assert len(upload(client, data, query="k=3").json()["results"]) == 3
    for bad in (0, -1, MAX_K + 1, "abc"):
        r = upload(client, data, k=bad)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"].startswith("k: ")
    r = upload(client, data, query=f"k={MAX_K + 1}")
    assert r.status_code == 422 and "k" in r.json()["detail"]


def _truncated_png(built) -> bytes:
    data = (built["images"] / built["paths"][1]).read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("case, status, reason", [
    ("empty", 400, "empty"),
    ("text", 415, "not an image"),
    ("truncated", 422, "truncated or corrupt"),
    ("bad header", 422, "corrupt"),
    ("bomb header", 413, "2000x2000 = 4000000 pixels is over the limit of 1000000"),
    ("huge bomb header", 413, "more pixels than the limit"),
])
def test_bad_uploads_get_4xx_with_a_reason(client, built, case, status, reason):
    payload = {
        "empty": b"",
        "text": b"just some words, no picture\n",
        "truncated": _truncated_png(built),
        # a PNG signature, then an IHDR chunk of the wrong length
        "bad header": b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x05IHDR" + b"\x00" * 16,
        "bomb header": png_claiming(2000, 2000),  # 70 bytes that claim 4 megapixels
        "huge bomb header": png_claiming(30000, 30000),  # beyond even PIL's own limit
    }[case]
    r = upload(client, payload, name="bad.png")
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]
    assert "bad.png" in r.json()["detail"]  # the message names the upload


def test_a_real_image_over_the_pixel_limit_is_refused(client):
    big = png_bytes(Image.new("L", (1200, 1000)))  # 1.2 megapixels, a few kB
    r = upload(client, big)
    assert r.status_code == 413 and "1200x1000" in r.json()["detail"]


def test_missing_image_field(client):
    r = client.post("/search", data={"k": "3"})
    assert r.status_code == 422 and "image" in r.json()["detail"]


def test_oversized_uploads_get_413(client, built):
    rng = np.random.default_rng(0)
    just_over = rng.bytes(MAX_UPLOAD + 1)  # within the multipart allowance: the endpoint refuses it
    far_over = rng.bytes(4 * MAX_UPLOAD)  # refused from its Content-Length, before it is buffered
    for data in (just_over, far_over):
        r = upload(client, data)
        assert r.status_code == 413, r.text
        assert "upload too large" in r.json()["detail"] and "256 KB" in r.json()["detail"]

    # chunked (no Content-Length): counted as it arrives
    boundary = "hybridhashboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()

    def chunks():
        yield head
        for i in range(0, len(far_over), 64 * 1024):
            yield far_over[i:i + 64 * 1024]
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/search", content=chunks(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "upload too large" in r.json()["detail"]
    # the service is fine afterwards
    ok = upload(client, (built["images"] / built["paths"][0]).read_bytes(), k=2)
    assert ok.status_code == 200 and ok.json()["results"][0]["distance"] == 0


# --------------------------------------------------------------------------------------------
# items

@pytest.mark.parametrize("item", [0, 7, 23])
def test_item_serves_the_stored_file(client, built, item):
    path = built["images"] / built["paths"][item]
    r = client.get(f"/items/{item}")
    assert r.status_code == 200
    assert r.content == path.read_bytes()
    assert r.headers["content-type"] == ("image/jpeg" if path.suffix == ".jpg" else "image/png")
    assert r.headers["x-content-type-options"] == "nosniff"


def test_thumbnail_is_a_small_image_and_cached(client, app, built):
    thumbs = app.state.thumbnails
    r = client.get("/items/2?thumb=1")
    assert r.status_code == 200 and r.headers["content-type"] in ("image/png", "image/jpeg")
    hits = thumbs.hits
    with Image.open(io.BytesIO(r.content)) as t, Image.open(built["images"] / built["paths"][2]) as orig:
        assert max(t.size) <= 256
        # a 32 px image is not enlarged, and a small thumbnail is lossless PNG: the same pixels
        assert t.size == orig.size
        assert np.array_equal(np.asarray(t.convert("RGB")), np.asarray(orig.convert("RGB")))
    again = client.get("/items/2?thumb=1")
    assert again.content == r.content and thumbs.hits == hits + 1


def test_thumbnail_of_a_large_image_is_bounded(tmp_path):
    from hybridhash.app.serve import ThumbnailCache

    src = tmp_path / "big.jpg"
    Image.new("RGB", (1000, 600), (200, 30, 30)).save(src)
    cache = ThumbnailCache(size=128, max_items=2)
    data, media = cache.get(0, src)
    with Image.open(io.BytesIO(data)) as t:
        assert media == "image/jpeg" and t.size == (128, 77)
    for i in (1, 2, 3):  # the bound evicts the least recently used
        cache.get(i, src)
    assert len(cache) == 2


@pytest.mark.parametrize("item", ["24", "1000000", "-1", "99999999999999999999"])
def test_unknown_item_is_404(client, item):
    r = client.get(f"/items/{item}")
    assert r.status_code == 404 and "no item" in r.json()["detail"]


def test_non_numeric_item_is_422(client):
    assert client.get("/items/abc").status_code == 422


@pytest.mark.parametrize("path", [
    "/items/..%2f..%2fetc%2fpasswd",
    "/items/../../etc/passwd",
    "/items/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/items/0/../../../../etc/passwd",
    "/items/0%2f..%2f..%2f..%2fetc%2fpasswd",
    "/items/..%2fsecret.txt",
    "/static/../../../../../../etc/passwd",
    "/static/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
])
def test_path_traversal_serves_nothing(server, built, path):
    secret = built["images"].parent / "secret.txt"
    secret.write_text("TOP-SECRET-TOKEN\n")
    status, body = raw_get(server.url, path)
    assert status in (400, 404, 422), (path, status)
    assert b"root:" not in body and b"TOP-SECRET-TOKEN" not in body


def test_paths_leaving_the_image_root_are_not_served(built, tmp_path):
    """A collection whose stored paths point outside its image root (edited, or a symlink):
    the service refuses those items and still serves the others."""
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(outside)
    codes = tmp_path / "codes"
    shutil.copytree(built["codes"], codes)
    images = tmp_path / "images"
    shutil.copytree(built["images"], images)
    link = images / "circles" / "link.png"
    os.symlink(outside, link)
    paths = list(built["paths"])
    paths[0] = "../outside.png"
    paths[1] = "circles/link.png"
    write_paths(codes, paths)
    retriever = Retriever.open(codes, root=images)
    with BackgroundServer(create_app(retriever)) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        for item in (0, 1):
            for suffix in ("", "?thumb=1"):
                r = c.get(f"/items/{item}{suffix}")
                assert r.status_code == 404, (item, suffix)
                assert r.content != outside.read_bytes()
        assert c.get("/items/2").content == (images / paths[2]).read_bytes()


# --------------------------------------------------------------------------------------------
# the command

def test_serve_command_rejects_bad_options(built, capsys):
    assert cli.main(["serve", "--collection", str(built["codes"]), "--port", "70000"]) == 1
    assert "--port" in capsys.readouterr().err
    assert cli.main(["serve", "--collection", str(built["codes"]), "--max-upload-mb", "0"]) == 1
    assert "--max-upload-mb" in capsys.readouterr().err
    assert cli.main(["serve", "--collection", str(built["codes"]), "--follow", "-1"]) == 1
    assert "--follow" in capsys.readouterr().err
    assert cli.main(["serve", "--collection", str(built["codes"].parent / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_serve_command_binds_loopback_and_prints_the_url(built, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc, lines_q = start_serve(["--collection", built["codes"], "--port", "0", "--log-level", "warning"],
                                tmp_path / "stderr.txt", env=env)  # stderr to a file, not a pipe nobody drains
    try:
        lines = [lines_q.get(timeout=120), lines_q.get(timeout=120)]
        assert lines[0].startswith("serving 24 images (32-bit codes"), lines
        assert lines[0].rstrip().endswith("(generation 0, following its updates every 1 s)"), lines
        url = lines[1].split()[1].rstrip("/")
        assert url.startswith("http://127.0.0.1:"), lines
        deadline = time.monotonic() + 60
        while True:
            try:
                h = httpx.get(url + "/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "stderr.txt").read_text()
                time.sleep(0.1)
        assert h.json()["count"] == 24 and h.json()["generation"]["follow_interval"] == 1.0
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
