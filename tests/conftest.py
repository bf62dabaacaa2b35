"""Shared fixtures: a platform in a temporary directory, an API client over it, a fake clock."""

from __future__ import annotations

import contextlib
import logging

import pytest
from fastapi.testclient import TestClient

from livetwin.api.app import create_app
from livetwin.platform import Platform, Settings

pytest_plugins = ["fmu_support", "cluster_support"]  # FMU fixtures; a cluster front end (front)

T0 = 1_795_341_600_000  # 2026-11-22T10:00:00Z

PUMP = {
    "description": "test pump",
    "properties": {
        "flow": {"unit": "m3/h", "min": 0, "max": 1000},
        "pressure": {"unit": "bar"},
    },
    "parameters": {"eff": {"value": 0.8, "min": 0.1, "max": 1}},
    "derived": {
        "power": {"expr": "flow * pressure / 36 / eff", "unit": "kW"},
        "flow_avg": "avg(flow, '10m')",
    },
}


class FakeClock:
    """Epoch milliseconds that only move when a test moves them."""

    def __init__(self, now: int = T0 + 3_600_000):
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture(autouse=True)
def root_logging():
    """`livetwin serve` run in-process configures root logging onto the stderr a CliRunner
    captures: undo it after every test so no later test logs into a dead stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# Fixtures that reach a real service (besides the modules marked `services` as a whole).
SERVICE_FIXTURES = {"smtp_server", "pg"}


def pytest_collection_modifyitems(items):
    """Tests that use a service fixture are `services` tests: `pytest -m "not services"` is the
    fast inner loop without PostgreSQL, Mosquitto, SMTP or Chromium."""
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


PLATFORM_SERVICES = ("webhooks", "schedules")  # what `platform_services` may ask for


@pytest.fixture
def platform(tmp_path, clock, request):
    """A platform on a fresh data directory and the fake clock. It starts the background
    services a test asks for with `@pytest.mark.platform_services("webhooks", "schedules")`
    and no others (the core, alarms and the registry are always there)."""
    marker = request.node.get_closest_marker("platform_services")
    wanted = set(marker.args) if marker else set()
    assert wanted <= set(PLATFORM_SERVICES), f"platform_services: use some of {PLATFORM_SERVICES}"
    settings = Settings(
        max_body_bytes=200_000,
        webhooks="webhooks" in wanted,
        run_schedules="schedules" in wanted,
    )
    with Platform(tmp_path / "data", clock=clock, settings=settings) as p:
        yield p


@pytest.fixture
def client(platform):
    with TestClient(create_app(platform)) as c:
        yield c


MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883  # the machine's Mosquitto


def require_mosquitto() -> None:
    """Skip when Mosquitto is not listening (fail under CI=true, where it must be)."""
    import os
    import socket

    try:
        socket.create_connection((MQTT_HOST, MQTT_PORT), timeout=1).close()
    except OSError:
        message = f"Mosquitto is not reachable on {MQTT_HOST}:{MQTT_PORT} (start it: mosquitto -d)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def obs(twin: str, ts: int, type: str = "pump", **values) -> dict:
    return {"twin": twin, "type": type, "ts": ts, "values": values}


@pytest.fixture
def live_server(platform):
    """A real uvicorn server over `platform` on a free port; yields its base URL."""
    with served(platform) as url:
        yield url


@contextlib.contextmanager
def served(platform, app=None):
    """A real uvicorn server over `platform` (or over `app`, e.g. one with auth installed) on a
    free port while the block runs; its URL."""
    import socket
    import threading
    import time

    import uvicorn

    from livetwin.api.server import server_options

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(platform) if app is None else app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=1,
        **server_options(),  # the limits `livetwin serve` runs with
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
