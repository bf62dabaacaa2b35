"""MQTT ingest against the real Mosquitto on 127.0.0.1:1883 (skipped if absent; fails under CI)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import orjson
import paho.mqtt.client as mqtt
import pytest
from conftest import MQTT_HOST, MQTT_PORT, PUMP, require_mosquitto
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from webhook_support import wait_for

from livetwin.api.app import create_app
from livetwin.errors import InvalidInput, NotFound
from livetwin.ingest.mqtt import (
    MqttBridge,
    load_mqtt_config,
    parse_address,
    topic_matches,
    validate_topic_filter,
)
from livetwin.settings import MqttConnection

pytestmark = pytest.mark.services  # needs a real service (see conftest.py)

HOST, PORT = MQTT_HOST, MQTT_PORT


@pytest.fixture(scope="module", autouse=True)
def broker() -> None:
    require_mosquitto()


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
def setup(platform):
    platform.put_type("pump", PUMP)
    platform.put_extractor("pj", {"twin": "$.id", "type": "pump", "values": {"flow": "$.flow"}})
    platform.put_extractor(
        "line",
        {"twin": "$.id", "twin_prefix": "{1}/", "type": "pump", "values": {"flow": "$.flow"}},
    )
    return platform


def mqtt_bridge(platform, host: str, port: int, **connection) -> MqttBridge:
    """An MQTT bridge on a platform's ports, wired as the platform wires its own."""
    return MqttBridge(
        MqttConnection(host, port, **connection),
        ingest=platform.core,
        extractor=platform.extractor,
        configs=platform.core.store,
        clock=platform.clock,
    )


@pytest.fixture
def bridge(setup) -> Iterator[MqttBridge]:
    b = mqtt_bridge(setup, HOST, PORT).start()
    yield b
    b.stop()


@pytest.fixture
def publisher() -> Iterator[mqtt.Client]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(HOST, PORT)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def flow(platform, twin: str) -> float | None:
    try:
        return platform.twin(twin)["properties"]["flow"]
    except NotFound:
        return None


def subscribe(bridge: MqttBridge, name: str, body: dict) -> None:
    bridge.put_subscription(name, body)
    assert bridge.wait_connected()
    time.sleep(0.3)  # let the SUBACK arrive before publishing


def send(client: mqtt.Client, topic: str, payload: object, raw: bool = False) -> None:
    data = payload if raw else orjson.dumps(payload)
    client.publish(topic, data, qos=1).wait_for_publish(10)


def test_payload_twin_id(setup, bridge, publisher, prefix):
    subscribe(bridge, "a", {"topic": f"{prefix}/+/telemetry", "extractor": "pj"})
    send(publisher, f"{prefix}/x/telemetry", {"id": f"{prefix}-p1", "flow": 3.5})
    wait_for(lambda: flow(setup, f"{prefix}-p1") == 3.5)
    wait_for(lambda: bridge.stats()["ingested"] == 1)  # counted once the ack is sent


def test_topic_segments_to_twin_ids(setup, bridge, publisher, prefix):
    subscribe(bridge, "lines", {"topic": f"{prefix}/+/line/+/t", "extractor": "line"})
    subscribe(
        bridge,
        "devices",
        {"topic": f"{prefix}/dev/+/+", "extractor": "pj", "twin_from_topic": 2},
    )
    send(publisher, f"{prefix}/plantA/line/7/t", {"id": "m1", "flow": 1})
    send(publisher, f"{prefix}/dev/x/pump-9", {"flow": 9})  # no id in the payload
    wait_for(lambda: flow(setup, "plantA/m1") == 1)
    wait_for(lambda: flow(setup, "pump-9") == 9)


def test_malformed_is_counted_and_good_messages_still_arrive(setup, bridge, publisher, prefix):
    subscribe(bridge, "a", {"topic": f"{prefix}/#", "extractor": "pj"})
    send(publisher, f"{prefix}/d", b"{not json", raw=True)
    send(publisher, f"{prefix}/d", {"flow": 1})  # no id: rejected by the extractor
    send(publisher, f"{prefix}/d", {"id": f"{prefix}-ok", "flow": 2})
    wait_for(lambda: flow(setup, f"{prefix}-ok") == 2)
    wait_for(lambda: bridge.stats()["ingested"] == 1)
    stats = bridge.stats()
    assert (stats["malformed"], stats["rejected"], stats["ingested"]) == (1, 1, 1)
    assert stats["received"] == 3 and stats["connected"] is True


def test_burst_of_5000_qos1_messages_all_arrive(setup, bridge, publisher, prefix):
    subscribe(bridge, "burst", {"topic": f"{prefix}/+", "extractor": "pj"})
    n = 5000
    infos = [
        publisher.publish(
            f"{prefix}/{i % 50}", orjson.dumps({"id": f"b{i}", "flow": i % 1000}), qos=1
        )
        for i in range(n)
    ]
    for info in infos:
        info.wait_for_publish(30)
    wait_for(lambda: bridge.stats()["ingested"] == n, timeout=60)
    assert all(flow(setup, f"b{i}") == i % 1000 for i in range(0, n, 97))
    assert bridge.stats()["observations_accepted"] == n


def test_restart_resubscribes_from_persisted_config(setup, publisher, prefix):
    first = mqtt_bridge(setup, HOST, PORT).start()
    subscribe(first, "keep", {"topic": f"{prefix}/+", "extractor": "pj"})
    first.stop()
    second = mqtt_bridge(setup, HOST, PORT).start()
    try:
        assert [s["name"] for s in second.subscriptions()] == ["keep"]
        assert second.wait_connected()
        time.sleep(0.3)
        send(publisher, f"{prefix}/d", {"id": f"{prefix}-r", "flow": 4})
        wait_for(lambda: flow(setup, f"{prefix}-r") == 4)
    finally:
        second.stop()


def test_api_validates_and_manages_subscriptions(setup, bridge, prefix):
    setup.mqtt = bridge  # as a platform configured with settings.mqtt_host owns one
    app = create_app(setup)
    with TestClient(app) as client:
        url = "/api/mqtt/subscriptions/s1"
        cases = [
            ({"topic": "a/b#", "extractor": "pj"}, "topic"),
            ({"topic": "a/#/b", "extractor": "pj"}, "topic"),
            ({"topic": "", "extractor": "pj"}, "topic"),
            ({"topic": "a/+", "extractor": "nope"}, "extractor"),
            ({"topic": "a/+", "extractor": "pj", "qos": 2}, "qos"),
            ({"topic": "a/+", "extractor": "pj", "twin_from_topic": 2}, "twin_from_topic"),
            ({"topic": "a/b", "extractor": "line"}, "extractor"),  # needs {1}
            ({"topic": "a/+", "extractor": "pj", "colour": 1}, "colour"),
            (["a"], "body"),
        ]
        for body, field in cases:
            r = client.put(url, json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["error"]["field"] == field and r.json()["error"]["fix"]
        good = {"topic": f"{prefix}/+", "extractor": "pj", "qos": 1, "twin_from_topic": 1}
        r = client.put(url, json=good)
        assert r.status_code == 200 and r.json()["twin_from_topic"] == 1
        assert [s["name"] for s in client.get("/api/mqtt/subscriptions").json()] == ["s1"]
        assert client.get("/api/mqtt").json()["subscriptions"] == 1
        assert client.delete(url).status_code == 204
        assert client.delete(url).status_code == 404
        assert client.get("/api/mqtt/subscriptions").json() == []
        assert setup.core.store.configs("mqtt") == {}


def test_topic_filter_and_address_parsing():
    assert validate_topic_filter("plant/+/line/+/telemetry") and validate_topic_filter("#")
    assert parse_address("broker:1884") == ("broker", 1884)
    assert parse_address("broker") == ("broker", 1883)
    assert topic_matches("plant/+/line/+/t", "plant/a/line/7/t")
    assert not topic_matches("plant/+/line/+/t", "plant/a/line/7/t/x")
    assert topic_matches("plant/#", "plant/a/b") and topic_matches("plant/#", "plant")
    assert not topic_matches("#", "$SYS/broker") and not topic_matches("a/+", "a")


def test_reconnects_and_resubscribes_after_the_connection_drops(setup, bridge, publisher, prefix):
    subscribe(bridge, "a", {"topic": f"{prefix}/+", "extractor": "pj"})
    bridge._session._sock.shutdown(socket.SHUT_RDWR)  # the network drops the connection
    wait_for(lambda: not bridge.stats()["connected"], timeout=5)
    assert bridge.wait_connected(timeout=10)
    time.sleep(0.3)  # the SUBACK of the resubscription
    send(publisher, f"{prefix}/d", {"id": f"{prefix}-again", "flow": 6})
    wait_for(lambda: flow(setup, f"{prefix}-again") == 6)


def test_config_file_for_serve(tmp_path, setup, prefix):
    path = tmp_path / "livetwin.yaml"
    path.write_text(
        "mqtt:\n  host: 127.0.0.1\n  port: 1883\n  subscriptions:\n"
        f"    lines: {{topic: '{prefix}/+/line/+/t', extractor: line}}\n"
        f"    devices: {{topic: '{prefix}/dev/+', extractor: pj, twin_from_topic: 1}}\n"
    )
    connection, subscriptions = load_mqtt_config(path)
    assert (connection.host, connection.port) == ("127.0.0.1", 1883)
    assert sorted(subscriptions) == ["devices", "lines"] and connection.client_id is None
    bridge = mqtt_bridge(setup, connection.host, connection.port)
    for name, body in subscriptions.items():
        bridge.put_subscription(name, body)
    assert [s["twin_from_topic"] for s in bridge.subscriptions()] == [1, None]
    for text, field in [
        ("mqtt: {port: 70000}", "mqtt.port"),
        ("mqtt: {brokr: x}", "mqtt.brokr"),
        (
            "mqtt: {subscriptions: {a: {topic: 'a/#/b', extractor: pj}}}",
            "mqtt.subscriptions.a.topic",
        ),
        ("- 1", "mqtt"),
        ("mqtt: [", "config"),
    ]:
        path.write_text(text)
        with pytest.raises(InvalidInput) as caught:
            load_mqtt_config(path)
        assert caught.value.field == field and caught.value.fix


def test_without_a_broker_subscriptions_answer_mqtt_not_configured(client):
    """409 (the server's configuration), not 503 (a passing outage): retrying will not help."""
    for method, path in [
        ("GET", "/api/mqtt/subscriptions"),
        ("PUT", "/api/mqtt/subscriptions/line"),
        ("DELETE", "/api/mqtt/subscriptions/line"),
    ]:
        r = client.request(method, path, json={"topic": "a/#", "extractor": "x"})
        assert r.status_code == 409, (method, path, r.text)
        error = r.json()["error"]
        assert error["field"] == "mqtt" and "MQTT not configured" in error["message"]
    assert client.get("/api/mqtt").json() == {"enabled": False, "connected": False}


def test_a_share_group_splits_one_topic_between_two_servers(setup, publisher, prefix):
    group = f"g{uuid.uuid4().hex[:8]}"
    bridges = [mqtt_bridge(setup, HOST, PORT, share_group=group).start() for _ in range(2)]
    try:
        for b in bridges:
            subscribe(b, "shared", {"topic": f"{prefix}/+", "extractor": "pj"})
        n = 200
        for i in range(n):
            send(publisher, f"{prefix}/{i % 5}", {"id": f"s{i}", "flow": i})
        wait_for(lambda: sum(b.stats()["ingested"] for b in bridges) >= n, timeout=30)
        time.sleep(0.3)  # a message delivered twice would arrive by now
        counts = [b.stats()["ingested"] for b in bridges]
        assert sum(counts) == n and min(counts) > 0, counts  # each message once, both got some
        assert all(flow(setup, f"s{i}") == i for i in range(0, n, 7))
        assert bridges[0].stats()["share_group"] == group
    finally:
        for b in bridges:
            b.stop()


def test_a_bad_share_group_is_refused():
    for bad in ("", "a/b", "x+", "#"):
        with pytest.raises(InvalidInput) as caught:
            MqttConnection(HOST, PORT, share_group=bad).check()
        assert caught.value.field == "mqtt.share_group" and caught.value.fix
