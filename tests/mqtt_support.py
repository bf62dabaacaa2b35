"""A private Mosquitto for a test (its own port, config and files) and an MQTT client that says
whether the broker accepted its credentials."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    assert check(), "condition not met before the deadline"


class PrivateBroker:
    """A running `mosquitto -c conf` on `port`; `reload()` re-reads its password and ACL files."""

    def __init__(self, process: subprocess.Popen, port: int):
        self.process, self.port = process, port

    def reload(self) -> None:
        self.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)  # SIGHUP is handled between network loops


@contextlib.contextmanager
def private_mosquitto(directory: Path, settings: str) -> Iterator[PrivateBroker]:
    """Mosquitto on a free loopback port with `settings` (lines of mosquitto.conf) added."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        message = "this test starts its own mosquitto (Debian: apt install mosquitto)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\npersistence false\n"
        f"user {getpass.getuser()}\n"  # as root, stay root: the files lie in a private folder
        + settings
    )
    process = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: _listening(port) or process.poll() is not None, timeout=10)
        assert process.poll() is None, f"mosquitto did not start with {conf.read_text()}"
        yield PrivateBroker(process, port)
    finally:
        process.terminate()
        process.wait(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class Client:
    """A paho client connected with a user name and password: `accepted` says what the broker
    answered (None while no answer came)."""

    def __init__(self, port: int, username: str, password: str):
        self.accepted: bool | None = None
        self.reason = ""
        self._answered = threading.Event()
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:8]}"
        )
        self.paho.username_pw_set(username, password)
        self.paho.on_connect = self._on_connect
        self.paho.connect("127.0.0.1", port)
        self.paho.loop_start()
        self._answered.wait(10)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.accepted, self.reason = not reason_code.is_failure, str(reason_code)
        self._answered.set()

    def publish(self, topic: str, payload: bytes) -> None:
        self.paho.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()
