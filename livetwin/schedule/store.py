"""The scheduler's durable state: `<data>/schedule.db` (SQLite, WAL), or its own PostgreSQL schema
when LIVETWIN_DATABASE_URL is set: the schema, the one-scheduler-per-deployment lock (a file lock;
on PostgreSQL a leader lease), and every statement the scheduler runs (`conn` is the connection of
the current transaction, or a read).
"""

from __future__ import annotations

import fcntl
import sqlite3
from pathlib import Path
from typing import Any, Protocol

import orjson

from livetwin.errors import Unavailable
from livetwin.ports import OpenServiceDB
from livetwin.store.lease import Lease
from livetwin.store.open import configured_url
from livetwin.store.servicedb import ServiceDB
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
CREATE TABLE IF NOT EXISTS event_keys (      -- idempotency keys of posted events
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    PRIMARY KEY (namespace, name, idempotency_key)
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
CREATE TABLE IF NOT EXISTS fired (          -- each instant a time trigger fired: never twice
    schedule_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (schedule_id, at)
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


def open_owned(
    open_db: OpenServiceDB, database_url: str | None = None, *, retry_s: float = 1.0
) -> tuple[ServiceDB, Lock | Lease]:
    """The scheduler's database and what makes one scheduler its leader: a file lock beside
    `schedule.db` (Unavailable if another scheduler holds it), or on PostgreSQL a `Lease` on the
    schema (`database_url`, default LIVETWIN_DATABASE_URL, names the server to hold it on),
    tried once here: a scheduler that does not hold it waits on standby, trying every
    `retry_s`."""
    db = open_db("schedule", SCHEMA, sqlite_migrate=_keep_sqlite_sequence)
    try:
        if db.dialect == "sqlite":
            return db, _lock_file(Path(db.path).with_name("schedule.lock"))
        lease = Lease(
            configured_url(database_url),
            f"{db.schema}.scheduler",
            retry_s=retry_s,
            timeout_s=db.timeout_s,
        )
        lease.try_acquire()
        return db, lease
    except BaseException:
        db.close()
        raise


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


# ---- loading --------------------------------------------------------------------------------


def read_state(db: ServiceDB) -> dict[str, Any]:
    """All durable state, read in one transaction (a consistent snapshot)."""
    with db.write() as conn:
        return {
            "functions": conn.execute("SELECT namespace, name, spec FROM functions").fetchall(),
            "schedules": conn.execute(
                "SELECT id, namespace, function, trigger, missed, args, description, "
                "enabled, next_at, last_fired, fired, last_error, created FROM schedules "
                "ORDER BY created"
            ).fetchall(),
            "conditions": conn.execute("SELECT schedule_id, twin FROM conditions").fetchall(),
            "inbox": conn.execute(
                "SELECT i.namespace, i.function, e.id, e.name, e.key, e.data, e.ts "
                "FROM inbox i JOIN events e ON e.id = i.event_id ORDER BY e.id"
            ).fetchall(),
            "last_event_id": last_event_id(db),
            "runs": conn.execute(
                "SELECT id, namespace, function, schedule_id, trigger, args, events, "
                "attempts, logs FROM runs WHERE state IN ('queued', 'running') ORDER BY n"
            ).fetchall(),
        }


def requeue_interrupted(conn: Any) -> None:
    """Runs a stop or crash interrupted run again."""
    conn.execute("UPDATE runs SET state='queued' WHERE state='running'")


# ---- runs -----------------------------------------------------------------------------------

INSERT_RUN = (
    "INSERT INTO runs (id, namespace, function, schedule_id, state, trigger, args, events, "
    "created) VALUES (?,?,?,?,?,?,?,?,?)"
)


def insert_runs(conn: Any, rows: list[tuple]) -> None:
    """New queued runs: (id, namespace, function, schedule_id, state, trigger, args, events,
    created) each."""
    if len(rows) == 1:
        conn.execute(INSERT_RUN, rows[0])
    elif rows:
        conn.executemany(INSERT_RUN, rows)


def claim_instant(conn: Any, schedule_id: str, at: int) -> bool:
    """Record that a time trigger fires its instant `at`; False if it fired already (by a
    leader that lost its lease a moment before this one took over)."""
    cursor = conn.execute(
        "INSERT INTO fired (schedule_id, at) VALUES (?,?) ON CONFLICT DO NOTHING",
        (schedule_id, at),
    )
    return cursor.rowcount == 1


def set_run_trigger(conn: Any, run_id: str, trigger_json: str) -> None:
    conn.execute("UPDATE runs SET trigger=? WHERE id=?", (trigger_json, run_id))


def write_retried(conn: Any, rows: list[tuple]) -> None:
    """Failed attempts that retry: (attempts, started, error, logs, id) each."""
    conn.executemany(
        "UPDATE runs SET state='queued', attempts=?, started=?, error=?, logs=? WHERE id=?", rows
    )


def write_finished(conn: Any, rows: list[tuple]) -> None:
    """Finished runs: (state, attempts, started, result, error, logs, finished, duration_ms,
    id) each."""
    conn.executemany(
        "UPDATE runs SET state=?, attempts=?, started=?, result=?, error=?, logs=?, "
        "finished=?, duration_ms=? WHERE id=?",
        rows,
    )


def select_runs(conn: Any, filters: dict[str, Any], limit: int) -> list[tuple]:
    """Runs (RUN_COLUMNS), newest first, whose columns equal the non-None `filters` (or lie in
    them, for a frozenset)."""
    where, args = [], []
    for column in ("namespace", "function", "state", "schedule_id"):
        value = filters.get(column)
        if isinstance(value, frozenset):
            where.append(f"{column} IN ({', '.join('?' * len(value))})" if value else "1=0")
            args.extend(sorted(value))
        elif value is not None:
            where.append(f"{column}=?")
            args.append(value)
    sql = f"SELECT {RUN_COLUMNS} FROM runs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return conn.execute(sql + " ORDER BY n DESC LIMIT ?", (*args, limit)).fetchall()


def select_run(conn: Any, run_id: str) -> tuple | None:
    rows = conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchall()
    return rows[0] if rows else None


def runs_by_state(conn: Any) -> dict[str, int]:
    return dict(conn.execute("SELECT state, count(*) FROM runs GROUP BY state"))


def last_outcomes(conn: Any, key: tuple[str, str]) -> tuple[tuple | None, tuple | None]:
    """A function's last finished run (id, state, finished, error) and last failed one (id,
    finished, error)."""
    last = conn.execute(
        "SELECT id, state, finished, error FROM runs WHERE namespace=? AND function=? "
        "AND state IN ('succeeded', 'failed') ORDER BY n DESC LIMIT 1",
        key,
    ).fetchall()
    failed = conn.execute(
        "SELECT id, finished, error FROM runs WHERE namespace=? AND function=? "
        "AND state='failed' ORDER BY n DESC LIMIT 1",
        key,
    ).fetchall()
    return (last[0] if last else None), (failed[0] if failed else None)


# ---- functions ------------------------------------------------------------------------------


def upsert_function(conn: Any, key: tuple[str, str], spec_json: str, created: int) -> None:
    conn.execute(
        "INSERT INTO functions (namespace, name, spec, created) VALUES (?,?,?,?) "
        "ON CONFLICT (namespace, name) DO UPDATE SET spec=excluded.spec",
        (*key, spec_json, created),
    )


def delete_function(conn: Any, key: tuple[str, str]) -> None:
    """A function and the events its joins still waited for."""
    conn.execute("DELETE FROM functions WHERE namespace=? AND name=?", key)
    conn.execute("DELETE FROM inbox WHERE namespace=? AND function=?", key)


# ---- schedules ------------------------------------------------------------------------------


def insert_schedule(conn: Any, row: tuple, true_twins: list[str]) -> None:
    """A new schedule: (id, namespace, function, trigger, missed, args, description, enabled,
    next_at, created), with the twins its condition holds for already."""
    conn.execute(
        "INSERT INTO schedules (id, namespace, function, trigger, missed, args, description, "
        "enabled, next_at, created) VALUES (?,?,?,?,?,?,?,?,?,?)",
        row,
    )
    conn.executemany(
        "INSERT INTO conditions (schedule_id, twin) VALUES (?,?)", [(row[0], t) for t in true_twins]
    )


def delete_schedule(conn: Any, schedule_id: str) -> None:
    conn.execute("DELETE FROM schedules WHERE id=?", (schedule_id,))
    conn.execute("DELETE FROM fired WHERE schedule_id=?", (schedule_id,))
    conn.execute("DELETE FROM conditions WHERE schedule_id=?", (schedule_id,))


def set_enabled(conn: Any, schedule_id: str, enabled: bool, next_at: int | None) -> None:
    conn.execute(
        "UPDATE schedules SET enabled=?, next_at=? WHERE id=?", (int(enabled), next_at, schedule_id)
    )


def set_fired(conn: Any, schedule_id: str, fired: int, last_fired: int | None) -> None:
    conn.execute(
        "UPDATE schedules SET fired=?, last_fired=? WHERE id=?", (fired, last_fired, schedule_id)
    )


def set_after_firing(conn: Any, row: tuple) -> None:
    """A time trigger fired: (next_at, enabled, fired, last_fired, last_error, id)."""
    conn.execute(
        "UPDATE schedules SET next_at=?, enabled=?, fired=?, last_fired=?, last_error=? WHERE id=?",
        row,
    )


def set_last_error(conn: Any, schedule_id: str, error: str | None) -> None:
    conn.execute("UPDATE schedules SET last_error=? WHERE id=?", (error, schedule_id))


def add_conditions(conn: Any, schedule_id: str, twins: list[str]) -> None:
    """Twins whose condition became true."""
    conn.executemany(
        "INSERT INTO conditions (schedule_id, twin) VALUES (?,?) ON CONFLICT DO NOTHING",
        [(schedule_id, t) for t in twins],
    )


def remove_conditions(conn: Any, schedule_id: str, twins: list[str]) -> None:
    """Twins whose condition became false."""
    conn.executemany(
        "DELETE FROM conditions WHERE schedule_id=? AND twin=?", [(schedule_id, t) for t in twins]
    )


# ---- events and joins -----------------------------------------------------------------------


def insert_events(conn: Any, rows: list[tuple]) -> None:
    """Posted events: (id, namespace, name, key, data, ts) each."""
    conn.executemany(
        "INSERT INTO events (id, namespace, name, key, data, ts) VALUES (?,?,?,?,?,?)", rows
    )


def stored_event_keys(conn: Any, keys: list[tuple[str, str, str]]) -> dict[tuple, int]:
    """The event id of each (namespace, name, idempotency key) among `keys` already stored."""
    found: dict[tuple, int] = {}
    wanted = set(keys)
    distinct = sorted({k for _, _, k in keys})
    for start in range(0, len(distinct), 500):
        chunk = distinct[start : start + 500]
        rows = conn.execute(
            "SELECT namespace, name, idempotency_key, event_id FROM event_keys"
            f" WHERE idempotency_key IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        for namespace, name, key, event_id in rows:
            if (namespace, name, key) in wanted:
                found[(namespace, name, key)] = event_id
    return found


def insert_event_keys(conn: Any, rows: list[tuple]) -> None:
    """Idempotency keys of new events: (namespace, name, idempotency key, event id) each."""
    conn.executemany(
        "INSERT INTO event_keys (namespace, name, idempotency_key, event_id) VALUES (?,?,?,?)",
        rows,
    )


def add_to_inbox(conn: Any, rows: Any) -> None:
    """Events a join now waits for: (namespace, function, event id) each."""
    conn.executemany("INSERT INTO inbox (namespace, function, event_id) VALUES (?,?,?)", rows)


def take_from_inbox(conn: Any, rows: Any) -> None:
    """Events a join consumed (or no longer waits for): (namespace, function, event id) each."""
    conn.executemany("DELETE FROM inbox WHERE namespace=? AND function=? AND event_id=?", rows)


def prune_events(conn: Any, next_event_id: int, before_ts: int) -> None:
    """Forget events posted before `before_ts` that no join waits for (their ids stay used),
    and their idempotency keys."""
    keep_last_event_id(conn, next_event_id - 1)
    conn.execute(
        "DELETE FROM events WHERE ts < ? AND id NOT IN (SELECT event_id FROM inbox)", (before_ts,)
    )
    conn.execute("DELETE FROM event_keys WHERE event_id NOT IN (SELECT id FROM events)")
