"""Alarms: type rules checked per observation (vectorised, `for` held in observation time, a
clock tick for silent twins) and the alarm lifecycle active -> acknowledged -> cleared, kept in
`<data>/alarms.db` or PostgreSQL (store/servicedb.py), announced as `Notice("alarm", ...)`."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from livetwin.engine.engine import Applied, json_number
from livetwin.engine.events import Event, Notice, StateChanged, TypeDefined
from livetwin.errors import Conflict, InvalidInput, NotFound
from livetwin.models.base import resolve_model
from livetwin.spec.rules import SEVERITIES, CompiledRule
from livetwin.spec.types import CompiledType, TwinTypeSpec, compile_type
from livetwin.store.servicedb import open_service_db
from livetwin.timefmt import format_ts

log = logging.getLogger(__name__)

STATES = ("active", "acknowledged", "cleared")
OPEN_STATES = ("active", "acknowledged")
MAX_COMMENT = 4000
MAX_NAME = 200

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


@dataclass
class _Pending:
    """A condition that holds but not yet `for` long enough."""

    rule: CompiledRule
    since: int
    values: dict[str, float | None]


@dataclass
class _Sync:
    done: threading.Event = field(default_factory=threading.Event)


class _Tick:
    pass


_STOP = object()


class _LastValues:
    """The newest known value of some input columns of one type's twins, by twin uid.

    Observations carry only what they set (NaN = absent); a rule over several inputs needs the
    others' latest values, exactly as they were before each observation.
    """

    def __init__(self) -> None:
        self.slot_of_uid = np.full(64, -1, dtype=np.int64)
        self.columns: dict[str, np.ndarray] = {}
        self.size = 0

    def slots(self, uids: np.ndarray, seed) -> np.ndarray:
        """Slots of `uids`; unseen ones are added with `seed(names, new_uids)` as values."""
        if uids.max() >= len(self.slot_of_uid):
            grown = np.full(2 * int(uids.max()) + 1, -1, dtype=np.int64)
            grown[: len(self.slot_of_uid)] = self.slot_of_uid
            self.slot_of_uid = grown
        slots = self.slot_of_uid[uids]
        if (slots < 0).any():
            new = np.unique(uids[slots < 0])
            first = self.size
            self.size += len(new)
            self.slot_of_uid[new] = np.arange(first, self.size)
            seeded = seed(list(self.columns), new)
            for name, column in list(self.columns.items()):
                column = self._room(column)
                column[first : self.size] = seeded[name]
                self.columns[name] = column
            slots = self.slot_of_uid[uids]
        return slots

    def column(self, name: str, seed) -> np.ndarray:
        """The stored column `name` (added and seeded for the known twins on first use)."""
        if name not in self.columns:
            column = np.full(max(64, self.size), np.nan)
            if self.size:
                uids = np.flatnonzero(self.slot_of_uid >= 0)
                column[self.slot_of_uid[uids]] = seed([name], uids)[name]
            self.columns[name] = column
        return self.columns[name]

    def _room(self, column: np.ndarray) -> np.ndarray:
        if self.size <= len(column):
            return column
        grown = np.full(2 * self.size, np.nan)
        grown[: len(column)] = column
        return grown


class AlarmService:
    """Evaluates type rules on the bus's state changes and keeps the alarms.

    `tick_s` is how often (wall seconds) pending conditions are checked against `platform.clock()`.
    `database_url` None reads LIVETWIN_DATABASE_URL ('' keeps `<data>/alarms.db`).
    """

    def __init__(self, platform, *, tick_s: float = 1.0, database_url: str | None = None):
        self.platform = platform
        self.tick_s = tick_s
        self._db = open_service_db(platform.path, "alarms", SCHEMA, database_url=database_url)
        self._lock = threading.RLock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._ctypes: dict[tuple[str, int], CompiledType] = {}
        self._latest: dict[str, CompiledType] = {}
        self._last: dict[str, _LastValues] = {}
        self._pending: dict[str, dict[tuple[str, str], _Pending]] = {}
        self._open: dict[str, dict[tuple[str, str], int]] = {}
        self._notices: list[Notice] = []
        self._stopping = threading.Event()
        self._token: int | None = None
        self._threads: list[threading.Thread] = []
        self._stale = False  # the in-memory state must be reloaded (a transaction failed)
        self.errors = 0

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> AlarmService:
        with self.platform.lock:
            for ctype in self.platform.engine.types.values():
                self._remember(ctype)
        self._load()
        self._token = self.platform.bus.subscribe(self._on_event)
        self._threads = [
            threading.Thread(target=self._work, name="livetwin-alarms", daemon=True),
            threading.Thread(target=self._ticker, name="livetwin-alarm-tick", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Finish queued work, stop the threads and close the database."""
        if self._token is not None:
            self.platform.bus.unsubscribe(self._token)
            self._token = None
            self._stopping.set()
            self._queue.put(_STOP)
            for thread in self._threads:
                thread.join()
        with self._lock:
            self._db.close()  # closing twice is harmless

    def sync(self, timeout: float = 10.0) -> None:
        """Wait until every event queued so far has been evaluated."""
        marker = _Sync()
        self._queue.put(marker)
        if not marker.done.wait(timeout):
            raise TimeoutError("the alarm worker did not catch up")

    def tick(self) -> None:
        """Check pending conditions against the clock now, and wait for it."""
        self._queue.put(_Tick())
        self.sync()

    def _load(self) -> None:
        """Open alarms and pending conditions from the database."""
        rows = self._sql("SELECT id, type, twin, rule FROM alarms WHERE state != 'cleared'")
        for alarm_id, type_name, twin, rule in rows:
            self._open.setdefault(type_name, {})[(twin, rule)] = alarm_id
        pending = self._sql("SELECT twin, rule, type, since, data FROM alarm_pending")
        for twin, rule_name, type_name, since, data in pending.fetchall():
            rule = self._latest.get(type_name) and self._latest[type_name].rules.get(rule_name)
            if rule:
                self._pending.setdefault(type_name, {})[(twin, rule_name)] = _Pending(
                    rule, since, orjson.loads(data)
                )

    # ---- the bus and the worker --------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Runs on the publishing thread: keep only what concerns rules, queue it."""
        if isinstance(event, StateChanged):
            applied = event.applied
            ctype = self._ctypes.get((applied.type, applied.version))
            if ctype is None:  # the engine holds this version now (the writer publishes)
                state = self.platform.engine.states.get(applied.type)
                if state is not None and state.ctype.version == applied.version:
                    ctype = state.ctype
                    self._remember(ctype)
            if ctype is None or ctype.rules:
                self._queue.put(event)
        elif isinstance(event, TypeDefined):
            self._queue.put(event)

    def _ticker(self) -> None:
        while not self._stopping.wait(self.tick_s):
            self._queue.put(_Tick())

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, _Sync):
                item.done.set()
                continue
            if isinstance(item, _Tick) and not any(self._pending.values()):
                continue
            try:
                with self._lock:
                    self._transaction(self._handle, item)
            except Exception:
                self.errors += 1
                log.exception("alarm evaluation failed; the alarm state will be reloaded")

    def _handle(self, item) -> None:
        if isinstance(item, StateChanged):
            self._evaluate(item.applied)
        elif isinstance(item, TypeDefined):
            self._remember(item.ctype)
            self._retarget_pending(item.ctype)
        elif isinstance(item, _Tick):
            self._check_pending(self.platform.clock())

    def _transaction(self, work, *args):
        """Run `work(*args)` in one transaction; publish its notices after the commit. After a
        failed one, the open alarms and pending conditions are first reloaded from the database
        (while it is away, that fails too and the next transaction tries again)."""
        if self._stale:
            self._open.clear()
            self._pending.clear()
            self._load()
            self._stale = False
        try:
            with self._db.write():  # statements on this thread (self._sql) join it
                result = work(*args)
        except BaseException:
            self._notices.clear()
            self._stale = True
            raise
        notices, self._notices = self._notices, []
        for notice in notices:
            self.platform.bus.publish(notice)
        return result

    def _remember(self, ctype: CompiledType) -> None:
        self._ctypes[(ctype.name, ctype.version)] = ctype
        latest = self._latest.get(ctype.name)
        if latest is None or latest.version <= ctype.version:
            self._latest[ctype.name] = ctype

    def _ctype(self, name: str, version: int) -> CompiledType:
        ctype = self._ctypes.get((name, version))
        if ctype is None:  # an older version seen only now: compile it from the store
            for number, spec_json, _ in self.platform.store.type_versions(name):
                if number == version:
                    spec = TwinTypeSpec.model_validate({**orjson.loads(spec_json), "name": name})
                    ctype = compile_type(spec, number, resolve_model=resolve_model)
                    self._remember(ctype)
        return ctype

    def _retarget_pending(self, ctype: CompiledType) -> None:
        """A new type version: pending conditions follow their rule, or go if it was removed."""
        pending = self._pending.get(ctype.name, {})
        for key, p in list(pending.items()):
            rule = ctype.rules.get(key[1])
            if rule is None or rule.when.source != p.rule.when.source:
                self._drop_pending(ctype.name, key)
            else:
                p.rule = rule

    # ---- evaluation --------------------------------------------------------------------------

    def _evaluate(self, applied: Applied) -> None:
        """Run the type's rules over the batch, observation by observation, in per-twin order."""
        ctype = self._ctype(applied.type, applied.version)
        if ctype is None or not ctype.rules or applied.values is None:
            return
        fresh = np.flatnonzero(applied.fresh)  # a late observation did not change state
        if len(fresh) == 0:
            return
        uids, ts = applied.uids[fresh], applied.ts[fresh]
        order = np.argsort(uids, kind="stable")
        uids, ts, rows = uids[order], ts[order], fresh[order]
        twins = [applied.twins[i] for i in rows.tolist()]
        m = len(rows)
        starts = np.ones(m, dtype=bool)
        np.not_equal(uids[1:], uids[:-1], out=starts[1:])
        group_start = np.maximum.accumulate(np.where(starts, np.arange(m), 0))
        env = self._environment(ctype, applied, rows, uids, starts, group_start)
        for rule in ctype.rules.values():
            self._run_rule(ctype.name, rule, env, twins, ts, starts)

    def _environment(self, ctype, applied, rows, uids, starts, group_start) -> dict:
        """The values of the names the rules read, as they were right after each observation.

        Derived values are recorded after each observation; inputs an observation did not set
        are carried forward from the twin's previous observation (or the latest known value).
        """
        index = ctype.column_index()
        inputs = set(ctype.inputs)
        names = sorted({n for rule in ctype.rules.values() for n in rule.names})
        last = self._last.setdefault(ctype.name, _LastValues())
        seed = self._seeder(ctype, applied)
        for name in names:
            if name in inputs:
                last.column(name, seed)
        slots = last.slots(uids, seed)
        ends = np.ones(len(rows), dtype=bool)
        ends[:-1] = starts[1:]
        positions = np.arange(len(rows))
        env = {}
        for name in names:
            values = applied.values[rows, index[name]]
            if name in inputs:
                known = np.maximum.accumulate(np.where(np.isnan(values), -1, positions))
                inside = known >= group_start
                values = np.where(inside, values[np.maximum(known, 0)], last.columns[name][slots])
                last.columns[name][slots[ends]] = values[ends]
            env[name] = values
        return env

    def _seeder(self, ctype: CompiledType, applied: Applied):
        """Values of twins seen for the first time: defaults if new, else their current state."""
        created = set(applied.created)
        defaults = {n: p.value for n, p in ctype.spec.parameters.items()}

        def seed(names: list[str], uids: np.ndarray) -> dict[str, np.ndarray]:
            out = {name: np.full(len(uids), np.nan) for name in names}
            with self.platform.lock:
                state = self.platform.engine.states.get(ctype.name)
                if state is None:
                    return out
                rows = state.rows_of(uids)
                for k, row in enumerate(rows.tolist()):
                    is_new = row < 0 or state.ids[row] in created
                    for name in names:
                        if is_new:
                            out[name][k] = defaults.get(name, np.nan)
                        elif name in state.col:
                            out[name][k] = state.data[state.col[name], row]
            return out

        return seed

    def _run_rule(self, type_name, rule: CompiledRule, env, twins, ts, starts) -> None:
        size = len(twins)
        when = rule.when.evaluate(env, size=size)
        holds = (when != 0) & ~np.isnan(when)
        if rule.clear is not None:
            cleared = rule.clear.evaluate(env, size=size)
            ends_alarm = (cleared != 0) & ~np.isnan(cleared)
        else:
            ends_alarm = when == 0
        pending = self._pending.get(type_name, {})
        opened = self._open.get(type_name, {})
        watched = {t for (t, r) in (*pending, *opened) if r == rule.name}
        interesting = holds.copy()
        if watched:
            interesting |= np.fromiter((t in watched for t in twins), bool, size)
        if not interesting.any():
            return
        group = np.cumsum(starts) - 1
        bounds = np.append(np.flatnonzero(starts), size)
        for g in np.unique(group[interesting]).tolist():
            for p in range(bounds[g], bounds[g + 1]):
                self._step(type_name, rule, twins[p], int(ts[p]), holds[p], ends_alarm[p], env, p)

    def _step(self, type_name, rule, twin, ts, holds, ends_alarm, env, p) -> None:
        """One observation of one twin for one rule: the pending/raise/clear state machine."""
        key = (twin, rule.name)
        opened = self._open.setdefault(type_name, {})
        if key in opened:
            if ends_alarm:
                self._finish(
                    opened[key],
                    ts,
                    "condition",
                    "clear condition met" if rule.clear else "condition no longer holds",
                )
            return
        pending = self._pending.setdefault(type_name, {}).get(key)
        if holds:
            values = {n: json_number(env[n][p]) for n in rule.names}
            if pending is None:
                pending = self._start_pending(type_name, key, rule, ts, values)
            else:
                pending.values = values
            if ts >= pending.since + rule.for_ms:
                self._fire(type_name, twin, pending)
        elif pending is not None:
            if ts >= pending.since + rule.for_ms:  # it held until this observation
                alarm_id = self._fire(type_name, twin, pending)
                if ends_alarm:
                    self._finish(alarm_id, ts, "condition", "condition no longer holds")
            else:
                self._drop_pending(type_name, key)

    def _check_pending(self, now: int) -> None:
        """Fire conditions that have held `for` long enough with no new observation."""
        for type_name, pending in list(self._pending.items()):
            for (twin, _), p in list(pending.items()):
                if now >= p.since + p.rule.for_ms:
                    self._fire(type_name, twin, p)

    def _start_pending(self, type_name, key, rule, ts, values) -> _Pending:
        pending = _Pending(rule, ts, values)
        self._pending.setdefault(type_name, {})[key] = pending
        self._sql(
            "INSERT INTO alarm_pending (twin, rule, type, since, data) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (twin, rule) DO UPDATE SET "
            "type = excluded.type, since = excluded.since, data = excluded.data",
            (key[0], key[1], type_name, ts, orjson.dumps(values).decode()),
        )
        return pending

    def _drop_pending(self, type_name: str, key: tuple[str, str]) -> None:
        self._pending.get(type_name, {}).pop(key, None)
        self._sql("DELETE FROM alarm_pending WHERE twin = ? AND rule = ?", key)

    def _fire(self, type_name: str, twin: str, pending: _Pending) -> int:
        """Raise the alarm of a condition that held `for` long enough (at since + for)."""
        rule = pending.rule
        self._drop_pending(type_name, (twin, rule.name))
        context = {"twin": twin, "type": type_name, "rule": rule.name, "severity": rule.severity}
        message = rule.format_message(pending.values, **context)
        at = pending.since + rule.for_ms
        return self._open_alarm(
            twin,
            type_name,
            rule.name,
            rule.severity,
            message,
            pending.values,
            "rule",
            since=pending.since,
            at=at,
        )

    # ---- lifecycle changes (always inside a transaction) -------------------------------------

    def _open_alarm(
        self, twin, type_name, rule, severity, message, data, source, *, since: int, at: int
    ) -> int:
        """Raise an alarm, or repeat the open one of the same twin and rule (de-duplication)."""
        opened = self._open.setdefault(type_name, {})
        alarm_id = opened.get((twin, rule))
        body = orjson.dumps(data).decode()
        if alarm_id is None:
            (alarm_id,) = self._sql(
                "INSERT INTO alarms (twin, type, rule, severity, state, message, data, source, "
                "since, raised, updated) VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                (twin, type_name, rule, severity, message, body, source, since, at, at),
            ).fetchone()
            opened[(twin, rule)] = alarm_id
            self._record(alarm_id, 1, at, "raised", source, None)
            return alarm_id
        row = self._row(alarm_id)
        worst = max(row["severity"], severity, key=SEVERITIES.index)
        self._sql(
            "UPDATE alarms SET severity = ?, message = ?, data = ?, count = count + 1, "
            "updated = ?, version = version + 1 WHERE id = ?",
            (worst, message, body, at, alarm_id),
        )
        self._record(alarm_id, row["version"] + 1, at, "repeated", source, None)
        return alarm_id

    def _finish(self, alarm_id: int, at: int, by: str, note: str | None) -> None:
        """Clear an open alarm (by its condition or by a person)."""
        row = self._row(alarm_id)
        self._sql(
            "UPDATE alarms SET state = 'cleared', cleared = ?, cleared_by = ?, updated = ?, "
            "version = version + 1 WHERE id = ?",
            (at, by, at, alarm_id),
        )
        self._open.get(row["type"], {}).pop((row["twin"], row["rule"]), None)
        self._record(alarm_id, row["version"] + 1, at, "cleared", by, note)

    def _record(self, alarm_id: int, version: int, at: int, event: str, by, note) -> None:
        """A history entry, and the notice announcing the alarm's new version after commit."""
        self._sql(
            "INSERT INTO alarm_history (alarm_id, version, ts, event, by, note) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (alarm_id, version, at, event, by, note),
        )
        data = {**self._row(alarm_id), "event": event}
        self._notices.append(Notice("alarm", f"{alarm_id}.{version}", data))

    # ---- public operations -------------------------------------------------------------------

    def raise_alarm(
        self,
        twin: str,
        rule: str,
        severity: str,
        message: str,
        data: dict | None = None,
        *,
        type: str | None = None,
        ts: int | None = None,
    ) -> dict:
        """Raise an alarm from code (a job, a model); repeats the open one of (twin, rule)."""
        _check_text(twin, "twin")
        _check_text(rule, "rule")
        _check_text(message, "message", MAX_COMMENT)
        if severity not in SEVERITIES:
            raise InvalidInput(
                f"unknown severity '{severity}'",
                field="severity",
                fix=f"use one of: {', '.join(SEVERITIES)}",
            )
        try:
            orjson.dumps(data or {})
        except TypeError as exc:
            raise InvalidInput(
                f"alarm data is not JSON-able: {exc}", field="data", fix="pass plain values"
            ) from None
        type_name = type or self.platform.engine.type_of.get(twin, "")
        at = self.platform.clock() if ts is None else ts
        with self._lock:
            alarm_id = self._transaction(
                lambda: self._open_alarm(
                    twin, type_name, rule, severity, message, data or {}, "job", since=at, at=at
                )
            )
            return self._row(alarm_id)

    def acknowledge(self, alarm_id: int, *, by: str | None = None, note: str | None = None) -> dict:
        """active -> acknowledged."""
        with self._lock:
            row = self._existing(alarm_id)
            if row["state"] != "active":
                raise self._bad_transition(row, "acknowledge")
            at = self.platform.clock()

            def work():
                self._sql(
                    "UPDATE alarms SET state = 'acknowledged', acknowledged = ?, "
                    "acknowledged_by = ?, updated = ?, version = version + 1 WHERE id = ?",
                    (at, by, at, alarm_id),
                )
                self._record(alarm_id, row["version"] + 1, at, "acknowledged", by, note)

            self._transaction(work)
            return self._row(alarm_id)

    def clear(self, alarm_id: int, *, by: str | None = None, note: str | None = None) -> dict:
        """active or acknowledged -> cleared, by hand. A rule re-raises it only after its
        condition is seen to hold `for` long enough again."""
        with self._lock:
            row = self._existing(alarm_id)
            if row["state"] == "cleared":
                raise self._bad_transition(row, "clear")
            self._transaction(
                lambda: self._finish(alarm_id, self.platform.clock(), by or "operator", note)
            )
            return self._row(alarm_id)

    def comment(self, alarm_id: int, text: str, author: str | None = None) -> dict:
        """Add a comment (in any state); returns the alarm with its comments."""
        _check_text(text, "text", MAX_COMMENT)
        author = author or "anonymous"
        _check_text(author, "author")
        with self._lock:
            row = self._existing(alarm_id)
            at = self.platform.clock()

            def work():
                self._sql(
                    "INSERT INTO alarm_comments (alarm_id, ts, author, text) VALUES (?, ?, ?, ?)",
                    (alarm_id, at, author, text),
                )
                self._sql(
                    "UPDATE alarms SET updated = ?, version = version + 1 WHERE id = ?",
                    (at, alarm_id),
                )
                self._record(alarm_id, row["version"] + 1, at, "commented", author, text)

            self._transaction(work)
            return self.get(alarm_id)

    def get(self, alarm_id: int) -> dict:
        """One alarm with its history and comments."""
        with self._lock:
            alarm = self._existing(alarm_id)
            history = self._sql(
                "SELECT version, ts, event, by, note FROM alarm_history WHERE alarm_id = ? "
                "ORDER BY version",
                (alarm_id,),
            ).fetchall()
            comments = self._sql(
                "SELECT ts, author, text FROM alarm_comments WHERE alarm_id = ? ORDER BY id",
                (alarm_id,),
            ).fetchall()
        alarm["history"] = [
            {"version": v, "time": format_ts(ts), "event": e, "by": by, "note": note}
            for v, ts, e, by, note in history
        ]
        alarm["comments"] = [
            {"time": format_ts(ts), "author": a, "text": t} for ts, a, t in comments
        ]
        return alarm

    def find_open(self, twin: str, rule: str) -> dict | None:
        """The open alarm of a twin and rule, if any."""
        with self._lock:
            row = self._sql(
                "SELECT id FROM alarms WHERE twin = ? AND rule = ? AND state != 'cleared'",
                (twin, rule),
            ).fetchone()
            return self._row(row[0]) if row else None

    def list(
        self,
        *,
        state: str | None = None,
        severity: str | None = None,
        twin: str | None = None,
        type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict:
        """Alarms matching the filters, newest first. `state` and `severity` take comma lists;
        state `open` means active or acknowledged."""
        if not 1 <= limit <= 1000:
            raise InvalidInput(
                "limit must be between 1 and 1000", field="limit", fix="page with limit and offset"
            )
        if offset < 0:
            raise InvalidInput("offset must not be negative", field="offset", fix="use 0 or more")
        where, args = [], []
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
        for column, value in (("twin", twin), ("type", type)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
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

    def counts(self) -> dict:
        """Open alarms per severity and state, and their totals."""
        out = {s: {"active": 0, "acknowledged": 0, "total": 0} for s in reversed(SEVERITIES)}
        with self._lock:
            rows = self._sql(
                "SELECT severity, state, count(*) FROM alarms WHERE state != 'cleared' "
                "GROUP BY severity, state"
            ).fetchall()
        for severity, state, n in rows:
            out[severity][state] = n
            out[severity]["total"] += n
        out["total"] = {
            key: sum(out[s][key] for s in SEVERITIES) for key in ("active", "acknowledged", "total")
        }
        return out

    # ---- helpers -----------------------------------------------------------------------------

    def _sql(self, statement: str, args=()):
        """Run one statement (inside this thread's transaction, if one is open)."""
        return self._db.read().execute(statement, args)

    def _row(self, alarm_id: int) -> dict | None:
        row = self._sql(f"SELECT {COLUMNS} FROM alarms WHERE id = ?", (alarm_id,)).fetchone()
        return _alarm(row) if row else None

    def _existing(self, alarm_id: int) -> dict:
        row = self._row(alarm_id)
        if row is None:
            raise NotFound(
                f"no alarm {alarm_id}", field="id", fix="list alarms with GET /api/alarms"
            )
        return row

    @staticmethod
    def _bad_transition(row: dict, action: str) -> Conflict:
        fixes = {
            "acknowledged": f"it is acknowledged already; clear it with "
            f"POST /api/alarms/{row['id']}/clear",
            "cleared": "it is cleared already; add a note with "
            f"POST /api/alarms/{row['id']}/comments",
        }
        return Conflict(
            f"cannot {action} alarm {row['id']}: it is {row['state']}",
            field="state",
            fix=fixes[row["state"]],
        )


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


def _check_text(value: Any, field: str, limit: int = MAX_NAME) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidInput(
            f"{field} must be a non-empty string of at most {limit} characters",
            field=field,
            fix=f"send a {field}",
        )
