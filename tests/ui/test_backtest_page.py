"""The dashboard's back-test pages in a real headless Chromium: the list, a report with its
tables, and the baseline-vs-candidate plot of a chosen twin and output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from backtest_support import END, START, record

pytestmark = pytest.mark.services  # needs Chromium (see conftest.py)

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def page(live_server):
    if not Path(CHROMIUM).exists():
        message = f"the dashboard tests need {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.set_default_timeout(15_000)
        tab.on("console", lambda m: m.type == "error" and errors.append(m.text))
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.errors = errors
        yield tab
        browser.close()


def test_a_report_shows_its_tables_and_plots_baseline_vs_candidate(platform, live_server, page):
    record(platform)
    candidate = {
        "patch": {
            "derived": {"temp_avg": "avg(temp, '30m')"},
            "rules": {"hot": {"when": "temp > 80", "for": "5m"}},
        }
    }
    plan = platform.backtests.plan(
        {"type": "oven", "candidate": candidate, "from": START, "to": END, "plot": ["oven-4"]}
    )
    platform.backtests.run(plan, "run_ui")
    page.goto(f"{live_server}/#/backtests/run_ui")
    page.wait_for_selector('#view[data-ready="1"]')
    page.wait_for_selector("#backtest-chart .main-svg")
    assert "temp_avg" in page.inner_text("table.outputs")
    assert "hot" in page.inner_text("table.rules")
    page.select_option('select[name="twin"]', "oven-4")
    page.wait_for_function("location.hash.includes('twin=oven-4')")
    legend = page.inner_text("#backtest-chart")
    assert "baseline" in legend and "candidate" in legend
    page.goto(f"{live_server}/#/backtests")
    page.wait_for_selector('#view[data-ready="1"]')
    page.wait_for_selector("form.backtest-form textarea")
    assert page.errors == []
