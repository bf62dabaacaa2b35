"""The scheduler's durable state in `<data>/schedule.db` (SQLite, WAL): schema and row readers."""

from __future__ import annotations

import fcntl
import sqlite3
from pathlib import Path
from typing import Any

import orjson

from livetwin.errors import Unavailable
from livetwin.timefmt import format_ts

SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    function TEXT NOT NULL,
    trigger TEXT NOT NULL,
    missed TEXT NOT NULL,
    args TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    enabled INTEGER NOT NULL,
    next_at INTEGER,
    last_fired INTEGER,
    fired INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS conditions (      -- twins whose condition is true (rising edges)
    schedule_id TEXT NOT NULL,
    twin TEXT NOT NULL,
    PRIMARY KEY (schedule_id, twin)
);
CREATE TABLE IF NOT EXISTS events (          -- every posted event, durable before the ack
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    key TEXT,
    data BLOB NOT NULL,
    ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS inbox (           -- events not yet consumed by a joining function
    namespace TEXT NOT NULL,
    function TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    PRIMARY KEY (namespace, function, event_id)
);
CREATE TABLE IF NOT EXISTS runs (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    function TEXT NOT NULL,
    schedule_id TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    trigger TEXT NOT NULL,
    args TEXT NOT NULL,
    events TEXT NOT NULL,
    logs TEXT,
    result BLOB,
    error TEXT,
    created INTEGER NOT NULL,
    started INTEGER,
    finished INTEGER,
    duration_ms REAL
);
CREATE INDEX IF NOT EXISTS runs_function ON runs (namespace, function, n);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state, n);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
"""

RUN_COLUMNS = (
    "id, namespace, function, schedule_id, state, attempts, trigger, args, events, logs, result, "
    "error, created, started, finished, duration_ms"
)


def lock(path: Path):
    """Hold an exclusive lock so that one scheduler at a time owns the database."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise Unavailable(
            f"another scheduler already runs on {path.parent}",
            field="data",
            fix="use the platform's scheduler, or stop the other one first",
        ) from None
    return handle


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with full fsync on commit (a posted event survives power loss)."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=5000")
    return db


def run_dict(row: tuple, *, logs: bool = True) -> dict[str, Any]:
    """A runs row as the API shows it."""
    (
        run_id,
        namespace,
        function,
        schedule_id,
        state,
        attempts,
        trigger,
        args,
        events,
        log_lines,
        result,
        error,
        created,
        started,
        finished,
        duration_ms,
    ) = row
    out = {
        "id": run_id,
        "namespace": namespace,
        "function": function,
        "schedule": schedule_id,
        "state": state,
        "attempts": attempts,
        "trigger": orjson.loads(trigger),
        "args": orjson.loads(args),
        "events": orjson.loads(events),
        "result": orjson.loads(result) if result is not None else None,
        "error": error,
        "created": format_ts(created),
        "started": format_ts(started) if started is not None else None,
        "finished": format_ts(finished) if finished is not None else None,
        "duration_ms": round(duration_ms, 3) if duration_ms is not None else None,
    }
    if logs:
        out["logs"] = orjson.loads(log_lines) if log_lines else []
    return out
