"""Desired state and MQTT commands against the real Mosquitto on 127.0.0.1:1883."""

from __future__ import annotations

import queue
import sqlite3
import time
import uuid
from collections.abc import Iterator

import orjson
import paho.mqtt.client as mqtt
import pytest
from conftest import MQTT_HOST, MQTT_PORT, T0, obs, require_mosquitto
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from webhook_support import wait_for

from livetwin.actions.commands import SCHEMA, CommandService, migrate
from livetwin.api.app import create_app
from livetwin.settings import MqttConnection
from livetwin.store.servicedb import service_db_opener

pytestmark = pytest.mark.services  # needs a real service (see conftest.py)

HOST, PORT = MQTT_HOST, MQTT_PORT


@pytest.fixture(scope="module", autouse=True)
def broker() -> None:
    require_mosquitto()


@pytest.fixture
def prefix() -> str:
    return f"cmd-{uuid.uuid4().hex[:12]}"


def fan_type(prefix: str) -> dict:
    return {
        "properties": {"speed": {"min": 0, "max": 100}, "temp": {}},
        "parameters": {"gain": {"value": 1.0}},
        "commands": {"topic": prefix + "/{type}/{twin}/set", "qos": 1, "tolerance": 0.01},
    }


def command_service(platform, port: int = PORT) -> CommandService:
    """A command service on a platform's ports, wired as the platform wires its own."""
    return CommandService(
        MqttConnection(HOST, port),
        clock=platform.clock,
        bus=platform.bus,
        reader=platform.query,
        open_db=platform.open_db,
    )


@pytest.fixture
def service(platform, prefix) -> Iterator[CommandService]:
    platform.put_type("fan", fan_type(prefix))
    platform.put_type("plain", {"properties": {"x": {}}})
    platform.ingest([obs("fan-1", T0, "fan", speed=10, temp=20), obs("p-1", T0, "plain", x=1)])
    svc = command_service(platform, PORT).start()
    wait_for(lambda: svc._client.is_connected())
    yield svc
    svc.stop()


@pytest.fixture
def device(prefix) -> Iterator[queue.Queue]:
    """A device subscribed to its command topic; received commands land in the queue."""
    received: queue.Queue = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda c, u, m: received.put((m.topic, orjson.loads(m.payload), m.qos))
    client.connect(HOST, PORT)
    client.subscribe(f"{prefix}/#", qos=1)
    client.loop_start()
    time.sleep(0.3)  # let the SUBACK arrive
    yield received
    client.disconnect()
    client.loop_stop()


def app_for(platform, service: CommandService):
    """The API over the platform, as if it had been started with an MQTT broker."""
    platform.commands = service
    return create_app(platform)


def test_command_reaches_device_and_pending_clears_when_reported(platform, service, device, prefix):
    app = app_for(platform, service)
    with TestClient(app) as client:
        r = client.put("/api/twins/fan-1/desired", json={"values": {"speed": 12.5, "gain": 2}})
        assert r.status_code == 200, r.text
        view = r.json()
        assert view["desired"] == {"gain": 2.0, "speed": 12.5}
        assert view["reported"] == {"gain": 1.0, "speed": 10.0}
        assert view["pending"] == ["gain", "speed"]

        topic, command, qos = device.get(timeout=10)
        assert topic == f"{prefix}/fan/fan-1/set" and qos == 1
        assert command["twin"] == "fan-1" and command["values"] == {"speed": 12.5, "gain": 2.0}
        assert command["id"] == view["command"]["id"] and command["ts"].endswith("Z")
        wait_for(lambda: client.get("/api/twins/fan-1/desired").json()["command"]["published"])

        # The device applies the speed (within tolerance), then the gain.
        platform.ingest([obs("fan-1", T0 + 1000, "fan", speed=12.495)])
        assert client.get("/api/twins/fan-1/desired").json()["pending"] == ["gain"]
        platform.ingest([obs("fan-1", T0 + 2000, "fan", gain=2.0)])
        view = client.get("/api/twins/fan-1/desired").json()
        assert view["pending"] == [] and view["reported"] == {"gain": 2.0, "speed": 12.495}
        wait_for(lambda: set(service.desired("fan-1")["reached"]) == {"gain", "speed"})


def test_desired_is_durable_across_restart(service, platform):
    service.set_desired("fan-1", {"speed": 30})
    service.stop()
    again = command_service(platform, PORT).start()
    try:
        view = again.desired("fan-1")
        assert view["desired"] == {"speed": 30.0} and view["pending"] == ["speed"]
        platform.ingest([obs("fan-1", T0 + 5000, "fan", speed=30)])
        wait_for(lambda: "speed" in again.desired("fan-1")["reached"])
    finally:
        again.stop()


def test_command_published_once_broker_is_reachable(platform, prefix, device):
    """With no broker the command is stored unsent; a service that connects later sends it."""
    platform.put_type("fan", fan_type(prefix))
    platform.ingest([obs("fan-2", T0, "fan", speed=1)])
    offline = command_service(platform, 1).start()  # nothing listens on port 1
    try:
        view = offline.set_desired("fan-2", {"speed": 5})
        assert view["command"]["published"] is False
    finally:
        offline.stop()
    online = command_service(platform, PORT).start()
    try:
        topic, command, _ = device.get(timeout=10)
        assert topic == f"{prefix}/fan/fan-2/set" and command["values"] == {"speed": 5.0}
        wait_for(lambda: online.desired("fan-2")["command"]["published"])
    finally:
        online.stop()


def test_bad_requests_name_the_field(platform, service):
    app = app_for(platform, service)
    with TestClient(app) as client:
        cases = [
            ("fan-1", {"values": {"colour": 1}}, 422, "values.colour"),
            ("fan-1", {"values": {"speed": "fast"}}, 422, "values.speed"),
            ("fan-1", {"values": {"speed": 1000}}, 422, "values.speed"),
            ("fan-1", {"values": {}}, 422, "values"),
            ("fan-1", {"speed": 1}, 422, "values"),
            ("p-1", {"values": {"x": 1}}, 422, "type"),
            ("nobody", {"values": {"speed": 1}}, 404, None),
        ]
        for twin, body, status, field in cases:
            r = client.put(f"/api/twins/{twin}/desired", json=body)
            assert r.status_code == status, (twin, body, r.text)
            error = r.json()["error"]
            assert error.get("field") == field or field is None, error
            assert error.get("fix"), error
        assert client.get("/api/twins/nobody/desired").status_code == 404
        assert client.get("/api/twins/fan-1/desired").json()["desired"] == {}


def test_type_spec_commands_section_is_validated(platform):
    for commands, field in [
        ({"topic": "a/{device}/set"}, "commands.topic"),
        ({"topic": "a/+/set"}, "commands.topic"),
        ({"topic": "a/{twin}", "qos": 2}, "commands.qos"),
        ({"topic": "a/{twin}", "tolerance": -1}, "commands.tolerance"),
        ({"topic": "a/{twin}", "retain": True}, "commands.retain"),
    ]:
        with pytest.raises(Exception) as caught:
            platform.put_type("bad", {"properties": {"x": {}}, "commands": commands})
        assert getattr(caught.value, "field", None) == field, caught.value


def test_without_a_broker_commands_answer_mqtt_not_configured(client):
    r = client.put("/api/twins/fan-1/desired", json={"values": {"speed": 1}})
    assert r.status_code == 409 and r.json()["error"]["field"] == "mqtt"
    assert "--mqtt" in r.json()["error"]["fix"]


def test_a_commands_file_from_before_the_order_column_is_migrated_in_place(tmp_path):
    """commands.sqlite keeps its name; its commands are numbered in the order they were stored."""
    old = sqlite3.connect(tmp_path / "commands.sqlite")
    old.executescript(
        "CREATE TABLE commands (id TEXT PRIMARY KEY, twin TEXT NOT NULL, topic TEXT NOT NULL, "
        "qos INTEGER NOT NULL, payload BLOB NOT NULL, ts INTEGER NOT NULL, published_at INTEGER);"
        "INSERT INTO commands VALUES ('b', 'fan-1', 't', 1, x'7b7d', 5, NULL);"
        "INSERT INTO commands VALUES ('a', 'fan-1', 't', 1, x'7b7d', 5, 7);"
    )
    old.close()
    db = service_db_opener(tmp_path, "")(
        "commands", SCHEMA, sqlite_migrate=migrate, sqlite_file="commands.sqlite"
    )
    try:
        rows = db.read().execute("SELECT id, n FROM commands ORDER BY ts DESC, n DESC").fetchall()
        assert rows == [("a", 2), ("b", 1)]  # the later of two commands in one millisecond first
    finally:
        db.close()
    assert sorted(p.name for p in tmp_path.glob("commands*")) == ["commands.sqlite"]
