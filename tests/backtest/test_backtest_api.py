"""The back-test routes: a run through the scheduler with its report (JSON and CSV), progress,
lineage and listing; bad input refused with 4xx naming the field before any work."""

from __future__ import annotations

import sqlite3
import time

import pytest
from backtest_support import END, MINUTE, START, T0, record


@pytest.fixture
def fleet(platform):
    return record(platform)


def wait(client, backtest_id: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        body = client.get(f"/api/backtests/{backtest_id}").json()
        if body["state"] in ("succeeded", "failed"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def start(client, **overrides):
    body = {
        "type": "oven",
        "candidate": {"patch": {"derived": {"temp_avg": "avg(temp, '30m')"}}},
        "from": "2026-11-22T11:00:00Z",
        "to": "2026-11-22T12:30:00Z",
        **overrides,
    }
    return client.post("/api/backtests", json=body)


@pytest.mark.platform_services("schedules")
def test_a_back_test_runs_as_a_scheduler_run_with_report_csv_and_lineage(client, fleet):
    answer = start(client, plot=["oven-3"])
    assert answer.status_code == 202, answer.text
    backtest_id = answer.json()["id"]
    done = wait(client, backtest_id)
    assert done["state"] == "succeeded", done
    report = done["report"]
    assert report["id"] == backtest_id and report["outputs"][0]["name"] == "temp_avg"
    assert "oven-3" in report["series"]
    assert any("replayed" in line for line in done["logs"])
    runs = client.get("/api/runs", params={"function": "backtest"}).json()
    assert backtest_id in [r["id"] for r in runs]
    assert runs[0]["result"]["outputs"]["temp_avg"]["twins_affected"] == 12
    listed = client.get("/api/backtests").json()
    assert listed[0]["id"] == backtest_id
    csv = client.get(f"/api/backtests/{backtest_id}", params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0] == "kind,name,twin,time,value,detail"
    assert lines[1].startswith("output,temp_avg,")
    graph = client.get(f"/api/lineage/{backtest_id}").json()
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert nodes[backtest_id]["kind"] == "run" and nodes[backtest_id]["name"] == "backtest:oven"
    parents = {e["from"] for e in graph["edges"] if e["to"] == backtest_id}
    assert {n.split("/")[0].split("@")[0] for n in parents} == {"data:oven", "type:oven"}
    assert "type:oven@1" in parents  # the recorded version replayed
    assert any("@candidate-" in p for p in parents)


def test_a_queued_back_test_can_be_cancelled(platform, client, fleet):
    backtest_id = start(client).json()["id"]  # the scheduler is not started: it waits
    cancelled = client.post(f"/api/runs/{backtest_id}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["cancel_requested"] is True
    platform.scheduler.start()
    done = wait(client, backtest_id)
    assert done["state"] == "failed" and "cancelled" in done["error"]
    again = client.post(f"/api/runs/{backtest_id}/cancel")
    assert again.status_code == 409 and again.json()["error"]["field"] == "id"


@pytest.mark.parametrize(
    ("overrides", "status", "field"),
    [
        (
            {"candidate": {"patch": {"derived": {"x": "temp +* 2"}}}},
            422,
            "candidate.patch.derived.x.expr",
        ),
        (
            {"candidate": {"patch": {"derived": {"x": "nope * 2"}}}},
            422,
            "candidate.patch.derived.x.expr",
        ),
        (
            {"candidate": {"patch": {"rules": {"r": {"when": "fan >"}}}}},
            422,
            "candidate.patch.rules.r.when",
        ),
        (
            {"candidate": {"patch": {"calibration": {"estimator": "ukf"}}}},
            422,
            "candidate.patch.calibration",
        ),
        ({"candidate": {"tweak": {}}}, 422, "candidate"),
        ({"type": "nope"}, 404, "type"),
        ({"from": "2030-01-01T00:00:00Z", "to": "2030-01-02T00:00:00Z"}, 422, "from"),
        ({"from": "2026-11-22T12:00:00Z", "to": "2026-11-22T11:00:00Z"}, 422, "to"),
        ({"from": "yesterday"}, 422, "from"),
        ({"twins": {"ids": ["no-such-oven"]}}, 422, "twins"),
        ({"twins": {"where": "temp > 1000"}}, 422, "twins"),
        ({"twins": {"where": "temp >"}}, 422, "twins.where"),
        ({"warmup": "forever"}, 422, "warmup"),
        ({"plot": ["nope"]}, 422, "plot"),
        ({"colour": "red"}, 422, "colour"),
    ],
)
def test_bad_input_is_refused_naming_the_field_before_any_work(
    client, fleet, overrides, status, field
):
    answer = start(client, **overrides)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["field"] == field and error["fix"]
    assert client.get("/api/backtests").json() == []  # nothing was queued


def test_a_window_older_than_the_retained_journal_is_refused(platform, client, fleet):
    db = sqlite3.connect(platform.path / "livetwin.db")
    with db:  # the journal's oldest entries are gone, and no snapshot precedes the window
        db.execute("DELETE FROM journal WHERE seq <= 3")
    db.close()
    answer = start(client)
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == "from"
    assert "retained" in answer.json()["error"]["message"]


def test_an_unknown_back_test_is_404(client):
    assert client.get("/api/backtests/run_nope").status_code == 404
    assert client.post("/api/runs/run_nope/cancel").status_code == 404


def test_the_window_is_the_half_open_interval(platform, fleet):
    plan = platform.backtests.plan(
        {"type": "oven", "candidate": {"patch": {}}, "from": START, "to": END}
    )
    assert plan.window.start == T0 + 60 * MINUTE and plan.window.end == END
