"""Devices on MQTT: a private Mosquitto run on the files `livetwin devices export-mosquitto` wrote
(allow_anonymous false) lets a device in with its credential and onto its own topics only, refuses
a wrong password and, after revocation and a re-export, the revoked device; the bridge refuses a
device's message for a twin it does not own, and a revoked device's within seconds."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from conftest import PUMP
from mqtt_support import Client, private_mosquitto, wait_until
from typer.testing import CliRunner

from livetwin.auth.devices import DeviceStore
from livetwin.cli.devices import devices_app
from livetwin.platform import Platform, Settings
from livetwin.settings import MqttConnection

pytestmark = pytest.mark.services

BRIDGE_USER, BRIDGE_PASSWORD = "livetwin", "bridge-Pa55-word"


def export(data: Path, files: Path) -> None:
    """`livetwin devices export-mosquitto` into `files`, with livetwin's own broker user."""
    (files / "bridge-password").write_text(BRIDGE_PASSWORD + "\n")
    result = CliRunner().invoke(
        devices_app,
        ["export-mosquitto", "--passwords", str(files / "passwords"), "--acl",
         str(files / "acl"), "--bridge-user", BRIDGE_USER, "--bridge-password-file",
         str(files / "bridge-password"), "--data", str(data)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_devices_authenticate_to_the_broker_and_the_bridge_refuses_foreign_twins(tmp_path):
    data, files = tmp_path / "data", tmp_path / "mosquitto"
    files.mkdir()
    with DeviceStore.in_directory(data) as store:
        a = store.create(name="line a", twins="plant-a/pump-*")
        b = store.create(name="pump b", twins="plant-b/pump-1")
    export(data, files)
    settings = (
        f"allow_anonymous false\npassword_file {files / 'passwords'}\nacl_file {files / 'acl'}\n"
    )
    with private_mosquitto(files, settings) as broker:
        connection = MqttConnection(
            "127.0.0.1", broker.port, username=BRIDGE_USER, password=BRIDGE_PASSWORD
        )
        with Platform(data, settings=Settings(mqtt=connection, run_schedules=False)) as platform:
            platform.put_type("pump", PUMP)
            platform.put_extractor(
                "pj", {"twin": "$.id", "type": "pump", "values": {"flow": "$.f"}}
            )
            bridge = platform.mqtt
            bridge.put_subscription("devices", {"topic": "devices/+/telemetry", "extractor": "pj"})
            assert bridge.wait_connected()
            time.sleep(0.3)  # the SUBACK

            def stat(name: str):
                return bridge.stats()[name]

            device_a = Client(broker.port, a["mqtt_username"], a["credential"])
            device_b = Client(broker.port, b["mqtt_username"], b["credential"])
            wrong = Client(broker.port, a["mqtt_username"], a["credential"][:-1] + "x")
            anonymous = Client(broker.port, "", "")
            try:
                assert device_a.accepted and device_b.accepted
                assert wrong.accepted is False and "authoriz" in wrong.reason.lower()
                assert anonymous.accepted is False
                topic_a, topic_b = f"devices/{a['id']}/telemetry", f"devices/{b['id']}/telemetry"
                device_a.publish(topic_a, orjson.dumps({"id": "plant-a/pump-1", "f": 1.5}))
                wait_until(lambda: stat("ingested") == 1)
                assert platform.twin("plant-a/pump-1")["properties"]["flow"] == 1.5

                # its own topic, another device's twin: the bridge refuses it, says why, counts
                device_a.publish(topic_a, orjson.dumps({"id": "plant-b/pump-1", "f": 66.0}))
                wait_until(lambda: stat("device_refused") == 1)
                reason = stat("last_rejected")["reason"]
                assert "plant-b/pump-1" in reason and "plant-a/pump-*" in reason
                assert stat("last_rejected")["topic"] == topic_a and stat("rejected") == 1
                # another device's topic: the broker's ACL drops it before the bridge sees it
                device_a.publish(topic_b, orjson.dumps({"id": "plant-b/pump-1", "f": 77.0}))
                device_b.publish(topic_b, orjson.dumps({"id": "plant-b/pump-1", "f": 2.5}))
                wait_until(lambda: stat("ingested") == 2)
                assert platform.twin("plant-b/pump-1")["properties"]["flow"] == 2.5
                assert stat("received") == 3  # device a's message on b's topic never arrived

                # revoked (by another process, as the CLI does): the bridge refuses the device
                # once its cache of at most 2 s expires, before the broker files are re-exported
                with DeviceStore.in_directory(data) as other:
                    other.revoke(a["id"])
                revoked_at, sent = time.monotonic(), 0
                while stat("device_refused") < 2:
                    sent += 1
                    device_a.publish(
                        topic_a, orjson.dumps({"id": "plant-a/pump-1", "f": 100.0 + sent})
                    )
                    assert time.monotonic() - revoked_at < 10, "revocation did not reach the bridge"
                    time.sleep(0.1)
                took = time.monotonic() - revoked_at
                assert took < 2 + 1.5, f"the bridge refused a revoked device after {took:.2f} s"
                assert "revoked" in stat("last_rejected")["reason"]
                refused_flow = platform.twin("plant-a/pump-1")["properties"]["flow"]
                assert refused_flow < 100.0 + sent  # the message that was refused did not land
            finally:
                for client in (device_a, device_b, wrong, anonymous):
                    client.close()

            # re-exported and reloaded: the broker refuses the revoked device, keeps the other
            export(data, files)
            broker.reload()
            again = Client(broker.port, a["mqtt_username"], a["credential"])
            still = Client(broker.port, b["mqtt_username"], b["credential"])
            try:
                assert again.accepted is False and still.accepted is True
            finally:
                again.close()
                still.close()
            assert "user " + a["id"] not in (files / "acl").read_text()
