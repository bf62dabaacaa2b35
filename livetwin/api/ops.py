"""Operations: Prometheus `/metrics` collected at scrape time, dependency health, JSON logs.

`ops_routes(app, platform)` adds the routes and returns the `Monitor`, where other services
register health checks and metrics (`add_check`, `add_stats`, `add_collector`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.concurrency import run_in_threadpool

from livetwin import __version__
from livetwin.errors import InvalidInput
from livetwin.settings import Settings
from livetwin.timefmt import parse_ts

log = logging.getLogger(__name__)

Check = Callable[[], Any]


class PlatformCollector:
    """The platform's own metrics, read when Prometheus scrapes (nothing on the ingest path).

    Journal totals are counted incrementally: each scrape counts only the entries committed
    since the previous one (an index range), so a large journal is scanned once, at the first.
    """

    def __init__(self, platform):
        self.platform = platform
        self._lock = threading.Lock()
        self._seen_seq = 0
        self._entries = 0
        self._observations = 0
        self._calibration_seen: dict[str, int] = {}  # type -> newest run id counted
        self._calibration_counts: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[Metric]:
        p = self.platform
        writer = p.core.writer
        last_seq = writer.next_seq - 1
        with self._lock:
            if last_seq > self._seen_seq:  # exactly the entries in (seen, last_seq]
                entries, observations = p.core.store.journal_size(after=self._seen_seq)
                newer_entries, newer_observations = p.core.store.journal_size(after=last_seq)
                self._entries += entries - newer_entries
                self._observations += observations - newer_observations
                self._seen_seq = last_seq
            yield _counter(
                "livetwin_observations",
                "Observations journaled (rate() of it is the ingest rate)",
                self._observations,
            )
            yield _counter("livetwin_journal_entries", "Journal entries written", self._entries)
        yield _gauge("livetwin_journal_last_seq", "Sequence number of the newest entry", last_seq)
        lag = GaugeMetricFamily(
            "livetwin_journal_lag_entries",
            "Journal entries not yet in history / not yet covered by a snapshot",
            labels=["behind"],
        )
        lag.add_metric(["history"], max(0, last_seq - writer.history.flushed_seq))
        lag.add_metric(["snapshot"], max(0, last_seq - writer.flusher.snapshot_seq))
        yield lag
        yield _gauge(
            "livetwin_history_buffered_rows",
            "History rows waiting for a flush",
            writer.history.rows,
        )
        queues = GaugeMetricFamily(
            "livetwin_queue_depth", "Work items waiting in a queue", labels=["queue"]
        )
        queues.add_metric(["writer"], writer.queue_depth)
        queues.add_metric(["flusher"], writer.flusher.queue_depth)
        yield queues
        age = snapshot_age_s(p.core.snapshot_dir)
        if age is not None:
            yield _gauge("livetwin_snapshot_age_seconds", "Age of the newest snapshot file", age)
        yield _gauge("livetwin_twins", "Twins in memory", p.query.twin_count())
        yield _gauge("livetwin_types", "Twin types declared", len(p.query.compiled_types()))
        yield from self._calibrations()

    def _calibrations(self) -> Iterator[Metric]:
        """Runs per type and outcome since this process started, and the newest run's figures."""
        runs = CounterMetricFamily(
            "livetwin_calibration_runs",
            "Calibration runs recorded since this server started",
            labels=["type", "status"],
        )
        last = GaugeMetricFamily(
            "livetwin_calibration_last_run_timestamp_seconds",
            "Start of the newest calibration run",
            labels=["type"],
        )
        twins = GaugeMetricFamily(
            "livetwin_calibration_last_run_twins",
            "Twins of the newest calibration run by outcome",
            labels=["type", "outcome"],
        )
        types = self.platform.query.compiled_types()
        calibrated = [name for name, ctype in types.items() if ctype.calibration]
        with self._lock:
            for type_name in calibrated:
                recent = self.platform.core.store.calibration_runs(type_name, 1000)
                seen = self._calibration_seen.get(type_name)
                newest = recent[0]["id"] if recent else 0
                if seen is None:  # first scrape: earlier runs are history, not this process's
                    seen = newest
                for record in recent:
                    if record["id"] <= seen:
                        break
                    key = (type_name, str(record.get("status", "unknown")))
                    self._calibration_counts[key] = self._calibration_counts.get(key, 0) + 1
                self._calibration_seen[type_name] = max(seen, newest)
                if recent:
                    record = recent[0]
                    last.add_metric([type_name], parse_ts(record["started"]) / 1000)
                    twins.add_metric([type_name, "calibrated"], record.get("calibrated", 0))
                    twins.add_metric([type_name, "failed"], len(record.get("failed") or {}))
                    twins.add_metric([type_name, "skipped"], len(record.get("skipped") or {}))
            for (type_name, status), n in sorted(self._calibration_counts.items()):
                runs.add_metric([type_name, status], n)
        yield from (runs, last, twins)


class StatsCollector:
    """A service's `stats()` dict as metrics `livetwin_<service>_<key>` at scrape time.

    Numbers become gauges, keys listed in `counters` become counters (`..._total`), and a
    nested dict of numbers becomes one gauge labelled `kind` (e.g. outbox rows by status).
    """

    def __init__(self, service: str, stats: Callable[[], dict], counters: Iterable[str] = ()):
        self.service, self.stats, self.counters = service, stats, frozenset(counters)

    def collect(self) -> Iterator[Metric]:
        prefix = f"livetwin_{self.service}"
        for key, value in self.stats().items():
            name = f"{prefix}_{key}"
            doc = f"{self.service} {key.replace('_', ' ')}"
            if isinstance(value, dict):
                family = GaugeMetricFamily(name, doc, labels=["kind"])
                for kind, n in value.items():
                    if _number(n):
                        family.add_metric([str(kind)], n)
                yield family
            elif _number(value):
                yield (_counter if key in self.counters else _gauge)(name, doc, value)


class Monitor:
    """Metrics and health of a platform and of the services registered with it by name."""

    UNUSED = object()  # what a check returns while its dependency is not in use: not reported

    def __init__(self, platform):
        self.platform = platform
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PlatformCollector(platform))
        self._checks: dict[str, Check] = {
            "store": self._check_store,
            "writer": self._check_writer,
            "history_flusher": self._check_flusher,
        }

    # ---- hooks for services ----------------------------------------------------------------

    def add_check(self, name: str, check: Check) -> None:
        """A named health check: returns a dict of details (or None) when up, raises when down.

        A returned dict with `"status": "down"` (or a returned False) also counts as down;
        `Monitor.UNUSED` leaves the check out of the report.
        """
        self._checks[name] = check

    def add_collector(self, collector: Any) -> None:
        """Any prometheus-client collector (an object with `collect()`), read at scrape time."""
        self.registry.register(collector)

    def add_stats(
        self, service: str, stats: Callable[[], dict], *, counters: Iterable[str] = ()
    ) -> None:
        """Publish a service's `stats()` dict as metrics (see StatsCollector)."""
        self.registry.register(StatsCollector(service, stats, counters))

    def counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
        """A counter that code increments itself (e.g. job runs by outcome)."""
        return Counter(name, doc, list(labels), registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
        return Gauge(name, doc, list(labels), registry=self.registry)

    # ---- reading ---------------------------------------------------------------------------

    def metrics(self) -> bytes:
        """The Prometheus text exposition of everything registered."""
        return generate_latest(self.registry)

    def health(self) -> tuple[bool, dict]:
        """Each dependency's status; the first value is False when any one is down."""
        report: dict[str, dict] = {}
        for name, check in list(self._checks.items()):
            try:
                result = check()
            except Exception as exc:  # a check that fails reports its dependency down
                report[name] = {"status": "down", "error": str(exc) or type(exc).__name__}
                continue
            if result is Monitor.UNUSED:
                continue
            if result is False:
                report[name] = {"status": "down"}
            elif isinstance(result, dict):
                report[name] = {"status": "ok", **result}
            else:
                report[name] = {"status": "ok"}
        healthy = all(r["status"] == "ok" for r in report.values())
        return healthy, {
            "status": "ok" if healthy else "down",
            "version": __version__,
            "checks": report,
        }

    def _check_store(self) -> dict:
        return {"last_seq": self.platform.core.store.last_seq()}

    def _check_writer(self) -> dict:
        writer = self.platform.core.writer
        if not writer.alive:
            raise RuntimeError("the journal writer is stopped")
        return {"queue": writer.queue_depth, "last_seq": writer.next_seq - 1}

    def _check_flusher(self) -> dict:
        writer = self.platform.core.writer
        if not writer.flusher.alive:
            raise RuntimeError("the history flusher is stopped")
        return {
            "buffered_rows": writer.history.rows,
            "flushed_seq": writer.history.flushed_seq,
            "snapshot_seq": writer.flusher.snapshot_seq,
        }


def ops_routes(
    app: FastAPI,
    platform,
    *,
    monitor: Monitor | None = None,
    health_path: str = "/api/health",
) -> Monitor:
    """Add `GET /metrics` and the health route (503 when a dependency is down)."""
    monitor = monitor or Monitor(platform)
    app.state.monitor = monitor

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        body = await run_in_threadpool(monitor.metrics)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get(health_path, tags=["ops"])
    async def health_details() -> JSONResponse:
        """Each dependency's status: store, writer, history flusher and registered services."""
        healthy, report = await run_in_threadpool(monitor.health)
        return JSONResponse(report, status_code=200 if healthy else 503)

    return monitor


def monitor_services(monitor: Monitor, platform) -> None:
    """Publish the platform's services as metrics (and MQTT's connection as a health check)."""
    monitor.add_stats("scheduler", platform.scheduler.stats)
    monitor.add_stats("alarms", lambda: _open_alarms(platform.alarms.counts()))
    if platform.webhooks is not None:
        counters = ("attempts", "failed_attempts", "delivered")
        monitor.add_stats("webhooks", platform.webhooks.stats, counters=counters)
    if platform.mailer is not None:
        counters = ("sent", "failed", "retried", "dropped")
        monitor.add_stats("mail", lambda: platform.mailer.stats, counters=counters)
    if platform.mqtt is not None:
        from livetwin.ingest.mqtt import COUNTERS

        monitor.add_stats("mqtt", platform.mqtt.stats, counters=COUNTERS)

        def broker() -> dict:
            stats = platform.mqtt.stats()
            if not stats["connected"]:
                raise ConnectionError(f"not connected to {stats['broker']}: {stats['last_error']}")
            return {"broker": stats["broker"]}

        monitor.add_check("mqtt", broker)


def _open_alarms(counts: dict) -> dict:
    """Open alarms per severity as one labelled gauge."""
    return {"open": {s: c["total"] for s, c in counts.items() if s != "total"}}


def snapshot_age_s(directory) -> float | None:
    """Seconds since the newest snapshot file was written (None when there is none)."""
    try:
        newest = max((p.stat().st_mtime for p in directory.glob("snapshot-*.npz")), default=None)
    except OSError:
        return None
    return None if newest is None else max(0.0, time.time() - newest)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---- logs ------------------------------------------------------------------------------------

_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, `extra=` fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: int = logging.INFO, log_format: str | None = None) -> None:
    """Root logging as text, or JSON lines when `log_format` (None: the settings' format, from
    LIVETWIN_LOG_FORMAT) is json."""
    chosen = (log_format or Settings.from_env().log_format or "text").lower()
    if chosen not in ("text", "json"):
        raise InvalidInput(
            f"unknown log format '{chosen}'", field="LIVETWIN_LOG_FORMAT", fix="use text or json"
        )
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if chosen == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
