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


def test_a_calibration_report_shows_parameters_and_prediction_scores(
    platform, clock, live_server, page
):
    from calibration_support import feed
    from conftest import T0

    from livetwin.examples.rollers import ROLLER_TYPE, SPEEDS, roller_fleet

    clock.now = T0 + 10**8
    calibration = {**ROLLER_TYPE["calibration"], "backend": "numpy"}
    platform.put_type("roller_line", {**ROLLER_TYPE, "calibration": calibration})
    feed(platform, roller_fleet(4, seed=1), [f"line-{i}" for i in range(4)], 60, 0)
    noisy = {"calibration": {"measurement_noise": {w: 1.0 for w in SPEEDS}}}
    plan = platform.backtests.plan(
        {"type": "roller_line", "candidate": {"patch": noisy}, "from": T0, "to": T0 + 6000}
    )
    platform.backtests.run(plan, "run_ui_cal")
    page.goto(f"{live_server}/#/backtests/run_ui_cal")
    page.wait_for_selector("table.calibration-outputs")
    assert "b1" in page.inner_text("table.calibration-parameters")
    scores = page.inner_text("table.calibration-outputs")
    assert "w1" in scores and "candidate" in scores
    assert page.errors == []
