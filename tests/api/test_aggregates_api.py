"""Aggregates over the API: a parent's derived values over its children, its history and
alarms, fleet totals per type, and clear errors for bad names, aggregates and specs."""

from __future__ import annotations

from conftest import T0, obs

STATION = {
    "properties": {"level": {}},
    "children": ["pump"],
    "derived": {
        "total_flow": "sum(children.flow)",
        "pumps": "count(children)",
        "busy": "count(children.where(flow > 5))",
    },
    "rules": {"low_total": {"when": "total_flow < 10", "severity": "warning"}},
}
PUMP = {"properties": {"flow": {}, "temperature": {}}}


def setup(client) -> None:
    for name, spec in (("station", STATION), ("pump", PUMP)):
        r = client.put(f"/api/types/{name}", json=spec)
        assert r.status_code == 200, r.text
    rows = [obs(s, T0, "station", level=1.0) for s in ("s1", "s2")]
    rows += [
        {**obs(f"p{k}", T0 + 1_000, flow=float(k), temperature=20.0 + k), "parent": f"s{1 + k % 2}"}
        for k in range(6)
    ]
    rows[-1]["values"].pop("flow")  # p5 has no flow: left out, and counted as missing
    r = client.post("/api/ingest", json=rows)
    assert r.json()["accepted"] == 8, r.text


def test_a_parent_aggregates_its_children(client, platform):
    setup(client)
    s1 = client.get("/api/twins/s1").json()["derived"]
    assert s1 == {"total_flow": 0.0 + 2 + 4, "pumps": 3.0, "busy": 0.0}
    s2 = client.get("/api/twins/s2").json()["derived"]
    assert s2 == {"total_flow": 1.0 + 3, "pumps": 3.0, "busy": 0.0}
    client.post("/api/ingest", json=[obs("p1", T0 + 2_000, flow=30.0)])
    assert client.get("/api/twins/s2").json()["derived"]["total_flow"] == 33.0
    h = client.get("/api/twins/s2/history", params={"names": "total_flow,level"}).json()
    assert h["series"]["total_flow"] == [None, 4.0, 33.0]  # a row per batch that changed it
    assert h["series"]["level"] == [1.0, None, None]
    platform.alarms.sync()
    alarms = client.get("/api/alarms", params={"twin": "s2"}).json()["items"]
    assert [(a["rule"], a["state"]) for a in alarms] == [("low_total", "cleared")]


def test_fleet_totals_per_type(client):
    setup(client)
    r = client.get("/api/types/pump/aggregate", params={"names": "flow,temperature"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "pump" and body["twins"] == 6
    assert body["values"]["flow"] == {"sum": 10.0, "avg": 2.0, "min": 0.0, "max": 4.0, "count": 5}
    assert body["values"]["temperature"]["max"] == 25.0
    r = client.get(
        "/api/types/pump/aggregate",
        params={"names": "flow", "agg": "sum,count", "where": "flow >= 2", "parent": "s1"},
    )
    assert r.json() == {
        "type": "pump",
        "twins": 2,
        "values": {"flow": {"sum": 6.0, "count": 2}},
    }
    nobody = client.get("/api/types/pump/aggregate", params={"where": "flow > 100"}).json()
    assert nobody["twins"] == 0 and nobody["values"]["flow"] == {
        "sum": None,
        "avg": None,
        "min": None,
        "max": None,
        "count": 0,
    }


def test_bad_aggregate_requests_name_the_field_and_fix(client):
    setup(client)
    cases = [
        ({"names": "flw"}, 422, "names", "flow"),
        ({"agg": "sum,median"}, 422, "agg", "sum, avg, min, max, count"),
        ({"where": "flw > 1"}, 422, "where", "flow"),
    ]
    for params, status, field, hint in cases:
        r = client.get("/api/types/pump/aggregate", params=params)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["field"] == field and hint in (error["message"] + error["fix"])
    r = client.get("/api/types/nope/aggregate")
    assert r.status_code == 404 and "PUT /api/types/nope" in r.json()["error"]["fix"]


def test_bad_aggregate_specs_are_refused_with_the_field(client):
    assert client.put("/api/types/pump", json=PUMP).status_code == 200
    bad = {**STATION, "derived": {"t": "sum(children.flw)"}, "rules": {}}
    r = client.put("/api/types/station", json=bad)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["field"] == "derived.t.expr" and "'pump' has no 'flw'" in error["message"]
    assert client.put("/api/types/station", json=STATION).status_code == 200
    r = client.put("/api/types/pump", json={"properties": {"speed": {}}})
    assert r.status_code == 422 and "first change 'station'" in r.json()["error"]["fix"]
