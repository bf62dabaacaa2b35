"""The REST API end to end: declare a type, send telemetry, read state, history and events."""

from __future__ import annotations

import csv
import io

from conftest import PUMP, T0, obs


def declare(client, name="pump", spec=PUMP):
    r = client.put(f"/api/types/{name}", json=spec)
    assert r.status_code == 200, r.text
    return r.json()


def test_tour(client):
    assert declare(client) == {"name": "pump", "version": 1, "changed": True}
    assert declare(client)["changed"] is False  # the same spec makes no new version
    rows = [obs("pump-1", T0 + k * 60_000, flow=10.0 + k, pressure=2.0) for k in range(5)]
    r = client.post("/api/ingest", json=rows)
    assert r.status_code == 200
    assert r.json() == {"accepted": 5, "duplicates": 0, "rejected": []}

    twin = client.get("/api/twins/pump-1").json()
    assert twin["type"] == "pump" and twin["version"] == 1
    assert twin["properties"] == {"flow": 14.0, "pressure": 2.0}
    assert twin["parameters"] == {"eff": 0.8}
    assert abs(twin["derived"]["power"] - 14 * 2 / 36 / 0.8) < 1e-12
    assert twin["derived"]["flow_avg"] == 12.0  # 10..14 all within 10 minutes
    assert twin["updated"] == "2026-11-22T10:04:00.000Z"

    h = client.get("/api/twins/pump-1/history", params={"names": "flow,power"}).json()
    assert h["ts"] == [T0 + k * 60_000 for k in range(5)]
    assert h["series"]["flow"] == [10.0, 11.0, 12.0, 13.0, 14.0]
    agg = client.get(
        "/api/twins/pump-1/history", params={"names": "flow", "every": "2m", "agg": "max"}
    ).json()
    assert agg["ts"] == [T0, T0 + 120_000, T0 + 240_000]
    assert agg["series"]["flow"] == [11.0, 13.0, 14.0]

    text = client.get(
        "/api/twins/pump-1/history", params={"names": "flow"}, headers={"accept": "text/csv"}
    ).text
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["time", "flow"] and table[1] == ["2026-11-22T10:00:00.000Z", "10.0"]

    observations = client.get("/api/twins/pump-1/observations", params={"limit": 2}).json()
    assert [e["values"]["flow"] for e in observations] == [14.0, 13.0]
    older = client.get(
        "/api/twins/pump-1/observations", params={"before": observations[-1]["ts"], "limit": 10}
    ).json()
    assert [e["values"]["flow"] for e in older] == [12.0, 11.0, 10.0]
    # `/events` is the older name of the same read, kept as a deprecated alias
    for params in ({"limit": 2}, {"before": observations[-1]["ts"], "limit": 10}):
        old_name = client.get("/api/twins/pump-1/events", params=params)
        assert old_name.json() == client.get("/api/twins/pump-1/observations", params=params).json()
    paths = client.get("/openapi.json").json()["paths"]
    assert paths["/api/twins/{twin_id}/events"]["get"]["deprecated"] is True
    assert not paths["/api/twins/{twin_id}/observations"]["get"].get("deprecated")


def test_type_versions_stay_readable_and_twins_migrate(client):
    declare(client)
    client.post("/api/ingest", json=[obs("p", T0, flow=5.0, pressure=1.0)])
    changed = {**PUMP, "derived": {**PUMP["derived"], "head": "pressure * 10.2"}}
    assert declare(client, spec=changed)["version"] == 2
    assert client.get("/api/types/pump", params={"version": 1}).json()["spec"] == {
        **client.get("/api/types/pump", params={"version": 1}).json()["spec"]
    }
    v1 = client.get("/api/types/pump", params={"version": 1}).json()
    v2 = client.get("/api/types/pump").json()
    assert "head" not in v1["spec"]["derived"] and "head" in v2["spec"]["derived"]
    assert v2["versions"] == [1, 2]
    twin = client.get("/api/twins/p").json()
    assert twin["version"] == 2 and twin["properties"]["flow"] == 5.0
    client.post("/api/ingest", json=[obs("p", T0 + 1000, pressure=2.0)])
    assert client.get("/api/twins/p").json()["derived"]["head"] == 20.4
    # history spans both versions: "head" is absent from rows written under version 1
    h = client.get("/api/twins/p/history", params={"names": "flow,head"}).json()
    assert h["series"]["head"] == [None, 20.4]
    assert client.get("/api/types").json() == [
        {
            "name": "pump",
            "namespace": "default",
            "version": 2,
            "twins": 1,
            "description": "test pump",
            "key_values": ["flow", "pressure", "power", "flow_avg"],  # properties, then derived
            "stale_after": None,  # two observations are too few to tell the usual gap
            "stale_after_from": None,
        }
    ]


def test_yaml_type_spec(client):
    body = """
properties:
  temp: {unit: degC}
derived:
  hot: "1 if temp > 30 else 0"
"""
    r = client.put("/api/types/room", content=body, headers={"content-type": "application/yaml"})
    assert r.status_code == 200, r.text
    client.post("/api/ingest", json=[obs("r1", T0, type="room", temp=31)])
    assert client.get("/api/twins/r1").json()["derived"] == {"hot": 1.0}


def test_hierarchy_with_parent_links(client):
    declare(client, "building", {"properties": {"occupancy": {}}, "children": ["floor"]})
    declare(client, "floor", {"properties": {"temp": {}}, "children": ["room"]})
    declare(client, "room", {"properties": {"temp": {}}})
    r = client.post(
        "/api/ingest",
        json=[
            {**obs("b1", T0, type="building", occupancy=3)},
            {**obs("b1/f1", T0, type="floor", temp=20), "parent": "b1"},
            {**obs("b1/f1/r1", T0, type="room", temp=21), "parent": "b1/f1"},
            {**obs("b1/f1/r2", T0, type="room", temp=22), "parent": "b1/f1"},
        ],
    )
    assert r.json()["accepted"] == 4, r.text
    assert client.get("/api/twins/b1/f1/r2").json()["properties"] == {"temp": 22.0}
    assert client.get("/api/twins/b1/f1/r2/history").json()["series"]["temp"] == [22.0]
    assert client.get("/api/twins/b1%2Ff1/observations").json()[0]["values"] == {"temp": 20.0}
    assert client.get("/api/twins/b1/f1/events").json()[0]["values"] == {"temp": 20.0}
    rooms = client.get("/api/twins", params={"parent": "b1/f1"}).json()
    assert [t["id"] for t in rooms["items"]] == ["b1/f1/r1", "b1/f1/r2"]
    bad = client.post(
        "/api/ingest", json=[{**obs("r9", T0, type="room", temp=1), "parent": "b1"}]
    ).json()
    assert bad["rejected"][0]["field"] == "parent"
    assert "cannot have 'room' children" in bad["rejected"][0]["error"]


def test_query_with_where_and_paging(client):
    declare(client)
    rows = [obs(f"p{i}", T0, flow=float(i), pressure=1.0) for i in range(30)]
    client.post("/api/ingest", json=rows)
    page = client.get(
        "/api/twins", params={"type": "pump", "where": "flow >= 10 and power > 0", "limit": 5}
    ).json()
    assert page["total"] == 20
    assert [t["id"] for t in page["items"]] == ["p10", "p11", "p12", "p13", "p14"]
    page2 = client.get(
        "/api/twins", params={"type": "pump", "where": "flow >= 10", "limit": 5, "offset": 15}
    ).json()
    assert [t["id"] for t in page2["items"]] == ["p25", "p26", "p27", "p28", "p29"]


def test_idempotency_keys_store_a_retried_batch_once(client, platform):
    declare(client)
    rows = [{**obs(f"p{i}", T0, flow=1.0), "key": f"batch-1/{i}"} for i in range(10)]
    assert client.post("/api/ingest", json=rows).json()["accepted"] == 10
    again = client.post("/api/ingest", json=rows).json()
    assert again == {"accepted": 0, "duplicates": 10, "rejected": []}
    assert platform.stats()["journal_observations"] == 10


def test_health_and_docs(client):
    assert client.get("/api/health").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/ingest" in paths and "/api/twins/{twin_id}/history" in paths


GATEWAY = {
    "foreach": "$.readings[*]",
    "twin": "@.id",
    "twin_prefix": "pump-",
    "type": "pump",
    "ts": "$.sent",
    "ts_format": "epoch_s",
    "values": {"flow": "@.data.q", "pressure": "@.data.p"},
}


def test_extractor_maps_a_device_payload(client):
    declare(client)
    r = client.put("/api/extractors/gateway", json=GATEWAY)
    assert r.status_code == 200, r.text
    assert client.get("/api/extractors/gateway").json()["twin"] == "@.id"
    assert [e["name"] for e in client.get("/api/extractors").json()] == ["gateway"]
    payload = {
        "sent": (T0 // 1000),
        "readings": [
            {"id": 1, "data": {"q": 12.5, "p": 3.0}},
            {"data": {"q": 1.0}},  # no id: rejected, others kept
            {"id": 3, "data": {"q": "lots"}},  # extracted, then rejected by ingest
            {"id": 4, "data": {"p": 2.5}},
        ],
    }
    body = client.post("/api/ingest/gateway", json=payload).json()
    assert body["accepted"] == 2
    assert sorted((e["index"], e["field"]) for e in body["rejected"]) == [
        (1, "twin"),
        (2, "values.flow"),
    ]
    assert client.get("/api/twins/pump-1").json()["properties"] == {"flow": 12.5, "pressure": 3.0}
    assert client.get("/api/twins/pump-4").json()["updated"] == "2026-11-22T10:00:00.000Z"


def test_bad_extractor_specs(client):
    r = client.put("/api/extractors/x", json={**GATEWAY, "twin": "@.id[?("})
    assert r.status_code == 422 and r.json()["error"]["field"] == "twin"
    assert r.json()["error"]["fix"]
    r = client.put("/api/extractors/x", json={**GATEWAY, "valus": {}})
    assert r.status_code == 422 and "valus" in r.json()["error"]["message"]
    r = client.post("/api/ingest/nobody", json={})
    assert r.status_code == 404 and r.json()["error"]["field"] == "extractor"
