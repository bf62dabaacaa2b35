"""The scheduler's durable state: `<data>/schedule.db` (SQLite, WAL), or its own PostgreSQL schema
when LIVETWIN_DATABASE_URL is set: the schema, the one-scheduler-per-deployment lock, row readers.
"""

from __future__ import annotations

import fcntl
import sqlite3
from pathlib import Path
from typing import Any, Protocol

import orjson

from livetwin.errors import Unavailable
from livetwin.store.open import configured_url
from livetwin.store.servicedb import ServiceDB, open_service_db
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
    duration_ms DOUBLE PRECISION             -- 8 bytes on both (PostgreSQL's REAL has 4)
);
CREATE TABLE IF NOT EXISTS meta (            -- last_event_id: event ids are never reused
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_function ON runs (namespace, function, n);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state, n);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
"""

RUN_COLUMNS = (
    "id, namespace, function, schedule_id, state, attempts, trigger, args, events, logs, result, "
    "error, created, started, finished, duration_ms"
)


LAST_EVENT_ID = "last_event_id"
_TAKEN_FIX = "use the platform's scheduler, or stop the other one first"


class Lock(Protocol):
    """Held while a scheduler owns its database; `close()` lets it go."""

    def close(self) -> None: ...


def open_owned(directory: Path, database_url: str | None = None) -> tuple[ServiceDB, Lock]:
    """The scheduler's database and the lock that makes this scheduler its only one: a file lock
    beside `schedule.db`, or a session advisory lock on the PostgreSQL schema. Unavailable if
    another scheduler holds it."""
    url = configured_url(database_url)
    if not url:
        held = _lock_file(directory / "schedule.lock")
        try:
            return _open(directory, url), held
        except BaseException:
            held.close()
            raise
    db = _open(directory, url)
    try:
        return db, _lock_schema(url, db)
    except BaseException:
        db.close()
        raise


def _open(directory: Path, url: str) -> ServiceDB:
    return open_service_db(
        directory, "schedule", SCHEMA, database_url=url, sqlite_migrate=_keep_sqlite_sequence
    )


def _keep_sqlite_sequence(conn: sqlite3.Connection) -> None:
    """Files from before the meta table kept the event-id high-water mark in sqlite_sequence."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    if "meta" in tables:
        return
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    if "sqlite_sequence" in tables:
        conn.execute(
            "INSERT INTO meta (key, value) SELECT ?, seq FROM sqlite_sequence WHERE name='events'",
            (LAST_EVENT_ID,),
        )


def _lock_file(path: Path) -> Lock:
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise Unavailable(
            f"another scheduler already runs on {path.parent}", field="data", fix=_TAKEN_FIX
        ) from None
    return handle


def _lock_schema(url: str, db: Any) -> Lock:
    """A session advisory lock on the schema, on a connection of its own held until close."""
    import psycopg

    try:
        conn = psycopg.connect(
            url,
            autocommit=True,
            application_name="livetwin-scheduler-lock",
            connect_timeout=round(db.timeout_s),
        )
    except psycopg.OperationalError as exc:
        raise db._unavailable(exc) from None
    (held,) = conn.execute(
        "SELECT pg_try_advisory_lock(hashtext(%s))", (f"{db.schema}.scheduler",)
    ).fetchone()
    if not held:
        conn.close()
        raise Unavailable(
            f"another scheduler already runs on the PostgreSQL schema {db.schema} at {db.safe_url}",
            field="LIVETWIN_DATABASE_URL",
            fix=_TAKEN_FIX,
        )
    return conn


def last_event_id(db: ServiceDB) -> int:
    """The highest event id ever given (events past retention are deleted, their ids stay used)."""
    conn = db.read()
    (stored,) = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
    row = conn.execute("SELECT value FROM meta WHERE key=?", (LAST_EVENT_ID,)).fetchone()
    return max(stored, row[0] if row else 0)


def keep_last_event_id(conn: Any, event_id: int) -> None:
    """Record the event-id high-water mark (before events are deleted)."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value=excluded.value",
        (LAST_EVENT_ID, event_id),
    )


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
