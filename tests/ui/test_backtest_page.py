"""The dashboard's back-test pages in a real headless Chromium: the list, a report with its
tables, and the baseline-vs-candidate plot of a chosen twin and output."""

from __future__ import annotations

import pytest
from backtest_support import END, START, record
from browser_support import DESKTOP, chromium

pytestmark = pytest.mark.services  # needs Chromium (see conftest.py)


@pytest.fixture
def page(live_server):
    errors: list[str] = []
    with chromium() as browser:
        tab = browser.new_page(viewport=DESKTOP)
        tab.set_default_timeout(15_000)
        tab.on("console", lambda m: m.type == "error" and errors.append(m.text))
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.errors = errors
        yield tab


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
