"""The web page end to end in real headless Chromium (Debian's ``chromium``, driven by playwright):
upload an image, see the nearest images with their distances; a bad upload shows the reason.
The page runs under its own Content-Security-Policy and may load nothing from elsewhere; so does the
API documentation at /docs (Swagger UI), under its policy, and neither page's policy refuses anything."""
from __future__ import annotations

import base64
import os
import shutil

import pytest

from hybridhash.retrieval import Retriever
from hybridhash.app.serve import BackgroundServer, create_app


CHROMIUM = shutil.which("chromium") or next(
    (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable: the web-page test needs one "
                                                "(Debian: apt-get install chromium; .ci/run installs it)"),
]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def served(serve_collection):
    built = serve_collection
    with BackgroundServer(create_app(Retriever.open(built["codes"]))) as server:
        yield built, server


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


# what the page's Content-Security-Policy refused, as the page itself is told: an init script runs
# before the page's own and whatever its policy says
_CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", e => window.__cspViolations.push(
    `${e.violatedDirective} refused ${e.blockedURI || "(inline)"} at ${e.sourceFile}:${e.lineNumber}`));
"""


def _watched_page(browser):
    """A new page that records its script errors, the URLs it requests, the requests that failed or
    were answered with an error, and the console's messages."""
    context = browser.new_context(viewport={"width": 1200, "height": 820})
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(_CSP_LISTENER)
    page = context.new_page()
    page.js_errors, page.requested, page.failed, page.console = [], [], [], []
    page.on("pageerror", lambda err: page.js_errors.append(str(err)))
    page.on("request", lambda req: page.requested.append(req.url))
    page.on("requestfailed", lambda req: page.failed.append(f"{req.url}: {req.failure}"))
    page.on("response", lambda r: r.status >= 400 and page.failed.append(f"{r.url}: HTTP {r.status}"))
    page.on("console", lambda msg: page.console.append(f"{msg.type}: {msg.text}"))
    return context, page


def _csp_violations(page):
    """The violations of the page's Content-Security-Policy: its securitypolicyviolation events and
    any console message about the policy (Chromium logs a refusal there too)."""
    reported = page.evaluate("window.__cspViolations")
    logged = [m for m in page.console if "content security policy" in m.lower()]
    return reported + logged


@pytest.fixture
def page(browser, served):
    _, server = served
    context, page = _watched_page(browser)
    page.goto(server.url + "/")
    yield page
    context.close()


def _tiles(page):
    return page.locator("#grid .tile")


def test_upload_shows_the_nearest_images(page, served, tmp_path):
    from playwright.sync_api import expect

    built, server = served
    assert _csp_violations(page) == []  # the page has loaded: its script ran, or was refused
    expect(page.locator("#collection")).to_have_attribute("data-count", str(len(built["paths"])))
    expect(page.locator("#collection")).to_contain_text("24 images")
    expect(page.locator("#collection")).to_contain_text("32-bit codes")

    page.select_option("#k", "5")
    item = 13
    page.set_input_files("#file", str(built["images"] / built["paths"][item]))
    tiles = _tiles(page)
    expect(tiles).to_have_count(5)
    expect(page.locator("#preview")).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()

    distances = [int(d) for d in tiles.evaluate_all("els => els.map(e => e.dataset.distance)")]
    assert distances[0] == 0 and distances == sorted(distances)
    expect(tiles.first.locator(".distance")).to_have_text("distance 0")
    ids = [int(i) for i in tiles.evaluate_all("els => els.map(e => e.dataset.id)")]
    zero = [i for i, d in zip(ids, distances) if d == 0]
    assert item in zero
    for n, (i, d) in enumerate(zip(ids, distances)):
        expect(tiles.nth(n).locator(".distance")).to_have_text(f"distance {d}")
        expect(tiles.nth(n).locator(".label")).to_have_text(built["paths"][i].split("/")[0])
        img = tiles.nth(n).locator("img")
        expect(img).to_have_attribute("src", f"/items/{i}?thumb=1")
        expect(img).to_have_js_property("complete", True)
    widths = tiles.locator("img").evaluate_all("els => els.map(e => e.naturalWidth)")
    assert all(w > 0 for w in widths), widths  # every thumbnail decoded

    # more results on the same query
    page.select_option("#k", "20")
    expect(tiles).to_have_count(20)
    page.screenshot(path=str(tmp_path / "results.png"), full_page=True)
    assert (tmp_path / "results.png").stat().st_size > 10_000

    assert page.js_errors == []
    assert _csp_violations(page) == []
    assert page.failed == []
    foreign = [u for u in page.requested if not u.startswith((server.url + "/", "blob:", "data:"))]
    assert foreign == []


def test_drop_an_image_on_the_page(page, served):
    from playwright.sync_api import expect

    built, _ = served
    item = 20
    data = (built["images"] / built["paths"][item]).read_bytes()
    expect(page.locator("#collection")).to_have_attribute("data-count", "24")
    # a real drop event carrying a File, as a person's drag from the desktop delivers it
    page.locator("#drop").evaluate(
        """(zone, b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
            zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
        }""", base64.b64encode(data).decode())
    tiles = _tiles(page)
    expect(tiles).to_have_count(10)
    expect(tiles.first).to_have_attribute("data-distance", "0")
    found = tiles.evaluate_all("els => els.map(e => [Number(e.dataset.id), Number(e.dataset.distance)])")
    assert [item, 0] in found
    expect(page.locator("#query-info")).to_contain_text("dropped.png")
    assert page.js_errors == []


def test_a_bad_upload_shows_the_reason(page, served, tmp_path):
    from playwright.sync_api import expect

    built, _ = served
    expect(page.locator("#collection")).to_have_attribute("data-count", "24")
    page.set_input_files("#file", str(built["images"] / built["paths"][0]))
    expect(_tiles(page)).to_have_count(10)
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                          "buffer": b"not a picture at all\n"}])
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("notes.txt: not an image")
    expect(_tiles(page)).to_have_count(0)  # the old results do not pass for this query's
    page.screenshot(path=str(tmp_path / "error.png"), full_page=True)
    assert page.js_errors == []


def test_api_docs_render_under_their_policy(browser, served):
    """/docs is Swagger UI from this server's own files, started by a script file rather than an
    inline one: under its Content-Security-Policy it renders the API, refused nothing and loaded
    nothing from elsewhere."""
    from playwright.sync_api import expect

    _, server = served
    context, page = _watched_page(browser)
    try:
        response = page.goto(server.url + "/docs")  # returns once loaded: its scripts have run or been refused
        assert _csp_violations(page) == []
        search = page.locator(".opblock-post", has=page.locator(".opblock-summary-path[data-path='/search']"))
        expect(search).to_have_count(1)  # Swagger UI ran and read /openapi.json
        expect(page.locator(".info .title")).to_contain_text("hybridhash")
        search.locator(".opblock-summary").click()  # the operation opens, its form and answers shown
        expect(search.locator(".opblock-body")).to_be_visible()
        expect(search.locator(".responses-wrapper")).to_contain_text("200")
        health = page.locator(".opblock-get", has=page.locator(".opblock-summary-path[data-path='/health']"))
        health.locator(".opblock-summary").click()  # and "Try it out" sends a request and shows the answer
        health.locator("button.try-out__btn").click()
        health.locator("button.execute").click()
        expect(health.locator(".live-responses-table .response .response-col_status")).to_have_text("200")
        expect(health.locator(".live-responses-table .response .response-col_description")).to_contain_text('"count": 24')

        assert page.js_errors == []
        assert _csp_violations(page) == []
        assert page.failed == []
        assert server.url + "/openapi.json" in page.requested and server.url + "/health" in page.requested
        foreign = [u for u in page.requested if not u.startswith((server.url + "/", "blob:", "data:"))]
        assert foreign == []
        # and it was the strict policy that held: no inline or eval'd script allowed
        policy = dict(d.strip().partition(" ")[::2] for d in response.headers["content-security-policy"].split(";"))
        assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
    finally:
        context.close()


def test_the_page_follows_an_update_of_the_collection(browser, tmp_path):
    """The service switches to a new generation while the page is open: the next search shows the
    new count and generation, and its results (thumbnails included) come from the new generation."""
    import time

    import httpx
    from playwright.sync_api import expect

    from hybridhash.app.encode import encode_collection
    from tests.helpers.collections import build_collection
    from tests.helpers.living import digit_png

    built = build_collection(tmp_path)
    images, paths = built["images"], built["paths"]
    app = create_app(Retriever.open(built["codes"]), follow_interval=0.1)
    with BackgroundServer(app) as server:
        context, page = _watched_page(browser)
        try:
            page.goto(server.url + "/")
            line = page.locator("#collection")
            expect(line).to_have_attribute("data-count", "24")
            expect(line).to_have_attribute("data-generation", "0")
            (images / paths[5]).unlink()
            for i in range(2):
                digit_png(images / f"new/new_{i}.png", 40 + i)
            encode_collection(images, built["codes"], built["checkpoint"], workers=0, progress=False)
            deadline = time.monotonic() + 20
            while httpx.get(server.url + "/health").json()["generation"]["number"] != 1:
                assert time.monotonic() < deadline, "the service did not switch"
                time.sleep(0.05)
            page.select_option("#k", "50")
            page.set_input_files("#file", str(images / "new/new_1.png"))
            expect(_tiles(page)).to_have_count(25)
            expect(line).to_have_attribute("data-count", "25")
            expect(line).to_have_attribute("data-generation", "1")
            expect(line).to_contain_text("25 images")
            expect(line).to_contain_text("generation 1")
            expect(_tiles(page).first).to_have_attribute("data-distance", "0")
            shown = {int(i) for i in _tiles(page).evaluate_all("els => els.map(e => e.dataset.id)")}
            assert shown == {int(i) for i in app.state.retriever.collection.item_ids}
            assert page.js_errors == [] and page.failed == []
        finally:
            context.close()
