"""The alarm service's tables (`<data>/alarms.db` or its PostgreSQL schema) and every SQL
statement on them: alarms, their history and comments, and the pending `for` conditions."""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from livetwin.errors import InvalidInput
from livetwin.namespaces import twin_filter_sql
from livetwin.spec.rules import SEVERITIES
from livetwin.store.servicedb import ServiceDB
from livetwin.timefmt import format_ts

STATES = ("active", "acknowledged", "cleared")
OPEN_STATES = ("active", "acknowledged")

SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    twin TEXT NOT NULL,
    type TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL,           -- JSON: the values that raised it (and a job's extra data)
    source TEXT NOT NULL,         -- 'rule' or 'job'
    since INTEGER NOT NULL,       -- the condition holds since (epoch ms)
    raised INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    acknowledged INTEGER,
    acknowledged_by TEXT,
    cleared INTEGER,
    cleared_by TEXT,
    count INTEGER NOT NULL DEFAULT 1,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX IF NOT EXISTS alarms_one_open ON alarms (twin, rule) WHERE state != 'cleared';
CREATE INDEX IF NOT EXISTS alarms_by_state ON alarms (state, severity);
CREATE INDEX IF NOT EXISTS alarms_by_twin ON alarms (twin, id);
CREATE TABLE IF NOT EXISTS alarm_history (
    alarm_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    event TEXT NOT NULL,          -- raised | repeated | acknowledged | cleared | commented
    by TEXT,
    note TEXT,
    PRIMARY KEY (alarm_id, version)
);
CREATE TABLE IF NOT EXISTS alarm_comments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alarm_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    author TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alarm_comments_by_alarm ON alarm_comments (alarm_id, id);
CREATE TABLE IF NOT EXISTS alarm_pending (
    twin TEXT NOT NULL,
    rule TEXT NOT NULL,
    type TEXT NOT NULL,
    since INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (twin, rule)
);
"""

COLUMNS = (
    "id, twin, type, rule, severity, state, message, data, source, since, raised, updated, "
    "acknowledged, acknowledged_by, cleared, cleared_by, count, version"
)


class AlarmStore:
    """The SQL of the alarm service. Statements run on their own, or inside the calling thread's
    `write()` transaction when one is open."""

    def __init__(self, db: ServiceDB):
        self.db = db

    def write(self):
        """One transaction (a context manager): statements on this thread join it."""
        return self.db.write()

    def close(self) -> None:
        self.db.close()

    def _sql(self, statement: str, args=()):
        return self.db.read().execute(statement, args)

    # ---- what rule evaluation resumes from ---------------------------------------------------

    def open_keys(self) -> list[tuple[int, str, str, str]]:
        """(id, type, twin, rule) of every open alarm."""
        statement = "SELECT id, type, twin, rule FROM alarms WHERE state != 'cleared'"
        return self._sql(statement).fetchall()

    def pending(self) -> list[tuple[str, str, str, int, dict]]:
        """(twin, rule, type, since, values) of every pending condition."""
        rows = self._sql("SELECT twin, rule, type, since, data FROM alarm_pending").fetchall()
        return [(t, r, ty, since, orjson.loads(data)) for t, r, ty, since, data in rows]

    def save_pending(self, twin: str, rule: str, type_name: str, since: int, values: dict) -> None:
        self._sql(
            "INSERT INTO alarm_pending (twin, rule, type, since, data) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (twin, rule) DO UPDATE SET "
            "type = excluded.type, since = excluded.since, data = excluded.data",
            (twin, rule, type_name, since, orjson.dumps(values).decode()),
        )

    def drop_pending(self, twin: str, rule: str) -> None:
        self._sql("DELETE FROM alarm_pending WHERE twin = ? AND rule = ?", (twin, rule))

    # ---- lifecycle changes -------------------------------------------------------------------

    def insert(self, twin, type_name, rule, severity, message, data, source, since, at) -> int:
        """A new active alarm; returns its id."""
        (alarm_id,) = self._sql(
            "INSERT INTO alarms (twin, type, rule, severity, state, message, data, source, "
            "since, raised, updated) VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?) "
            "RETURNING id",
            (twin, type_name, rule, severity, message, _json(data), source, since, at, at),
        ).fetchone()
        return alarm_id

    def repeat(self, alarm_id: int, severity: str, message: str, data: dict, at: int) -> None:
        self._sql(
            "UPDATE alarms SET severity = ?, message = ?, data = ?, count = count + 1, "
            "updated = ?, version = version + 1 WHERE id = ?",
            (severity, message, _json(data), at, alarm_id),
        )

    def set_cleared(self, alarm_id: int, at: int, by: str) -> None:
        self._sql(
            "UPDATE alarms SET state = 'cleared', cleared = ?, cleared_by = ?, updated = ?, "
            "version = version + 1 WHERE id = ?",
            (at, by, at, alarm_id),
        )

    def set_acknowledged(self, alarm_id: int, at: int, by: str | None) -> None:
        self._sql(
            "UPDATE alarms SET state = 'acknowledged', acknowledged = ?, "
            "acknowledged_by = ?, updated = ?, version = version + 1 WHERE id = ?",
            (at, by, at, alarm_id),
        )

    def add_comment(self, alarm_id: int, at: int, author: str, text: str) -> None:
        self._sql(
            "INSERT INTO alarm_comments (alarm_id, ts, author, text) VALUES (?, ?, ?, ?)",
            (alarm_id, at, author, text),
        )
        self._sql(
            "UPDATE alarms SET updated = ?, version = version + 1 WHERE id = ?", (at, alarm_id)
        )

    def add_history(self, alarm_id: int, version: int, at: int, event: str, by, note) -> None:
        self._sql(
            "INSERT INTO alarm_history (alarm_id, version, ts, event, by, note) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (alarm_id, version, at, event, by, note),
        )

    # ---- reads -------------------------------------------------------------------------------

    def row(self, alarm_id: int) -> dict | None:
        """One alarm as the API shows it (without history and comments)."""
        row = self._sql(f"SELECT {COLUMNS} FROM alarms WHERE id = ?", (alarm_id,)).fetchone()
        return _alarm(row) if row else None

    def history(self, alarm_id: int) -> list[dict]:
        rows = self._sql(
            "SELECT version, ts, event, by, note FROM alarm_history WHERE alarm_id = ? "
            "ORDER BY version",
            (alarm_id,),
        ).fetchall()
        return [
            {"version": v, "time": format_ts(ts), "event": e, "by": by, "note": note}
            for v, ts, e, by, note in rows
        ]

    def comments(self, alarm_id: int) -> list[dict]:
        rows = self._sql(
            "SELECT ts, author, text FROM alarm_comments WHERE alarm_id = ? ORDER BY id",
            (alarm_id,),
        ).fetchall()
        return [{"time": format_ts(ts), "author": a, "text": t} for ts, a, t in rows]

    def find_open(self, twin: str, rule: str) -> int | None:
        row = self._sql(
            "SELECT id FROM alarms WHERE twin = ? AND rule = ? AND state != 'cleared'",
            (twin, rule),
        ).fetchone()
        return row[0] if row else None

    def list(
        self, *, state, severity, twin, type_name, limit: int, offset: int, namespaces=None
    ) -> dict:
        """Alarms matching the filters, newest first (see `AlarmService.list`)."""
        where, args = [], []
        if namespaces is not None:
            clause, ns_args = twin_filter_sql("twin", namespaces)
            where.append(clause)
            args.extend(ns_args)
        states = _choices(state, "state", (*STATES, "open"))
        if states:
            if "open" in states:
                states = (states - {"open"}) | set(OPEN_STATES)
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(sorted(states))
        severities = _choices(severity, "severity", SEVERITIES)
        if severities:
            where.append(f"severity IN ({', '.join('?' * len(severities))})")
            args.extend(sorted(severities))
        for column, value in (("twin", twin), ("type", type_name)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = self._sql(f"SELECT count(*) FROM alarms {clause}", args).fetchone()[0]
        rows = self._sql(
            f"SELECT {COLUMNS} FROM alarms {clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return {
            "items": [_alarm(r) for r in rows],
            "total": total,
            "offset": offset,
            "limit": limit,
        }

    def open_counts(self, namespaces=None) -> list[tuple[str, str, int]]:
        """(severity, state, count) of the open alarms (of twins in `namespaces`, if given)."""
        clause, args = (
            twin_filter_sql("twin", namespaces) if namespaces is not None else ("1=1", [])
        )
        return self._sql(
            f"SELECT severity, state, count(*) FROM alarms WHERE state != 'cleared' AND {clause} "
            "GROUP BY severity, state",
            args,
        ).fetchall()


def _json(data: dict) -> str:
    return orjson.dumps(data).decode()


def _alarm(row: tuple) -> dict:
    (
        alarm_id, twin, type_name, rule, severity, state, message, data, source, since, raised,
        updated, acked, acked_by, cleared, cleared_by, count, version,
    ) = row  # fmt: skip
    return {
        "id": alarm_id,
        "twin": twin,
        "type": type_name,
        "rule": rule,
        "severity": severity,
        "state": state,
        "message": message,
        "values": orjson.loads(data),
        "source": source,
        "since": format_ts(since),
        "raised": format_ts(raised),
        "updated": format_ts(updated),
        "acknowledged": format_ts(acked) if acked is not None else None,
        "acknowledged_by": acked_by,
        "cleared": format_ts(cleared) if cleared is not None else None,
        "cleared_by": cleared_by,
        "count": count,
        "version": version,
    }


def _choices(value: str | None, field: str, allowed: Iterable[str]) -> set[str]:
    if not value:
        return set()
    chosen = {v.strip() for v in value.split(",") if v.strip()}
    unknown = chosen - set(allowed)
    if unknown:
        raise InvalidInput(
            f"unknown {field} {', '.join(sorted(unknown))}",
            field=field,
            fix=f"use one or more of: {', '.join(allowed)} (comma-separated)",
        )
    return chosen
