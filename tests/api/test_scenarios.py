"""POST/GET /api/scenarios end to end, and bad requests answered 4xx naming the field before
any work starts."""

from __future__ import annotations

import pytest
from calibration_support import feed
from conftest import T0

from livetwin.examples.rollers import ROLLER_TYPE, roller_fleet

IDS = [f"line-{i}" for i in range(3)]


@pytest.fixture
def calibrated(client, platform, clock):
    clock.now = T0 + 10**8
    assert client.put("/api/types/roller_line", json=ROLLER_TYPE).status_code == 200
    feed(platform, roller_fleet(3, seed=2), IDS, 30, 0)
    assert client.post("/api/types/roller_line/calibrate").json()["status"] == "succeeded"
    return client


@pytest.mark.platform_services("schedules")
def test_a_scenario_through_the_api(calibrated, platform):
    body = {
        "name": "motor -10 %",
        "twins": {"type": "roller_line", "where": "w1 > 0"},
        "horizon": "5s",
        "step": "500ms",
        "inputs": {"motor_torque": {"kind": "ramp", "at": "1s", "over": "2s", "factor": 0.9}},
    }
    r = calibrated.post("/api/scenarios", json=body)
    assert r.status_code == 202, r.json()
    created = r.json()
    assert created["status"] in ("queued", "running") and created["request"] == body
    run = platform.scheduler.wait(created["run"], timeout_s=60)
    assert run["state"] == "succeeded" and run["function"] == "scenario"
    got = calibrated.get(f"/api/scenarios/{created['id']}").json()
    assert got["status"] == "succeeded" and got["progress"] == 1 and got["name"] == "motor -10 %"
    assert [t["twin"] for t in got["summary"]["twins"]] == IDS and set(got["series"]) == set(IDS)
    series = got["series"]["line-1"]
    assert len(series["ts"]) == 10
    motor = series["scenario"]["motor_torque"]["mean"]
    assert motor[0] == series["baseline"]["motor_torque"]["mean"][0]
    assert motor[-1] == pytest.approx(0.9 * motor[0])
    assert series["scenario"]["w4"]["mean"][-1] < series["baseline"]["w4"]["mean"][-1]
    one = calibrated.get(f"/api/scenarios/{created['id']}", params={"twin": "line-2"}).json()
    assert list(one["series"]) == ["line-2"]
    assert calibrated.get("/api/scenarios").json()[0]["id"] == created["id"]
    assert calibrated.get(f"/api/lineage/{created['run']}").status_code == 200
    missing = calibrated.get(f"/api/scenarios/{created['id']}", params={"twin": "nobody"})
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "twin"
    assert calibrated.get("/api/scenarios/scn_nothing").status_code == 404


GOOD = {"twins": ["line-0"], "horizon": "10s"}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"inputs": {"nope": {"kind": "constant", "value": 1}}}, "inputs.nope", "not an input"),
        ({"inputs": {"w1": {"kind": "constant", "value": 1}}}, "inputs.w1", "computes it"),
        ({"inputs": {"brake_torque": {"kind": "wave"}}}, "inputs.brake_torque", "kind"),
        ({"horizon": "0s"}, "horizon", "shorter than one step"),
        ({"horizon": "100d"}, "horizon", "model steps"),
        ({"step": "150ms"}, "step", "multiple of the model step"),
        ({"horizon": -3}, "horizon", "offset"),
        ({"twins": {"type": "roller_line", "where": "w1 > 1e9"}}, "twins", "matches no twin"),
        ({"twins": {"type": "nosuch"}}, "twins.type", "no twin type"),
        ({"twins": {"type": "roller_line", "where": "w1 >"}}, "twins.where", ""),
        ({"twins": ["ghost"]}, "twins", "no twin"),
        ({"twins": ["p-1"]}, "twins", "has no model"),
        ({"twins": ["other-0"]}, "twins", "never calibrated"),
        ({"twins": ["line-0", "p-1"]}, "twins", "several types"),
        (
            {"inputs": {"brake_torque": {"kind": "recorded", "from": T0 - 10**7, "to": T0 - 1}}},
            "inputs.brake_torque.from",
            "no recorded",
        ),
    ],
)
def test_bad_requests_name_the_field(calibrated, platform, change, field, words):
    calibrated.put("/api/types/plain", json={"properties": {"x": {}}})
    calibrated.post("/api/ingest", json=[{"twin": "p-1", "type": "plain", "values": {"x": 1}}])
    calibrated.put("/api/types/other", json=ROLLER_TYPE)
    feed_other = [{"twin": "other-0", "type": "other", "values": {"w1": 1, "brake_torque": 1}}]
    calibrated.post("/api/ingest", json=feed_other)
    r = calibrated.post("/api/scenarios", json={**GOOD, **change})
    assert r.status_code == 422, r.json()
    error = r.json()["error"]
    assert error["field"] == field and words in error["message"] and error["fix"], error
    assert platform.scenarios.list() == []  # nothing stored, nothing queued
    assert platform.scheduler.runs(function="scenario") == []


def test_a_body_that_is_not_an_object_or_not_finite(calibrated):
    r = calibrated.post("/api/scenarios", json=["line-0"])
    assert r.status_code == 422 and r.json()["error"]["field"] == "body"
    body = '{"twins": ["line-0"], "horizon": "9s", "inputs": {"brake_torque": {"kind": "constant", '
    r = calibrated.post("/api/scenarios", content=body + '"value": 1e400}}}')
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"  # JSON has no infinity


def test_a_running_scenario_reports_progress_and_stops_when_cancelled(calibrated, platform):
    """The job hands the scheduler its progress (model steps) and stops at the next chunk once
    POST /api/runs/{id}/cancel asked it to: the scenario then ends failed, with nothing stored."""
    from livetwin.jobs.scenario import ScenarioCancelled

    created = calibrated.post("/api/scenarios", json={**GOOD, "horizon": "20s"}).json()
    heard: list[tuple[float, float]] = []
    with pytest.raises(ScenarioCancelled):
        platform.scenarios.run(
            created["id"], created["run"], progress=lambda d, t: heard.append((d, t)),
            cancelled=lambda: len(heard) >= 1,
        )  # fmt: skip
    assert heard and heard[0][1] == 200 and 0 < heard[0][0] < 200
    got = calibrated.get(f"/api/scenarios/{created['id']}").json()
    assert got["status"] == "failed" and "cancelled" in got["error"] and not got.get("series")
