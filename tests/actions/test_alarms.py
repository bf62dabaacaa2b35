"""Alarm rules and lifecycle: `for` durations on a fake clock, hysteresis, de-duplication, the
REST API, notices on the bus, alarms surviving a restart, and a replay of the journal through
the pure rule evaluation (`engine.rules`) reproducing every alarm."""

from __future__ import annotations

import pytest
from alarm_support import alarm_story, replayed_alarms
from conftest import T0, FakeClock
from fastapi.testclient import TestClient

from livetwin.api.app import create_app
from livetwin.engine.events import Notice
from livetwin.platform import Platform, Settings
from livetwin.timefmt import format_ts

S, MIN = 1_000, 60_000

BOILER = {
    "properties": {"temp": {"unit": "degC"}, "pressure": {"unit": "bar"}},
    "parameters": {"limit": {"value": 80}},
    "derived": {"margin": "limit - temp"},
    "rules": {
        "overheat": {
            "when": "temp > limit",
            "for": "2m",
            "severity": "critical",
            "message": "{twin} temperature {temp:.1f} above {limit:.0f}",
        },
        "hot": {"when": "margin < 10", "clear": "margin > 15", "severity": "warning"},
        "overpressure": {"when": "pressure > 5 and temp > 50", "severity": "info"},
    },
}


QUIET = Settings(alarm_tick_s=3600)  # the clock tick runs only when a test asks


@pytest.fixture
def platform(tmp_path, clock):
    with Platform(tmp_path / "data", clock=clock, settings=QUIET) as p:
        yield p


@pytest.fixture
def alarms(platform):
    platform.put_type("boiler", BOILER)
    return platform.alarms


def send(platform, clock, alarms, twin, ts, **values):
    """Ingest one observation at `ts` (the clock moves there) and wait for the rules."""
    clock.now = max(clock.now, ts)
    result = platform.ingest([{"twin": twin, "type": "boiler", "ts": ts, "values": values}])
    assert result.accepted == 1, result.to_dict()
    alarms.sync()


def open_alarms(alarms, rule=None, twin=None):
    items = alarms.list(state="open", twin=twin)["items"]
    return [a for a in items if rule is None or a["rule"] == rule]


def test_for_2m_ignores_a_1_minute_spike_and_fires_on_a_3_minute_one(platform, clock, alarms):
    start = T0
    clock.now = start
    for offset in (0, 30 * S, 60 * S):
        send(platform, clock, alarms, "b-1", start + offset, temp=90.0)
        alarms.tick()
    send(platform, clock, alarms, "b-1", start + 61 * S, temp=70.0)
    clock.now = start + 10 * MIN
    alarms.tick()
    assert open_alarms(alarms, "overheat") == []

    start = clock.now
    for offset in range(0, 3 * MIN + 1, 30 * S):
        send(platform, clock, alarms, "b-2", start + offset, temp=90.0)
        alarms.tick()
        fired = open_alarms(alarms, "overheat")
        assert len(fired) == (1 if offset >= 2 * MIN else 0), offset
    (alarm,) = fired
    assert alarm["twin"] == "b-2" and alarm["severity"] == "critical"
    assert alarm["since"] == format_ts(start)
    assert alarm["raised"] == format_ts(start + 2 * MIN)  # exactly `for` after it began
    assert alarm["message"] == "b-2 temperature 90.0 above 80"
    assert alarm["values"] == {"limit": 80.0, "temp": 90.0}

    send(platform, clock, alarms, "b-2", start + 4 * MIN, temp=60.0)
    cleared = alarms.get(alarm["id"])
    assert cleared["state"] == "cleared" and cleared["cleared_by"] == "condition"
    assert cleared["cleared"] == format_ts(start + 4 * MIN)


def test_a_condition_without_new_data_fires_on_the_clock(platform, clock, alarms):
    clock.now = T0
    send(platform, clock, alarms, "b-3", T0, temp=95.0)
    clock.now = T0 + 2 * MIN - 1
    alarms.tick()
    assert open_alarms(alarms, "overheat") == []
    clock.now = T0 + 2 * MIN
    alarms.tick()
    (alarm,) = open_alarms(alarms, "overheat")
    assert alarm["raised"] == format_ts(T0 + 2 * MIN)


def test_rules_run_per_observation_within_one_batch(platform, clock, alarms):
    """Several observations of a twin in one batch: each is checked in order, and inputs an
    observation lacks come from the twin's previous one."""
    clock.now = T0 + 10 * MIN
    batch = [
        {"twin": "b-4", "type": "boiler", "ts": T0, "values": {"temp": 90, "pressure": 6}},
        {"twin": "b-5", "type": "boiler", "ts": T0, "values": {"temp": 20, "pressure": 6}},
        {"twin": "b-4", "type": "boiler", "ts": T0 + 1 * MIN, "values": {"temp": 90}},
        {"twin": "b-4", "type": "boiler", "ts": T0 + 2 * MIN + 1, "values": {"temp": 60}},
        {"twin": "b-4", "type": "boiler", "ts": T0 + 3 * MIN, "values": {"temp": 40}},
    ]
    assert platform.ingest(batch).accepted == 5
    alarms.sync()
    overheat = alarms.list(twin="b-4", state="cleared")["items"]
    by_rule = {a["rule"]: a for a in overheat}
    # held from T0 until the 60 degC sample at 2m+1ms: raised at 2m, cleared at that sample
    assert by_rule["overheat"]["raised"] == format_ts(T0 + 2 * MIN)
    assert by_rule["overheat"]["cleared"] == format_ts(T0 + 2 * MIN + 1)
    # pressure 6 was sent once; it still counts for the later samples (cleared when temp <= 50)
    assert by_rule["overpressure"]["raised"] == format_ts(T0)
    assert by_rule["overpressure"]["cleared"] == format_ts(T0 + 3 * MIN)
    assert alarms.list(twin="b-5")["total"] == 0


def test_replaying_the_journal_reproduces_every_alarm(platform, clock, alarms):
    """Rule evaluation is a pure function of the applied batches: a sandbox fed from the journal
    raises and clears the same alarms at the same times, with the same values and messages."""
    clock.now = T0
    send(platform, clock, alarms, "b-1", T0, temp=95.0)  # hot at once, overheat pending
    clock.now = T0 + 2 * MIN
    alarms.tick()  # overheat raised by the clock, with no new data
    send(platform, clock, alarms, "b-1", T0 + 3 * MIN, temp=60.0)  # both clear
    batch = [
        {"twin": "b-2", "type": "boiler", "ts": T0, "values": {"temp": 90, "pressure": 6}},
        {"twin": "b-2", "type": "boiler", "ts": T0 + 1 * MIN, "values": {"temp": 90}},
        {"twin": "b-2", "type": "boiler", "ts": T0 + 2 * MIN + 1, "values": {"temp": 60}},
        {"twin": "b-2", "type": "boiler", "ts": T0 + 3 * MIN, "values": {"temp": 40}},
    ]
    assert platform.ingest(batch).accepted == 4
    for k, temp in enumerate((72.0, 68.0, 66.0, 71.0, 64.0, 75.0)):  # hysteresis
        send(platform, clock, alarms, "b-3", T0 + 4 * MIN + k * S, temp=temp)
    send(platform, clock, alarms, "b-4", T0 + 5 * MIN, temp=99.0)
    clock.now = T0 + 8 * MIN
    alarms.tick()
    live = sorted(
        (alarm_story(a) for a in alarms.list(limit=1000)["items"]),
        key=lambda a: (a["twin"], a["rule"], a["raised"]),
    )
    assert len(live) == 9 and sum(a["cleared"] is None for a in live) == 3
    assert replayed_alarms(platform, now=clock.now) == live


def test_hysteresis_clears_only_below_the_clear_threshold(platform, clock, alarms):
    clock.now = T0
    send(platform, clock, alarms, "b-6", T0, temp=72.0)  # margin 8 < 10: raised at once
    (alarm,) = open_alarms(alarms, "hot")
    for k, temp in enumerate((68.0, 66.0, 71.0)):  # margins 12, 14, 9: between the thresholds
        send(platform, clock, alarms, "b-6", T0 + (k + 1) * S, temp=temp)
        assert open_alarms(alarms, "hot")[0]["id"] == alarm["id"]
    send(platform, clock, alarms, "b-6", T0 + 10 * S, temp=64.0)  # margin 16 > 15
    assert open_alarms(alarms, "hot") == []
    assert alarms.get(alarm["id"])["cleared"] == format_ts(T0 + 10 * S)
    send(platform, clock, alarms, "b-6", T0 + 20 * S, temp=75.0)
    (again,) = open_alarms(alarms, "hot")
    assert again["id"] != alarm["id"]


def test_one_open_alarm_per_twin_and_rule(platform, clock, alarms):
    clock.now = T0
    for k in range(5):
        send(platform, clock, alarms, "b-7", T0 + k * S, temp=75.0)
    assert len(open_alarms(alarms, "hot", twin="b-7")) == 1

    first = alarms.raise_alarm("b-7", "leak", "warning", "model sees a leak", {"p": 0.91})
    again = alarms.raise_alarm("b-7", "leak", "critical", "leak confirmed", {"p": 0.99})
    assert again["id"] == first["id"] and again["count"] == 2
    assert again["severity"] == "critical" and again["message"] == "leak confirmed"
    assert again["type"] == "boiler" and again["source"] == "job"
    assert [h["event"] for h in alarms.get(first["id"])["history"]] == ["raised", "repeated"]
    alarms.clear(first["id"], by="ops")
    third = alarms.raise_alarm("b-7", "leak", "warning", "leak again")
    assert third["id"] != first["id"] and third["count"] == 1


def test_every_change_is_published_as_a_notice(platform, clock, alarms):
    notices: list[Notice] = []
    token = platform.bus.subscribe(lambda e: notices.append(e) if isinstance(e, Notice) else None)
    try:
        clock.now = T0
        send(platform, clock, alarms, "b-8", T0, temp=75.0)
        alarm_id = open_alarms(alarms, "hot")[0]["id"]
        alarms.acknowledge(alarm_id, by="ann")
        alarms.comment(alarm_id, "on my way", "ann")
        send(platform, clock, alarms, "b-8", T0 + S, temp=50.0)
    finally:
        platform.bus.unsubscribe(token)
    mine = [n for n in notices if n.data["id"] == alarm_id]
    assert [n.id for n in mine] == [f"{alarm_id}.{v}" for v in (1, 2, 3, 4)]
    assert [n.data["event"] for n in mine] == ["raised", "acknowledged", "commented", "cleared"]
    assert all(n.kind == "alarm" and n.data["twin"] == "b-8" for n in mine)
    assert mine[-1].data["type"] == "boiler" and mine[-1].data["state"] == "cleared"


def test_api_lists_acknowledges_clears_and_comments(platform, clock, alarms):
    clock.now = T0
    send(platform, clock, alarms, "b-9", T0, temp=75.0)
    send(platform, clock, alarms, "b-10", T0, temp=75.0, pressure=7.0)
    app = create_app(platform)
    with TestClient(app) as client:
        listed = client.get("/api/alarms", params={"state": "active", "severity": "warning"})
        assert listed.status_code == 200 and listed.json()["total"] == 2
        assert (
            client.get("/api/alarms", params={"type": "boiler", "limit": 1}).json()["items"][0][
                "twin"
            ]
            == "b-10"
        )
        counts = client.get("/api/alarms/counts").json()
        assert counts["warning"] == {"active": 2, "acknowledged": 0, "total": 2}
        assert counts["info"]["active"] == 1 and counts["total"]["total"] == 3

        alarm_id = client.get("/api/alarms", params={"twin": "b-9"}).json()["items"][0]["id"]
        acked = client.post(f"/api/alarms/{alarm_id}/ack", json={"by": "ann"})
        assert acked.status_code == 200 and acked.json()["state"] == "acknowledged"
        assert acked.json()["acknowledged_by"] == "ann"
        again = client.post(f"/api/alarms/{alarm_id}/ack")
        assert again.status_code == 409
        assert f"/api/alarms/{alarm_id}/clear" in again.json()["error"]["fix"]

        posted = client.post(
            f"/api/alarms/{alarm_id}/comments", json={"text": "valve replaced", "author": "bo"}
        )
        assert posted.status_code == 201
        assert posted.json()["comments"][0]["text"] == "valve replaced"
        cleared = client.post(f"/api/alarms/{alarm_id}/clear", json={"by": "bo", "note": "ok"})
        assert cleared.json()["state"] == "cleared" and cleared.json()["cleared_by"] == "bo"
        assert client.post(f"/api/alarms/{alarm_id}/clear").status_code == 409
        assert client.post(f"/api/alarms/{alarm_id}/ack").status_code == 409

        detail = client.get(f"/api/alarms/{alarm_id}").json()
        assert [h["event"] for h in detail["history"]] == [
            "raised",
            "acknowledged",
            "commented",
            "cleared",
        ]
        assert detail["history"][-1]["note"] == "ok"
        assert client.get("/api/alarms/counts").json()["warning"]["active"] == 1

        missing = client.get("/api/alarms/999")
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "id"
        assert client.post("/api/alarms/999/ack").status_code == 404
        bad = client.get("/api/alarms", params={"state": "burning"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "state"
        empty = client.post(f"/api/alarms/{alarm_id}/comments", json={"text": ""})
        assert empty.status_code == 422
        assert client.get("/api/alarms", params={"limit": 0}).status_code == 422


def test_alarms_and_pending_conditions_survive_a_restart(tmp_path):
    clock = FakeClock(T0)
    path = tmp_path / "data"
    with Platform(path, clock=clock, settings=QUIET) as platform:
        platform.put_type("boiler", BOILER)
        alarms = platform.alarms
        send(platform, clock, alarms, "b-11", T0, temp=75.0)
        hot = open_alarms(alarms, "hot")[0]
        alarms.acknowledge(hot["id"], by="ann")
        alarms.comment(hot["id"], "watching it", "ann")
        send(platform, clock, alarms, "b-12", T0, temp=95.0)  # overheat pending (for 2m)

    with Platform(path, clock=clock, settings=QUIET) as platform:
        alarms = platform.alarms
        kept = alarms.get(hot["id"])
        assert kept["state"] == "acknowledged" and kept["comments"][0]["author"] == "ann"
        clock.now = T0 + 2 * MIN
        alarms.tick()
        (overheat,) = open_alarms(alarms, "overheat")
        assert overheat["twin"] == "b-12" and overheat["raised"] == format_ts(T0 + 2 * MIN)
        send(platform, clock, alarms, "b-11", T0 + 3 * MIN, temp=60.0)  # margin 20: clears
        assert alarms.get(hot["id"])["state"] == "cleared"
        send(platform, clock, alarms, "b-12", T0 + 3 * MIN, temp=70.0)
        assert alarms.get(overheat["id"])["state"] == "cleared"


def test_rules_with_unknown_names_are_refused_at_put_type(client):
    spec = {"properties": {"temp": {}}, "rules": {"overheat": {"when": "temperature > 80"}}}
    response = client.put("/api/types/boiler", json=spec)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "rules.overheat.when" and "temp" in error["fix"]

    cases = {
        "rules.r.clear": {"when": "temp > 1", "clear": "tmp < 1"},
        "rules.r.message": {"when": "temp > 1", "message": "{twin} at {pressure}"},
        "rules.r.for": {"when": "temp > 1", "for": "two minutes"},
        "rules.r.severity": {"when": "temp > 1", "severity": "fatal"},
    }
    for field, rule in cases.items():
        response = client.put(
            "/api/types/boiler", json={"properties": {"temp": {}}, "rules": {"r": rule}}
        )
        assert response.status_code == 422, field
        assert response.json()["error"]["field"] == field
    windowed = {"when": "avg(temp, '5m') > 1"}
    response = client.put(
        "/api/types/boiler", json={"properties": {"temp": {}}, "rules": {"r": windowed}}
    )
    assert response.status_code == 422 and "derived value" in response.json()["error"]["fix"]
    assert client.get("/api/types/boiler").status_code == 404


def test_deleting_a_twin_clears_its_alarms_and_drops_its_pending_conditions(
    platform, clock, alarms
):
    clock.now = T0
    send(
        platform, clock, alarms, "b-1", T0, temp=90.0, pressure=6.0
    )  # overpressure, hot; overheat pends
    send(platform, clock, alarms, "b-2", T0, temp=90.0, pressure=6.0)
    raised = open_alarms(alarms, twin="b-1")
    assert sorted(a["rule"] for a in raised) == ["hot", "overpressure"]

    platform.delete_twin("b-1")
    alarms.sync()
    assert open_alarms(alarms, twin="b-1") == []
    for alarm in raised:
        cleared = alarms.get(alarm["id"])
        assert cleared["state"] == "cleared", cleared
        assert cleared["history"][-1]["note"] == "the twin was deleted", cleared["history"]
    clock.now = T0 + 5 * MIN
    alarms.tick()  # b-1's overheat condition was dropped; b-2's fires
    assert [a["twin"] for a in open_alarms(alarms, "overheat")] == ["b-2"]
    assert len(open_alarms(alarms, twin="b-2")) == 3
