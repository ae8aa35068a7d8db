"""The service and the commands that print names, under hostile input: a page that rebinds its own
domain to the loopback service, file names carrying terminal escape sequences, the page and the API
docs without their security headers, many concurrent uploads of large images, manifests and path
lists that were tampered with, and limits given as infinity or past the project's caps."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import hybridhash
from hybridhash.app import cli
from hybridhash.collection import open_collection
from hybridhash.errors import ConfigError, DataError
from hybridhash.limits import K_CAP, MAX_REQUESTS_CAP
from hybridhash.retrieval import Hit
from hybridhash.app.serve import BackgroundServer, create_app
from hybridhash.app.serve import uploads as uploads_mod

from tests.helpers.collections import png_bytes
from tests.helpers.serving import serve_process

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

# an OSC 52 sequence (writes the terminal's clipboard) and a clear-screen, as a file name carries them
EVIL = "evil\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J"


def _no_escape(text: str) -> None:
    """No byte a terminal would act on: no ESC, BEL or other C0/C1 control but the line ends."""
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", text), repr(text)


class FakeCollection:
    def __init__(self, root: Path, paths):
        self.root, self.paths, self.count = root, list(paths), len(paths)
        self.manifest, self.fingerprint = {}, None

    def abspath(self, i):
        return self.root / self.paths[i]

    def path(self, i):
        return self.paths[i]


class FakeRetriever:
    bits = 32
    model = index = None

    def __init__(self, collection, error=None, delay=0.0):
        self.collection, self.count, self.error, self.delay = collection, collection.count, error, delay

    def search(self, images, k):
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return [[Hit(rank=1, id=0, distance=0, path=self.collection.path(0), label=None)] for _ in images]


def fake_service(tmp_path, retriever_kw=None, **kwargs):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "a.png")
    return create_app(FakeRetriever(FakeCollection(tmp_path, ["a.png"]), **(retriever_kw or {})), **kwargs)


def _upload(client, data: bytes, name="q.png", **kw):
    return client.post("/search", files={"image": (name, data, "image/png")}, **kw)


SMALL = png_bytes(Image.new("RGB", (8, 8), (200, 10, 10)))


# ----------------------------------------------------------------------------------------------
# 5. only the service's own host names are answered (DNS rebinding)


def test_a_rebound_host_name_reads_nothing(tmp_path):
    with BackgroundServer(fake_service(tmp_path)) as server:
        port = server.url.rsplit(":", 1)[1]
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.attacker.example:{port}"):
                headers = {"Host": host}
                got = [c.get("/items/0", headers=headers), c.get("/health", headers=headers),
                       _upload(c, SMALL, headers=headers), c.get("/", headers=headers)]
                assert [r.status_code for r in got] == [400] * 4, (host, [r.text[:80] for r in got])
                assert all(b"\x89PNG" not in r.content and b"count" not in r.content for r in got)
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}", "localhost"):
                r = c.get("/items/0", headers={"Host": host})
                assert r.status_code == 200 and r.content == (tmp_path / "a.png").read_bytes(), host


def test_allowed_hosts_are_the_loopback_names_the_bound_name_and_the_additions(tmp_path):
    from fastapi.testclient import TestClient

    from hybridhash.app.serve.headers import allowed_hosts

    assert allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "[::1]"]
    assert allowed_hosts("0.0.0.0", ["Photos.LAN", "::1", "192.168.1.5", "*.example.org", "fe80::1"]) == [
        "127.0.0.1", "localhost", "[::1]", "photos.lan", "192.168.1.5", "*.example.org", "[fe80::1]"]
    assert allowed_hosts("my-box.local") == ["127.0.0.1", "localhost", "[::1]", "my-box.local"]
    assert allowed_hosts(None, ["*"])[-1] == "*"  # an explicit "answer any host" stays possible
    for bad in ("http://photos.lan", "photos.lan:8000", "photos.lan/x", "a*.example.org", "", "ex ample"):
        with pytest.raises(ConfigError, match="--allowed-host"):
            allowed_hosts(None, [bad])
    app = fake_service(tmp_path, allowed_hosts=allowed_hosts("0.0.0.0", ["photos.lan"]))
    for base, status in (("http://photos.lan:8000", 200), ("http://127.0.0.1", 200), ("http://evil.lan", 400),
                         ("http://0.0.0.0:8000", 400)):
        with TestClient(app, base_url=base) as c:
            assert c.get("/health").status_code == status, base


@pytest.mark.parametrize("value", ["http://photos.lan", "photos.lan:80"])
def test_serve_refuses_a_malformed_allowed_host_in_one_line(tmp_path, capsys, value):
    assert cli.main(["serve", "--collection", str(tmp_path / "nowhere"), "--allowed-host", "ok.lan",
                     "--allowed-host", value]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --allowed-host {value!r}: not a host name") and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# 6. names from the data never reach the terminal raw


@pytest.fixture(scope="module")
def evil_collection(tmp_path_factory):
    """A collection of three images, one whose file name carries escape sequences."""
    base = tmp_path_factory.mktemp("evil")
    images = base / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    names = ["plain.png", EVIL + ".png", "other.png"]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / name)
    torch.manual_seed(0)
    hybridhash.create_model("hybridhash_cpu", bits=32).save_pretrained(str(base / "ckpt"))
    codes = base / "codes"
    assert cli.main(["encode", "--checkpoint", str(base / "ckpt"), "--images", str(images), "--collection", str(codes),
                     "--workers", "0", "--no-progress"]) == 0
    return {"images": images, "codes": codes, "evil": images / (EVIL + ".png")}


def test_search_table_escapes_names_and_json_keeps_them_exact(evil_collection, capsys):
    capsys.readouterr()
    query = str(evil_collection["evil"])
    assert cli.main(["search", "--collection", str(evil_collection["codes"]), query, "--k", "3"]) == 0
    out = capsys.readouterr().out
    _no_escape(out)
    shown = r"evil\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J.png"
    rows = out.splitlines()[1:]
    assert len(rows) == 3 and all(r.startswith(query.replace(EVIL, shown[:-4])) for r in rows)  # the query column
    assert sum(r.endswith(" " + shown) for r in rows) == 1  # its own hit, in the path column
    assert cli.main(["search", "--collection", str(evil_collection["codes"]), query, "--k", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["results"][0]["query"] == query
    assert EVIL + ".png" in [h["path"] for h in doc["results"][0]["hits"]]


def test_an_error_naming_a_hostile_file_is_escaped(evil_collection, capsys):
    missing = str(evil_collection["images"] / ("gone" + EVIL + ".png"))
    assert cli.main(["search", "--collection", str(evil_collection["codes"]), missing]) == 1
    err = capsys.readouterr().err
    _no_escape(err)
    assert err.startswith("error: ") and err.count("\n") == 1 and r"gone" + r"evil\x1b]52" in err


def test_data_check_escapes_the_names_it_reports(tmp_path, capsys):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / cls / "fine.png")
    (tmp_path / "a" / (EVIL + ".png")).write_bytes(b"")  # empty: reported, with its name
    assert cli.main(["data", "check", f"folder:{tmp_path}", "--no-progress"]) == 1
    out = capsys.readouterr().out
    _no_escape(out)
    assert r"evil\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J.png: empty" in out


def test_log_lines_escape_names(monkeypatch, capsys):
    monkeypatch.setattr(logging.root, "handlers", [])  # as in a fresh process: the command installs its own
    assert cli.main(["data", "list"]) == 0
    capsys.readouterr()
    logging.getLogger("hybridhash.test").warning("leaving out %s: unreadable", EVIL + ".png")
    err = capsys.readouterr().err
    _no_escape(err)
    assert err == r"WARNING hybridhash.test: leaving out evil\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J.png: unreadable" + "\n"


def test_printable_escapes_controls_bidi_and_lone_surrogates_only():
    from hybridhash.terminal import printable

    cases = {
        "a\x1b[31mb": r"a\x1b[31mb", "tab\there": r"tab\there", "line\nbreak": r"line\nbreak",
        "c1\x9bx": r"c1\x9bx", "del\x7f": r"del\x7f", "rtl\u202egnp.exe": r"rtl\u202egnp.exe",
        os.fsdecode(b"latin1-\xe9.png"): r"latin1-\udce9.png",
        "caf\u00e9 \u65e5\u672c \U0001f600 a\\b": "caf\u00e9 \u65e5\u672c \U0001f600 a\\b",  # unchanged
    }
    for raw, shown in cases.items():
        assert printable(raw) == shown
        shown.encode("utf-8")  # a UTF-8 terminal can be sent it


# ----------------------------------------------------------------------------------------------
# 7. one set of security headers on every response


def _csp(r) -> dict:
    return {part.split()[0]: part.split()[1:] for part in r.headers["content-security-policy"].split(";") if part.strip()}


def test_every_response_carries_the_security_headers(tmp_path):
    from fastapi.testclient import TestClient

    app = fake_service(tmp_path, max_upload_bytes=1000)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        answers = {
            "page": c.get("/"), "page file": c.get("/static/index.html"), "script": c.get("/static/app.js"),
            "health": c.get("/health"), "openapi": c.get("/openapi.json"), "item": c.get("/items/0"),
            "thumbnail": c.get("/items/0?thumb=1"), "search": _upload(c, SMALL), "404": c.get("/items/7"),
            "422": c.get("/items/x"), "413": _upload(c, b"x" * 5000), "415": _upload(c, b"not an image"),
            "docs": c.get("/docs"),
        }
        with TestClient(app, base_url="http://attacker.example") as other:
            answers["400"] = other.get("/health")
    expected_status = {"404": 404, "422": 422, "413": 413, "415": 415, "400": 400}
    for name, r in answers.items():
        assert r.status_code == expected_status.get(name, 200), (name, r.text[:200])
        assert r.headers.get("x-content-type-options") == "nosniff", name
        assert r.headers.get("x-frame-options") == "DENY", name
        policy = _csp(r)
        assert policy["frame-ancestors"] == ["'none'"] and policy["script-src"] == ["'self'"], name
        assert policy["default-src"] == ["'self'"] and policy["object-src"] == ["'none'"], name
    page = answers["page"].headers["content-security-policy"]
    assert answers["page file"].headers["content-security-policy"] == page
    assert answers["page file"].text == answers["page"].text


def test_docs_run_under_a_policy_without_inline_script(tmp_path):
    with BackgroundServer(fake_service(tmp_path)) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.get("/docs")
        assert r.status_code == 200
        policy = _csp(r)
        assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
        assert policy["connect-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", r.text, flags=re.S)
        assert len(scripts) == 2 and all(body.strip() == "" for _, body in scripts)  # no inline code
        assert not re.search(r"\son[a-z]+\s*=", r.text)  # no inline event handlers either
        sources = [re.search(r'src="([^"]+)"', attrs).group(1) for attrs, _ in scripts]
        assert all(s.startswith("/") and not s.startswith("//") for s in sources)
        start = c.get(sources[1])
        assert start.status_code == 200 and "SwaggerUIBundle(" in start.text
        assert "dataset.openapi" in start.text
        openapi = re.search(r"data-openapi='([^']+)'", scripts[1][0]).group(1)
        assert c.get(openapi).json()["paths"]["/search"]
        assert "SwaggerUIBundle" in c.get(sources[0]).text
    node = shutil.which("node")
    if node:  # the start-up script is valid JavaScript
        check = subprocess.run([node, "--check", str(Path(hybridhash.__file__).parent / "app/serve/static/docs.js")],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr


# ----------------------------------------------------------------------------------------------
# 8. memory bounded by the decoders, not by the clients


def test_uploads_decode_on_max_decodes_threads_only(tmp_path, monkeypatch):
    threads, lock = set(), threading.Lock()
    real = uploads_mod.open_image

    def spy(*a, **k):
        with lock:
            threads.add(threading.get_ident())
        time.sleep(0.05)
        return real(*a, **k)

    monkeypatch.setattr(uploads_mod, "open_image", spy)
    app = fake_service(tmp_path, max_decodes=2)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: _upload(c, SMALL).status_code, range(16)))
        assert c.get("/items/0?thumb=1").status_code == 200
    assert statuses == [200] * 16
    assert 1 <= len(threads) <= 2, len(threads)  # not one per request thread: at most 2 malloc arenas in use


def test_requests_beyond_the_bound_get_503_with_retry_after(tmp_path):
    app = fake_service(tmp_path, max_requests=2, retriever_kw={"delay": 1.0})
    with BackgroundServer(app) as server:
        with ThreadPoolExecutor(5) as pool:
            def one(_):
                with httpx.Client(base_url=server.url, timeout=60) as c:
                    return _upload(c, SMALL)

            answers = list(pool.map(one, range(5)))
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert _upload(c, SMALL).status_code == 200  # served again once the others are done
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1 and set(statuses) <= {200, 503}, statuses
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.json()["detail"].startswith("busy: ")


def _rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from /proc")
def test_serve_memory_follows_the_decoders_not_the_clients(serve_collection, tmp_path):
    """``hybridhash serve`` as a process: 8 concurrent uploads of a 30 MP PNG (90 MB decoded each).
    Decoded on 2 threads, the peak stays near 2 decodes' worth above idle and the memory goes back;
    decoded on every request thread, it grew by about 8 decodes' worth and stayed."""
    big = tmp_path / "big.png"
    Image.new("RGB", (6000, 5000), (90, 140, 200)).save(big)
    payload = big.read_bytes()
    assert len(payload) < 200_000
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MALLOC_ARENA_MAX", None)
    with serve_process(["--collection", serve_collection["codes"], "--port", "0", "--log-level", "warning"],
                       tmp_path / "stderr.txt", env=env, start_timeout=120) as (pid, url):
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, timeout=300) as c:
            assert _upload(c, SMALL).status_code == 200  # the model is loaded and has run once
        time.sleep(0.5)
        idle = _rss_anon(pid)
        peak, done = idle, threading.Event()

        def sample():
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _rss_anon(pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()

        def one(_):
            with httpx.Client(base_url=url, timeout=300) as c:
                return _upload(c, payload, name="big.png").status_code

        try:
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(one, range(8)))
        finally:
            done.set()
            sampler.join()
        time.sleep(1.0)
        after = _rss_anon(pid)
    mb = 2**20
    assert statuses == [200] * 8
    assert peak - idle < 450 * mb, (idle // mb, peak // mb, after // mb)
    assert after - idle < 100 * mb, (idle // mb, peak // mb, after // mb)


def test_the_arena_cap_leaves_a_chosen_malloc_arena_max_alone(monkeypatch):
    from hybridhash.app.serve import decodes

    calls = []
    monkeypatch.setattr(decodes, "_LIBC", type("Libc", (), {"mallopt": lambda self, *a: calls.append(a) or 1})())
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert decodes.limit_arenas() is False and calls == []
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert decodes.limit_arenas() is True and calls == [(-8, 2)]  # M_ARENA_MAX in glibc's malloc.h


# ----------------------------------------------------------------------------------------------
# 27. a manifest or path list that was tampered with is refused when the collection is opened


@pytest.fixture
def copied(serve_collection, tmp_path):
    """A copy of the shared collection (the original stays intact for the other tests)."""
    codes = tmp_path / "codes"
    shutil.copytree(serve_collection["codes"], codes)
    return {"codes": codes, "images": serve_collection["images"]}


@pytest.mark.parametrize("field, value, expect", [
    ("max_pixels", "lots", "max_pixels is 'lots', expected an integer of at least 1"),
    ("max_pixels", 0, "max_pixels is 0, expected an integer of at least 1"),
    ("max_pixels", True, "max_pixels is True, expected an integer of at least 1"),
    ("num_classes", -3, "num_classes is -3, expected an integer of at least 0"),
    ("skipped", 1.5, "skipped is 1.5, expected an integer of at least 0"),
    ("image_root", 7, "image_root is 7, expected str or null"),
    ("checkpoint", "/models/a\x00b", "checkpoint holds a NUL character"),
    ("fingerprint", ["x"], "fingerprint is ['x'], expected str or null"),
    ("preprocess", "resize", "preprocess is 'resize', expected dict or null"),
    ("files", "codes.npy", "files is 'codes.npy', expected list or null"),
])
def test_a_manifest_field_of_the_wrong_type_is_refused_naming_the_manifest(copied, capsys, field, value, expect):
    mpath = copied["codes"] / "manifest.json"
    m = json.loads(mpath.read_text())
    m[field] = value
    mpath.write_text(json.dumps(m))
    with pytest.raises(DataError) as err:
        open_collection(copied["codes"])
    assert str(err.value).startswith(f"{mpath}: {expect}")
    assert cli.main(["search", "--collection", str(copied["codes"]), str(copied["images"] / "circles/circles_00.png")]) == 1
    out = capsys.readouterr().err
    assert out.startswith(f"error: {mpath}: {field}") and out.count("\n") == 1


def test_an_older_manifest_without_the_optional_fields_still_opens(copied):
    mpath = copied["codes"] / "manifest.json"
    m = json.loads(mpath.read_text())
    for key in ("max_pixels", "num_classes", "skipped", "shards", "files", "created", "preset"):
        m.pop(key, None)
    m["checkpoint"] = None
    mpath.write_text(json.dumps(m))
    assert open_collection(copied["codes"]).count == 24


@pytest.mark.parametrize("bad, why", [(b"\x00", "holds a NUL character"), (b"\r", "holds a carriage return"),
                                      (b"\xff", "is not UTF-8"), (b"\n", "a path holds a line break")])
def test_a_path_list_with_nul_or_broken_lines_is_refused_naming_the_file(copied, bad, why):
    paths = copied["codes"] / "paths.txt"
    data = bytearray(paths.read_bytes())
    offsets = np.load(copied["codes"] / "paths.offsets.npy")
    item = 5
    data[int(offsets[item]) + 2] = bad[0]  # same length: the offsets still match the file size
    paths.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        open_collection(copied["codes"])
    message = str(err.value)
    assert message.startswith(f"{paths}: ") and why in message and "\n" not in message
    if bad != b"\n":
        assert f"item {item}" in message


def test_a_path_list_whose_lines_are_not_where_the_offsets_say_is_refused(copied):
    paths = copied["codes"] / "paths.txt"
    lines = paths.read_bytes().split(b"\n")[:-1]
    lines[2], lines[3] = lines[2] + b"x", lines[3][1:]  # same total size, one line end moved
    paths.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=r"a line does not end where .*paths\.offsets\.npy says"):
        open_collection(copied["codes"])


# ----------------------------------------------------------------------------------------------
# 28. limits given as infinity or past the project's caps


@pytest.fixture
def no_serving(monkeypatch):
    """serve stops where it would start listening (a limit that passed its checks)."""
    import hybridhash.app.serve.server as server_mod

    class Started(Exception):
        pass

    def refuse(*a, **k):
        raise Started("the server would have started")

    monkeypatch.setattr(server_mod, "run_server", refuse)
    return Started


@pytest.mark.parametrize("option, value, expect", [
    ("--max-upload-mb", "inf", "--max-upload-mb must be a finite number > 0 and <= 1024, got inf"),
    ("--max-upload-mb", "1e400", "--max-upload-mb must be a finite number > 0 and <= 1024, got inf"),
    ("--max-upload-mb", "5000", "--max-upload-mb must be a finite number > 0 and <= 1024, got 5000.0"),
    ("--max-upload-mb", "nan", "--max-upload-mb must be a finite number > 0 and <= 1024, got nan"),
    ("--max-k", str(K_CAP + 1), f"--max-k must be a positive integer of at most {K_CAP}, got {K_CAP + 1}"),
    ("--max-k", str(10**30), f"--max-k must be a positive integer of at most {K_CAP}, got {10**30}"),
    ("--max-requests", "0", f"--max-requests must be an integer from 1 to {MAX_REQUESTS_CAP}, got 0"),
])
def test_serve_refuses_unbounded_limits_in_one_line(serve_collection, capsys, no_serving, option, value, expect):
    assert cli.main(["serve", "--collection", str(serve_collection["codes"]), "--port", "0", option, value]) == 1
    assert capsys.readouterr().err == f"error: {expect}\n"


def test_serve_accepts_the_caps_themselves(serve_collection, no_serving):
    with pytest.raises(no_serving):
        cli.main(["serve", "--collection", str(serve_collection["codes"]), "--port", "0", "--max-upload-mb", "1024",
                  "--max-k", str(K_CAP)])


def test_a_search_the_index_refuses_is_422_not_500(tmp_path):
    from fastapi.testclient import TestClient

    err = ConfigError(f"k must be a non-negative integer of at most {K_CAP}, got {K_CAP + 1}")
    app = fake_service(tmp_path, retriever_kw={"error": err})
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        r = _upload(c, SMALL)
    assert r.status_code == 422 and r.json()["detail"] == str(err)
    with pytest.raises(ValueError, match=f"max_k must be at most {K_CAP}"):
        fake_service(tmp_path, max_k=K_CAP + 1)
