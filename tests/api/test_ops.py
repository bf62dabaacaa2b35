"""Ops: Prometheus metrics read at scrape time, dependency health with 503, JSON log lines."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from conftest import PUMP, T0, obs
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from livetwin.api.app import create_app
from livetwin.api.ops import JsonFormatter, Monitor, configure_logging
from livetwin.errors import InvalidInput
from livetwin.examples.rollers import ROLLER_TYPE, observations, roller_fleet
from livetwin.platform import Platform
from livetwin.settings import Settings


def scrape(client) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


@pytest.fixture
def ops(platform):
    app = create_app(platform)
    with TestClient(app) as client:
        yield client, app.state.monitor


def test_metrics_follow_ingest_journal_and_snapshots(ops, platform):
    client, _ = ops
    platform.put_type("pump", PUMP)
    platform.ingest([obs(f"p{i}", T0, flow=1.0) for i in range(5)])
    first = scrape(client)
    assert first[("livetwin_observations_total", ())] == 5
    assert first[("livetwin_journal_entries_total", ())] == 2  # the type and one batch
    assert first[("livetwin_twins", ())] == 5 and first[("livetwin_types", ())] == 1
    assert first[("livetwin_queue_depth", (("queue", "writer"),))] >= 0
    assert first[("livetwin_journal_lag_entries", (("behind", "snapshot"),))] == 2
    assert ("livetwin_snapshot_age_seconds", ()) not in first  # no snapshot yet
    platform.ingest([obs(f"p{i}", T0 + 1000, flow=2.0) for i in range(3)])
    platform.ingest([obs("p0", T0 + 2000, flow=3.0)])
    second = scrape(client)
    assert second[("livetwin_observations_total", ())] == 9  # counted once each, incrementally
    assert second[("livetwin_journal_entries_total", ())] == 4
    assert second[("livetwin_journal_last_seq", ())] == 4
    platform.snapshot()
    third = scrape(client)
    assert third[("livetwin_journal_lag_entries", (("behind", "snapshot"),))] == 0
    assert third[("livetwin_journal_lag_entries", (("behind", "history"),))] == 0
    assert third[("livetwin_history_buffered_rows", ())] == 0
    assert 0 <= third[("livetwin_snapshot_age_seconds", ())] < 60
    assert third[("livetwin_observations_total", ())] == 9


def test_calibration_runs_are_counted(ops, platform, clock):
    client, _ = ops
    clock.now = T0 + 10**8
    platform.put_type("roller_line", ROLLER_TYPE)
    sim, ids = roller_fleet(2, seed=1), ["line-0", "line-1"]
    rows = [row for k in range(40) for row in observations(sim.step(), ids, T0 + k * 100)]
    assert platform.ingest(rows).accepted == len(rows)
    before = scrape(client)  # the baseline: runs before the first scrape are history
    assert (
        "livetwin_calibration_runs_total",
        (("status", "succeeded"), ("type", "roller_line")),
    ) not in before
    record = platform.calibrate("roller_line")
    after = scrape(client)
    key = (
        "livetwin_calibration_runs_total",
        (("status", record["status"]), ("type", "roller_line")),
    )
    assert after[key] == 1
    twins = (
        "livetwin_calibration_last_run_twins",
        (("outcome", "calibrated"), ("type", "roller_line")),
    )
    assert after[twins] == record["calibrated"] == 2
    assert (
        after[("livetwin_calibration_last_run_timestamp_seconds", (("type", "roller_line"),))] > 0
    )


def test_services_register_stats_counters_and_checks(ops):
    client, monitor = ops
    sent = {"delivered": 3, "failed_attempts": 1, "outbox": {"pending": 2, "dead": 1}, "p50": None}
    monitor.add_stats("webhooks", lambda: sent, counters=("delivered", "failed_attempts"))
    runs = monitor.counter("livetwin_job_runs", "Job runs by outcome", ["outcome"])
    runs.labels("ok").inc(2)
    state = {"up": True}

    def broker() -> dict:
        if not state["up"]:
            raise ConnectionError("broker 127.0.0.1:1883 refused the connection")
        return {"connected": True}

    monitor.add_check("mqtt", broker)
    metrics = scrape(client)
    assert metrics[("livetwin_webhooks_delivered_total", ())] == 3
    assert metrics[("livetwin_webhooks_failed_attempts_total", ())] == 1
    assert metrics[("livetwin_webhooks_outbox", (("kind", "pending"),))] == 2
    assert metrics[("livetwin_job_runs_total", (("outcome", "ok"),))] == 2
    sent["delivered"] = 7  # read at scrape time, not copied at registration
    assert scrape(client)[("livetwin_webhooks_delivered_total", ())] == 7

    healthy = client.get("/api/health")
    assert healthy.status_code == 200
    report = healthy.json()
    assert report["status"] == "ok"
    assert set(report["checks"]) == {"store", "writer", "history_flusher", "mqtt"}
    assert report["checks"]["mqtt"] == {"status": "ok", "connected": True}
    state["up"] = False
    down = client.get("/api/health")
    assert down.status_code == 503
    assert down.json()["checks"]["mqtt"]["status"] == "down"
    assert "refused" in down.json()["checks"]["mqtt"]["error"]
    assert down.json()["checks"]["writer"]["status"] == "ok"


def test_health_reports_a_stopped_writer(platform):
    monitor = Monitor(platform)
    assert monitor.health()[0] is True
    platform.core.writer.stop()
    healthy, report = monitor.health()
    assert healthy is False
    assert report["checks"]["writer"]["status"] == "down"
    assert report["checks"]["history_flusher"]["status"] == "down"


def test_json_log_lines(capsys):
    record = logging.LogRecord("livetwin.x", logging.WARNING, __file__, 1, "lag %d", (5,), None)
    record.twin = "pump-1"
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "WARNING" and line["logger"] == "livetwin.x"
    assert line["message"] == "lag 5" and line["twin"] == "pump-1"
    assert line["time"].endswith("+00:00")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exception"]


def test_configure_logging_from_the_environment(monkeypatch, capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        monkeypatch.setenv("LIVETWIN_LOG_FORMAT", "json")
        configure_logging()
        logging.getLogger("livetwin.test").info("hello", extra={"seq": 7})
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert line["message"] == "hello" and line["seq"] == 7
        monkeypatch.setenv("LIVETWIN_LOG_FORMAT", "xml")
        with pytest.raises(InvalidInput) as caught:
            configure_logging()
        assert caught.value.field == "LIVETWIN_LOG_FORMAT"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_settings_read_the_environment_in_one_place():
    env = {
        "LIVETWIN_DATABASE_URL": " postgresql://db/x ",
        "LIVETWIN_LOG_FORMAT": "json",
        "LIVETWIN_JWKS_URL": "https://idp/jwks",
        "LIVETWIN_SMTP_HOST": "smtp.example.com",
        "LIVETWIN_PUBLIC_URL": "https://twins.example.com",
        "LIVETWIN_S3_BUCKET": "models",
        "AWS_ACCESS_KEY_ID": "key",
        "HOME": "/root",
    }
    settings = Settings.from_env(environ=env)
    assert settings.database_url == "postgresql://db/x" and settings.log_format == "json"
    assert settings.jwks_url == "https://idp/jwks" and settings.jwt_issuer is None
    assert settings.smtp == {
        "LIVETWIN_SMTP_HOST": "smtp.example.com",
        "LIVETWIN_PUBLIC_URL": "https://twins.example.com",
    }
    assert settings.artifacts == {"LIVETWIN_S3_BUCKET": "models", "AWS_ACCESS_KEY_ID": "key"}
    # values set in code win over the environment; the rest is kept
    explicit = Settings(max_body_bytes=5, database_url="", log_format="text")
    merged = Settings.from_env(explicit, environ=env)
    assert merged.database_url == "" and merged.log_format == "text"
    assert merged.max_body_bytes == 5 and merged.jwks_url == "https://idp/jwks"
    unset = Settings.from_env(environ={})
    assert unset.database_url == "" and unset.smtp == {} and unset.artifacts == {}


def test_the_platform_takes_its_settings_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVETWIN_LOG_FORMAT", "json")
    monkeypatch.delenv("LIVETWIN_DATABASE_URL", raising=False)
    with Platform(tmp_path / "a", settings=Settings(run_schedules=False)) as platform:
        assert platform.settings.log_format == "json" and platform.settings.database_url == ""
        assert not platform.settings.run_schedules
    with Platform(tmp_path / "b") as platform:
        assert platform.settings.log_format == "json"


@pytest.mark.platform_services("webhooks", "schedules")
def test_the_platform_services_are_in_the_metrics(ops, platform):
    client, _ = ops
    rules = {"hot": {"when": "flow > 900", "severity": "critical"}}
    platform.put_type("pump", {**PUMP, "rules": rules})
    platform.ingest([obs("p1", T0, flow=950.0)])
    platform.alarms.sync()
    platform.scheduler.register("noop", lambda ctx: None)
    platform.scheduler.run_function("noop")
    platform.scheduler.wait_idle()
    metrics = scrape(client)
    assert metrics[("livetwin_alarms_open", (("kind", "critical"),))] == 1
    assert metrics[("livetwin_scheduler_functions", ())] == 1
    assert metrics[("livetwin_scheduler_runs", (("kind", "succeeded"),))] == 1
    assert ("livetwin_webhooks_delivered_total", ()) in metrics
