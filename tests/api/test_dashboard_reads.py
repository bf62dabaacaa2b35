"""The reads the dashboard builds on: history that picks its aggregate per signal (never a value
that was not measured unless it says it is a mean), key values of the fleet, staleness from the
type or from the observed reporting interval, and a calibration summary with units and the values
calibration published even when newer telemetry had already arrived."""

from __future__ import annotations

from calibration_support import STEP_MS, feed
from conftest import T0, obs

from livetwin.examples.rollers import ROLLER_TYPE, observations, roller_fleet

FAN = {
    "properties": {"speed": {"unit": "rpm"}, "vibration": {"unit": "mm/s"}, "temp": {}},
    "derived": {"hot": "temp > 60", "double": "speed * 2"},
}


def test_auto_aggregate_draws_steps_at_their_levels_and_dense_signals_as_envelopes(client):
    client.put("/api/types/fan", json=FAN)
    rows = []
    for k in range(1200):  # 20 minutes, one sample a second: 900 rpm, then 1200 rpm
        speed = 900.0 if k < 600 else 1200.0
        vibration = 2.0 + (k % 7) * 0.5  # noisy: many levels inside every bucket
        rows.append(obs("fan-1", T0 + k * 1000, "fan", speed=speed, vibration=vibration))
    assert client.post("/api/ingest", json=rows).json()["accepted"] == 1200
    h = client.get(
        "/api/twins/fan-1/history",
        params={"names": "speed,vibration", "every": "1m", "agg": "auto"},
    ).json()
    assert h["agg"] == "auto" and len(h["ts"]) == 20
    assert h["aggs"] == {"speed": "last", "vibration": "avg"}
    assert set(h["series"]["speed"]) == {900.0, 1200.0}  # never 1050, a speed that never was
    assert "speed" not in h["min"] and min(h["min"]["vibration"]) == 2.0
    assert max(h["max"]["vibration"]) == 5.0
    low, mean, high = (h[k]["vibration"] for k in ("min", "series", "max"))
    envelope = zip(low, mean, high, strict=True)
    assert all(lo < m < hi for lo, m, hi in envelope)

    # averaging the same step is what the dashboard no longer does
    avg = client.get(
        "/api/twins/fan-1/history", params={"names": "speed", "every": "20m", "agg": "avg"}
    ).json()
    assert avg["series"]["speed"] == [1050.0]
    # a bucket with at most one sample is the sample itself
    sparse = client.get(
        "/api/twins/fan-1/history", params={"names": "vibration", "every": "1s", "agg": "auto"}
    ).json()
    assert sparse["aggs"] == {"vibration": "last"} and sparse["min"] == {}
    bad = client.get("/api/twins/fan-1/history", params={"every": "1m", "agg": "mean"})
    assert bad.status_code == 422 and "auto" in bad.json()["error"]["fix"]


def test_key_values_and_staleness_of_a_type(client):
    client.put("/api/types/fan", json=FAN)
    motion = {
        "properties": {"motion": {}},
        "stale_after": "12h",
        "key_values": ["motion"],
    }
    assert client.put("/api/types/motion", json=motion).status_code == 200
    rows = [obs("fan-1", T0 + k * 10_000, "fan", speed=900 + k, temp=40) for k in range(30)]
    rows += [obs("fan-2", T0 + k * 10_000, "fan", speed=800) for k in range(30)]
    rows.append(obs("pir-1", T0, "motion", motion=1))
    assert client.post("/api/ingest", json=rows).json()["accepted"] == 61
    types = {t["name"]: t for t in client.get("/api/types").json()}
    # no stale_after declared: three times the usual gap (10 s), at least a minute
    assert types["fan"]["stale_after"] == 60_000 and types["fan"]["stale_after_from"] == "observed"
    assert types["motion"]["stale_after"] == 12 * 3_600_000
    assert types["motion"]["stale_after_from"] == "type"
    assert types["fan"]["key_values"] == ["speed", "vibration", "temp", "hot", "double"]

    page = client.get("/api/twins", params={"type": "fan", "values": "true"}).json()
    first = page["items"][0]
    assert first["id"] == "fan-1"
    assert first["values"] == {
        "speed": 929.0,
        "vibration": None,
        "temp": 40.0,
        "hot": 0.0,
        "double": 1858.0,
    }
    assert "values" not in client.get("/api/twins", params={"type": "fan"}).json()["items"][0]
    pir = client.get("/api/twins", params={"type": "motion", "values": "1"}).json()["items"][0]
    assert pir["values"] == {"motion": 1.0}


def test_key_values_and_virtual_sensor_units_are_checked(client):
    bad = client.put("/api/types/fan", json={**FAN, "key_values": ["speed", "rpm"]})
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "key_values.1" and "speed" in bad.json()["error"]["fix"]
    late = client.put("/api/types/fan", json={**FAN, "stale_after": "soon"})
    assert late.status_code == 422 and "stale_after" in late.json()["error"]["field"]
    units = {**ROLLER_TYPE, "model": {**ROLLER_TYPE["model"], "units": {"w1": "rad/s"}}}
    wrong = client.put("/api/types/roller_line", json=units)
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "model.units"


def test_calibration_view_has_units_and_the_newest_published_values(platform, client):
    platform.put_type("roller_line", ROLLER_TYPE)
    sim = roller_fleet(2, seed=4)
    ids = ["line-a", "line-b"]
    feed(platform, sim, ids, 40, 0)
    assert platform.calibrate("roller_line")["status"] == "succeeded"
    view = client.get("/api/twins/line-a/calibration").json()
    b1, t1 = view["parameters"]["b1"], view["virtual_sensors"]["T1"]
    assert (b1["unit"], t1["unit"], view["virtual_sensors"]["slip1"]["unit"]) == ("N m s", "N", "")
    assert b1["lower"] < b1["value"] < b1["upper"] and b1["std"] > 0
    assert b1["ts"] == "2026-11-22T10:00:03.900Z" <= view["filter"]["calibrated_until"]  # T0+3.9s

    # newer telemetry arrives before calibration publishes its last step (the demo's case):
    # the published values still become current state (they keep their own time)
    last = T0 + 39 * STEP_MS
    newer = observations(sim.step(), ids, last + 5 * STEP_MS)
    assert platform.ingest(newer).accepted == 2
    published = {"b1": 0.0321, "b1_std": 0.001, "b1_lower": 0.0301, "b1_upper": 0.0341}
    row = {"twin": "line-a", "type": "roller_line", "ts": last, "values": published}
    assert platform.ingest([row]).accepted == 1
    twin = platform.twin("line-a")
    assert twin["parameters"]["b1"] == 0.0321 and twin["properties"]["b1_std"] == 0.001
    older = {**row, "ts": last - STEP_MS, "values": {"b1": 0.05}}
    assert platform.ingest([older]).accepted == 1
    assert platform.twin("line-a")["parameters"]["b1"] == 0.0321  # older than the one held
    b1 = client.get("/api/twins/line-a/calibration").json()["parameters"]["b1"]
    assert (b1["value"], b1["std"], b1["lower"], b1["upper"]) == (0.0321, 0.001, 0.0301, 0.0341)
