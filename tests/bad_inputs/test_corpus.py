"""A corpus of bad inputs that already behave well, one table per kind of input.

Every case asserts its exact outcome (a one-line ``error: ...`` naming the culprit, an HTTP status
with a one-line detail naming the upload, or a clean skip listed with its reason) and that the
files already on disk are unchanged (``snapshot`` before and after).

Kinds: images given to ``hybridhash encode`` (skipped, or encoded when only their mode is odd;
``--strict`` stops), the same images uploaded to the service, list files, URLs of the service,
checkpoints, and the code files of a collection. Data are tiny: a handful of 32 px images and an
untrained ``hybridhash_cpu`` checkpoint of 32 bits, built once per module.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hybridhash
from hybridhash.app import cli
from hybridhash.collection import open_collection
from hybridhash.errors import CheckpointError

from tests.helpers.collections import png_claiming
from tests.helpers.commands import snapshot_digests as snapshot
from tests.helpers.encoding import save_model

BITS = 32
GOOD = 4  # good images beside the odd ones


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def run_cli(argv) -> int:
    return cli.main([str(a) for a in argv])


def one_error_line(capsys, *culprits: str) -> str:
    """The stderr of a refused command: one line ``error: ...`` naming every culprit, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and err.endswith("\n"), err
    for c in culprits:
        assert c in lines[0], (c, lines[0])
    return lines[0]


def noise(seed: int, size=(32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.NEAREST)


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


# ----------------------------------------------------------------------------------------------
# the image kinds: name -> (file name, bytes)

def _exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to view
    return encoded(noise(7, (40, 24)), "JPEG", exif=exif, quality=90)


def _animated_gif() -> bytes:
    frames = [noise(8).convert("P"), noise(9).convert("P")]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def _palette_trns() -> bytes:
    p = noise(10).convert("P")
    return encoded(p, "PNG", transparency=0)


def _make_kinds() -> dict:
    jpeg, png = encoded(noise(11), "JPEG", quality=90), encoded(noise(12), "PNG")
    i16 = Image.fromarray((np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60))
    assert i16.mode == "I;16"
    return {
        # bad: skipped with a reason
        "corrupt-bytes": ("corrupt.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
        "corrupt-data": ("flipped.png", png[:60] + bytes(b ^ 0xFF for b in png[60:-12]) + png[-12:]),
        "truncated-jpeg": ("cut.jpg", jpeg[: len(jpeg) // 2]),
        "truncated-png": ("cut.png", png[: len(png) // 2]),
        "empty": ("empty.jpg", b""),
        "text-as-jpg": ("notes.jpg", b"these are not pixels\n"),
        "bomb-header": ("bomb.png", png_claiming(20000, 20000)),
        # odd but good: encoded
        "cmyk-jpeg": ("cmyk.jpg", encoded(noise(13).convert("CMYK"), "JPEG", quality=90)),
        "gray16-png": ("gray16.png", encoded(i16, "PNG")),
        "animated-gif": ("anim.gif", _animated_gif()),
        "palette-trns": ("palette.png", _palette_trns()),
        "la-png": ("la.png", encoded(noise(14).convert("LA"), "PNG")),
        "rgba-png": ("rgba.png", encoded(noise(15).convert("RGBA"), "PNG")),
        "one-pixel": ("one.png", encoded(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG")),
        "exif-orientation": ("exif.jpg", _exif_jpeg()),
    }


KINDS = _make_kinds()

# the skipped kinds and the reason skipped.json gives (src/hybridhash/data/images.py messages)
SKIPPED = {
    "corrupt-bytes": "not an image (no known image format)",
    "corrupt-data": "truncated or corrupt image",
    "truncated-jpeg": "truncated or corrupt image",
    "truncated-png": "truncated or corrupt image",
    "empty": "empty file",
    "text-as-jpg": "not an image (no known image format)",
    "bomb-header": "over the pixel limit",
}
ENCODED = [k for k in KINDS if k not in SKIPPED]


def test_the_odd_kinds_really_have_their_modes():
    modes = {}
    for kind in ENCODED:
        with Image.open(io.BytesIO(KINDS[kind][1])) as img:
            modes[kind] = (img.mode, "transparency" in img.info, getattr(img, "n_frames", 1))
    assert modes["cmyk-jpeg"][0] == "CMYK" and modes["gray16-png"][0] == "I;16"
    assert modes["animated-gif"][2] == 2 and modes["palette-trns"][:2] == ("P", True)
    assert modes["la-png"][0] == "LA" and modes["rgba-png"][0] == "RGBA"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("ckpt") / "model", bits=BITS)


def write_good(folder: Path) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(GOOD):
        noise(i).save(folder / f"good_{i}.png")
        names.append(f"good_{i}.png")
    return names


def encode_argv(images, out, ckpt, *extra):
    return ["encode", "--checkpoint", ckpt, "--images", images, "--collection", out, "--workers", "0",
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, ckpt):
    """One folder of good images and every kind, encoded once: (images, out, before, rc)."""
    base = tmp_path_factory.mktemp("mixed")
    images = base / "images"
    write_good(images)
    for name, data in KINDS.values():
        (images / name).write_bytes(data)
    before = snapshot(images)
    rc = run_cli(encode_argv(images, base / "codes", ckpt))
    return {"images": images, "out": base / "codes", "before": before, "rc": rc,
            "after": snapshot(images)}


@pytest.mark.parametrize("kind", list(SKIPPED), ids=list(SKIPPED))
def test_encode_skips_a_bad_image_with_its_reason(mixed, kind):
    name = KINDS[kind][0]
    assert mixed["rc"] == 0 and mixed["after"] == mixed["before"]
    col = open_collection(mixed["out"])
    skipped = {s["path"]: s["reason"] for s in col.skipped}
    assert name in skipped and name not in [col.path(i) for i in range(col.count)]
    assert SKIPPED[kind] in skipped[name] and "\n" not in skipped[name]


@pytest.mark.parametrize("kind", ENCODED, ids=ENCODED)
def test_encode_encodes_an_image_of_an_odd_mode(mixed, kind):
    from hybridhash.data.images import open_image
    from hybridhash.app.encode import EncodeDataset, eval_transform

    name = KINDS[kind][0]
    col = open_collection(mixed["out"])
    paths = [col.path(i) for i in range(col.count)]
    assert col.count == GOOD + len(ENCODED) and len(col.skipped) == len(SKIPPED)
    assert name in paths
    # its code is the one of its RGB decode (the first frame, EXIF applied), recomputed here
    model = hybridhash.from_pretrained(Path(col.checkpoint)).eval()
    rgb = open_image(mixed["images"] / name)
    x = eval_transform(model)(rgb)[None]
    want = np.packbits(model.encode(x).numpy() > 0, axis=1)[0]
    assert np.array_equal(np.asarray(col.codes[paths.index(name)]), want)
    ds = EncodeDataset(mixed["images"], [name], eval_transform(model))
    assert torch.equal(ds[0][1], x[0])


def test_the_odd_decodes_are_what_a_viewer_shows(mixed):
    from hybridhash.data.images import open_image

    root = mixed["images"]
    assert open_image(root / "exif.jpg").size == (24, 40)  # stored 40x24, tagged "rotate 90"
    assert open_image(root / "one.png").getpixel((0, 0)) == (9, 99, 199)
    first = np.asarray(noise(8).convert("P").convert("RGB"))
    assert np.abs(np.asarray(open_image(root / "anim.gif"), np.int16) - first).max() <= 8  # frame 1
    g16 = np.asarray(open_image(root / "gray16.png"))[..., 0]
    want = ((np.arange(32 * 32).reshape(32, 32) * 60) >> 8).astype(np.uint8)
    assert np.array_equal(g16, want)  # the top byte, not clipped to white


@pytest.mark.parametrize("kind", list(SKIPPED), ids=list(SKIPPED))
def test_encode_strict_stops_at_a_bad_image_and_leaves_nothing(tmp_path, ckpt, capsys, kind):
    name, data = KINDS[kind]
    images = tmp_path / "images"
    write_good(images)
    (images / name).write_bytes(data)
    (tmp_path / "keep.txt").write_text("a file beside --out\n")
    before = snapshot(tmp_path)
    assert run_cli(encode_argv(images, tmp_path / "codes", ckpt, "--strict")) == 1
    line = one_error_line(capsys, name, SKIPPED[kind], "strict")
    assert line.startswith(f"error: {images / name}: {SKIPPED[kind]}") and line.endswith(" (strict: stopping)")
    # no collection: only the resume plan of the run (a later run without --strict picks it up),
    # and the writer's lock file
    after = snapshot(tmp_path)
    assert sorted(set(after) - set(before)) == ["codes/.hybridhash.lock", "codes/shards/items.txt",
                                                "codes/shards/plan.json"]
    assert {k: v for k, v in after.items() if k in before} == before
    assert run_cli(["index", "--collection", tmp_path / "codes"]) == 1
    one_error_line(capsys, str(tmp_path / "codes"), "encoding has not finished")


# ----------------------------------------------------------------------------------------------
# the same kinds uploaded to the service

UPLOAD_STATUS = {
    "corrupt-bytes": (415, "not an image (no known image format)"),
    "corrupt-data": (422, "truncated or corrupt image"),
    "truncated-jpeg": (422, "truncated or corrupt image"),
    "truncated-png": (422, "truncated or corrupt image"),
    "empty": (400, "empty upload"),
    "text-as-jpg": (415, "not an image"),
    "bomb-header": (413, "over the pixel limit"),
    **{k: (200, None) for k in ENCODED},
}


@pytest.fixture(scope="module")
def service(serve_collection):
    from fastapi.testclient import TestClient

    from hybridhash.retrieval import Retriever
    from hybridhash.app.serve import create_app

    before = snapshot(serve_collection["codes"]), snapshot(serve_collection["images"])
    with TestClient(create_app(Retriever.open(serve_collection["codes"])), base_url="http://127.0.0.1") as client:
        yield client
    assert (snapshot(serve_collection["codes"]), snapshot(serve_collection["images"])) == before


@pytest.mark.parametrize("kind", list(UPLOAD_STATUS), ids=list(UPLOAD_STATUS))
def test_upload_of_each_kind(service, kind):
    name, data = KINDS[kind]
    status, reason = UPLOAD_STATUS[kind]
    r = service.post("/search", files={"image": (name, data, "application/octet-stream")}, data={"k": "3"})
    assert r.status_code == status, r.text
    if status == 200:
        body = r.json()
        assert len(body["results"]) == 3 and body["results"][0]["rank"] == 1
        return
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and len(detail) < 400
    assert detail.startswith(f"{name}: ") and reason in detail


# ----------------------------------------------------------------------------------------------
# URLs of the service: 404 or 422, never a file outside the collection

URLS = {
    "items-negative": ("/items/-1", 404),
    "items-past-end": ("/items/999999", 404),
    "items-not-a-number": ("/items/abc", 422),
    "items-dot-dot": ("/items/1/../../etc/passwd", 404),
    "static-dot-dot": ("/static/../app.py", 404),
    "static-encoded-dot-dot": ("/static/%2e%2e/app.py", 404),
    "items-encoded-slashes": ("/items/1%2F..%2F..%2Fetc%2Fpasswd", 404),
    "docs-assets-dot-dot": ("/docs/assets/../../app.py", 404),
}


DETAILS = {"items-negative": "no item -1: ids run from 0 to 23", "items-past-end": "no item 999999: ids run from 0 to 23",
           "items-not-a-number": "item_id: Input should be a valid integer, unable to parse string as an integer"}


def raw_get(app, path: str) -> tuple:
    """(status, body) of GET ``path`` sent to the ASGI app as is: an HTTP client would remove the
    dot segments before sending, a hostile one does not."""
    import asyncio

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    sent, received = [], []

    async def receive():  # the (empty) request body, then the client leaves
        received.append(1)
        return {"type": "http.request", "body": b"", "more_body": False} if len(received) == 1 \
            else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.parametrize("case", list(URLS), ids=list(URLS))
def test_urls_outside_the_collection(service, case):
    url, status = URLS[case]
    r = service.get(url)
    raw_status, raw_body = raw_get(service.app, url.replace("%2e%2e", "..").replace("%2F", "/"))
    for got, body in ((r.status_code, r.content), (raw_status, raw_body)):
        assert got == status, (url, got, body[:200])
        assert b"create_app" not in body and b"root:" not in body  # neither app.py nor /etc/passwd
        detail = json.loads(body)["detail"]
        assert isinstance(detail, str) and "\n" not in detail
        if case in DETAILS:
            assert detail == DETAILS[case]


# ----------------------------------------------------------------------------------------------
# list files


@pytest.fixture
def listed(tmp_path):
    """A folder of 4 images and a list file naming them with 3 labels each; (root, list file)."""
    root = tmp_path / "data"
    names = write_good(root / "img")
    lines = [f"img/{n} {' '.join('1' if j == i % 3 else '0' for j in range(3))}" for i, n in enumerate(names)]
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    secret = tmp_path / "secret.png"  # beside the root: a list file must not reach it
    noise(99).save(secret)
    return root, root / "list.txt", lines


def _edit(list_file: Path, lines: list, line_no: int, text: str) -> None:
    lines = list(lines)
    lines[line_no - 1] = text
    list_file.write_text("\n".join(lines) + "\n")


LIST_ERRORS = {
    # case: (edit of line 2, or the whole file's bytes; the start of the one-line error, {f} the list file)
    "wrong-label-width": ("line", "img/good_1.png 0 1",
                          "error: {f}:2: 2 label entries, expected 3 (as on list.txt line 1)\n"),
    "non-utf8": ("bytes", b"img/good_0.png 1 0 0\nimg/\xff\xfe.png 0 1 0\n",
                 "error: {f}: cannot read as UTF-8 text ('utf-8' codec can't decode byte 0xff in position 25"),
    "empty-list": ("bytes", b"", "error: {f}: lists no images\n"),
    "blank-list": ("bytes", b"\n  \n", "error: {f}: lists no images\n"),
}


@pytest.mark.parametrize("case", list(LIST_ERRORS), ids=list(LIST_ERRORS))
def test_encode_refuses_a_malformed_list_file(listed, ckpt, capsys, case):
    root, list_file, lines = listed
    how, what, want = LIST_ERRORS[case]
    _edit(list_file, lines, 2, what) if how == "line" else list_file.write_bytes(what)
    before = snapshot(root.parent)
    assert run_cli(encode_argv(list_file, root.parent / "codes", ckpt)) == 1
    assert (one_error_line(capsys, list_file.name) + "\n").startswith(want.format(f=list_file))
    assert not (root.parent / "codes").exists() and snapshot(root.parent) == before


LIST_SKIPS = {
    # case: (line 2 becomes, the path skipped.json lists, the words of its reason)
    "missing-image": ("img/gone.png 0 1 0", "img/gone.png", "no such file"),
    "dot-dot": ("../secret.png 0 1 0", "../secret.png", "path leaves the image root"),
    "dot-dot-inside": ("img/../../secret.png 0 1 0", "img/../../secret.png", "path leaves the image root"),
    # a leading "/" is part of the relative path, as list files are written: not the system root
    "absolute": ("/secret.png 0 1 0", "secret.png", "no such file"),
}


@pytest.mark.parametrize("case", list(LIST_SKIPS), ids=list(LIST_SKIPS))
def test_encode_of_a_list_skips_a_bad_entry_with_its_reason(listed, ckpt, capsys, monkeypatch, case):
    from hybridhash.data import images as images_mod

    root, list_file, lines = listed
    line, path, reason = LIST_SKIPS[case]
    _edit(list_file, lines, 2, line)
    secret = root.parent / "secret.png"
    opened = []
    real = images_mod._read_source
    monkeypatch.setattr(images_mod, "_read_source", lambda s, n, *rest: opened.append(str(s)) or real(s, n, *rest))
    before = snapshot(root.parent)
    assert run_cli(encode_argv(list_file, root.parent / "codes", ckpt)) == 0
    capsys.readouterr()
    col = open_collection(root.parent / "codes")
    assert [col.path(i) for i in range(col.count)] == [ln.split()[0] for ln in lines if ln != lines[1]]
    skipped = {s["path"]: s["reason"] for s in col.skipped}
    assert list(skipped) == [path] and reason in skipped[path]
    assert all(Path(p).resolve() != secret.resolve() for p in opened)  # never read
    assert {k: v for k, v in snapshot(root.parent).items() if not k.startswith("codes/")} == before


LIST_CHECK = {
    # case: (line 2 of train.txt becomes, the words data check prints)
    "wrong-label-width": ("img/good_1.png 0 1", "train.txt:2: 2 label entries, expected 3"),
    "missing-image": ("img/gone.png 0 1 0", "train.txt:2: img/gone.png: missing"),
    "dot-dot": ("../secret.png 0 1 0", "train.txt:2: ../secret.png: leaves the image root"),
    "dot-dot-inside": ("img/../../secret.png 0 1 0", "train.txt:2: img/../../secret.png: leaves the image root"),
    "absolute": ("/etc/passwd 0 1 0", "train.txt:2: /etc/passwd"),
}


@pytest.mark.parametrize("case", list(LIST_CHECK), ids=list(LIST_CHECK))
def test_data_check_reports_a_bad_list_entry(listed, capsys, case):
    root, list_file, lines = listed
    line, words = LIST_CHECK[case]
    for f in ("test.txt", "database.txt"):
        (root / f).write_text("\n".join(lines) + "\n")
    _edit(root / "train.txt", lines, 2, line)
    before = snapshot(root.parent)
    rc = run_cli(["data", "check", f"list:{root}", "--verify-images", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 1 and "Traceback" not in out + err
    assert words in out, out
    assert snapshot(root.parent) == before


@pytest.mark.parametrize("line", ["../secret.png 0 1 0", "img/../../secret.png 0 1 0"], ids=["dot-dot", "dot-dot-inside"])
def test_list_protocol_refuses_a_path_leaving_the_image_root(listed, capsys, line):
    root, list_file, lines = listed
    for f in ("test.txt", "database.txt"):
        (root / f).write_text("\n".join(lines) + "\n")
    _edit(root / "train.txt", lines, 2, line)
    before = snapshot(root.parent)
    assert run_cli(["data", "info", f"list:{root}"]) == 1
    msg = one_error_line(capsys, f"{root / 'train.txt'}:2: {line.split()[0]}: leaves the image root")
    assert msg.startswith("error: ")
    assert snapshot(root.parent) == before


@pytest.mark.parametrize("case", ["non-utf8", "empty-list"], ids=["non-utf8", "empty-list"])
def test_data_check_reports_a_malformed_list_file(listed, capsys, case):
    root, list_file, lines = listed
    for f in ("test.txt", "database.txt"):
        (root / f).write_text("\n".join(lines) + "\n")
    (root / "train.txt").write_bytes(b"img/\xff.png 0 1 0\n" if case == "non-utf8" else b"")
    before = snapshot(root.parent)
    rc = run_cli(["data", "check", f"list:{root}", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 1 and "Traceback" not in out + err
    text = out + err
    assert "train.txt" in text and ("UTF-8" in text if case == "non-utf8" else "lists no images" in text), text
    assert snapshot(root.parent) == before


# ----------------------------------------------------------------------------------------------
# checkpoints


class _OpensAFile:
    """Pickles as a call of ``open(marker, "w")``: unpickling it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def collection(tmp_path_factory, ckpt):
    """A clean collection of 4 good images (encoded, indexed); (images, codes)."""
    base = tmp_path_factory.mktemp("col")
    write_good(base / "images")
    assert run_cli(encode_argv(base / "images", base / "codes", ckpt)) == 0
    assert run_cli(["index", "--collection", base / "codes"]) == 0
    return base / "images", base / "codes"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _foreign(tmp, ckpt):
    d = tmp / "foreign"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 768}))
    return d, "config.json", f"error: {d}/config.json: not a hybridhash checkpoint config\n"


def _truncated(tmp, ckpt):
    d = _copy(ckpt, tmp / "truncated")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    return d, "model.safetensors", f"error: {w}: not a readable safetensors file (Error while deserializing header"


def _pickled(tmp, ckpt):
    d = tmp / "pickled"
    d.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _OpensAFile(tmp / "marker")}, d / "model.pth")
    # --checkpoint is a project checkpoint (config.json + safetensors): the .pth is not even opened
    return d / "model.pth", "model.pth", f"error: {d / 'model.pth'}: not a hybridhash checkpoint (no config.json)\n"


CHECKPOINT_ENCODE = {"foreign-config": _foreign, "truncated-safetensors": _truncated, "pickled-pth": _pickled}


@pytest.mark.parametrize("case", list(CHECKPOINT_ENCODE), ids=list(CHECKPOINT_ENCODE))
def test_encode_refuses_a_bad_checkpoint(collection, ckpt, tmp_path, capsys, case):
    images, _ = collection
    path, culprit, want = CHECKPOINT_ENCODE[case](tmp_path, ckpt)
    before = snapshot(tmp_path), snapshot(images)
    assert run_cli(encode_argv(images, tmp_path / "codes", path)) == 1
    assert (one_error_line(capsys, culprit) + "\n").startswith(want)
    assert not (tmp_path / "codes").exists() and not (tmp_path / "marker").exists()
    assert (snapshot(tmp_path), snapshot(images)) == before


def test_a_pth_that_would_run_code_is_refused_without_running_it(tmp_path, ckpt):
    path, _, _ = _pickled(tmp_path, ckpt)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError) as err:
        hybridhash.create_model("hybridhash_cpu", bits=BITS, pretrained=str(path))
    assert str(err.value).startswith(f"{path}: holds Python objects other than tensors") and "\n" not in str(err.value)
    with pytest.raises(CheckpointError):
        hybridhash.models.read_state_dict(path)
    assert not (tmp_path / "marker").exists() and snapshot(tmp_path) == before


def _other_bits(tmp):
    torch.manual_seed(0)
    hybridhash.create_model("hybridhash_cpu", bits=16).eval().save_pretrained(str(tmp / "ck16"))
    return ["--checkpoint", tmp / "ck16"], "{c} holds 32-bit codes, checkpoint {k} makes 16-bit codes"


def _other_model(tmp):
    torch.manual_seed(1)
    hybridhash.create_model("hybridhash_cpu", bits=BITS).eval().save_pretrained(str(tmp / "other"))
    return ["--checkpoint", tmp / "other"], "{c} was encoded by model {f}, {k} is model "


SEARCH_MISMATCH = {"other-bit-length": _other_bits, "other-model": _other_model}


@pytest.mark.parametrize("case", list(SEARCH_MISMATCH), ids=list(SEARCH_MISMATCH))
def test_search_refuses_a_checkpoint_of_another_model(collection, tmp_path, capsys, case):
    images, codes = collection
    extra, want = SEARCH_MISMATCH[case](tmp_path)
    before = snapshot(codes), snapshot(images), snapshot(tmp_path)
    assert run_cli(["search", images / "good_0.png", "--collection", codes, *extra]) == 1
    line = one_error_line(capsys, str(codes), str(extra[1]))
    fingerprint = open_collection(codes).fingerprint
    assert line.startswith("error: " + want.format(c=codes, k=extra[1], f=fingerprint))
    assert (snapshot(codes), snapshot(images), snapshot(tmp_path)) == before


def test_search_refuses_an_index_that_is_not_a_collection(collection, capsys):
    images, _ = collection
    before = snapshot(images)
    assert run_cli(["search", images / "good_0.png", "--collection", images]) == 1
    assert one_error_line(capsys) == f"error: {images}: not a code collection (no manifest.json)"
    assert snapshot(images) == before


# ----------------------------------------------------------------------------------------------
# the code files of a collection


def _codes_of_other_bits(d: Path, marker: Path):
    n = len(np.load(d / "codes.npy"))
    np.save(d / "codes.npy", np.zeros((n, 2), np.uint8))
    return "manifest.json", (f"error: {d / 'manifest.json'}: says 4 codes of 32 bits (4 bytes each), "
                             f"{d / 'codes.npy'} holds shape (4, 2); the manifest does not match")


def _codes_pickle(d: Path, marker: Path):
    arr = np.empty(1, dtype=object)
    arr[0] = _OpensAFile(marker)
    np.save(d / "codes.npy", arr, allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):  # the refusal does not depend on the mmap
        np.load(d / "codes.npy", allow_pickle=False)
    assert not marker.exists()
    return "codes.npy", f"error: {d / 'codes.npy'}: not a numpy array file ("


def _manifest_not_json(d: Path, marker: Path):
    (d / "manifest.json").write_text('{"format": "hybridhash-codes", ')
    return "manifest.json", f"error: {d / 'manifest.json'}: not valid JSON (Expecting property name"


CODE_FILES = {"codes-other-bits": _codes_of_other_bits, "codes-pickle": _codes_pickle,
              "manifest-not-json": _manifest_not_json}


@pytest.mark.parametrize("case", list(CODE_FILES), ids=list(CODE_FILES))
def test_index_refuses_damaged_code_files(collection, tmp_path, capsys, case):
    images, codes = collection
    d = _copy(codes, tmp_path / "codes")
    culprit, want = CODE_FILES[case](d, tmp_path / "marker")
    before = snapshot(tmp_path), snapshot(images)
    assert run_cli(["index", "--collection", d]) == 1
    assert one_error_line(capsys, culprit).startswith(want)
    assert not (tmp_path / "marker").exists()
    assert (snapshot(tmp_path), snapshot(images)) == before


def test_raw_get_reaches_the_files_it_may(service, serve_collection):
    """The control of the table above: the same raw requests do reach the collection and the page."""
    assert raw_get(service.app, "/items/1")[0] == 200
    static = sorted(p.name for p in (Path(hybridhash.__file__).parent / "app" / "serve" / "static").iterdir())[0]
    assert raw_get(service.app, f"/static/{static}")[0] == 200
    assert raw_get(service.app, f"/static/./{static}")[0] == 200  # dot segments do reach the mount
