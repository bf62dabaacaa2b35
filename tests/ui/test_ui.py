"""The web dashboard in a real headless Chromium against a real server: every page loads
cleanly, errors from the server show in place, bands are drawn, live values change, alarms are
acknowledged, schedules run now, and a calibrated value's lineage graph is drawn."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, unquote, urlencode

import httpx
import pytest
import uvicorn
from browser_support import DESKTOP, PHONE, chromium, require_browser
from conftest import MQTT_HOST, MQTT_PORT, require_mosquitto

from livetwin.api.app import create_app
from livetwin.examples.rollers import ROLLER_LINE, ROLLER_TYPE, observations, roller_fleet
from livetwin.platform import Platform, wall_clock_ms
from livetwin.settings import MqttConnection, Settings
from livetwin.ui import mount

pytestmark = pytest.mark.services  # needs a real service (see conftest.py)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

STATION = {"properties": {"level": {"unit": "m"}}, "children": ["pump"]}
PUMP = {
    "description": "a pump with a calibrated temperature estimate",
    "stale_after": "10m",
    "properties": {
        "flow": {"unit": "m3/h", "min": 0, "max": 1000},
        "pressure": {"unit": "bar"},
        "x": {"unit": "degC"},
        "x_lower": {"unit": "degC"},
        "x_upper": {"unit": "degC"},
    },
    "parameters": {"eff": {"value": 0.8, "min": 0.1, "max": 1}},
    "derived": {
        "power": {"expr": "flow * pressure / 36 / eff", "unit": "kW"},
        "flow_avg": "avg(flow, '10m')",
    },
}
LAB = {"description": "a type to edit", "properties": {"t": {"unit": "degC"}}}
BOILER = {
    "description": "a boiler with alarm rules",
    "properties": {"temp": {"unit": "degC"}},
    "parameters": {"limit": {"value": 80, "unit": "degC"}},
    "rules": {
        "overheat": {
            "when": "temp > limit",
            "severity": "critical",
            "message": "{twin} temperature {temp:.1f} above {limit:.0f}",
        },
        "warm": {"when": "temp > 60", "severity": "warning"},
    },
}
BLOWER = {  # a fan that steps from 900 to 1200 rpm, and a dense, noisy vibration
    "properties": {"speed": {"unit": "rpm"}, "vibration": {"unit": "mm/s"}},
}
PIR = {"properties": {"motion": {}}}  # event-driven: reports a change every 20 minutes or so
CRON = {"kind": "cron", "cron": "0 3 * * *", "tz": "Europe/Berlin"}
LINES = ["line-0", "line-1"]
MODEL_NODE = "model:roller_line/1"
CALIBRATIONS = 12  # runs of the roller lines' calibration, each resuming the one before
LOG_LINE = "hello from the dashboard test"
ODD_ID = "lab/room #2?"  # ids may hold '/', '#' and '?': links must encode them


def test_mount_serves_the_page_its_modules_and_plotly(platform, monkeypatch):
    """No browser needed: what `mount(app)` serves, and the error when plotly is missing."""
    from fastapi.testclient import TestClient

    import livetwin.ui

    app = create_app(platform)
    if not any(getattr(route, "path", None) == "/" for route in app.routes):
        mount(app)
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'src="ui/app.js"' in page.text
        module = client.get("/ui/app.js")
        assert module.status_code == 200 and "javascript" in module.headers["content-type"]
        assert client.get("/ui/pages/twin.js").status_code == 200
        assert client.get("/ui/nope.js").json()["error"]["code"] == "http_error"
        plotly = client.get("/ui/vendor/plotly.min.js")
        assert plotly.status_code == 200 and "javascript" in plotly.headers["content-type"]
        assert len(plotly.content) > 1_000_000  # the real bundle from the plotly package
        etag = plotly.headers["etag"]
        again = client.get("/ui/vendor/plotly.min.js", headers={"if-none-match": etag})
        assert again.status_code == 304
        assert client.get("/api/health").json()["status"] == "ok"  # the API is untouched

        monkeypatch.setattr(livetwin.ui, "plotly_js", lambda: None)
        missing = client.get("/ui/vendor/plotly.min.js")
        assert missing.status_code == 404 and "pip install" in missing.json()["error"]["fix"]


def _seed(platform: Platform, now: int) -> None:
    platform.put_type("station", STATION)
    platform.put_type("pump", PUMP)
    platform.put_type("lab", LAB)
    rows = [{"twin": "station-1", "type": "station", "ts": now - 60_000, "values": {"level": 4}}]
    for k in range(120, 0, -1):  # an hour of pump-1, every 30 s, with a band around x
        ts = now - k * 30_000
        x = 40 + 5 * math.sin(k / 10)
        width = 1 + 0.5 * math.cos(k / 7)
        rows.append(
            {
                "twin": "pump-1",
                "type": "pump",
                "ts": ts,
                "parent": "station-1",
                "values": {
                    "flow": 100 + 10 * math.sin(k / 5),
                    "pressure": 3 + 0.2 * math.cos(k / 9),
                    "x": x,
                    "x_lower": x - width,
                    "x_upper": x + width,
                },
            }
        )
    rows.append(  # pump-2 went quiet half an hour ago: stale
        {
            "twin": "pump-2",
            "type": "pump",
            "ts": now - 30 * 60_000,
            "parent": "station-1",
            "values": {"flow": 50, "pressure": 2},
        }
    )
    rows.append({"twin": "lab-1", "type": "lab", "ts": now - 1000, "values": {"t": 21.5}})
    rows.append({"twin": ODD_ID, "type": "lab", "ts": now - 2000, "values": {"t": 19}})
    result = platform.ingest(rows)
    assert not result.rejected, result.rejected
    _seed_signals(platform, now)
    _seed_alarms_jobs_models(platform, now)


def _seed_signals(platform: Platform, now: int) -> None:
    """A blower stepping 900 -> 1200 rpm (one sample a second for 40 min) with a noisy
    vibration, and a motion sensor that reports every 20 minutes (last 25 minutes ago)."""
    platform.put_type("blower", BLOWER)
    platform.put_type("pir", PIR)
    rows = [
        {
            "twin": "blower-1",
            "type": "blower",
            "ts": now - 2400_000 + k * 1000,
            "values": {"speed": 900.0 if k < 1200 else 1200.0, "vibration": 2 + (k % 7) / 2},
        }
        for k in range(2400)
    ]
    quiet = now - 25 * 60_000
    rows += [
        {"twin": "pir-1", "type": "pir", "ts": quiet - k * 1_200_000, "values": {"motion": k % 2}}
        for k in range(12, -1, -1)
    ]
    assert not platform.ingest(rows).rejected


def _seed_alarms_jobs_models(platform: Platform, now: int) -> None:
    """A boiler over its limit (rule alarms), a schedule and a join waiting for an event, and
    a registered roller-line model that a calibration run used (lineage)."""
    platform.put_type("boiler", BOILER)
    row = {"twin": "boiler-1", "type": "boiler", "ts": now - 5000, "values": {"temp": 91.0}}
    assert not platform.ingest([row]).rejected

    def hello(ctx) -> dict:
        ctx.log(LOG_LINE)
        return {"greeted": ctx.args.get("who")}

    scheduler = platform.scheduler
    scheduler.register("hello", hello)
    scheduler.register("joiner", hello, events=["data-ready", "model-ready"])
    scheduler.add_schedule(
        {
            "id": "hourly-hello",
            "function": "hello",
            "trigger": {"kind": "interval", "every": "1h"},
            "args": {"who": "dashboard"},
        }
    )
    scheduler.post_event("data-ready", {"rows": 10}, key="pump-1")

    calibration = {**ROLLER_TYPE["calibration"], "every": "1h"}  # a system schedule
    platform.put_type("roller_line", {**ROLLER_TYPE, "calibration": calibration})
    scheduler.add_schedule({"id": "nightly", "function": "hello", "trigger": CRON})
    model = {
        "kind": "deductive",
        "ref": ROLLER_LINE,
        "author": "ana",
        "description": "roller line with bearing drags",
        "training": {"start": now - 86_400_000, "end": now - 3_600_000},
        "metrics": {"rmse_T1": 1.9},
    }
    platform.registry.register("roller_line", model)
    platform.registry.set_alias("roller_line", "production", 1, "ana")
    sim = roller_fleet(len(LINES), seed=5)
    for r in range(CALIBRATIONS):  # each run resumes the last: a chain of runs in the lineage
        rows = []
        for k in range(20):
            rows += observations(sim.step(), LINES, now - 60_000 + (20 * r + k) * 100)
        assert not platform.ingest(rows).rejected
        run = scheduler.run_schedule("calibrate.every.roller_line")  # a run on the Jobs page
        run = scheduler.wait(run["id"], 30)
        assert run["result"]["status"] == "succeeded", run


@contextmanager
def _serve(platform: Platform, seed=None) -> Iterator[SimpleNamespace]:
    """A real uvicorn server in a thread on a free port over `platform` (closed afterwards);
    `seed(platform)` runs once the server is up."""
    app = create_app(platform)
    if not any(getattr(route, "path", None) == "/" for route in app.routes):
        mount(app)  # until create_app mounts the dashboard itself
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 10
        while not uv.started:
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.02)
        if seed is not None:
            seed(platform)
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", platform=platform)
    finally:
        uv.should_exit = True
        thread.join(10)
        sock.close()
        platform.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """The dashboard over a seeded platform."""
    require_browser()
    platform = Platform(tmp_path_factory.mktemp("ui") / "data")
    with _serve(platform, lambda p: _seed(p, wall_clock_ms())) as served:
        yield served


@pytest.fixture(scope="module")
def browser(server):
    with chromium() as launched:
        yield launched


@pytest.fixture
def errors() -> list[str]:
    """Console errors and uncaught exceptions of the test's page."""
    return []


@pytest.fixture
def page(browser, errors):
    context = browser.new_context(viewport=DESKTOP)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    tab.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text}"))
    tab.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    yield tab
    context.close()


def visit(page, server, route: str) -> None:
    """Load the dashboard at `#<route>` and wait until the page has rendered."""
    page.goto("about:blank")
    page.goto(f"{server.url}/#{route}")
    page.wait_for_selector('#view[data-ready="1"]')


def go(page, route: str) -> None:
    """Move the loaded dashboard to `#<route>` (no reload) and wait until it has rendered."""
    page.evaluate(
        """route => new Promise(done => {
            addEventListener('hashchange', done, {once: true});  // after the router's own
            if (location.hash === '#' + route) dispatchEvent(new HashChangeEvent('hashchange'));
            else location.hash = route;
        })""",
        route,
    )
    page.wait_for_selector('#view[data-ready="1"]')


def api_error(server, method: str, path: str, **kwargs) -> dict:
    response = httpx.request(method, server.url + path, **kwargs)
    assert response.status_code == 422, response.text
    return response.json()["error"]


def test_every_page_loads_without_console_errors(server, page, errors):
    from playwright.sync_api import expect

    pages = {
        "/fleet": "table.twins",
        "/twin/pump-1": "#chart .main-svg",
        "/twin/station-1": "#chart .main-svg",
        f"/twin/{quote(ODD_ID, safe='')}": "#chart .main-svg",
        "/types": "table.types",
        "/types/pump": "form.editor textarea",
        "/alarms": "table.alarms",
        "/jobs": "table.schedules",
        "/models": "table.models",
        "/models/roller_line": "article.version",
        "/lineage?" + urlencode({"node": MODEL_NODE, "direction": "down"}): "svg.lineage .node",
    }
    visit(page, server, "/fleet")
    for route, marker in pages.items():
        go(page, route)
        page.wait_for_selector(marker)
        assert not page.locator("#view .error").count(), (route, page.inner_text("#view"))
    assert errors == []

    visit(page, server, "/fleet")
    page.click(f'tr[data-twin="{ODD_ID}"] td:first-child a')
    expect(page.locator("h1")).to_have_text(ODD_ID)
    expect(page.locator('tr[data-name="t"] .value')).to_have_text("19")

    visit(page, server, "/fleet")
    expect(page.locator('[data-count="pump"]')).to_have_text("2")
    expect(page.locator('tr[data-twin="pump-1"] .badge')).to_have_class("badge fresh")
    expect(page.locator('tr[data-twin="pump-2"] .badge')).to_contain_text("stale")
    page.click('tr[data-twin="station-1"] a:text("children")')  # the hierarchy
    expect(page.locator("table.twins tbody tr")).to_have_count(2)
    page.click('tr[data-twin="pump-1"] td:first-child a')
    page.wait_for_selector("#chart .main-svg")
    expect(page.locator("#crumbs")).to_contain_text("station-1")
    expect(page.locator('tr[data-name="eff"] .value')).to_have_text("0.8")
    expect(page.locator("#events tbody tr")).to_have_count(20)
    expect(page.locator("#desired")).to_have_count(0)  # its type has no commands section
    assert errors == []


def test_fleet_filter_shows_the_servers_error_in_place(server, page):
    from playwright.sync_api import expect

    bad = "flow >"
    message = api_error(server, "GET", "/api/twins", params={"type": "pump", "where": bad})
    visit(page, server, "/fleet?type=pump")
    page.fill('input[name="where"]', bad)
    page.click('form.filters button[type="submit"]')
    error = page.locator(".result .error")
    expect(error).to_contain_text(message["message"][:60])
    expect(error).to_contain_text("where")
    expect(page.locator('input[name="where"]')).to_have_value(bad)

    page.fill('input[name="where"]', "flow > 80")  # a good filter replaces the error
    page.click('form.filters button[type="submit"]')
    expect(page.locator("table.twins tbody tr")).to_have_count(1)
    expect(page.locator('tr[data-twin="pump-1"]')).to_be_visible()

    page.fill('input[name="where"]', "")  # search by id
    page.fill('input[name="q"]', "P-2")
    page.click('form.filters button[type="submit"]')
    expect(page.locator("table.twins tbody tr")).to_have_count(1)
    expect(page.locator('tr[data-twin="pump-2"]')).to_be_visible()


def test_twin_chart_draws_an_uncertainty_band(server, page, errors):
    visit(page, server, "/twin/pump-1?names=x,flow&range=1h")
    page.wait_for_selector("#chart .main-svg")
    traces = page.evaluate(
        """() => document.getElementById('chart').data.map(
            t => ({name: t.name, fill: t.fill || null, yaxis: t.yaxis,
                   points: t.y.filter(v => v !== null).length}))"""
    )
    assert [t["name"] for t in traces] == ["flow", "x_lower", "x_upper", "x"]  # column order
    # the upper edge fills down to the lower edge (the trace before it), under the line of x
    assert [t["fill"] for t in traces] == [None, None, "tonexty", None]
    assert [t["yaxis"] for t in traces] == ["y", "y2", "y2", "y2"]
    assert all(t["points"] > 10 for t in traces)
    fills = page.eval_on_selector_all(
        "#chart path.js-fill", "paths => paths.map(p => p.getAttribute('d') || '')"
    )
    assert any(len(d) > 100 for d in fills), fills  # a real shaded area, not an empty path
    assert "uncertainty band" in page.inner_text("#chart-note")
    assert errors == []


def test_type_edit_with_a_bad_expression_shows_the_error_in_place(server, page):
    from playwright.sync_api import expect

    bad = {**LAB, "derived": {"twice": "t +* 2"}}
    message = api_error(server, "PUT", "/api/types/lab", json=bad)
    visit(page, server, "/types/lab")
    page.fill("form.editor textarea", json.dumps(bad, indent=2))
    page.click('form.editor button[type="submit"]')
    error = page.locator(".editor-result .error")
    expect(error).to_contain_text(message["message"][:60])
    expect(error).to_contain_text("derived.twice.expr")
    assert httpx.get(f"{server.url}/api/types/lab").json()["latest"] == 1

    page.fill("form.editor textarea", "{not json")  # the server's JSON error, in place too
    page.click('form.editor button[type="submit"]')
    expect(error).to_contain_text("malformed JSON")

    good = {**LAB, "derived": {"twice": "t * 2"}}
    page.fill("form.editor textarea", json.dumps(good, indent=2))
    page.click('form.editor button[type="submit"]')
    expect(page.locator(".notice").first).to_contain_text("Saved as version 2")
    assert httpx.get(f"{server.url}/api/types/lab").json()["latest"] == 2


SCREENS = {  # artifact name -> (route, what must be on screen before the picture)
    "alarms": ("/alarms?state=all", "table.alarms"),
    "jobs": ("/jobs", "table.schedules"),
    "models": ("/models/roller_line", "article.version"),
    "lineage": ("/lineage?twin=line-1&name=b1", "svg.lineage"),  # the newest published b1
}


def test_screenshots_at_desktop_and_phone_width(server, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    for name, viewport in {"desktop": DESKTOP, "phone": PHONE}.items():
        context = browser.new_context(viewport=viewport)
        tab = context.new_page()
        visit(tab, server, "/fleet")
        tab.screenshot(path=ARTIFACTS / f"fleet-{name}.png", full_page=True)
        visit(tab, server, "/twin/pump-1?names=x,flow,power&range=1h")
        tab.wait_for_selector("#chart path.js-fill")
        tab.wait_for_timeout(300)  # let Plotly settle its responsive layout
        overflow = tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the twin page scrolls sideways at {name} width ({overflow} px)"
        tab.screenshot(path=ARTIFACTS / f"twin-{name}.png", full_page=True)
        for page_name, (route, marker) in SCREENS.items():
            go(tab, route)
            tab.wait_for_selector(marker)
            overflow = tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{route} scrolls sideways at {name} width ({overflow} px)"
            tab.screenshot(path=ARTIFACTS / f"{page_name}-{name}.png", full_page=True)
        # at phone width the lineage graph stacks its layers top to bottom and fits the screen
        graph = tab.eval_on_selector(
            "svg.lineage", "svg => [svg.dataset.vertical, svg.getBoundingClientRect().width]"
        )
        assert graph[0] == str(name == "phone").lower() and graph[1] <= viewport["width"], graph
        context.close()


def _stream_exists(server) -> bool:
    with httpx.stream("GET", f"{server.url}/api/stream", params={"twin": "pump-1"}) as r:
        return r.status_code != 404


def test_a_live_value_changes_on_screen_while_telemetry_arrives(server, page, errors):
    from playwright.sync_api import expect

    if not _stream_exists(server):
        pytest.xfail("needs /api/stream")
    visit(page, server, "/twin/pump-1")
    expect(page.locator("#live")).to_have_text("live")
    flow = page.locator('tr[data-name="flow"] .value')
    power = page.locator('tr[data-name="power"] .value')
    assert flow.inner_text() != "777.5"
    stop = threading.Event()

    def send() -> None:  # keep sending until the page shows it (or the test gives up)
        while not stop.is_set():
            row = {"twin": "pump-1", "type": "pump", "values": {"flow": 777.5, "pressure": 3.6}}
            server.platform.ingest([row])
            stop.wait(0.3)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        expect(flow).to_have_text("777.5", timeout=10_000)
        expect(power).to_have_text("97.188")  # 777.5 * 3.6 / 36 / 0.8, derived live
    finally:
        stop.set()
        sender.join()
    assert errors == []


def _alarm(server, alarm_id: str) -> dict:
    return httpx.get(f"{server.url}/api/alarms/{alarm_id}").json()


def test_an_alarm_raised_by_a_rule_is_acknowledged_from_the_ui(server, page, errors):
    from playwright.sync_api import expect

    visit(page, server, "/alarms")
    expect(page.locator("#live")).to_have_text("live")
    critical = httpx.get(f"{server.url}/api/alarms/counts").json()["critical"]["total"]
    page.fill('input[name="actor"]', "ann")
    page.press('input[name="actor"]', "Tab")  # stored on change
    # the rule raises an alarm while the page is open: it appears without a reload
    server.platform.ingest([{"twin": "boiler-2", "type": "boiler", "values": {"temp": 95.5}}])
    row = page.locator("table.alarms tr[data-alarm]").filter(has_text="temperature 95.5 above 80")
    expect(row).to_be_visible()
    count = page.locator('#alarm-counts [data-severity="critical"] .count')
    expect(count).to_have_text(str(critical + 1))
    alarm_id = row.get_attribute("data-alarm")
    assert _alarm(server, alarm_id)["state"] == "active"

    row.locator("button.ack").click()
    expect(row.locator("[data-state]")).to_have_text("acknowledged")
    alarm = _alarm(server, alarm_id)
    assert (alarm["state"], alarm["acknowledged_by"], alarm["rule"]) == (
        "acknowledged",
        "ann",
        "overheat",
    )

    assert errors == []
    # a comment the server refuses shows its error in place; a good one shows in the list
    refused = api_error(server, "POST", f"/api/alarms/{alarm_id}/comments", json={"text": ""})
    row.locator("button.more").click()
    details = page.locator(f'tr[data-alarm="{alarm_id}"] + tr.details')
    details.locator("form.comment button").click()
    expect(details.locator(".comment-result .error")).to_contain_text(refused["message"])
    details.locator("textarea").fill("valve checked")
    details.locator("form.comment button").click()
    expect(details.locator("ul.comments")).to_contain_text("ann: valve checked")
    assert [c["text"] for c in _alarm(server, alarm_id)["comments"]] == ["valve checked"]

    row.locator("button.clear").click()
    expect(row.locator("[data-state]")).to_have_text("cleared")
    assert _alarm(server, alarm_id)["cleared_by"] == "ann"
    expect(count).to_have_text(str(critical))

    # filters: open critical alarms only (the cleared one is gone)
    visit(page, server, "/alarms?severity=critical")
    severities = page.locator("table.alarms tr[data-alarm] .badge[class*=sev-]")
    expect(severities.first).to_be_visible()
    assert set(severities.all_inner_texts()) == {"critical"}
    expect(page.locator(f'tr[data-alarm="{alarm_id}"]')).to_have_count(0)
    page.select_option('select[name="state"]', "cleared")
    page.click('form.filters button[type="submit"]')
    expect(page.locator(f'tr[data-alarm="{alarm_id}"] [data-state]')).to_have_text("cleared")
    assert [e for e in errors if "status of 422" not in e] == []  # the refused comment


def test_fleet_and_twin_pages_show_open_alarms(server, page, errors):
    from playwright.sync_api import expect

    counts = httpx.get(f"{server.url}/api/alarms/counts").json()
    visit(page, server, "/fleet")
    badge = page.locator('#fleet-alarms [data-severity="critical"]')
    expect(badge).to_have_text(f"{counts['critical']['total']} critical")
    marker = page.locator('tr[data-twin="boiler-1"] .alarm-marker')
    expect(marker).to_have_attribute("data-severity", "critical")
    expect(page.locator('tr[data-twin="pump-1"] .alarm-marker')).to_have_count(0)
    marker.click()  # the twin's open alarms
    rows = page.locator("table.alarms tr[data-alarm]")
    expect(rows).to_have_count(2)
    assert {t.split("\n")[0] for t in rows.locator("td:nth-child(3)").all_inner_texts()} == {
        "boiler-1"
    }

    visit(page, server, "/twin/boiler-1")
    overheat = page.locator("#twin-alarms tr[data-alarm]").filter(has_text="overheat")
    expect(overheat.locator("[data-state]")).to_have_text("active")
    alarm_id = overheat.get_attribute("data-alarm")
    overheat.locator("button.ack").click()
    expect(overheat.locator("[data-state]")).to_have_text("acknowledged")
    expect(overheat.locator("button.ack")).to_have_count(0)
    assert _alarm(server, alarm_id)["state"] == "acknowledged"
    assert errors == []


def test_run_now_shows_the_run_succeeded(server, page, errors):
    from playwright.sync_api import expect

    visit(page, server, "/jobs")
    joiner = page.locator('#functions tr[data-function="joiner"]')
    expect(joiner.locator(".event.ready")).to_have_text("✓ data-ready")
    expect(joiner.locator(".event.waiting")).to_have_text("… model-ready")
    expect(page.locator("#live")).to_have_text("live")
    page.click('tr[data-schedule="hourly-hello"] button.run-now')
    run = page.locator('#runs tr[data-function="hello"]').first
    expect(run.locator("[data-state]")).to_have_text("succeeded")
    expect(run.locator(".attempts")).to_have_text("1")
    run.locator("button.logs").click()
    expect(page.locator("#runs pre.logs")).to_contain_text(LOG_LINE)
    expect(page.locator("#runs pre.json").first).to_contain_text('"greeted": "dashboard"')
    expect(page.locator('#functions tr[data-function="hello"] [data-state]')).to_have_text(
        "succeeded"
    )
    runs = httpx.get(f"{server.url}/api/runs", params={"schedule": "hourly-hello"}).json()
    assert [(r["state"], r["id"]) for r in runs] == [("succeeded", run.get_attribute("data-run"))]

    page.select_option('select[name="state"]', "failed")  # filters apply on change
    expect(page.locator("#runs")).to_contain_text("No runs match.")
    assert errors == []


def test_the_lineage_of_a_calibrated_parameter_shows_its_model_version(server, page, errors):
    from playwright.sync_api import expect

    history = server.platform.history("line-1", ["b1"])
    ts = [t for t, v in zip(history["ts"], history["series"]["b1"], strict=True) if v is not None]
    run_id = server.platform.lineage.producer("line-1", "b1", ts[-1])["id"]

    visit(page, server, "/models")
    page.click('tr[data-model="roller_line"] a')
    version = page.locator('article.version[data-version="1"]')
    expect(version.locator('[data-alias="production"]')).to_be_visible()
    expect(version).to_contain_text("rmse_T1 1.9")
    expect(version).to_contain_text("deductive")
    expect(version).to_contain_text(ROLLER_LINE)

    visit(page, server, "/models")  # trace a value with the form
    form = page.locator("form.lineage-value")
    form.locator('input[name="twin"]').fill("line-1")
    form.locator('input[name="name"]').fill("b1")
    form.locator('input[name="ts"]').fill(str(ts[-1]))
    form.locator("button").click()
    model = page.locator(f'svg.lineage g.node[data-id="{MODEL_NODE}"]')
    expect(model).to_have_attribute("data-kind", "model")
    kinds = page.eval_on_selector_all("svg.lineage g.node", "gs => gs.map(g => g.dataset.kind)")
    assert {"value", "run", "data", "model"} <= set(kinds)
    edge = f'svg.lineage path.edge[data-from="{MODEL_NODE}"][data-to="{run_id}"]'
    expect(page.locator(edge)).to_have_count(1)
    expect(page.locator("#node-details")).to_contain_text(run_id)  # the run is selected
    model.click()
    expect(page.locator("#node-details h3")).to_have_text("model: roller_line")
    expect(page.locator("#node-details")).to_contain_text("model roller_line v1")

    # a blank time traces the newest published value; a measured value says it has no run
    visit(page, server, "/lineage?twin=line-1&name=b1")
    expect(page.locator(f'svg.lineage g.node[data-id="{MODEL_NODE}"]')).to_be_visible()
    assert errors == []
    visit(page, server, f"/lineage?twin=line-1&name=w1&ts={ts[-1]}")
    expect(page.locator("#lineage .error")).to_contain_text("measured values have no producing run")
    assert [e for e in errors if "status of 404" not in e] == []


IN_BOX = """holder => {
    // each node's box on screen (after the view's zoom and pan) against the graph's box
    const box = holder.getBoundingClientRect();
    const inside = r => r.left >= box.left - 1 && r.right <= box.right + 1
        && r.top >= box.top - 1 && r.bottom <= box.bottom + 1;
    const svg = holder.querySelector('svg.lineage');
    return {
        svg: inside(svg.getBoundingClientRect()),
        viewBox: svg.getAttribute('viewBox'),
        scale: Number(svg.dataset.scale),
        nodes: Object.fromEntries([...svg.querySelectorAll('g.node')].map(
            g => [g.dataset.id, inside(g.getBoundingClientRect())])),
    };
}"""


@pytest.mark.parametrize("viewport", [{"width": 1400, "height": 900}, PHONE], ids=["1400", "390"])
def test_the_lineage_of_a_calibrated_value_fits_its_box(server, browser, viewport):
    """A value of a twin calibrated run after run: the runs before the one that published it
    fold into one node with their count, and the graph fits its box with the value in view;
    drawn unfolded, the view centres the value; the view zooms, pans and resets."""
    from playwright.sync_api import expect

    graph = httpx.get(
        f"{server.url}/api/lineage/value",
        params={"twin": "line-1", "name": "b1", "ts": _newest("line-1", "b1", server)},
    ).json()
    runs = [n["id"] for n in graph["nodes"] if n["kind"] == "run"]
    assert len(runs) >= 10 and len(graph["nodes"]) >= 20  # the chain the issue saw
    context = browser.new_context(viewport=viewport)
    tab = context.new_page()
    visit(tab, server, "/lineage?twin=line-1&name=b1")
    holder = tab.locator("#lineage .graph")
    folded = tab.locator("svg.lineage g.node.group[data-kind=run]")
    expect(folded).to_have_attribute("data-count", str(len(runs) - 1))  # all but the producer
    seen = holder.evaluate(IN_BOX)
    assert seen["svg"] and len(seen["nodes"]) <= 8 and all(seen["nodes"].values()), seen
    assert graph["root"] in seen["nodes"] and graph["run"] in seen["nodes"]
    tab.screenshot(path=ARTIFACTS / f"lineage-folded-{viewport['width']}.png", full_page=True)

    folded.click()  # the folded node lists its runs
    expect(tab.locator("#node-details h3")).to_have_text(
        f"{len(runs) - 1} runs: calibrate:roller_line"
    )
    expect(tab.locator("#node-details ul.members li")).to_have_count(len(runs) - 1)

    tab.uncheck('input[name="fold"]')  # every node: wider than the box, centred on the value
    expect(tab.locator("svg.lineage g.node")).to_have_count(len(graph["nodes"]))
    seen = holder.evaluate(IN_BOX)
    assert seen["svg"] and seen["nodes"][graph["root"]], seen
    first = seen["viewBox"]

    tab.click('button[aria-label="zoom in"]')
    zoomed = holder.evaluate(IN_BOX)
    assert zoomed["scale"] == pytest.approx(seen["scale"] * 1.25, rel=1e-2), zoomed
    svg = tab.locator("svg.lineage").bounding_box()
    x, y = svg["x"] + svg["width"] / 2, svg["y"] + 6  # drag from the graph's top edge
    tab.mouse.move(x, y)
    tab.mouse.down()
    tab.mouse.move(x + 60, y + 2, steps=5)
    tab.mouse.up()
    panned = holder.evaluate(IN_BOX)
    shift = float(zoomed["viewBox"].split()[0]) - float(panned["viewBox"].split()[0])
    assert shift == pytest.approx(60 / zoomed["scale"], rel=0.1), (zoomed, panned)
    tab.click('button[aria-label^="back to the first view"]')
    assert holder.evaluate(IN_BOX)["viewBox"] == first
    context.close()


def test_a_model_walked_down_folds_its_runs(server, page, errors):
    from playwright.sync_api import expect

    visit(page, server, "/lineage?" + urlencode({"node": MODEL_NODE, "direction": "down"}))
    expect(page.locator("svg.lineage g.node")).to_have_count(2)  # the model and its runs
    runs = page.locator("svg.lineage g.node.group")
    expect(runs).to_have_attribute("data-count", str(CALIBRATIONS))
    expect(runs.locator("text.kind")).to_have_text(f"{CALIBRATIONS} runs")
    assert errors == []


def test_a_model_version_shows_its_lineage_and_the_twins_using_it(server, page, errors):
    from playwright.sync_api import expect

    visit(page, server, "/models/roller_line")
    version = page.locator('article.version[data-version="1"]')
    use = version.locator('.use[data-job="calibrate:roller_line"]')
    expect(use).to_contain_text(f"{CALIBRATIONS} runs of calibrate:roller_line")
    expect(use.locator(".twins-using a")).to_have_text(LINES)
    graph = version.locator(".version-graph")
    kinds = graph.locator("g.node").evaluate_all("gs => gs.map(g => g.dataset.kind)")
    assert sorted(kinds) == ["data", "model", "run"], kinds  # training data -> v1 -> its runs
    expect(graph.locator("g.node.group")).to_have_attribute("data-count", str(CALIBRATIONS))
    seen = graph.evaluate(IN_BOX)
    assert seen["svg"] and all(seen["nodes"].values()), seen
    graph.locator("g.node.group").click()  # to the folded runs of the full graph
    page.wait_for_selector("svg.lineage g.node.group")
    assert "direction=down" in page.url and MODEL_NODE in unquote(page.url)
    use_link = f"#/twin/{LINES[1]}"
    go(page, "/models/roller_line")
    page.click(f'.twins-using a[href="{use_link}"]')
    expect(page.locator("h1")).to_have_text(LINES[1])
    assert errors == []


def _newest(twin: str, name: str, server) -> int:
    history = server.platform.history(twin, [name])
    return max(
        t for t, v in zip(history["ts"], history["series"][name], strict=True) if v is not None
    )


MQTT = (MQTT_HOST, MQTT_PORT)  # the real Mosquitto


@pytest.fixture
def command_server(tmp_path, server) -> Iterator[SimpleNamespace]:
    """A second dashboard whose platform owns a CommandService on the real broker, with a fan
    (speed 0..100) whose commands go to a topic of its own, and a device subscribed to it."""
    import paho.mqtt.client as mqtt
    import paho.mqtt.enums

    require_mosquitto()
    prefix = f"ui-{os.getpid()}-{time.monotonic_ns()}"
    fan = {
        "properties": {"speed": {"unit": "rpm", "min": 0, "max": 100}, "temp": {"unit": "degC"}},
        "parameters": {"gain": {"value": 1.0}},
        "commands": {"topic": prefix + "/{twin}/set", "tolerance": 0.01},
    }
    received: list[dict] = []
    subscribed = threading.Event()
    device = mqtt.Client(paho.mqtt.enums.CallbackAPIVersion.VERSION2)
    device.on_message = lambda c, u, m: received.append(json.loads(m.payload))
    device.on_subscribe = lambda *args: subscribed.set()
    device.connect(*MQTT)
    device.subscribe(f"{prefix}/#", qos=1)
    device.loop_start()

    def seed(platform: Platform) -> None:
        platform.put_type("fan", fan)
        row = {"twin": "fan-1", "type": "fan", "values": {"speed": 10, "temp": 20}}
        assert not platform.ingest([row]).rejected
        deadline = time.monotonic() + 10
        while not (platform.commands._client.is_connected() and subscribed.is_set()):
            assert time.monotonic() < deadline, "no connection to the broker"
            time.sleep(0.02)

    settings = Settings(mqtt=MqttConnection(*MQTT), run_schedules=False)
    try:
        with _serve(Platform(tmp_path / "data", settings=settings), seed) as served:
            served.received, served.topic = received, f"{prefix}/fan-1/set"
            yield served
    finally:
        device.disconnect()
        device.loop_stop()


def test_a_desired_value_set_from_the_ui_turns_reached_when_reported(command_server, page, errors):
    from playwright.sync_api import expect

    server = command_server
    desired_of = lambda: httpx.get(f"{server.url}/api/twins/fan-1/desired").json()  # noqa: E731
    visit(page, server, "/twin/fan-1")
    expect(page.locator("#live")).to_have_text("live")
    speed = page.locator('table.desired tr[data-name="speed"]')
    expect(page.locator("table.desired tbody tr")).to_have_count(3)  # speed, temp, gain
    expect(speed.locator(".desired-value")).to_have_text("—")
    expect(speed.locator(".reported-value")).to_have_text("10")
    page.evaluate("window.notReloaded = true")

    form = page.locator("form.set-desired")
    form.locator('select[name="name"]').select_option("speed")
    expect(form.locator(".hint")).to_have_text("0 … 100 rpm")
    form.locator('input[name="value"]').fill("55")
    form.locator("button").click()
    expect(speed.locator(".desired-value")).to_have_text("55")
    expect(speed.locator('[data-state="pending"]')).to_contain_text("pending since")
    expect(page.locator(".desired-result .notice")).to_have_text(
        f"speed = 55 sent to {server.topic}"
    )
    view = desired_of()
    assert (view["desired"], view["pending"], view["command"]["published"]) == (
        {"speed": 55.0},
        ["speed"],
        True,
    )
    deadline = time.monotonic() + 5
    while not server.received:  # the device got the command the page sent
        assert time.monotonic() < deadline, "the device received no command"
        time.sleep(0.02)
    assert server.received[0]["values"] == {"speed": 55.0}
    assert server.received[0]["id"] == view["command"]["id"]

    # the device reports the new speed: the row turns reached on screen, without a reload
    server.platform.ingest([{"twin": "fan-1", "type": "fan", "values": {"speed": 55.004}}])
    expect(speed.locator('[data-state="reached"]')).to_contain_text("reached")
    expect(speed.locator(".reported-value")).to_have_text("55.004")
    expect(speed.locator('[data-state="reached"] span[title]')).to_have_count(1)  # when
    assert desired_of()["pending"] == []
    assert page.evaluate("window.notReloaded") is True

    # out of range: the server's 422 shows in place, naming the field; nothing changes
    refused = api_error(server, "PUT", "/api/twins/fan-1/desired", json={"values": {"speed": 500}})
    form.locator('input[name="value"]').fill("500")
    form.locator("button").click()
    error = page.locator(".desired-result .error")
    expect(error).to_contain_text(refused["message"])
    expect(error).to_contain_text("values.speed")
    expect(form.locator('input[name="value"]')).to_have_attribute("aria-invalid", "true")
    expect(form.locator('input[name="value"]')).to_have_value("500")
    expect(speed.locator(".desired-value")).to_have_text("55")
    assert desired_of()["desired"] == {"speed": 55.0}
    assert [e for e in errors if "status of 422" not in e] == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#desired").screenshot(path=ARTIFACTS / "twin-desired-desktop.png")
    page.set_viewport_size(PHONE)
    # the card fits (its table scrolls in its own box); the page settles once Plotly re-lays out
    assert (
        page.eval_on_selector("#desired", "e => e.getBoundingClientRect().right") <= PHONE["width"]
    )
    page.wait_for_function("document.documentElement.scrollWidth - innerWidth <= 1", timeout=5000)


def test_the_desired_state_card_says_when_the_server_has_no_broker(server, page):
    from playwright.sync_api import expect

    server.platform.put_type(
        "valve", {"properties": {"open": {}}, "commands": {"topic": "v/{twin}"}}
    )
    server.platform.ingest([{"twin": "valve-1", "type": "valve", "values": {"open": 0}}])
    visit(page, server, "/twin/valve-1")
    error = page.locator("#desired .error")
    expect(error).to_contain_text("commands need an MQTT broker")
    expect(error).to_contain_text("mqtt")


def test_a_calibrated_twin_shows_its_calibration_and_parameter_bands(server, page, errors):
    from playwright.sync_api import expect

    visit(page, server, "/twin/line-1")
    card = page.locator("#calibration")
    expect(card.locator('[data-status="calibrated"]')).to_be_visible()
    expect(card.locator(".cal-last")).to_contain_text("2 of 2 twins calibrated")
    expect(card.locator(".cal-next")).to_contain_text("every 1 h, next in")
    view = httpx.get(f"{server.url}/api/twins/line-1/calibration").json()
    for name in ("b1", "b2", "b3", "b4"):
        row = card.locator(f'tr[data-param="{name}"]')
        expect(row.locator("td").nth(0)).to_have_text(
            str(float(f"{view['parameters'][name]['value']:.5g}"))
        )
        expect(row.locator("td").nth(2)).to_contain_text(" .. ")
        expect(row.locator("svg.spark path.spark-band")).to_have_count(1)
    # measured, derived, parameters and estimated are distinct groups, each value with its unit
    groups = {
        g: page.locator(f'[data-group="{g}"]')
        for g in ("measured", "derived", "parameters", "estimated")
    }
    expect(groups["measured"].locator('tr[data-name="w1"] .unit')).to_have_text("rad/s")
    expect(groups["measured"].locator('tr[data-name="T1"]')).to_have_count(0)
    expect(groups["estimated"].locator('tr[data-name="T1"] .unit')).to_have_text("N")
    expect(groups["estimated"].locator('[data-band="T1"]')).to_contain_text(" .. ")
    expect(groups["parameters"].locator('tr[data-name="b2"] .unit')).to_have_text("N m s")
    expect(groups["parameters"].locator('[data-std="b2"]')).to_contain_text("±")
    expect(groups["derived"].locator('tr[data-name="line_speed"] .unit')).to_have_text("m/s")
    # the default chart of a calibrated twin: its calibrated parameters with their bands
    page.wait_for_selector("#chart .main-svg")
    traces = page.evaluate(
        "() => document.getElementById('chart').data.map(t => [t.name, t.fill || null])"
    )
    assert ["b1_upper", "tonexty"] in traces and ["b4_upper", "tonexty"] in traces, traces
    assert errors == []


def test_a_stepping_signal_is_drawn_at_its_real_levels(server, page, errors):
    visit(page, server, "/twin/blower-1?names=speed,vibration&range=1h")
    page.wait_for_selector("#chart .main-svg")
    traces = page.evaluate(
        """() => Object.fromEntries(document.getElementById('chart').data.map(
            t => [t.name, {y: t.y.filter(v => v !== null), shape: t.line.shape}]))"""
    )
    assert set(traces["speed"]["y"]) == {900.0, 1200.0}  # never the 1050 rpm an average invents
    assert traces["speed"]["shape"] == "hv"
    mean = next(name for name in traces if name.startswith("vibration (mean per"))
    low, high = traces["vibration min"]["y"], traces["vibration max"]["y"]
    envelope = list(zip(low, traces[mean]["y"], high, strict=True))
    assert (
        all(lo <= m <= hi for lo, m, hi in envelope) and max(hi - lo for lo, _, hi in envelope) == 3
    )
    assert "mean (min–max shaded)" in page.inner_text("#chart-note")
    # the time axis spans the chosen hour, ticked in minutes (not in fractions of a millisecond)
    ticks = page.eval_on_selector_all(
        "#chart .xtick text", "ts => ts.map(t => t.textContent).filter(Boolean)"
    )
    assert 3 <= len(ticks) <= 12 and all(":" in t for t in ticks), ticks
    assert errors == []


def test_the_fleet_shows_key_values_sparklines_and_staleness_by_type(server, page, errors):
    from playwright.sync_api import expect

    visit(page, server, "/fleet?type=pump")
    flow = page.locator('tr[data-twin="pump-1"] .kv[data-key="flow"]')
    expect(flow).to_contain_text("m3/h")
    expect(page.locator('tr[data-twin="pump-1"] .kv[data-key="power"]')).to_contain_text("kW")
    expect(
        page.locator('tr[data-twin="pump-1"] [data-spark] svg.spark path.spark-line')
    ).to_have_count(1)
    expect(page.locator('tr[data-twin="pump-2"] .badge')).to_contain_text("stale")  # 30 min > 10m
    visit(page, server, "/fleet?type=boiler")
    expect(page.locator('tr[data-twin="boiler-1"] .alarm-marker')).to_be_visible()
    expect(page.locator('tr[data-twin="boiler-1"] .kv[data-key="temp"]')).to_contain_text("degC")
    # an event-driven sensor quiet for 25 minutes, as usual for it, is not stale
    visit(page, server, "/fleet?type=pir")
    expect(page.locator('tr[data-twin="pir-1"] .badge')).to_have_class("badge fresh")
    assert errors == []


def test_the_jobs_page_lists_calibration_runs_and_readable_schedules(server, page, errors):
    from playwright.sync_api import expect

    visit(page, server, "/jobs")
    calibration = page.locator('#runs tr[data-function="calibrate"]').first
    expect(calibration.locator("[data-state]")).to_have_text("succeeded")
    expect(calibration.locator(".cal-result")).to_have_text(
        "roller_line: 2 of 2 calibrated, 20 steps"
    )
    nightly = page.locator('tr[data-schedule="nightly"]')
    expect(nightly.locator(".trigger")).to_contain_text("daily at 03:00 (Europe/Berlin)")
    expect(nightly.locator(".next")).to_have_text(re.compile(r"^in \d+ (min|h)$"))
    every = page.locator('tr[data-schedule="calibrate.every.roller_line"] .trigger')
    expect(every).to_contain_text("every 1 h")
    assert errors == []


def test_the_type_editor_takes_yaml(server, page, errors):
    from playwright.sync_api import expect

    visit(page, server, "/types/lab")
    page.fill("form.editor textarea", "description: from yaml\nproperties:\n  t: {unit: degC}\n")
    expect(page.locator("form.editor .format")).to_have_text("sent as YAML")
    page.click('form.editor button[type="submit"]')
    expect(page.locator(".notice").first).to_contain_text("Saved as version")
    assert httpx.get(f"{server.url}/api/types/lab").json()["spec"]["description"] == "from yaml"
    assert errors == []


BROKEN_WORDS = """() => {
    // every word of every text in a card or table, measured: one inside a word breaks over lines
    const broken = [];
    const walker = document.createTreeWalker(document.getElementById('view'), NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const el = node.parentElement;
        if (!el.closest('.card, table')) continue;
        if (el.closest('svg, .js-plotly-plot, textarea, pre')) continue;
        for (const m of node.textContent.matchAll(/[^\\s]+/g)) {
            const range = document.createRange();
            range.setStart(node, m.index);
            range.setEnd(node, m.index + m[0].length);
            const rects = [...range.getClientRects()].filter(r => r.width > 0);
            const tops = new Set(rects.map(r => Math.round(r.top)));
            if (tops.size > 1) broken.push(m[0]);
        }
    }
    return broken;
}"""


@pytest.mark.parametrize("viewport", [{"width": 1400, "height": 900}, PHONE], ids=["1400", "390"])
def test_no_word_is_broken_inside_a_card(server, browser, viewport):
    context = browser.new_context(viewport=viewport)
    tab = context.new_page()
    for route in ("/twin/line-1", "/twin/pump-1", "/fleet", "/jobs", "/models/roller_line"):
        visit(tab, server, route)
        tab.wait_for_timeout(200)
        assert tab.evaluate(BROKEN_WORDS) == [], route
        if viewport == PHONE:
            overflow = tab.evaluate("document.documentElement.scrollWidth - innerWidth")
            assert overflow <= 1, (route, overflow)
    context.close()


def test_what_if_forecasts_beside_the_baseline_and_explains_bad_input(server, page, errors):
    visit(page, server, f"/twin/{LINES[0]}")
    form = page.locator("#whatif form")
    form.locator("select[name=input]").select_option("brake_torque")
    form.locator("input[name=amount]").fill("1.3")
    form.locator("input[name=at]").fill("2s")
    form.locator("input[name=horizon]").fill("0s")
    form.locator("button").click()
    page.wait_for_selector("#whatif-report .error")
    assert "horizon" in page.inner_text("#whatif-report")  # the field the server named
    form.locator("input[name=horizon]").fill("10s")
    form.locator("input[name=step]").fill("1s")
    form.locator("button").click()
    page.wait_for_selector("#whatif-chart .main-svg", timeout=60_000)
    form.locator("select[name=output]").select_option("w4")
    page.wait_for_function(
        "document.getElementById('whatif-chart').data.some(t => t.name === 'recorded')"
    )
    names = page.evaluate("() => document.getElementById('whatif-chart').data.map(t => t.name)")
    assert {"scenario", "baseline", "recorded"} <= set(names), names
    assert page.get_attribute("#whatif-chart", "data-points") == "10"
    assert "largest difference to the baseline" in page.inner_text("#whatif-report")
    assert all("422" in e for e in errors) and len(errors) <= 1, errors  # the bad horizon only
