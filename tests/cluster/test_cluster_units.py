"""Cluster mode without Ray: the twin hash, the metadata's refusals, and a front end over four
shards in this process (routing, paging, the 503 partial answer, atomic across shards)."""

from __future__ import annotations

import os
import socket
import time
import zlib

import httpx
import orjson
import psycopg
import pytest
from cluster_support import LocalShards
from conftest import PUMP, T0
from fastapi.testclient import TestClient
from postgres_support import PG_URL

from livetwin.api.cluster import create_cluster_app
from livetwin.cluster.frontend import ClusterFrontend
from livetwin.cluster.meta import (
    open_cluster,
    shard_of,
    shards_of,
    with_schema,
)
from livetwin.errors import InvalidInput, LivetwinError, Unavailable

pytestmark = pytest.mark.services  # PostgreSQL


def test_a_twin_s_shard_is_crc32_of_its_utf8_id_modulo_the_shard_count():
    assert shard_of("pump-1", 8) == zlib.crc32(b"pump-1") % 8 == 6  # 1738268294 % 8
    assert shard_of("plant-a/pump-7", 4) == 0
    assert shard_of("ü", 5) == zlib.crc32("ü".encode()) % 5
    ids = [f"t{i}" for i in range(1000)]
    assert shards_of(ids, 8) == [shard_of(t, 8) for t in ids]
    assert set(shards_of(ids, 8)) == set(range(8))  # spread over every shard


def test_root_placement_keeps_a_tree_of_twins_on_one_shard():
    tree = ["home-1", "home-1/kitchen", "home-1/kitchen/fridge"]
    assert len({shard_of(t, 8, "root") for t in tree}) == 1
    assert shards_of(tree, 8, "root") == [shard_of("home-1", 8)] * 3
    assert len(set(shards_of([f"h{i}/x" for i in range(100)], 8, "root"))) == 8  # trees spread
    assert shards_of(tree, 8) == [shard_of(t, 8) for t in tree]  # twin: by the whole id


def test_a_row_whose_parent_lives_on_another_shard_is_rejected_naming_the_placement(front):
    client, _, _ = front
    assert client.put("/api/types/pump", json={**PUMP, "children": ["pump"]}).status_code == 200
    apart = next(f"c{i}" for i in range(100) if shard_of(f"c{i}", 4) != shard_of("p1", 4))
    along = next(f"c{i}" for i in range(100) if shard_of(f"c{i}", 4) == shard_of("p1", 4))
    batch = [
        {"twin": "p1", "type": "pump", "ts": T0, "values": {"flow": 1}},
        {"twin": apart, "type": "pump", "ts": T0, "values": {"flow": 2}, "parent": "p1"},
        {"twin": along, "type": "pump", "ts": T0, "values": {"flow": 3}, "parent": "p1"},
    ]
    answer = client.post("/api/ingest", json=batch).json()
    assert answer["accepted"] == 2, answer
    [rejected] = answer["rejected"]
    assert rejected["index"] == 1 and rejected["field"] == "parent"
    assert "must share a shard" in rejected["error"] and "--placement root" in rejected["fix"]
    assert client.get(f"/api/twins/{along}").json()["parent"] == "p1"
    made = client.post("/api/twins", json={"id": apart, "type": "pump", "parent": "p1"})
    assert made.status_code == 422 and made.json()["error"]["field"] == "parent"


def test_the_placement_is_fixed_at_creation(cluster_name):
    meta = open_cluster(PG_URL, shards=2, name=cluster_name, placement="root")
    assert meta.placement == "root" and meta.to_dict()["placement"] == "root"
    assert open_cluster(PG_URL, name=cluster_name).placement == "root"  # read, not given
    with pytest.raises(InvalidInput) as refused:
        open_cluster(PG_URL, name=cluster_name, placement="twin")
    assert "places twins by root" in refused.value.message
    assert refused.value.field == "placement" and "--placement root" in refused.value.fix
    with pytest.raises(InvalidInput, match="--placement must be twin or root"):
        open_cluster(PG_URL, shards=2, name=cluster_name, placement="hash")


def test_with_schema_sets_the_search_path_and_keeps_the_rest():
    url = with_schema("postgresql://u@h:5432/db?sslmode=require&options=-cx%3D1", "s_01")
    assert url == "postgresql://u@h:5432/db?sslmode=require&options=-csearch_path%3Ds_01"


def test_the_shard_count_is_fixed_at_creation(cluster_name):
    meta = open_cluster(PG_URL, shards=4, name=cluster_name)
    assert meta.shards == 4 and len(meta.shard_urls) == 4
    assert meta.shard_urls[2].endswith(f"search_path%3D{cluster_name}_shard_02")
    assert open_cluster(PG_URL, name=cluster_name) == meta  # joining needs no count
    assert open_cluster(PG_URL, shards=4, name=cluster_name) == meta
    with pytest.raises(InvalidInput) as refused:
        open_cluster(PG_URL, shards=8, name=cluster_name)
    assert "has 4 shards; it cannot start with 8" in refused.value.message
    assert refused.value.field == "shards" and "--shards 4" in refused.value.fix


def test_another_livetwin_version_is_refused(cluster_name):
    open_cluster(PG_URL, shards=2, name=cluster_name)
    with pytest.raises(Unavailable) as refused:
        open_cluster(PG_URL, name=cluster_name, version="0.0.1")
    assert "runs livetwin 0.1.0; this is livetwin 0.0.1" in refused.value.message
    assert refused.value.field == "version"


def test_joining_a_cluster_that_does_not_exist_needs_a_shard_count(cluster_name):
    with pytest.raises(InvalidInput, match="no cluster") as refused:
        open_cluster(PG_URL, name=cluster_name)
    assert refused.value.field == "shards"
    assert open_cluster(PG_URL, shards=2, name=cluster_name, create=False).shards == 2
    with pytest.raises(InvalidInput, match="no cluster"):  # a check writes nothing
        open_cluster(PG_URL, name=cluster_name)


@pytest.mark.parametrize(
    "url, says",
    [
        (None, "no database is configured"),
        ("sqlite:///x.db", "needs a postgresql:// database URL"),
        ("postgresql://postgres@127.0.0.1:1/x", "cannot connect to PostgreSQL"),
    ],
)
def test_cluster_mode_needs_a_reachable_postgresql(url, says):
    with pytest.raises(Unavailable, match=says) as refused:
        open_cluster(url, shards=2, name="ltnever")
    assert refused.value.field == "database" and "--database" in refused.value.fix


def test_shards_may_live_in_several_databases(cluster_name):
    other = PG_URL.rsplit("/", 1)[0] + "/postgres"
    meta = open_cluster(PG_URL, shards=3, name=cluster_name, databases=[PG_URL, other])
    assert [u.split("?")[0] for u in meta.shard_urls] == [PG_URL, other, PG_URL]


# ---- a front end over shards in this process -------------------------------------------------


def rows(n: int, twins: int = 20, key: str | None = "k") -> list[dict]:
    out = []
    for i in range(n):
        row = {"twin": f"p{i % twins}", "type": "pump", "ts": T0 + i, "values": {"flow": i}}
        if key:
            row["key"] = f"{key}{i}"
        out.append(row)
    return out


def test_a_batch_is_split_by_shard_and_reads_go_to_the_owner(front):
    client, shards, _ = front
    answer = client.post("/api/ingest", json=rows(100))
    assert answer.status_code == 200
    assert answer.json() == {"accepted": 100, "duplicates": 0, "rejected": []}
    for i in range(20):  # each twin lives on its shard only
        owner = shard_of(f"p{i}", 4)
        assert [s.core.engine.twin_count() and f"p{i}" in s.core.engine.states["pump"].index
                for s in shards.shards].count(True) == 1  # fmt: skip
        assert f"p{i}" in shards.shards[owner].core.engine.states["pump"].index
    twin = client.get("/api/twins/p3").json()
    assert twin["properties"]["flow"] == 83 and twin["id"] == "p3"
    assert client.get("/api/twins/p3/history?names=flow").json()["series"]["flow"][-1] == 83
    assert len(client.get("/api/twins/p3/observations?limit=3").json()) == 3
    assert client.get("/api/twins/nope").status_code == 404
    types = client.get("/api/types").json()
    assert [(t["name"], t["twins"]) for t in types] == [("pump", 20)]
    again = client.post("/api/ingest", json=rows(100))  # a retry: stored once
    assert again.json() == {"accepted": 0, "duplicates": 100, "rejected": []}


def test_fleet_lists_fan_out_and_page_over_the_shards(front):
    client, _, _ = front
    client.post("/api/ingest", json=rows(40, twins=40))
    seen = []
    for offset in range(0, 40, 7):
        page = client.get(f"/api/twins?type=pump&limit=7&offset={offset}").json()
        assert page["total"] == 40
        seen += [t["id"] for t in page["items"]]
    assert sorted(seen) == sorted(f"p{i}" for i in range(40))  # each once, none missing
    hot = client.get("/api/twins?type=pump&where=flow >= 30&limit=100").json()
    assert hot["total"] == 10
    assert {t["id"] for t in hot["items"]} == {f"p{i}" for i in range(30, 40)}


def test_a_shard_that_is_down_refuses_its_rows_with_503_and_the_rest_are_stored(front):
    client, shards, frontend = front
    shards.down.add(shard_of("p0", 4))
    down = shard_of("p0", 4)
    batch = rows(20)
    answer = client.post("/api/ingest", json=batch)
    assert answer.status_code == 503 and answer.headers["retry-after"] == "2"
    body = answer.json()
    refused = [r["index"] for r in body["unavailable"]]
    assert refused == [i for i, r in enumerate(batch) if shard_of(r["twin"], 4) == down]
    assert body["accepted"] == 20 - len(refused) > 0
    assert {r["shard"] for r in body["unavailable"]} == {down}
    assert client.get("/api/twins/p0").status_code == 503  # its reads too, with the fix
    assert "retry" in client.get("/api/twins/p0").json()["error"]["fix"]
    shards.down.clear()  # back: the probe marks it live, the retry lands the rest once
    deadline = time.monotonic() + 20
    while frontend.state(down) != "live" and time.monotonic() < deadline:
        time.sleep(0.05)
    again = client.post("/api/ingest", json=batch).json()
    assert again == {"accepted": len(refused), "duplicates": 20 - len(refused), "rejected": []}
    view = client.get("/api/cluster").json()
    assert view["cluster"] is True and view["live"] == 4 and view["twins"] == 20
    assert [s["state"] for s in view["shard_list"]] == ["live"] * 4
    metrics = client.get("/metrics").text
    assert 'livetwin_cluster_shards{state="live"} 4.0' in metrics
    assert f'livetwin_cluster_shard_twins{{shard="{down}"}}' in metrics


def test_fleet_aggregates_merge_over_the_shards(front):
    client, _, _ = front
    client.post("/api/ingest", json=rows(40, twins=40))  # flow 0..39, one per twin
    got = client.get("/api/types/pump/aggregate?names=flow").json()
    assert got["twins"] == 40
    assert got["values"]["flow"] == {"sum": 780.0, "avg": 19.5, "min": 0.0, "max": 39.0,
                                     "count": 40}  # fmt: skip
    some = client.get("/api/types/pump/aggregate?names=flow&agg=avg,max&where=flow >= 30")
    assert some.json()["values"]["flow"] == {"avg": 34.5, "max": 39.0}


def test_atomic_across_shards_is_a_clear_400_and_within_one_shard_it_works(front):
    client, _, _ = front
    answer = client.post("/api/ingest?atomic=true", json=rows(20))
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["field"] == "atomic" and "one shard" in error["message"]
    one = [r for r in rows(20) if shard_of(r["twin"], 4) == shard_of("p0", 4)]
    assert client.post("/api/ingest?atomic=true", json=one).json()["accepted"] == len(one)


def test_alarms_are_raised_on_every_shard_and_listed_merged(front):
    client, shards, _ = front
    spec = {"properties": {"temp": {}}, "rules": {"hot": {"when": "temp > 80"}}}
    assert client.put("/api/types/boiler", json=spec).status_code == 200
    hot = [f"b{i}" for i in range(12)]
    rows = [{"twin": t, "type": "boiler", "ts": T0 + i, "values": {"temp": 90}}
            for i, t in enumerate(hot)]  # fmt: skip
    rows.append({"twin": "cool", "type": "boiler", "ts": T0, "values": {"temp": 20}})
    assert client.post("/api/ingest", json=rows).json()["accepted"] == 13
    for shard in shards.shards:
        shard.alarms.sync()
    listed = client.get("/api/alarms?state=open&limit=5").json()
    assert listed["total"] == 12 and len(listed["items"]) == 5
    everything = listed["items"] + client.get("/api/alarms?offset=5&limit=20").json()["items"]
    assert sorted(a["twin"] for a in everything) == sorted(hot)  # every shard's, once
    assert len({a["id"] for a in everything}) == 12
    assert {a["id"] % 4 for a in everything} == {shard_of(t, 4) for t in hot}  # id -> shard
    one = everything[0]
    assert client.get(f"/api/alarms/{one['id']}").json()["twin"] == one["twin"]
    acked = client.post(f"/api/alarms/{one['id']}/ack", json={"by": "op"}).json()
    assert acked["state"] == "acknowledged" and acked["id"] == one["id"]
    counts = client.get("/api/alarms/counts").json()
    assert counts["total"] == {"active": 11, "acknowledged": 1, "total": 12}
    mine = client.get("/api/alarms?twin=b3").json()["items"]
    assert [a["twin"] for a in mine] == ["b3"]
    too_deep = client.get("/api/alarms?offset=990&limit=20")
    assert too_deep.status_code == 422 and too_deep.json()["error"]["field"] == "offset"


def test_twins_and_types_are_created_changed_and_deleted_on_their_shards(front):
    client, shards, _ = front
    made = client.post("/api/twins", json={"id": "p7", "type": "pump"})
    assert made.status_code == 201 and made.json()["created"] is True
    owner = shards.shards[shard_of("p7", 4)]
    assert "p7" in owner.core.engine.states["pump"].index
    assert client.post("/api/twins", json={"id": "p7", "type": "pump"}).status_code == 409
    client.post("/api/ingest", json=rows(8, twins=8))
    assert shard_of("p7", 4) != shard_of("p1", 4)
    patched = client.patch("/api/twins/p7", json={"parent": "p1"})  # refused by the front end
    assert patched.status_code == 422 and patched.json()["error"]["field"] == "parent"
    assert "must share a shard" in patched.json()["error"]["message"]
    assert "--placement root" in patched.json()["error"]["fix"]
    assert client.delete("/api/twins/p7").json()["removed"] == ["p7"]
    assert client.get("/api/twins/p7").status_code == 404
    refused = client.delete("/api/types/pump")
    assert refused.status_code == 409 and "7 twins" in refused.json()["error"]["message"]
    assert len(client.get("/api/twins?type=pump").json()["items"]) == 7  # nothing deleted
    dropped = client.delete("/api/types/pump?cascade=true").json()
    assert sorted(dropped["removed"]) == sorted(f"p{i}" for i in range(7))
    assert client.get("/api/types").json() == []
    assert client.post("/api/ingest", json=rows(1)).status_code == 422  # unknown type now


def test_a_device_payload_goes_through_an_extractor_to_its_shards(front):
    client, shards, _ = front
    gateway = {
        "foreach": "$.readings[*]", "twin": "@.id", "twin_prefix": "pump-", "type": "pump",
        "ts": "$.sent", "ts_format": "epoch_s", "values": {"flow": "@.data.q"},
    }  # fmt: skip
    assert client.put("/api/extractors/gateway", json=gateway).status_code == 200
    assert [e["name"] for e in client.get("/api/extractors").json()] == ["gateway"]
    readings = [{"id": i, "data": {"q": float(i)}} for i in range(8)]
    readings.insert(2, {"data": {"q": 1.0}})  # no id: rejected, the others kept
    readings.insert(5, {"id": 99, "data": {"q": "lots"}})  # extracted, rejected by the check
    payload = {"sent": T0 // 1000, "readings": readings}
    shards.down.add(shard_of("pump-7", 4))
    body = client.post("/api/ingest/gateway", json=payload).json()
    assert sorted((e["index"], e["field"]) for e in body["rejected"]) == [
        (2, "twin"),
        (5, "values.flow"),
    ]
    refused = [r["index"] for r in body["unavailable"]]  # payload elements, not observations
    assert 9 in refused and all(shard_of(f"pump-{readings[i]['id']}", 4) ==
                                shard_of("pump-7", 4) for i in refused)  # fmt: skip
    assert body["accepted"] == 8 - len(refused)
    assert client.get("/api/twins/pump-3").json()["properties"]["flow"] == 3.0


def test_mqtt_messages_go_through_a_front_end_to_their_shards(front):
    import uuid as uuid_module

    import paho.mqtt.client as mqtt
    from mqtt_support import wait_until
    from paho.mqtt.enums import CallbackAPIVersion

    from livetwin.settings import MqttConnection

    client, shards, frontend = front
    client.put("/api/extractors/pj", json={"twin": "$.id", "type": "pump",
                                            "values": {"flow": "$.flow"}})  # fmt: skip
    try:
        socket.create_connection(("127.0.0.1", 1883), timeout=2).close()
    except OSError:
        if os.environ.get("CI") == "true":
            pytest.fail("no MQTT broker on 127.0.0.1:1883 (required under CI=true)")
        pytest.skip("no MQTT broker on 127.0.0.1:1883")
    frontend.start_mqtt(MqttConnection("127.0.0.1", 1883))
    client = TestClient(create_cluster_app(frontend))  # an app of a front end with MQTT
    topic = f"lt-{uuid_module.uuid4().hex[:8]}"
    made = client.put("/api/mqtt/subscriptions/s", json={"topic": f"{topic}/+", "extractor": "pj"})
    assert made.status_code == 200, made.text
    assert frontend.mqtt.wait_connected()
    time.sleep(0.3)  # the SUBACK
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{topic}")
    publisher.connect("127.0.0.1", 1883)
    publisher.loop_start()
    try:
        for i in range(8):
            body = orjson.dumps({"id": f"m{i}", "flow": float(i)})
            publisher.publish(f"{topic}/x", body, qos=1).wait_for_publish(10)
        wait_until(lambda: client.get("/api/twins?type=pump").json()["total"] == 8)
        owner = shards.shards[shard_of("m5", 4)]
        assert owner.core.engine.twin("m5")["properties"]["flow"] == 5.0
        assert client.get("/api/mqtt/subscriptions").json()[0]["name"] == "s"
        shards.down.add(shard_of("m1", 4))  # a batch with a row for it is not acknowledged
        publisher.publish(f"{topic}/x", orjson.dumps({"id": "m1", "flow": 100.0}), qos=1)
        wait_until(lambda: frontend.mqtt.stats()["errors"] >= 1)
        assert frontend.mqtt.stats()["ingested"] == 8
    finally:
        publisher.disconnect()
        publisher.loop_stop()


def test_opcua_connectors_run_on_the_leading_front_end_and_move_with_the_lead(
    cluster_name, tmp_path
):
    from ingest.test_opcua import nodes_spec
    from opcua_support import OpcServer
    from webhook_support import wait_for

    from livetwin.settings import Settings

    def flow() -> float | None:
        try:
            return standby.twin("pump-1")["properties"].get("flow")
        except LivetwinError:
            return None

    server = OpcServer().start()
    meta = open_cluster(PG_URL, shards=4, name=cluster_name)
    shards = LocalShards(meta)
    settings = Settings(webhooks=False, outbound_allow=("127.0.0.0/8",))
    leader = ClusterFrontend(meta, shards, settings=settings, data_dir=str(tmp_path / "a"))
    standby = ClusterFrontend(meta, shards, settings=settings, data_dir=str(tmp_path / "b"))
    try:
        leader.put_type("pump", PUMP)
        assert (leader.scheduler.role, standby.scheduler.role) == ("leader", "standby")
        first, second = (
            TestClient(create_cluster_app(leader)),
            TestClient(create_cluster_app(standby)),
        )
        made = first.put("/api/opcua/connectors/line-1", json=nodes_spec(server))
        assert made.status_code == 200 and made.json()["status"]["connected"], made.text
        server.write("pump-1.flow", 3.5)
        wait_for(lambda: flow() == 3.5)
        refused = second.get("/api/opcua")  # only the leader runs (and answers for) them
        assert refused.status_code == 503 and "standby" in refused.json()["error"]["message"]
        assert second.get("/api/nope").status_code == 404  # every route is served: no 501s
        leader.close()  # the other front end takes the lead and runs the stored connector
        wait_for(lambda: standby.scheduler.role == "leader", timeout=15)
        server.write("pump-1.flow", 4.5)
        wait_for(lambda: flow() == 4.5, timeout=30)
        assert [c["name"] for c in second.get("/api/opcua").json()["connectors"]] == ["line-1"]
    finally:
        leader.close()
        standby.close()
        shards.close()
        server.close()


def test_bad_rows_are_rejected_by_the_front_end_before_any_shard(front):
    client, _, _ = front
    answer = client.post("/api/ingest", json=[{"twin": "p1", "type": "nope", "values": {"a": 1}}])
    assert answer.status_code == 422
    assert answer.json()["rejected"][0]["field"] == "type"


# ---- serve --cluster refuses what cannot work, before it serves -----------------------------


def test_serve_cluster_refusals_name_the_fix(cluster_name, monkeypatch):
    from cli_support import refused, run

    monkeypatch.delenv("LIVETWIN_DATABASE_URL", raising=False)
    port = ["--port", "18731"]
    refused(run("serve", "--cluster", "auto", "--shards", "2", *port), "needs PostgreSQL")
    refused(run("serve", "--shards", "2", *port), "--shards needs --cluster")
    db = ["--database", PG_URL, "--cluster-name", cluster_name]
    refused(run("serve", "--cluster", "head::", *db, *port), "is not a Ray address")
    refused(
        run("serve", "--cluster", "127.0.0.1:1", "--shards", "2", *db, *port),
        "no Ray cluster answers at 127.0.0.1:1",
        "ray start --head",
    )
    open_cluster(PG_URL, shards=4, name=cluster_name)
    refused(
        run("serve", "--cluster", "auto", "--shards", "8", *db, *port),
        "has 4 shards; it cannot start with 8",
        "--shards 4",
    )
    refused(run("serve", "--placement", "root", *port), "--placement needs --cluster")
    refused(
        run("serve", "--cluster", "auto", "--placement", "root", *db, *port),
        "places twins by twin; it cannot start with --placement root",
        "--placement twin",
    )


# ---- heavy jobs fan out ----------------------------------------------------------------------


def test_calibrating_a_type_runs_on_every_shard_at_once(front):
    from calibration_support import STEP_MS

    from livetwin.examples.rollers import DRAGS, ROLLER_TYPE, observations, roller_fleet

    client, shards, _ = front
    spec = {**ROLLER_TYPE, "calibration": {**ROLLER_TYPE["calibration"], "backend": "numpy"}}
    assert client.put("/api/types/roller_line", json=spec).status_code == 200
    ids = [f"line-{i}" for i in range(8)]
    sim = roller_fleet(len(ids), seed=3)
    rows = []
    for k in range(120):
        rows += observations(sim.step(), ids, T0 + k * STEP_MS)
    assert client.post("/api/ingest", json=rows).json()["accepted"] == len(rows)
    record = client.post("/api/types/roller_line/calibrate").json()
    assert record["status"] == "succeeded" and record["calibrated"] == record["twins"] == 8
    by_shard = {int(i): r["twins"] for i, r in record["shards"].items()}
    assert by_shard == {i: sum(shard_of(t, 4) == i for t in ids) for i in range(4)}
    assert {r["run"] for r in record["shards"].values()} == {  # one run, a part per shard
        f"{record['run']}-shard{i:02d}" for i in range(4)
    }
    line = client.get("/api/twins/line-3").json()
    assert 0.005 < line["parameters"][DRAGS[0]] < 0.08  # calibrated in place, on its shard
    one = client.post("/api/twins/line-3/calibrate").json()  # one twin: its shard only
    assert list(one["shards"]) == [str(shard_of("line-3", 4))]
    view = client.get("/api/twins/line-3/calibration").json()
    assert set(view["parameters"]) >= set(DRAGS)
    runs = client.get("/api/types/roller_line/calibration").json()
    assert len(runs) == 5 and {r["run"] for r in runs} >= {
        f"{one['run']}-shard{shard_of('line-3', 4):02d}"
    }
    # the scheduler's built-in calibrate job fans out over the shards too
    function = {"kind": "builtin", "job": "calibrate"}
    assert client.put("/api/functions/cal", json=function).status_code == 200
    run = client.post("/api/functions/cal/run", json={"type": "roller_line"}).json()
    done = wait_until(lambda: client.get(f"/api/runs/{run['id']}").json(), "succeeded")
    assert done["result"]["run"] == run["id"] and len(done["result"]["shards"]) == 4


def test_a_heavy_job_s_progress_is_summed_over_the_shards_and_a_cancel_reaches_them(front):
    from livetwin.errors import LivetwinError

    _, shards, frontend = front

    def slow(shard):
        def work(job: str) -> int:
            with shard._job(job) as part:
                for i in range(60):
                    part.progress(i + 1, 60)
                    if part.cancelled:
                        raise RuntimeError("stopped")
                    time.sleep(0.02)
                return shard.index

        return work

    for shard in shards.shards:
        shard.slow = slow(shard)
    seen: list[tuple[int, int]] = []
    calls = {i: ("slow", "job-1") for i in range(4)}
    answers = frontend.fan_out(calls, job="job-1", progress=lambda d, t: seen.append((d, t)))
    assert answers == {0: 0, 1: 1, 2: 2, 3: 3}
    assert any(done < total for done, total in seen) and seen[-1] == (240, 240)
    assert all(shard._jobs == {} for shard in shards.shards)  # not tracked once finished
    calls = {i: ("slow", "job-2") for i in range(4)}
    with pytest.raises(LivetwinError, match="job-2 was cancelled"):
        frontend.fan_out(calls, job="job-2", cancelled=lambda: True)
    assert [frontend.state(i) for i in range(4)] == ["live"] * 4  # a cancel is no failure


def test_retention_and_journal_compaction_run_on_every_shard(cluster_name, tmp_path):
    """A type with a retention gets its system schedule on the front end; the `compact` run
    rolls up and deletes on every shard, the journal is cut on every shard."""
    from conftest import FakeClock
    from store.test_retention import HOUR, SENSOR, SPAN, STEP

    from livetwin.settings import Settings

    clock = FakeClock(T0 + SPAN)
    meta = open_cluster(PG_URL, shards=4, name=cluster_name)
    shards = LocalShards(meta)
    settings = Settings(journal_retention="1h")
    frontend = ClusterFrontend(meta, shards, settings=settings, clock=clock, data_dir=str(tmp_path))
    try:
        frontend.put_type("sensor", SENSOR)
        twins = [f"s-{i}" for i in range(8)]
        assert len(set(shards_of(twins, 4))) > 1
        for start in range(T0, T0 + SPAN, HOUR):
            rows = [
                {"twin": t, "type": "sensor", "ts": ts, "values": {"temp": 20.0 + k, "load": 1.0}}
                for ts in range(start, start + HOUR, STEP)
                for k, t in enumerate(twins)
            ]
            assert frontend.submit(rows).result(30).accepted == len(rows)
        for shard in shards.shards:
            shard.core.snapshot()  # flushes history; the journal can be cut behind it
        scheduler = frontend.scheduler
        deadline = time.monotonic() + 15  # the type reaches the scheduler through the feed
        while {"compact.sensor", "compact.journal"} - {
            s["id"] for s in scheduler.schedules(namespace="system")
        }:
            assert time.monotonic() < deadline, scheduler.schedules(namespace="system")
            time.sleep(0.1)
        run = scheduler.wait(scheduler.run_schedule("compact.sensor")["id"], 60)
        assert run["state"] == "succeeded", run
        result = run["result"]
        assert set(result["shards"]) == {"0", "1", "2", "3"}
        assert result["raw_deleted"] == sum(s["raw_deleted"] for s in result["shards"].values())
        assert all(s["raw_deleted"] > 0 for s in result["shards"].values())  # raw: 2h
        for twin in twins:  # older than the raw retention: the 1h rollups answer, on each shard
            hourly = frontend.history(twin, ["load"], start=T0, every="1h", agg="count")
            assert hourly["resolution"] == "1h" and hourly["series"]["load"][0] == HOUR / STEP
        clock.now = int(time.time() * 1000) + 2 * HOUR  # the journal was written on the shards'
        run = scheduler.wait(scheduler.run_schedule("compact.journal")["id"], 60)  # wall clock
        assert run["state"] == "succeeded", run
        cut = run["result"]
        assert cut["deleted"] > 0 and all(s["upto"] > 0 for s in cut["shards"].values())
    finally:
        frontend.close()
        shards.close()


SLOW_RULE = {"slow": {"when": "w4 < 30", "for": "1s", "severity": "warning"}}
BRAKE = {"brake_torque": {"kind": "step", "at": "2s", "factor": 1.3}}


@pytest.fixture
def rollers(front):
    """Eight roller lines spread over the shards, measured for 100 steps and calibrated there;
    also the type and the rows, to feed a single node the same."""
    from calibration_support import STEP_MS

    from livetwin.examples.rollers import ROLLER_TYPE, observations, roller_fleet

    client, shards, frontend = front
    calibration = {**ROLLER_TYPE["calibration"], "backend": "numpy"}
    spec = {**ROLLER_TYPE, "rules": SLOW_RULE, "calibration": calibration}
    ids = [f"line-{i}" for i in range(8)]
    assert len({shard_of(t, 4) for t in ids}) == 4
    sim = roller_fleet(len(ids), seed=5)
    batch = [row for k in range(100) for row in observations(sim.step(), ids, T0 + k * STEP_MS)]
    assert client.put("/api/types/roller_line", json=spec).status_code == 200
    assert client.post("/api/ingest", json=batch).json()["accepted"] == len(batch)
    calibrated = client.post("/api/types/roller_line/calibrate")
    assert calibrated.json().get("status") == "succeeded", calibrated.text
    return client, shards, frontend, spec, ids, batch


def assert_close(got, want, path: str = "") -> None:
    """JSON values equal, their floats within a relative 1e-6."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), path
        for key in want:
            assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9), path
    else:
        assert got == want, path


def test_a_scenario_is_forecast_by_the_shards_as_a_single_node_forecasts_it(rollers, tmp_path):
    from livetwin.platform import Platform
    from livetwin.settings import Settings

    client, _, frontend, spec, ids, batch = rollers
    body = {"twins": ids, "horizon": "20s", "step": "1s", "inputs": BRAKE}
    made = client.post("/api/scenarios", json=body)
    assert made.status_code == 202, made.text
    run = wait_until(lambda: client.get(f"/api/runs/{made.json()['run']}").json(), "succeeded")
    assert run["function"] == "scenario" and run["result"]["twins"] == 8
    got = client.get(f"/api/scenarios/{made.json()['id']}", params={"twin": ids}).json()
    assert got["status"] == "succeeded" and got["progress"] == 1
    assert client.get("/api/scenarios").json()[0]["id"] == made.json()["id"]
    with psycopg.connect(PG_URL) as conn:  # kept in the cluster's service schema
        stored = conn.execute(f"SELECT id FROM {frontend.meta.name}_scenarios.scenarios")
        assert stored.fetchall() == [(made.json()["id"],)]

    settings = Settings(run_schedules=True, webhooks=False)
    with Platform(tmp_path / "single", settings=settings) as single:
        single.put_type("roller_line", spec)
        assert single.ingest(batch).accepted == len(batch)
        assert single.calibrate("roller_line")["status"] == "succeeded"
        record = single.scenarios.submit(body)
        assert single.scheduler.wait(record["run"], timeout_s=120)["state"] == "succeeded"
        want = single.scenarios.get(record["id"], ids)

    summary, expected = got.pop("summary"), want.pop("summary")
    assert [t["twin"] for t in summary["twins"]] == ids  # in request order
    alarms, expected_alarms = summary.pop("alarms"), expected.pop("alarms")
    assert_close(
        {k: v for k, v in summary.items() if k != "lineage"},
        {k: v for k, v in expected.items() if k != "lineage"},
    )
    for side, found in alarms.items():
        order = lambda a: (a["twin"], a["rule"], a["raised"])  # noqa: E731
        assert_close(sorted(found, key=order), sorted(expected_alarms[side], key=order), side)
    assert len(alarms["only_in_scenario"]) >= 2  # twins of several shards
    assert len({shard_of(a["twin"], 4) for a in alarms["scenario"]}) > 1
    assert_close(got["series"], want["series"])
    assert client.get(f"/api/lineage/{run['id']}").status_code == 200
    node = frontend.lineage.node(run["id"])  # in the cluster's <name>_lineage
    assert node["inputs"]["scenario"] == got["id"] and node["inputs"]["twins"] == 8


def test_a_bad_scenario_gets_the_single_node_s_answer_before_any_work(rollers):
    client, shards, frontend, spec, ids, _ = rollers
    assert client.put("/api/types/plain", json={"properties": {"x": {}}}).status_code == 200
    assert client.put("/api/types/other", json=spec).status_code == 200
    others = [{"twin": "p-1", "type": "plain", "ts": T0, "values": {"x": 1}},
              {"twin": "other-0", "type": "other", "ts": T0,
               "values": {"w1": 1, "brake_torque": 1}}]  # fmt: skip
    assert client.post("/api/ingest", json=others).json()["accepted"] == 2
    cases = [
        ({"twins": [*ids, "ghost"]}, "twins", "no twin 'ghost'"),
        ({"twins": ["line-0", "p-1"]}, "twins", "several types"),
        ({"twins": ["p-1"]}, "twins", "has no model"),
        ({"twins": ["other-0"]}, "twins", "never calibrated"),
        ({"twins": {"type": "roller_line", "where": "w1 > 1e9"}}, "twins", "matches no twin"),
        ({"twins": {"type": "nosuch"}}, "twins.type", "no twin type"),
        ({"twins": {"type": "roller_line", "where": "w1 >"}}, "twins.where", ""),
        ({"step": "150ms"}, "step", "multiple of the model step"),
        ({"horizon": "100d"}, "horizon", "model steps"),
        ({"inputs": {"nope": {"kind": "constant", "value": 1}}}, "inputs.nope", "not an input"),
        ({"inputs": {"w1": {"kind": "constant", "value": 1}}}, "inputs.w1", "computes it"),
    ]
    for change, field, words in cases:
        answer = client.post("/api/scenarios", json={"twins": ids, "horizon": "10s", **change})
        assert answer.status_code == 422, (change, answer.text)
        error = answer.json()["error"]
        assert error["field"] == field and words in error["message"] and error["fix"], error
    assert frontend.scenarios.list() == []  # nothing stored, nothing queued
    assert frontend.scheduler.runs(function="scenario") == []
    down = shard_of("line-0", 4)
    shards.down.add(down)  # a shard that cannot answer: 503, not the request's fault
    for twins in (ids, {"type": "roller_line"}):
        answer = client.post("/api/scenarios", json={"twins": twins, "horizon": "10s"})
        assert answer.status_code == 503 and answer.json()["error"]["field"] == "shard"
    shards.down.clear()
    deadline = time.monotonic() + 20
    while frontend.state(down) != "live":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_cluster_scenario_reports_the_shards_progress_and_stops_when_cancelled(rollers):
    client, shards, frontend, _, ids, _ = rollers
    body = {"twins": {"type": "roller_line"}, "horizon": "10m", "step": "10s"}
    made = client.post("/api/scenarios", json=body).json()
    deadline = time.monotonic() + 30
    while not client.get(f"/api/scenarios/{made['id']}").json()["progress"]:
        assert time.monotonic() < deadline  # the shards' parts, summed by the front end
        time.sleep(0.1)
    assert client.post(f"/api/runs/{made['run']}/cancel").status_code == 202
    run = frontend.scheduler.wait(made["run"], timeout_s=60)
    assert run["state"] != "succeeded" and "cancelled" in run["error"], run
    got = client.get(f"/api/scenarios/{made['id']}").json()
    assert got["status"] == "failed" and "cancelled" in got["error"] and 0 < got["progress"] < 1
    assert got["request"] == body and not got.get("series")
    assert all(not shard._jobs for shard in shards.shards)  # every part has stopped


def test_a_front_end_checks_tokens_kept_in_the_cluster_s_schema(front):
    from livetwin.api.auth import install_auth

    _, _, frontend = front
    app = create_cluster_app(frontend)
    tokens = install_auth(app, frontend, mode="tokens")
    reader = tokens.create(name="r", scope="read", namespace="*")["token"]
    with TestClient(app) as client:
        assert client.get("/api/types").status_code == 401
        authorized = {"authorization": f"Bearer {reader}"}
        assert client.get("/api/types", headers=authorized).status_code == 200
        refused = client.post("/api/ingest", json=rows(1), headers=authorized)
        assert refused.status_code == 403  # read scope: no writes
        assert client.get("/api/cluster", headers=authorized).status_code == 200


def test_the_live_stream_merges_every_shard_s_events(front):
    from api.test_stream import stream_in_background
    from conftest import served

    _, shards, frontend = front
    spec = {**PUMP, "rules": {"fast": {"when": "flow > 100"}}}
    with served(None, create_cluster_app(frontend)) as url:
        assert httpx.put(f"{url}/api/types/pump", json=spec).status_code == 200
        thread, first = stream_in_background(f"{url}/api/stream?kinds=state,alarm", 22)
        time.sleep(0.5)  # the front end follows the shards from now on
        batch = rows(20)
        batch.append({"twin": "p3", "type": "pump", "ts": T0 + 99, "values": {"flow": 500}})
        assert httpx.post(f"{url}/api/ingest", json=batch).json()["accepted"] == 21
        thread.join(20)
        states = [e for e in first if e["event"] == "state"]
        assert len(first) == 22 and len(states) == 21  # 21 rows and p3's alarm
        assert sorted(e["data"]["values"]["flow"] for e in states) == [*range(20), 500]
        (alarm,) = [e for e in first if e["event"] == "alarm"]
        assert alarm["data"]["twin"] == "p3" and alarm["data"]["rule"] == "fast"
        assert {shard_of(e["data"]["twin"], 4) for e in states} == {0, 1, 2, 3}
        ids = [tuple(map(int, e["id"].split("."))) for e in first]
        assert ids == sorted(ids)  # one order: this front end's
        # per twin, journal order: p3's rows arrive in ts order
        p3 = [e["data"]["ts"] for e in states if e["data"]["twin"] == "p3"]
        assert p3 == sorted(p3)
        # a client resuming from an id it got misses nothing after it
        thread, resumed = stream_in_background(f"{url}/api/stream?kinds=state,alarm", 2,
                                               {"Last-Event-ID": first[-3]["id"]})  # fmt: skip
        thread.join(20)
        assert [e["id"] for e in resumed] == [e["id"] for e in first[-2:]]


def test_the_model_registry_and_lineage_are_shared_by_every_front_end(front, tmp_path):
    client, shards, frontend = front
    registered = client.post(
        "/api/models/forecast/versions", json={"kind": "inductive", "flavor": "linear"}
    )
    assert registered.status_code == 201, registered.text
    other = ClusterFrontend(frontend.meta, shards, data_dir=str(tmp_path / "second"))
    try:
        with TestClient(create_cluster_app(other)) as second:
            (listed,) = [m for m in second.get("/api/models").json() if m["name"] == "forecast"]
            assert listed["latest"] == 1
            assert second.get("/api/models/forecast/versions/1").json()["kind"] == "inductive"
            node = second.get("/api/lineage/model:forecast/1").json()
            assert node["root"] == "model:forecast/1"
            assert second.delete("/api/models/forecast/versions/1").status_code == 405
    finally:
        other.close()


def wait_until(read, state: str, timeout: float = 30.0) -> dict:
    """Read a run until it reaches `state` (fails on another final state or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if found["state"] == state:
            return found
        assert found["state"] not in ("succeeded", "failed", "cancelled"), found
        assert time.monotonic() < deadline, found
        time.sleep(0.1)


def test_one_front_end_leads_the_scheduler_and_the_others_stand_by(front, tmp_path):
    client, shards, frontend = front
    assert frontend.scheduler.role == "leader"
    frontend.scheduler.register("tick", lambda ctx: ctx.trigger["scheduled_for"])
    schedule = {"id": "t", "function": "tick", "trigger": {"kind": "interval", "every": "1s"}}
    assert client.post("/api/schedules", json=schedule).status_code == 201
    other = ClusterFrontend(frontend.meta, shards, data_dir=str(tmp_path / "second"))
    try:
        assert other.scheduler.role == "standby"
        with TestClient(create_cluster_app(other)) as second:
            refused = second.post("/api/schedules", json={**schedule, "id": "u"})
            assert refused.status_code == 503, refused.text
            assert "on standby; the leader is" in refused.json()["error"]["message"]
            deadline = time.monotonic() + 15
            while not second.get("/api/runs", params={"schedule": "t"}).json():
                assert time.monotonic() < deadline  # reads on standby show the leader's runs
                time.sleep(0.2)
    finally:
        other.close()


def test_every_front_end_s_live_stream_shows_the_leader_s_run_notices_once(front, tmp_path):
    from livetwin.engine.events import Notice

    client, shards, frontend = front
    other = ClusterFrontend(frontend.meta, shards, data_dir=str(tmp_path / "second"))
    heard: dict[str, list[Notice]] = {"leader": [], "standby": []}
    try:
        assert other.scheduler.role == "standby"
        for name, end in (("leader", frontend), ("standby", other)):
            end.feed.follow()
            end.feed.bus.subscribe(
                lambda e, name=name: heard[name].append(e) if isinstance(e, Notice) else None
            )
        time.sleep(0.5)  # both follow shard 0's feed from now on
        frontend.scheduler.register("hello", lambda ctx: "hi")
        run = client.post("/api/functions/hello/run", json={})
        assert run.status_code in (200, 202), run.text
        run_id = run.json()["id"]
        deadline = time.monotonic() + 15
        while not [n for n in heard["standby"] if n.id == run_id or run_id in str(n.data)]:
            assert time.monotonic() < deadline, heard
            time.sleep(0.1)
        time.sleep(0.5)  # the leader's copy from shard 0 would have come back by now
        for name in heard:
            mine = [n for n in heard[name] if n.kind == "run" and n.data.get("run") == run_id]
            assert len(mine) == 1, (name, mine)
            assert mine[0].data["state"] == "succeeded"
            if name == "standby":  # it came through shard 0, naming the front end that ran it
                assert mine[0].data["front_end"] == frontend.ident
    finally:
        other.close()


def test_a_type_declared_on_a_standby_front_end_reaches_the_leader_s_schedules(front, tmp_path):
    from store.test_retention import SENSOR

    client, shards, frontend = front
    frontend.feed.follow()
    other = ClusterFrontend(frontend.meta, shards, data_dir=str(tmp_path / "second"))
    try:
        assert other.scheduler.role == "standby"
        other.put_type("sensor", SENSOR)  # a retention: the leader schedules its compaction
        deadline = time.monotonic() + 15
        while "compact.sensor" not in {
            s["id"] for s in frontend.scheduler.schedules(namespace="system")
        }:
            assert time.monotonic() < deadline, "the leader never heard of the type"
            time.sleep(0.1)
        assert "sensor" in frontend.compiled_types()  # and checks its rows
    finally:
        other.close()


def test_a_condition_trigger_is_evaluated_on_the_shards_of_the_twins_that_changed(front):
    client, _, frontend = front
    frontend.scheduler.register("hot", lambda ctx: ctx.trigger["twin"])
    condition = {"kind": "condition", "type": "pump", "when": "flow > 100"}
    made = client.post("/api/schedules", json={"id": "c", "function": "hot", "trigger": condition})
    assert made.status_code == 201, made.text
    hot = [f"h{i}" for i in range(8)]
    batch = [{"twin": t, "type": "pump", "ts": T0, "values": {"flow": 500}} for t in hot]
    batch += [{"twin": f"c{i}", "type": "pump", "ts": T0, "values": {"flow": 5}} for i in range(8)]
    assert client.post("/api/ingest", json=batch).json()["accepted"] == 16
    assert len({shard_of(t, 4) for t in hot}) > 1  # the twins live on several shards

    def fired() -> list[str]:
        runs = client.get("/api/runs", params={"schedule": "c", "state": "succeeded"}).json()
        return sorted(r["result"] for r in runs)

    deadline = time.monotonic() + 20
    while fired() != hot:
        assert time.monotonic() < deadline, fired()
        time.sleep(0.2)
    assert client.get("/api/schedules/c").json()["last_error"] is None


def test_webhooks_deliver_every_shard_s_events_under_ids_unique_over_the_shards(
    cluster_name, tmp_path, monkeypatch
):
    from webhook_support import Receiver, wait_for

    from livetwin.settings import Settings

    monkeypatch.setenv("LIVETWIN_OUTBOUND_ALLOW", "127.0.0.0/8")  # the shards read it too
    meta = open_cluster(PG_URL, shards=4, name=cluster_name)
    shards, receiver = LocalShards(meta), Receiver()
    frontend = None
    try:
        settings = Settings.from_env()
        frontend = ClusterFrontend(meta, shards, settings=settings, data_dir=str(tmp_path))
        with TestClient(create_cluster_app(frontend)) as client:
            assert client.put("/api/types/pump", json=PUMP).status_code == 200
            body = {"url": receiver.url, "secret": "s" * 32, "filters": {"kinds": ["state"]}}
            made = client.post("/api/webhooks", json=body)
            assert made.status_code == 201, made.text
            sub_id = made.json()["id"]
            assert [s["id"] for s in client.get("/api/webhooks").json()] == [sub_id]
            bad = client.post("/api/webhooks", json={"url": receiver.url})
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "secret"
            assert client.post("/api/ingest", json=rows(40)).json()["accepted"] == 40

            def twins_heard() -> set[str]:
                return {e["twin"] for b in receiver.bodies().values() for e in b["events"]}

            wait_for(lambda: twins_heard() == {f"p{i}" for i in range(20)}, timeout=20)
            sources = {d.split(".")[1] for d in receiver.ids()}
            assert len(sources) == 4 and all(s.startswith("s0") for s in sources)  # each shard
            assert len(receiver.received) == len(receiver.ids())  # no delivery twice
            record = client.get(f"/api/webhooks/{sub_id}").json()
            assert record["deliveries"]["delivered"] == len(receiver.ids())
            listed = client.get(f"/api/webhooks/{sub_id}/deliveries").json()
            assert {d["delivery_id"] for d in listed} == receiver.ids()
            assert client.delete(f"/api/webhooks/{sub_id}").status_code == 200
            assert client.get(f"/api/webhooks/{sub_id}").status_code == 404

            # alarm notices carry the cluster's alarm ids (those of /api/alarms)
            body["filters"] = {"kinds": ["alarm"]}
            assert client.post("/api/webhooks", json=body).status_code == 201
            spec = {"properties": {"temp": {}}, "rules": {"hot": {"when": "temp > 80"}}}
            assert client.put("/api/types/boiler", json=spec).status_code == 200
            hot = [{"twin": f"b{i}", "type": "boiler", "ts": T0, "values": {"temp": 90}}
                   for i in range(8)]  # fmt: skip
            assert client.post("/api/ingest", json=hot).json()["accepted"] == 8
            for shard in shards.shards:
                shard.alarms.sync()
            listed = {a["id"]: a["twin"] for a in client.get("/api/alarms").json()["items"]}

            def alarms_heard() -> dict[int, str]:
                bodies = receiver.bodies().values()
                return {b["data"]["id"]: b["data"]["twin"] for b in bodies if b["kind"] == "alarm"}

            wait_for(lambda: len(alarms_heard()) == 8, timeout=20)
            assert alarms_heard() == listed

            # the scheduler's run notices go out through shard 0's webhooks
            body["filters"] = {"kinds": ["run"]}
            assert client.post("/api/webhooks", json=body).status_code == 201
            frontend.scheduler.register("noted", lambda ctx: 42)
            run = client.post("/api/functions/noted/run", json={}).json()

            def runs_heard() -> dict[str, dict]:
                bodies = receiver.bodies().values()
                return {b["id"]: b["data"] for b in bodies if b["kind"] == "run"}

            wait_for(lambda: run["id"] in runs_heard(), timeout=20)
            assert runs_heard()[run["id"]]["result"] == 42
    finally:
        receiver.close()
        if frontend is not None:
            frontend.close()
        shards.close()


def test_device_credentials_are_kept_in_the_cluster_s_schema_and_checked_on_ingest(front):
    from livetwin.api.auth import install_auth

    _, _, frontend = front
    app = create_cluster_app(frontend)
    tokens = install_auth(app, frontend, mode="tokens")
    admin = {
        "authorization": f"Bearer {tokens.create(name='a', scope='admin', namespace='*')['token']}"
    }
    with TestClient(app) as client:
        made = client.post("/api/devices", json={"name": "gw", "twins": "p1*"}, headers=admin)
        assert made.status_code == 201, made.text
        device = {"authorization": f"Bearer {made.json()['credential']}"}
        mine = [{"twin": "p1", "type": "pump", "ts": T0, "values": {"flow": 1.0}}]
        assert client.post("/api/ingest", json=mine, headers=device).json()["accepted"] == 1
        other = [{**mine[0], "twin": "p2"}]
        assert client.post("/api/ingest", json=other, headers=device).status_code == 403
        assert client.get("/api/types", headers=device).status_code == 403  # ingest only
        assert frontend.devices.owner(made.json()["id"]).matches("p12")  # the MQTT check
        gone = client.delete(f"/api/devices/{made.json()['id']}", headers=admin)
        assert gone.status_code == 200
        assert client.post("/api/ingest", json=mine, headers=device).status_code == 401


def test_each_alarm_is_mailed_once_by_the_shard_that_raised_it(cluster_name, monkeypatch):
    from email import message_from_string

    from aiosmtpd.controller import Controller
    from webhook_support import free_port, wait_for

    received: list[str] = []

    class Inbox:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope.content.decode())
            return "250 OK"

    port = free_port()
    smtp = Controller(Inbox(), hostname="127.0.0.1", port=port)
    smtp.start()
    for name, value in {"HOST": "127.0.0.1", "PORT": str(port), "SECURITY": "plain",
                        "TO": "ops@plant.example"}.items():  # fmt: skip
        monkeypatch.setenv(f"LIVETWIN_SMTP_{name}", value)  # the shards' nodes' settings
    meta = open_cluster(PG_URL, shards=4, name=cluster_name)
    shards = LocalShards(meta)
    try:
        frontend = ClusterFrontend(meta, shards)
        with TestClient(create_cluster_app(frontend)) as client:
            spec = {"properties": {"temp": {}}, "rules": {"hot": {"when": "temp > 80"}}}
            assert client.put("/api/types/boiler", json=spec).status_code == 200
            hot = [{"twin": f"b{i}", "type": "boiler", "ts": T0, "values": {"temp": 90}}
                   for i in range(6)]  # fmt: skip
            assert client.post("/api/ingest", json=hot).json()["accepted"] == 6
            for shard in shards.shards:
                shard.alarms.sync()
            wait_for(lambda: len(received) >= 6, timeout=20)
            time.sleep(0.5)  # no second mail of any alarm
            subjects = sorted(message_from_string(m)["Subject"] for m in received)
            assert subjects == sorted(f"[WARNING] hot on b{i}" for i in range(6))
    finally:
        shards.close()
        smtp.stop()


def test_a_subscription_a_shard_cannot_make_is_made_on_none(front):
    client, shards, frontend = front
    shards.down.add(2)  # down, and this front end does not know yet
    body = {"url": "https://hooks.example.com/x", "secret": "s" * 32}
    answer = client.post("/api/webhooks", json=body)
    assert answer.status_code == 503, answer.text
    shards.down.clear()
    deadline = time.monotonic() + 20
    while frontend.state(2) != "live":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [shard.webhooks.subscriptions() for shard in shards.shards] == [[]] * 4
    assert client.get("/api/webhooks").json() == []


def test_baseline_training_and_inactivity_checks_run_through_a_front_end(
    cluster_name, tmp_path, platform, clock
):
    """The home fleet's scheduled jobs on a front end over four shards: the baselines trained
    from every shard's history into the cluster's registry, the inactivity verdicts written
    back to the homes' shards, equal to a single node's of the same fleet."""
    from conftest import FakeClock

    from livetwin.examples.home import DEMO_NOW, home_job_functions, run_home_demo

    clock.now = DEMO_NOW
    single = run_home_demo(platform, out=None)
    expected = {v["twin"]: v["emergency"] for v in single["homes"]}
    assert any(expected.values()) and not all(expected.values())

    meta = open_cluster(PG_URL, shards=4, name=cluster_name, placement="root")  # homes' rooms
    shards = LocalShards(meta)  # on their home's shard: a home reads its rooms' activity
    frontend = ClusterFrontend(meta, shards, clock=FakeClock(DEMO_NOW), data_dir=str(tmp_path))
    try:
        fleet = single["fleet"]
        frontend.put_type("room", platform.get_type("room")["spec"])
        frontend.put_type("home", platform.get_type("home")["spec"])
        starts = [{"twin": h, "type": "home", "ts": fleet.start_ms, "values": {"emergency": 0}}
                  for h in fleet.homes]  # fmt: skip
        frontend.ingest(starts)
        rows = fleet.observations()
        for k in range(0, len(rows), 5000):
            stored = frontend.ingest(rows[k : k + 5000])
            assert not stored.rejected, stored.rejected[:3]
        assert len({shard_of(h, 4) for h in fleet.homes}) > 1
        scheduler = frontend.scheduler
        for name, spec in home_job_functions().items():
            scheduler.define_function(name, spec, "default")
        for name in ("train-home-baselines", "check-home-inactivity"):
            run = scheduler.wait(scheduler.run_function(name, "default", {})["id"], 120)
            assert run["state"] == "succeeded", run
        verdicts = {v["twin"]: v["emergency"] for v in run["result"]["verdicts"]}
        assert verdicts == expected
        trained = {m["name"] for m in frontend.registry.models()}  # in the cluster's registry
        assert {f"activity.{home}" for home in fleet.homes} <= trained
        for home, emergency in expected.items():  # written back to the home's shard
            state = frontend.twin(home)["properties"]
            assert state["inactivity_emergency"] == float(emergency), home
    finally:
        frontend.close()
        shards.close()
