"""A headless Debian Chromium driven by Playwright, as the dashboard tests use it (never a
downloaded browser): skip without one, or fail under CI=true."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def require_browser() -> None:
    """Skip (or fail under CI=true) when Playwright or Debian's Chromium is missing."""
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "Playwright for Python is not installed (pip install playwright)"
    if problem is None and not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        problem = f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the UI tests need a browser under CI: {problem}")
        pytest.skip(problem)


@contextlib.contextmanager
def chromium() -> Iterator:
    """A launched headless Chromium (a Playwright Browser), closed afterwards."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
