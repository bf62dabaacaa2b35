"""Tunable limits and policies; the defaults suit a laptop or a 1 GB Raspberry Pi."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Settings:
    max_body_bytes: int = 32 * 1024 * 1024  # largest request body the API accepts
    max_future_ms: int = 86_400_000  # observations further in the future are rejected
    snapshot_every: int = 1_000_000  # observations between snapshots ...
    snapshot_interval_s: float = 300.0  # ... and at most this long between them
    history_flush_rows: int = 100_000  # buffered history rows that trigger a flush ...
    history_flush_s: float = 2.0  # ... and at most this long between flushes
    database_url: str | None = None  # postgresql://...; None reads LIVETWIN_DATABASE_URL
    cache_mb: int = 64  # SQLite page cache
    max_history_points: int = 200_000  # raw rows one history query may return
    max_artifact_bytes: int = 512 * 1024 * 1024  # largest model artifact the registry stores
    alarm_tick_s: float = 1.0  # how often `for:` conditions without new data are checked
    mqtt_host: str | None = None  # an MQTT broker: ingest subscriptions and device commands
    mqtt_port: int = 1883
    webhooks: bool = True  # deliver webhooks (tests run their own service with fast retries)
    run_schedules: bool = True  # calibrate on calibration.every; run the scheduler's triggers
    scheduler_modules: tuple[str, ...] = ()  # module prefixes an API `ref` may import
