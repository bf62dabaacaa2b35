"""The MQTT connection as a deployment sets it up: a persistent session that loses nothing while
livetwin is down, TLS with a user name and password (against a Mosquitto the test starts with a
TLS listener), the broker's refusals in plain words, and why messages were rejected."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from conftest import MQTT_HOST, MQTT_PORT, PUMP, require_mosquitto
from mqtt_support import private_mosquitto
from paho.mqtt.enums import CallbackAPIVersion
from tls_support import self_signed
from webhook_support import wait_for

from livetwin.errors import InvalidInput
from livetwin.platform import Platform, Settings
from livetwin.settings import MqttConnection

pytestmark = pytest.mark.services

USER, PASSWORD = "plant", "s3cret-Pa55"


def publisher(port: int = MQTT_PORT, **tls) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    if tls:
        client.username_pw_set(USER, PASSWORD)
        client.tls_set(ca_certs=tls["ca"])
    client.connect(MQTT_HOST, port)
    client.loop_start()
    return client


def open_platform(path: Path, connection: MqttConnection) -> Platform:
    """A platform on `path` with MQTT on `connection` (declaring its type on first use)."""
    first = not path.exists()
    platform = Platform(path, settings=Settings(mqtt=connection, run_schedules=False))
    if first:
        platform.put_type("pump", PUMP)
        platform.put_extractor("pj", {"twin": "$.id", "type": "pump", "values": {"flow": "$.f"}})
    return platform


def journaled(platform: Platform) -> int:
    return platform.core.stats()["journal_observations"]


@pytest.fixture
def tls_broker(tmp_path) -> Iterator[tuple[int, str]]:
    """A private Mosquitto with a TLS listener and one user: (port, CA certificate)."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("the TLS broker test needs mosquitto_passwd (Debian: apt install mosquitto)")
    cert, key = self_signed(tmp_path / "tls")
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), USER, PASSWORD], check=True)
    settings = (
        f"cafile {cert}\ncertfile {cert}\nkeyfile {key}\n"
        f"allow_anonymous false\npassword_file {passwords}\n"
    )
    with private_mosquitto(tmp_path, settings) as broker:
        yield broker.port, str(cert)


def test_a_persistent_session_keeps_what_was_published_while_livetwin_was_down(tmp_path):
    require_mosquitto()
    prefix = f"test-{uuid.uuid4().hex}"
    connection = MqttConnection(MQTT_HOST, MQTT_PORT, client_id=f"livetwin-{prefix}")
    with open_platform(tmp_path / "d", connection) as platform:
        platform.mqtt.put_subscription("s", {"topic": f"{prefix}/+", "extractor": "pj"})
        assert platform.mqtt.wait_connected()
        time.sleep(0.3)  # the SUBACK: the broker now keeps the session's subscription
        assert platform.mqtt.stats()["persistent_session"] is True
    device = publisher()
    try:  # livetwin is down: the broker queues these for its session
        for i in range(200):
            body = orjson.dumps({"id": f"p{i % 10}", "f": i})
            device.publish(f"{prefix}/p{i % 10}", body, qos=1).wait_for_publish(10)
    finally:
        device.disconnect()
        device.loop_stop()
    with open_platform(tmp_path / "d", connection) as platform:
        wait_for(lambda: journaled(platform) == 200)
        assert platform.twin("p9")["properties"]["flow"] == 199.0
        time.sleep(0.5)
        assert journaled(platform) == 200  # each once
        platform.mqtt.delete_subscription("s")


def test_tls_with_a_password_ingests_and_refusals_say_why(tmp_path, tls_broker):
    port, ca = tls_broker
    prefix = f"test-{uuid.uuid4().hex}"
    good = MqttConnection(MQTT_HOST, port, username=USER, password=PASSWORD, tls_ca=ca)
    with open_platform(tmp_path / "d", good) as platform:
        platform.mqtt.put_subscription("s", {"topic": f"{prefix}/+", "extractor": "pj"})
        assert platform.mqtt.wait_connected()
        time.sleep(0.3)
        device = publisher(port, ca=ca)
        try:
            device.publish(f"{prefix}/a", orjson.dumps({"id": "a", "f": 1.5}), qos=1)
            device.publish(f"{prefix}/a", b"not json", qos=1)
            device.publish(f"{prefix}/b", orjson.dumps({"f": 2}), qos=1).wait_for_publish(10)
        finally:
            device.disconnect()
            device.loop_stop()
        wait_for(lambda: platform.mqtt.stats()["received"] == 3)
        wait_for(lambda: platform.mqtt.stats()["ingested"] == 1)
        stats = platform.mqtt.stats()
        assert stats["tls"] is True and stats["malformed"] == 1 and stats["rejected"] == 1
        assert stats["last_rejected"]["topic"] == f"{prefix}/b"
        assert "twin" in stats["last_rejected"]["reason"]
        assert platform.twin("a")["properties"]["flow"] == 1.5
        assert platform.commands._client is not None
        wait_for(lambda: platform.commands._client.is_connected())  # commands: same settings

    for connection, words in [
        (
            MqttConnection(MQTT_HOST, port, username=USER, password="wrong", tls_ca=ca),
            "not authorized",
        ),
        (MqttConnection(MQTT_HOST, port, username=USER, password=PASSWORD, tls=True), "TLS"),
    ]:
        with open_platform(tmp_path / "d", connection) as platform:
            wait_for(lambda p=platform: p.mqtt.stats()["last_error"] is not None)
            assert words in platform.mqtt.stats()["last_error"]
            assert platform.mqtt.stats()["connected"] is False


def test_connection_settings_that_cannot_work_are_refused_with_the_field(tmp_path):
    (empty := tmp_path / "empty.pem").write_text("")
    for connection, field in [
        (MqttConnection("h", password="p"), "mqtt.username"),
        (MqttConnection("h", tls_cert=str(empty)), "mqtt.tls_key"),
        (MqttConnection("h", tls_ca=str(tmp_path / "missing.pem")), "mqtt.tls_ca"),
        (MqttConnection("h", tls_ca=str(empty)), "mqtt.tls_ca"),
        (MqttConnection("h", session_expiry_s=-1), "mqtt.session_expiry"),
    ]:
        with pytest.raises(InvalidInput) as caught:
            connection.check()
        assert caught.value.field == field and caught.value.fix
    env = {"LIVETWIN_MQTT_PASSWORD": "pw", "LIVETWIN_MQTT_USERNAME": "u"}
    settings = Settings.from_env(Settings(mqtt=MqttConnection("h", username="cli")), env)
    assert (settings.mqtt.username, settings.mqtt.password) == ("cli", "pw")  # the CLI wins
    assert "pw" not in repr(settings.mqtt)
