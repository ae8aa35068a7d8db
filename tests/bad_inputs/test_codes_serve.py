"""Bad input for code lengths, search sizes, images and the service: each is refused at once with a
one-line reason (or an HTTP status), and nothing unbounded is allocated, decoded or held open."""
from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import hybridhash
from hybridhash.app import cli
from hybridhash.data import images as images_mod
from hybridhash.data.images import (DEFAULT_MAX_PIXELS, CorruptImageError, NotAnImageError,
                                    TooManyPixelsError, open_image)
from hybridhash.errors import ConfigError, HybridHashError
from hybridhash.index import EMPTY_ID, HashIndex
from hybridhash.limits import K_CAP
from hybridhash.retrieval import Hit
from hybridhash.app.serve import BackgroundServer, ThumbnailCache, create_app
from hybridhash.app.serve import app as app_mod
from hybridhash.app.serve import uploads as uploads_mod

from tests.helpers.collections import png_bytes, png_claiming

BITS_MESSAGE = "must be a multiple of 8 between 8 and 256, got {}"


# ----------------------------------------------------------------------------------------------
# B. code lengths


@pytest.mark.parametrize("bits", ["12", "7", "300", "0"])
def test_train_refuses_a_code_length_no_index_holds_before_any_work(bits, tmp_path, capsys, monkeypatch):
    import hybridhash.app.train.run as trainer

    def no_work(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(trainer.D, "init_distributed", no_work)
    monkeypatch.setattr(trainer, "load_run_protocol", no_work)
    out = tmp_path / "run"
    start = time.monotonic()
    assert cli.main(["train", "--bits", "16", bits, "--out", str(out), "--no-progress"]) == 1
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert err == f"error: --bits {BITS_MESSAGE.format(bits)}\n"
    assert not out.exists()


@pytest.mark.parametrize("bits", [12, 7, 300, 0, -8])
def test_models_refuse_a_code_length_no_index_holds(bits):
    with pytest.raises(ConfigError) as err:
        hybridhash.create_model("hybridhash_cpu", bits=bits)
    assert str(err.value) == "bits " + BITS_MESSAGE.format(bits)
    config = hybridhash.create_model("hybridhash_cpu", bits=16).config.to_dict()
    with pytest.raises(ConfigError, match="multiple of 8"):
        hybridhash.HybridHashConfig.from_dict({**config, "bits": bits})  # a checkpoint's config.json


def test_a_checkpoint_of_an_odd_code_length_is_refused(tmp_path):
    hybridhash.create_model("hybridhash_cpu", bits=16, depths=(1, 1, 1)).save_pretrained(str(tmp_path / "ck"))
    cfg_path = tmp_path / "ck" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["bits"] = cfg["config"]["bits"] = 12
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(HybridHashError, match="multiple of 8"):
        hybridhash.from_pretrained(tmp_path / "ck")


def test_the_edges_of_the_rule_build():
    for bits in (8, 256):
        model = hybridhash.create_model("hybridhash_cpu", bits=bits, depths=(1, 1, 1))
        assert model.bits == bits and HashIndex(bits).bits == bits


# ----------------------------------------------------------------------------------------------
# C. unbounded k


def test_index_refuses_k_beyond_the_cap_without_allocating():
    index = HashIndex(16)
    index.add(np.random.default_rng(0).integers(0, 256, (9, 2), dtype=np.uint8))
    q = np.zeros((3, 2), np.uint8)
    for k in (K_CAP + 1, 1_000_000_000, 10**30):
        tracemalloc.start()
        try:
            with pytest.raises(ConfigError, match=f"k must be a non-negative integer of at most {K_CAP}"):
                index.search(q, k)
            assert tracemalloc.get_traced_memory()[1] < 1 << 20
        finally:
            tracemalloc.stop()


def test_index_pads_up_to_the_cap():
    rng = np.random.default_rng(1)
    db = rng.integers(0, 256, (9, 2), dtype=np.uint8)
    index = HashIndex(16)
    index.add(db)
    d, i = index.search(db[:1], K_CAP)  # documented: k may exceed ntotal, the rest are empty slots
    assert d.shape == i.shape == (1, K_CAP)
    assert sorted(i[0, :9].tolist()) == list(range(9)) and (i[0, 9:] == EMPTY_ID).all()


@pytest.fixture(scope="module")
def built(serve_collection):
    return serve_collection


def test_retriever_answers_a_huge_k_with_the_whole_collection_in_bounded_memory(built):
    from hybridhash.retrieval import Retriever

    r = Retriever.open(built["codes"])
    codes = np.asarray(r.collection.codes[:2])
    tracemalloc.start()
    try:
        hits = r.search_codes(codes, K_CAP)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [len(h) for h in hits] == [24, 24] and hits[0][0].distance == 0
    assert peak < 4 << 20  # no (2, K_CAP) padding: 24 MB at 12 bytes a slot
    with pytest.raises(ConfigError, match="k must be a positive integer of at most"):
        r.search_codes(codes, 10**30)


@pytest.mark.parametrize("k", ["1000001", str(10**30), "0"])
def test_search_cli_refuses_k_in_one_line_before_loading(k, tmp_path, capsys):
    assert cli.main(["search", str(tmp_path / "q.png"), "--collection", str(tmp_path / "nowhere"), "--k", k]) == 1
    err = capsys.readouterr().err
    assert err == f"error: --k must be a positive integer of at most {K_CAP}, got {k}\n"


# ----------------------------------------------------------------------------------------------
# a service over a stand-in retriever (no model): the limits act before any search


class FakeCollection:
    def __init__(self, root: Path, paths, max_pixels=DEFAULT_MAX_PIXELS):
        self.root, self.paths, self.count = root, list(paths), len(paths)
        self.manifest = {"max_pixels": max_pixels}
        self.fingerprint = None

    def abspath(self, i):
        return self.root / self.paths[i]

    def path(self, i):
        return self.paths[i]

    def label(self, i):
        return None


class FakeRetriever:
    bits = 32
    model = index = None

    def __init__(self, collection):
        self.collection, self.count = collection, collection.count
        self.searched = []

    def search(self, images, k):
        self.searched += list(images)
        return [[Hit(rank=1, id=0, distance=0, path=self.collection.path(0), label=None)] for _ in images]


def fake_service(tmp_path, **kwargs):
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(img)
    return create_app(FakeRetriever(FakeCollection(tmp_path, ["a.png"])), **kwargs)


def _client(app):
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://127.0.0.1")  # a Host name the service answers


@pytest.mark.parametrize("where", ["form", "query"])
@pytest.mark.parametrize("k", [str(10**30), str(2**63), "-" + str(10**30)])
def test_http_refuses_a_huge_k_with_422(tmp_path, where, k):
    with _client(fake_service(tmp_path, max_k=50)) as c:
        files = {"image": ("q.png", png_bytes(Image.new("RGB", (8, 8))), "image/png")}
        r = c.post("/search" + (f"?k={k}" if where == "query" else ""), files=files,
                   data={"k": k} if where == "form" else None)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("k: ") and "\n" not in detail and len(detail) < 200


# ----------------------------------------------------------------------------------------------
# D. one decoder: typed errors, one pixel limit, EXIF orientation


def _orientation6(upright: Image.Image, fmt: str = "PNG") -> bytes:
    """The picture stored rotated 90 degrees counter-clockwise, tagged "rotate 90 clockwise to view"."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(out, format=fmt, exif=exif)
    return out.getvalue()


def _asymmetric(w=40, h=24) -> Image.Image:
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[:4, :10] = 255  # a white mark in the top-left corner
    return Image.fromarray(arr)


def test_exif_orientation_6_gives_the_code_and_thumbnail_of_the_upright_image(tmp_path):
    from hybridhash.app.encode import EncodeDataset, eval_transform

    upright = _asymmetric()
    (tmp_path / "upright.png").write_bytes(png_bytes(upright))
    (tmp_path / "sideways.png").write_bytes(_orientation6(upright))
    with Image.open(tmp_path / "sideways.png") as raw:
        assert raw.size == (24, 40) and raw.getexif().get(0x0112) == 6  # stored sideways
    assert np.array_equal(np.asarray(open_image(tmp_path / "sideways.png")), np.asarray(upright))

    torch.manual_seed(0)
    model = hybridhash.create_model("hybridhash_cpu", bits=32, depths=(1, 1, 1)).eval()
    torch.nn.init.normal_(model.hash_head.to_bits.weight, std=1.0)
    ds = EncodeDataset(tmp_path, ["upright.png", "sideways.png"], eval_transform(model))
    x = torch.stack([ds[0][1], ds[1][1]])
    code = model.encode(x)
    assert torch.equal(code[0], code[1])
    # the stored pixels, un-rotated, would give another code: the test can tell the difference
    raw = eval_transform(model)(upright.transpose(Image.Transpose.ROTATE_90))
    assert not torch.equal(model.encode(raw[None])[0], code[0])

    data, media = ThumbnailCache().get(0, tmp_path / "sideways.png")
    with Image.open(io.BytesIO(data)) as t:
        assert media == "image/png" and t.size == (40, 24)
        assert np.array_equal(np.asarray(t.convert("RGB")), np.asarray(upright))


def test_exif_orientation_applies_to_jpeg_thumbnails(tmp_path):
    upright = Image.new("RGB", (400, 200), (250, 250, 250))
    upright.paste((0, 0, 0), (0, 0, 100, 50))  # dark top-left corner
    path = tmp_path / "photo.jpg"
    path.write_bytes(_orientation6(upright, "JPEG"))
    data, _ = ThumbnailCache(size=128).get(0, path)
    with Image.open(io.BytesIO(data)) as t:
        arr = np.asarray(t.convert("L"))
        assert t.size == (128, 64)
        assert arr[:10, :20].mean() < 60 and arr[-10:, -20:].mean() > 200


def test_one_pixel_limit_for_the_project():
    from hybridhash.retrieval import Retriever
    from hybridhash.app.serve import DEFAULT_MAX_PIXELS as SERVE_LIMIT

    assert DEFAULT_MAX_PIXELS == 89_478_485 == SERVE_LIMIT
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command in ("encode", "serve"):
        assert sub[command].get_default("max_pixels") == DEFAULT_MAX_PIXELS, command
    import inspect

    assert inspect.signature(Retriever.open).parameters["max_pixels"].default == DEFAULT_MAX_PIXELS
    assert ThumbnailCache().max_pixels == DEFAULT_MAX_PIXELS
    assert inspect.signature(create_app).parameters["max_pixels"].default == DEFAULT_MAX_PIXELS


def test_an_image_between_the_old_limits_gets_a_thumbnail(tmp_path):
    # 60 megapixels: over the service's old 50 M thumbnail limit, under the encoder's 89.5 M
    path = tmp_path / "big.jpg"
    Image.new("L", (8000, 7500), 128).save(path, quality=50)
    data, media = ThumbnailCache().get(0, path)
    with Image.open(io.BytesIO(data)) as t:
        assert media == "image/jpeg" and t.size == (256, 240)


def test_thumbnails_follow_the_encoding_limit_not_the_upload_limit(tmp_path):
    Image.new("RGB", (200, 100), (1, 2, 3)).save(tmp_path / "wide.png")
    collection = FakeCollection(tmp_path, ["wide.png"], max_pixels=DEFAULT_MAX_PIXELS)
    app = create_app(FakeRetriever(collection), max_pixels=1000)  # uploads: 1000 pixels at most
    with _client(app) as c:
        r = c.get("/items/0?thumb=1")
        assert r.status_code == 200  # encoded under the default limit: it has a thumbnail
        big = c.post("/search", files={"image": ("q.png", png_bytes(Image.new("RGB", (200, 100))), "image/png")})
        assert big.status_code == 413 and "over the limit of 1000" in big.json()["detail"]


def _truncated() -> bytes:
    data = png_bytes(_asymmetric(64, 64))
    return data[: len(data) // 2]


@pytest.mark.parametrize("case, error, status, reason", [
    ("empty", NotAnImageError, 400, "empty"),
    ("text", NotAnImageError, 415, "not an image"),
    ("truncated", CorruptImageError, 422, "truncated or corrupt"),
    ("bad header", CorruptImageError, 422, "corrupt"),
    ("bomb header", TooManyPixelsError, 413, "2000x2000 = 4000000 pixels is over the limit of 1000000"),
    ("huge bomb header", TooManyPixelsError, 413, "more pixels than the limit of 1000000"),
])
def test_decoder_errors_are_typed_and_map_to_statuses(tmp_path, case, error, status, reason):
    payload = {
        "empty": b"",
        "text": b"just some words\n",
        "truncated": _truncated(),
        "bad header": b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x05IHDR" + b"\x00" * 16,
        "bomb header": png_claiming(2000, 2000),
        "huge bomb header": png_claiming(30000, 30000),
    }[case]
    with pytest.raises(error, match=re.escape(reason)) as err:
        open_image(payload, max_pixels=1_000_000, name="bad.png")
    assert str(err.value).startswith("bad.png: ") and "\n" not in str(err.value)
    with _client(fake_service(tmp_path, max_pixels=1_000_000)) as c:
        r = c.post("/search", files={"image": ("bad.png", payload, "image/png")})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert reason in detail and "bad.png" in detail and "\n" not in detail


def test_service_decodes_with_the_project_decoder(tmp_path, monkeypatch):
    """No header probing of its own: every upload goes through hybridhash.data.images."""
    calls = []
    real = images_mod.open_image

    def spy(*a, **k):
        calls.append(k.get("name"))
        return real(*a, **k)

    monkeypatch.setattr(uploads_mod, "open_image", spy)
    app = fake_service(tmp_path, max_pixels=1_000_000)
    with _client(app) as c:
        ok = c.post("/search", files={"image": ("q.png", _orientation6(_asymmetric()), "image/png")})
        bomb = c.post("/search", files={"image": ("b.png", png_claiming(2000, 2000), "image/png")})
    assert ok.status_code == 200 and ok.json()["query"] == {"width": 40, "height": 24}  # upright size
    assert bomb.status_code == 413 and calls == ["q.png", "b.png"]


# ----------------------------------------------------------------------------------------------
# E. bounded decodes and stalled clients


def _counting_decoder(monkeypatch, delay: float):
    state = {"now": 0, "peak": 0, "calls": 0}
    lock = threading.Lock()
    real = images_mod.open_image

    def counted(*a, **k):
        with lock:
            state["now"] += 1
            state["calls"] += 1
            state["peak"] = max(state["peak"], state["now"])
        try:
            time.sleep(delay)
            return real(*a, **k)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(uploads_mod, "open_image", counted)
    return state


@pytest.mark.parametrize("max_decodes, expect_peak", [(1, 1), (3, None)])
def test_concurrent_uploads_decode_at_most_max_decodes_at_once(tmp_path, monkeypatch, max_decodes, expect_peak):
    state = _counting_decoder(monkeypatch, delay=0.15)
    app = fake_service(tmp_path, max_decodes=max_decodes)
    payload = png_bytes(_asymmetric())
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        def one(_):
            return c.post("/search", files={"image": ("q.png", payload, "image/png")}).status_code

        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(one, range(6)))
    assert statuses == [200] * 6 and state["calls"] == 6
    if expect_peak is not None:
        assert state["peak"] == expect_peak
    else:  # the counter does see overlap when it is allowed (so the bound above means something)
        assert 2 <= state["peak"] <= max_decodes


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection; and how long that took."""
    start = time.monotonic()
    sock.settimeout(0.2)
    got = b""
    while time.monotonic() - start < limit:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    else:
        raise AssertionError(f"connection still open after {limit} s; received {got[:200]!r}")
    return got, time.monotonic() - start


def test_a_stalled_upload_gets_408_and_its_connection_closed(tmp_path):
    app = fake_service(tmp_path, body_timeout=0.5)
    with BackgroundServer(app) as server:
        host, port = server.url.rsplit("//", 1)[1].rsplit(":", 1)
        boundary = "stallboundary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + png_bytes(_asymmetric())[:50]
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall((f"POST /search HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n"
                          f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode() + head)
            got, took = _read_until_closed(sock, limit=5)  # then sends nothing more
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        assert b"request body stalled" in got and took < 4
        # the service still answers others
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_an_idle_keep_alive_connection_is_closed(tmp_path):
    app = fake_service(tmp_path)
    with BackgroundServer(app, keep_alive_timeout=1) as server:
        host, port = server.url.rsplit("//", 1)[1].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            got, took = _read_until_closed(sock, limit=5)
        assert got.startswith(b"HTTP/1.1 200") and took < 4


@pytest.mark.parametrize("option, value", [("--max-decodes", "0"), ("--body-timeout", "0"),
                                           ("--keep-alive-timeout", "0")])
def test_serve_refuses_bad_limits_in_one_line(tmp_path, capsys, option, value):
    assert cli.main(["serve", "--collection", str(tmp_path / "nowhere"), option, value]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option} must be") and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# F. /docs from local files


def _external_hosts(html: str, own: str) -> list[str]:
    urls = re.findall(r"""(?:https?:)?//[A-Za-z0-9.\-\[\]:]+""", html)
    return [u for u in urls if u.split("//", 1)[1] != own]


def test_docs_page_loads_nothing_from_another_host(tmp_path):
    with BackgroundServer(fake_service(tmp_path)) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        own = server.url.split("//", 1)[1]
        r = c.get("/docs")
        assert r.status_code == 200 and "swagger" in r.text.lower()
        assert _external_hosts(r.text, own) == []
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text)
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
        for a in assets:
            got = c.get(a)
            assert got.status_code == 200 and len(got.content) > 0, a
        assert "SwaggerUIBundle" in c.get(next(a for a in assets if a.endswith(".js"))).text
        assert "'/openapi.json'" in r.text and c.get("/openapi.json").status_code == 200
        assert c.get("/redoc").status_code == 404  # FastAPI's own loads a CDN: not served
        assert c.get("/docs/assets/../app.py").status_code == 404


def test_docs_page_without_the_asset_package_is_a_local_page(tmp_path, monkeypatch):
    monkeypatch.setattr(app_mod, "_swagger_assets", lambda: None)
    with _client(fake_service(tmp_path)) as c:
        r = c.get("/docs")
        assert r.status_code == 200 and "/openapi.json" in r.text
        assert _external_hosts(r.text, "testserver") == []
        assert c.get("/docs/assets/swagger-ui.css").status_code == 404
