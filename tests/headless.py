"""Open a local HTML file in Debian's Chromium, headless, through Playwright.

The browser is the system's (`/usr/bin/chromium`, installed by `make test`); Playwright never
downloads one. Without it the tests skip with the reason, except under CI, where a missing
browser is a set-up failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = os.environ.get("AGEMEM_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


def require_browser():
    missing = []
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install '.[test]')")
    if missing:
        reason = "headless browser unavailable: " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@contextlib.contextmanager
def open_page(path: Path, width: int = 1280, height: int = 900):
    """(page, errors): the page loaded from `path`; errors collects console errors and
    uncaught exceptions for as long as the page is open."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto(path.resolve().as_uri())
            page.wait_for_load_state("load")
            yield page, errors
        finally:
            browser.close()


def pixel_std(png: Path) -> float:
    """Standard deviation of the screenshot's grey levels: ~0 for a blank page."""
    from PIL import Image

    return float(np.asarray(Image.open(png).convert("L"), np.float32).std())
