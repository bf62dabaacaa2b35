"""Twin standards and desired state on a cluster front end (four shards in this process, no
Ray): a DTDL import declares its types on every shard, the NGSI-LD view and the exports answer
as a single node does over twins of several shards, and desired values go to the device over
MQTT and are marked reached by a value reported through the front end."""

from __future__ import annotations

import json
import queue
import time
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from conftest import MQTT_HOST, MQTT_PORT, PUMP, T0, obs, require_mosquitto
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from webhook_support import wait_for

from livetwin.api.cluster import create_cluster_app
from livetwin.cluster.frontend import ClusterFrontend
from livetwin.cluster.meta import shard_of
from livetwin.settings import MqttConnection, Settings

pytestmark = pytest.mark.services  # PostgreSQL (and Mosquitto for commands)

THERMOSTAT = Path(__file__).parent.parent / "interop" / "data" / "thermostat.v2.dtdl.json"
ENTITIES = "/ngsi-ld/v1/entities"
STATION = {"properties": {"level": {"unit": "m"}}, "children": ["pump"]}
PUMPS = [f"s-1/p{i}" for i in range(6)]


def test_a_dtdl_import_through_a_front_end_declares_its_types_on_every_shard(front):
    client, shards, _ = front
    document = json.loads(THERMOSTAT.read_text())
    imported = client.post("/api/types/import", json=document)
    assert imported.status_code == 200, imported.text
    assert [(t["name"], t["version"]) for t in imported.json()["types"]] == [("Thermostat", 1)]
    for shard in shards.shards:
        held = shard.query.compiled_types()["Thermostat"]
        assert held.version == 1 and held.spec.source.id == document["@id"]
    rows = [obs(f"t-{i}", T0, "Thermostat", temperature=20 + i) for i in range(8)]
    assert client.post("/api/ingest", json=rows).json()["accepted"] == 8
    newer = {**document, "@id": "dtmi:com:example:Thermostat;2"}
    again = client.post("/api/types/import", json=newer).json()["types"]
    assert [(t["name"], t["version"]) for t in again] == [("Thermostat", 2)]
    assert {s.query.compiled_types()["Thermostat"].version for s in shards.shards} == {2}
    hand_made = {**document, "@id": "dtmi:com:example:pump;1"}
    refused = client.post("/api/types/import", json=hand_made)
    assert refused.status_code == 409 and "was not imported" in refused.json()["error"]["message"]


def _fleet(client) -> None:
    """A station and six pumps on several shards, s-1/p0 (on the station's shard, as a
    child must be in a cluster) the station's child."""
    assert client.put("/api/types/station", json=STATION).status_code == 200
    rows = [{"twin": "s-1", "type": "station", "ts": T0, "values": {"level": 1}}]
    for i, twin in enumerate(PUMPS):
        values = {"flow": 10.0 + 20 * i, "pressure": 1.0 + i % 3}
        rows.append({"twin": twin, "type": "pump", "ts": T0 + i, "values": values})
    rows[1]["parent"] = "s-1"
    answer = client.post("/api/ingest", json=rows).json()
    assert answer["accepted"] == 7, answer


@pytest.fixture
def both(front, client):
    """(the front end's client, a single node's client) fed the same fleet."""
    cluster, _, _ = front
    assert client.put("/api/types/pump", json=PUMP).status_code == 200
    _fleet(cluster)
    _fleet(client)
    assert len({shard_of(t, 4) for t in PUMPS}) > 1
    return cluster, client


def _by_id(response) -> dict[str, dict]:
    assert response.status_code == 200, response.text
    return {e["id"]: e for e in response.json()}


@pytest.mark.parametrize(
    "params",
    [
        {"type": "pump", "limit": 100},
        {"type": "pump", "q": "flow>40;pressure<3", "attrs": "flow,refParent"},
        {"type": "station", "options": "keyValues"},
        {"type": "pump", "options": "keyValues", "attrs": "power"},
        {"type": "nothing"},
    ],
)
def test_the_ngsi_ld_list_answers_as_a_single_node_s(both, params):
    cluster, single = both
    ours, theirs = cluster.get(ENTITIES, params=params), single.get(ENTITIES, params=params)
    assert _by_id(ours) == _by_id(theirs)  # the order: shard by shard (creation order in each)
    assert ours.headers["link"] == theirs.headers["link"]


def test_ngsi_ld_pages_over_the_shards_with_the_total(both):
    cluster, _ = both
    seen = []
    for offset in range(0, len(PUMPS), 4):
        params = {"type": "pump", "limit": 4, "offset": offset, "count": "true"}
        page = cluster.get(ENTITIES, params=params)
        assert page.headers["ngsild-results-count"] == str(len(PUMPS))
        seen += [e["id"] for e in page.json()]
    assert sorted(seen) == sorted(f"urn:ngsi-ld:pump:s-1%2Fp{i}" for i in range(len(PUMPS)))


def test_an_ngsi_ld_entity_answers_as_a_single_node_s(both):
    cluster, single = both
    child = f"{ENTITIES}/urn:ngsi-ld:pump:s-1%2Fp0"
    for path, headers in [
        (child, {}),
        (f"{ENTITIES}/s-1", {"accept": "application/ld+json"}),
        (f"{ENTITIES}/urn:ngsi-ld:station:s-1%2Fp3", {}),  # a pump: 404 naming its id
        (f"{ENTITIES}/urn:ngsi-ld:pump:nobody", {}),
    ]:
        ours, theirs = cluster.get(path, headers=headers), single.get(path, headers=headers)
        assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json()), path
    assert cluster.get(child).json()["refParent"]["object"] == "urn:ngsi-ld:station:s-1"


def test_types_and_twins_export_as_a_single_node_s(both):
    cluster, single = both
    for path in ["/api/types/pump?format=dtdl", "/api/types/station?format=aas",
                 "/api/twins/s-1%2Fp0?format=aas", "/api/twins/s-1?format=dtdl"]:  # fmt: skip
        ours, theirs = cluster.get(path), single.get(path)
        assert ours.status_code == 200, ours.text
        assert ours.json() == theirs.json(), path


def test_desired_state_without_mqtt_is_a_409_as_on_a_single_node(front):
    client, _, _ = front
    answer = client.put("/api/twins/p-1/desired", json={"values": {"flow": 1}})
    assert answer.status_code == 409 and answer.json()["error"]["field"] == "mqtt"


@pytest.fixture
def device():
    """(a topic prefix, a device subscribed under it whose commands land in a queue)."""
    require_mosquitto()
    prefix = f"cmd-{uuid.uuid4().hex[:12]}"
    received: queue.Queue = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{prefix}")
    client.on_message = lambda c, u, m: received.put((m.topic, orjson.loads(m.payload)))
    client.connect(MQTT_HOST, MQTT_PORT)
    client.subscribe(f"{prefix}/#", qos=1)
    client.loop_start()
    time.sleep(0.3)  # the SUBACK
    yield prefix, received
    client.disconnect()
    client.loop_stop()


def test_a_desired_value_reaches_the_device_and_is_reached_when_reported(front, device, tmp_path):
    first, shards, frontend = front
    prefix, received = device
    fan = {**PUMP, "commands": {"topic": prefix + "/{type}/{twin}/set", "tolerance": 0.01}}
    assert first.put("/api/types/pump", json=fan).status_code == 200
    rows = [obs(f"fan-{i}", T0, flow=5) for i in range(8)]
    assert first.post("/api/ingest", json=rows).json()["accepted"] == 8
    twin = "fan-3"
    frontend.start_mqtt(MqttConnection(MQTT_HOST, MQTT_PORT))
    first = TestClient(create_cluster_app(frontend))  # an app of a front end with MQTT
    # a second front end that follows the shards' feeds only because it has MQTT
    quiet = Settings(run_schedules=False)
    other = ClusterFrontend(frontend.meta, shards, settings=quiet, data_dir=str(tmp_path / "2"))
    try:
        other.start_mqtt(MqttConnection(MQTT_HOST, MQTT_PORT))
        second = TestClient(create_cluster_app(other))
        wait_for(lambda: other.commands._client.is_connected())

        put = second.put(f"/api/twins/{twin}/desired", json={"values": {"flow": 12.5, "eff": 0.9}})
        assert put.status_code == 200, put.text
        assert put.json()["pending"] == ["eff", "flow"]
        topic, command = received.get(timeout=10)
        assert topic == f"{prefix}/pump/{twin}/set"
        assert command["values"] == {"flow": 12.5, "eff": 0.9}
        assert command["id"] == put.json()["command"]["id"]
        wait_for(lambda: second.get(f"/api/twins/{twin}/desired").json()["command"]["published"])
        shown = first.get(f"/api/twins/{twin}/desired").json()  # the shared commands schema
        assert shown["desired"] == {"eff": 0.9, "flow": 12.5} and shown["command"]["published"]

        report = [obs(twin, T0 + 1000, flow=12.49), obs(twin, T0 + 2000, eff=0.9)]
        assert first.post("/api/ingest", json=report).json()["accepted"] == 2
        wait_for(lambda: set(other.commands.desired(twin)["reached"]) == {"eff", "flow"})
        view = first.get(f"/api/twins/{twin}/desired").json()
        assert view["pending"] == [] and set(view["reached"]) == {"eff", "flow"}
    finally:
        other.close()
