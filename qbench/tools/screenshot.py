"""The first screen of a card (or any local HTML page) as a PNG, in headless Chromium.

    python -m qbench.tools.screenshot reports/example/card.html reports/example/card-first-screen.png

Drives the system Chromium (/usr/bin/chromium, or --chromium PATH) through Playwright (the `test` extra); the
page is opened from disk with every request that is not a local file blocked.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 800, chromium: str = "/usr/bin/chromium",
               full_page: bool = False) -> Path:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            ctx = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
            ctx.route(lambda url: not url.startswith(("file:", "data:")), lambda route: route.abort())
            tab = ctx.new_page()
            tab.goto(Path(page).resolve().as_uri(), wait_until="load")
            out.parent.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(out), full_page=full_page)
        finally:
            browser.close()
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    a = ap.parse_args(argv)
    print(screenshot(a.page, a.out, a.width, a.height, a.chromium))


if __name__ == "__main__":
    main()
