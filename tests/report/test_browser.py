"""The HTML card in a real browser: headless Chromium driven by Playwright.

Renders tests/fixtures/run_small, opens card.html from disk and checks that it loads without console
errors and without any network request (only the file itself and data: URIs), that it fits a laptop
screen (1280x800) without horizontal scrolling, and that it renders with print media. Screenshots land
in the test's tmp dir.

Needs the Debian package `chromium` at /usr/bin/chromium (`make setup` installs it when run as root;
otherwise `sudo apt-get install chromium`) and the PyPI package `playwright` (in the `test` extra).
Playwright never downloads a browser here: it drives the system Chromium. Skipped only when
/usr/bin/chromium is absent.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from tests.report.support import get_row

from qbench.report import render_card

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "run_small"
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
LAPTOP = {"width": 1280, "height": 800}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="browser test needs Chromium at /usr/bin/chromium: run `make setup` as root, or "
           "`apt-get update && apt-get install -y chromium` (Debian/Ubuntu)")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # chromium is there, so the test must run: fail loudly, never skip
        pytest.fail("playwright is not installed: pip install -e '.[test]' (or pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def card_html(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("browser") / "run_small"
    shutil.copytree(FIXTURE, run)
    written = render_card(run)
    return written["card.html"]


class Loaded:
    """A page opened from a file, with everything it logged and requested."""

    def __init__(self, browser, path: Path, viewport=LAPTOP, media: str | None = None):
        self.url = path.resolve().as_uri()
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.requests: list[str] = []
        self.failed: list[str] = []
        self.context = browser.new_context(viewport=viewport, device_scale_factor=1, java_script_enabled=True)
        # nothing may leave the machine: abort anything that is not a local file or inline data
        self.context.route(lambda url: not url.startswith(("file:", "data:")), lambda route: route.abort())
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.context.on("requestfailed", lambda r: self.failed.append(f"{r.url}: {r.failure}"))
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(
            f"{m.text} @ {m.location}"))
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        if media:
            self.page.emulate_media(media=media)
        self.response = self.page.goto(self.url, wait_until="load")
        self.page.wait_for_load_state("networkidle")

    @property
    def foreign_requests(self) -> list[str]:
        return [u for u in self.requests if u != self.url and not u.startswith("data:")]

    def problems(self) -> list[str]:
        return ([f"console error: {e}" for e in self.console_errors] + [f"page error: {e}" for e in self.page_errors]
                + [f"network request: {u}" for u in self.foreign_requests]
                + [f"failed request: {f}" for f in self.failed])

    def close(self):
        self.context.close()


@pytest.fixture
def open_page(browser):
    opened = []

    def _open(path, **kw) -> Loaded:
        opened.append(Loaded(browser, path, **kw))
        return opened[-1]
    yield _open
    for p in opened:
        p.close()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_loads_without_errors_or_network(open_page, card_html, tmp_path):
    p = open_page(card_html)
    assert p.problems() == []
    assert p.requests and p.requests[0] == p.url  # the request log works: it saw the page itself
    assert p.page.title() == "Quantization card: small"
    imgs = p.page.eval_on_selector_all(
        "img", "els => els.map(e => [e.getAttribute('src').slice(0, 22), e.complete, e.naturalWidth])")
    assert len(imgs) == 5                     # the headline plot in the overview, four more under Results
    assert all(src == "data:image/png;base64," and done and w > 0 for src, done, w in imgs), imgs
    sp = get_row(FIXTURE, "minilm__w8a8-dyn__text", "speedup", "paired", 8)
    assert f"{sp['value']:.2f}x [{sp['ci_low']:.2f}, {sp['ci_high']:.2f}]" in p.page.inner_text("body")
    from tests.report.support import plot_style_problems     # the plots' looks, from their data

    assert plot_style_problems(json.loads((card_html.parent / "card.json").read_text(encoding="utf-8"))) == []
    shot = tmp_path / "card.png"
    data = p.page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes() == data and len(data) > 10_000
    width, height = png_size(data)
    assert width == 1280 and height > 800


@pytest.mark.parametrize("viewport", [LAPTOP, {"width": 390, "height": 844}], ids=["laptop", "phone"])
def test_no_horizontal_overflow(open_page, card_html, viewport):
    p = open_page(card_html, viewport=viewport)
    scroll, inner = p.page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert inner == viewport["width"]
    assert scroll <= inner + 1, f"page is {scroll}px wide in a {inner}px window: horizontal scrolling"
    assert p.problems() == []


def test_print_media_renders(open_page, card_html, tmp_path):
    p = open_page(card_html, media="print")
    page = p.page
    assert page.evaluate("matchMedia('print').matches")
    assert page.evaluate("getComputedStyle(document.querySelector('.wrap')).overflowX") == "visible"
    if page.query_selector("nav"):
        assert page.evaluate("getComputedStyle(document.querySelector('nav')).display") == "none"
    assert page.evaluate("document.body.getBoundingClientRect().height") > 800
    data = page.screenshot(path=str(tmp_path / "card-print.png"), full_page=True)
    assert len(data) > 10_000 and png_size(data)[0] == 1280
    pdf = page.pdf(format="A4", print_background=True)
    (tmp_path / "card.pdf").write_bytes(pdf)
    assert pdf.startswith(b"%PDF-") and len(pdf) > 10_000
    assert p.problems() == []


def test_checks_catch_errors_and_requests(open_page, tmp_path):
    """The checks above can fail: a page that logs an error and fetches remote files is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><title>bad</title>'
                   '<link rel="stylesheet" href="https://example.invalid/x.css"></head><body>'
                   '<img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script>'
                   '<div style="width:3000px">wide</div></body></html>', encoding="utf-8")
    p = open_page(bad)
    assert any("boom" in e for e in p.console_errors)
    assert "https://example.invalid/x.css" in p.foreign_requests
    assert "http://127.0.0.1:9/x.png" in p.foreign_requests
    assert p.page.evaluate("document.documentElement.scrollWidth") > 1281


def test_the_first_printed_page_holds_the_verdict(open_page, card_html, tmp_path):
    """Page 1 of the printed card: every model's matrix (each scheme's speed-up as the card shows it) and the
    setup lines; the detail sections start on a later page."""
    from pypdf import PdfReader

    ctx = json.loads((card_html.parent / "card.json").read_text(encoding="utf-8"))
    p = open_page(card_html, media="print")
    pdf = tmp_path / "card.pdf"
    pdf.write_bytes(p.page.pdf(format="A4", print_background=True))
    import unicodedata

    # NFKC: the PDF's text may carry typographic ligatures ("ﬂ" for "fl")
    pages = [unicodedata.normalize("NFKC", pg.extract_text() or "") for pg in PdfReader(str(pdf)).pages]
    first = " ".join(pages[0].split())
    assert len(pages) > 2
    for m in ctx["overview"]["models"]:
        assert m["model"] in first
        for row in m["table"]["rows"]:
            scheme, speed = row["cells"][0], row["cells"][1]
            assert scheme in first and speed in first, (scheme, speed)
    for line in ctx["overview"]["setup_lines"]:
        head = " ".join(line.split()[:4])
        assert head in first, head
    assert "Realized quantization map" not in first and "Realized quantization map" in " ".join(pages)


def test_site_index_sorts_and_filters_offline(open_page, tmp_path):
    from qbench import api

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(FIXTURE, a)
    shutil.copytree(FIXTURE, b)
    site = tmp_path / "site"
    api.publish([a, b], site)
    p = open_page(site / "index.html")
    page = p.page
    speed_col = page.eval_on_selector_all("thead th", "ths => ths.map(t => t.textContent)").index(
        "Speed-up [95% CI]")

    def speeds():
        return page.eval_on_selector_all(
            "tbody tr:not([hidden])", f"rs => rs.map(r => parseFloat(r.cells[{speed_col}].dataset.sort))")
    before = speeds()
    page.click(f"thead th:nth-child({speed_col + 1}) button")
    assert speeds() == sorted(before)
    page.click(f"thead th:nth-child({speed_col + 1}) button")
    assert speeds() == sorted(before, reverse=True)
    page.fill("#filter", "w4-g32")
    shown = page.eval_on_selector_all("tbody tr:not([hidden])", "rs => rs.map(r => r.textContent)")
    assert len(shown) == 4 and all("w4-g32" in t for t in shown)      # 2 runs x 2 models
    assert page.inner_text("#shown") == f"4 of {len(before)} shown"
    imgs = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
    assert imgs and all(done and w > 0 for done, w in imgs)
    assert p.console_errors == [] and p.page_errors == [] and p.failed == []
    site_url = site.resolve().as_uri() + "/"
    assert all(u.startswith(site_url) for u in p.requests), p.requests      # the site's own files only
    for viewport in (LAPTOP, {"width": 390, "height": 844}):
        q = open_page(site / "index.html", viewport=viewport)
        scroll, inner = q.page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert scroll <= inner + 1, (viewport, scroll)
