"""Refresh the dashboard pictures of the README and docs/ui.md from a running `livetwin demo`
(best after ten minutes or so, when the drags have worn and calibration has a history):

    .venv/bin/python docs/screenshots.py http://127.0.0.1:8000

Drives Debian's Chromium (/usr/bin/chromium) headless with Playwright, as the dashboard tests do.
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
PICTURES = {  # file -> (route, what must be drawn first, viewport height)
    "ui-twin.png": ("/twin/line-1?range=15m", "#chart .main-svg", 2300),
    "ui-lineage.png": ("/lineage?twin=line-1&name=b2", "svg.lineage g.node.group", 760),
    "ui-models.png": ("/models/roller_line", ".version-graph svg", 820),
    "ui-fleet.png": ("/fleet?type=pump", "table.twins [data-spark] svg", 900),
}


def main(url: str) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for name, (route, marker, height) in PICTURES.items():
            page = browser.new_page(viewport={"width": 1280, "height": height})
            page.goto(f"{url.rstrip('/')}/#{route}")
            page.wait_for_selector('#view[data-ready="1"]')
            page.wait_for_selector(marker, timeout=30_000)
            page.wait_for_timeout(1500)  # live values and Plotly's layout settle
            page.screenshot(path=DOCS / name)
            page.close()
            print(f"{DOCS / name}: {route}")
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000")
