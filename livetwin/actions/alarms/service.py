"""The alarm service: runs the type rules (`engine.rules`) on the bus's state changes and on a
clock tick, and keeps the alarm lifecycle active -> acknowledged -> cleared (one open alarm per
twin and rule, history, comments), announced as `Notice("alarm", ...)` after each commit."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from livetwin.actions.alarms.store import SCHEMA, AlarmStore
from livetwin.engine import rules
from livetwin.engine.events import Event, Notice, StateChanged, TypeDefined
from livetwin.errors import Conflict, InvalidInput, NotFound
from livetwin.spec.rules import SEVERITIES
from livetwin.spec.types import CompiledType

if TYPE_CHECKING:
    from livetwin.ports import Bus, Clock, OpenServiceDB
    from livetwin.query import Query

log = logging.getLogger(__name__)

MAX_COMMENT = 4000
MAX_NAME = 200


@dataclass
class _Sync:
    done: threading.Event = field(default_factory=threading.Event)


class _Tick:
    pass


_STOP = object()


class AlarmService:
    """Evaluates type rules on the bus's state changes and keeps the alarms.

    `reader` gives the type versions and the state of twins the rules meet for the first time;
    `open_db("alarms", SCHEMA)` is its database; every `tick_s` wall seconds pending conditions
    are checked against `clock()`. `public_id` maps an alarm's id to the one its notices carry
    (a cluster's shard: the cluster-wide id the alarm routes use; default: the same).
    """

    def __init__(
        self,
        *,
        clock: Clock,
        bus: Bus,
        reader: Query,
        open_db: OpenServiceDB,
        tick_s: float = 1.0,
        public_id: Callable[[int], int] | None = None,
    ):
        self.public_id = public_id
        self.clock = clock
        self.bus = bus
        self.reader = reader
        self.tick_s = tick_s
        self._store = AlarmStore(open_db("alarms", SCHEMA))
        self._lock = threading.RLock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._ctypes: dict[tuple[str, int], CompiledType] = {}
        self._latest: dict[str, CompiledType] = {}
        self._rules = rules.RuleState()
        self._notices: list[Notice] = []
        self._stopping = threading.Event()
        self._token: int | None = None
        self._threads: list[threading.Thread] = []
        self._stale = False  # the in-memory state must be reloaded (a transaction failed)
        self.errors = 0

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> AlarmService:
        for ctype in self.reader.compiled_types().values():
            self._remember(ctype)
        self._load()
        self._token = self.bus.subscribe(self._on_event)
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
            self.bus.unsubscribe(self._token)
            self._token = None
            self._stopping.set()
            self._queue.put(_STOP)
            for thread in self._threads:
                thread.join()
        with self._lock:
            self._store.close()  # closing twice is harmless

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
        for alarm_id, type_name, twin, rule in self._store.open_keys():
            self._rules.open.setdefault(type_name, {})[(twin, rule)] = alarm_id
        for twin, rule_name, type_name, since, values in self._store.pending():
            rule = self._latest.get(type_name) and self._latest[type_name].rules.get(rule_name)
            if rule:
                self._rules.pending.setdefault(type_name, {})[(twin, rule_name)] = rules.Pending(
                    rule, since, values
                )

    # ---- the bus and the worker --------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Runs on the publishing thread: keep only what concerns rules, queue it."""
        if isinstance(event, StateChanged):
            applied = event.applied
            ctype = self._ctypes.get((applied.type, applied.version))
            if ctype is None:  # the engine holds this version now (the writer publishes)
                current = self.reader.compiled_type(applied.type)
                if current is not None and current.version == applied.version:
                    ctype = current
                    self._remember(ctype)
            if ctype is None or ctype.rules:
                self._queue.put(event)
        elif isinstance(event, TypeDefined) or (
            isinstance(event, Notice) and event.kind == "removed"
        ):
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
            if isinstance(item, _Tick) and not any(self._rules.pending.values()):
                continue
            try:
                with self._lock:
                    self._transaction(self._handle, item)
            except Exception:
                self.errors += 1
                log.exception("alarm evaluation failed; the alarm state will be reloaded")

    def _handle(self, item) -> None:
        if isinstance(item, StateChanged):
            applied = item.applied
            ctype = self._ctype(applied.type, applied.version)
            if ctype is not None:
                read = self.reader.current_by_uid
                self._apply(rules.evaluate(self._rules, ctype, applied, read))
        elif isinstance(item, TypeDefined):
            self._remember(item.ctype)
            self._apply(rules.retarget(self._rules, item.ctype))
        elif isinstance(item, _Tick):
            self._apply(rules.due(self._rules, self.clock()))
        elif isinstance(item, Notice):  # a twin deleted
            removed = item.data
            self._apply(rules.forget(self._rules, removed["type"], removed["twin"], self.clock()))

    def _transaction(self, work, *args):
        """Run `work(*args)` in one transaction; publish its notices after the commit. After a
        failed one, the open alarms and pending conditions are first reloaded from the database
        (while it is away, that fails too and the next transaction tries again)."""
        if self._stale:
            self._rules.open.clear()
            self._rules.pending.clear()
            self._load()
            self._stale = False
        try:
            with self._store.write():  # statements on this thread join it
                result = work(*args)
        except BaseException:
            self._notices.clear()
            self._stale = True
            raise
        notices, self._notices = self._notices, []
        for notice in notices:
            self.bus.publish(notice)
        return result

    def _remember(self, ctype: CompiledType) -> None:
        self._ctypes[(ctype.name, ctype.version)] = ctype
        latest = self._latest.get(ctype.name)
        if latest is None or latest.version <= ctype.version:
            self._latest[ctype.name] = ctype

    def _ctype(self, name: str, version: int) -> CompiledType | None:
        ctype = self._ctypes.get((name, version))
        if ctype is None:  # an older version seen only now: compile it from its spec
            try:
                ctype = self.reader.compiled_version(name, version)
            except NotFound:
                return None
            self._remember(ctype)
        return ctype

    def _apply(self, transitions: list[rules.Transition]) -> None:
        """Persist what rule evaluation decided, in order."""
        for t in transitions:
            if t.kind == "pending":
                self._store.save_pending(t.twin, t.rule, t.type, t.since, t.values)
            elif t.kind == "dropped":
                self._store.drop_pending(t.twin, t.rule)
            elif t.kind == "raise":
                self._store.drop_pending(t.twin, t.rule)
                self._open_alarm(
                    t.twin, t.type, t.rule, t.severity, t.message, t.values, "rule",
                    since=t.since, at=t.at,
                )  # fmt: skip
            else:
                alarm_id = t.alarm
                if alarm_id is None:  # raised earlier in these transitions
                    alarm_id = self._rules.open[t.type][(t.twin, t.rule)]
                self._finish(alarm_id, t.at, "condition", t.note)

    # ---- lifecycle changes (always inside a transaction) -------------------------------------

    def _open_alarm(
        self, twin, type_name, rule, severity, message, data, source, *, since: int, at: int
    ) -> int:
        """Raise an alarm, or repeat the open one of the same twin and rule (de-duplication)."""
        opened = self._rules.open.setdefault(type_name, {})
        alarm_id = opened.get((twin, rule))
        if alarm_id is None:
            alarm_id = self._store.insert(
                twin, type_name, rule, severity, message, data, source, since, at
            )
            opened[(twin, rule)] = alarm_id
            self._record(alarm_id, 1, at, "raised", source, None)
            return alarm_id
        row = self._store.row(alarm_id)
        worst = max(row["severity"], severity, key=SEVERITIES.index)
        self._store.repeat(alarm_id, worst, message, data, at)
        self._record(alarm_id, row["version"] + 1, at, "repeated", source, None)
        return alarm_id

    def _finish(self, alarm_id: int, at: int, by: str, note: str | None) -> None:
        """Clear an open alarm (by its condition or by a person)."""
        row = self._store.row(alarm_id)
        self._store.set_cleared(alarm_id, at, by)
        self._rules.open.get(row["type"], {}).pop((row["twin"], row["rule"]), None)
        self._record(alarm_id, row["version"] + 1, at, "cleared", by, note)

    def _record(self, alarm_id: int, version: int, at: int, event: str, by, note) -> None:
        """A history entry, and the notice announcing the alarm's new version after commit."""
        self._store.add_history(alarm_id, version, at, event, by, note)
        public = alarm_id if self.public_id is None else self.public_id(alarm_id)
        data = {**self._store.row(alarm_id), "id": public, "event": event}
        self._notices.append(Notice("alarm", f"{public}.{version}", data))

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
        """Raise an alarm from code (a model in a notebook, an integration); repeats the open one
        of (twin, rule). Jobs do not use this: they write observations and a type rule raises
        the alarm, so a replay of the journal reproduces it."""
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
        type_name = type or self._type_of(twin)
        at = self.clock() if ts is None else ts
        with self._lock:
            alarm_id = self._transaction(
                lambda: self._open_alarm(
                    twin, type_name, rule, severity, message, data or {}, "job", since=at, at=at
                )
            )
            return self._store.row(alarm_id)

    def _type_of(self, twin: str) -> str:
        try:
            return self.reader.type_of(twin).name
        except NotFound:
            return ""

    def acknowledge(self, alarm_id: int, *, by: str | None = None, note: str | None = None) -> dict:
        """active -> acknowledged."""
        with self._lock:
            row = self._existing(alarm_id)
            if row["state"] != "active":
                raise self._bad_transition(row, "acknowledge")
            at = self.clock()

            def work():
                self._store.set_acknowledged(alarm_id, at, by)
                self._record(alarm_id, row["version"] + 1, at, "acknowledged", by, note)

            self._transaction(work)
            return self._store.row(alarm_id)

    def clear(self, alarm_id: int, *, by: str | None = None, note: str | None = None) -> dict:
        """active or acknowledged -> cleared, by hand. A rule re-raises it only after its
        condition is seen to hold `for` long enough again."""
        with self._lock:
            row = self._existing(alarm_id)
            if row["state"] == "cleared":
                raise self._bad_transition(row, "clear")
            self._transaction(lambda: self._finish(alarm_id, self.clock(), by or "operator", note))
            return self._store.row(alarm_id)

    def comment(self, alarm_id: int, text: str, author: str | None = None) -> dict:
        """Add a comment (in any state); returns the alarm with its comments."""
        _check_text(text, "text", MAX_COMMENT)
        author = author or "anonymous"
        _check_text(author, "author")
        with self._lock:
            row = self._existing(alarm_id)
            at = self.clock()

            def work():
                self._store.add_comment(alarm_id, at, author, text)
                self._record(alarm_id, row["version"] + 1, at, "commented", author, text)

            self._transaction(work)
            return self.get(alarm_id)

    def get(self, alarm_id: int) -> dict:
        """One alarm with its history and comments."""
        with self._lock:
            alarm = self._existing(alarm_id)
            alarm["history"] = self._store.history(alarm_id)
            alarm["comments"] = self._store.comments(alarm_id)
        return alarm

    def find_open(self, twin: str, rule: str) -> dict | None:
        """The open alarm of a twin and rule, if any."""
        with self._lock:
            alarm_id = self._store.find_open(twin, rule)
            return self._store.row(alarm_id) if alarm_id is not None else None

    def list(
        self,
        *,
        state: str | None = None,
        severity: str | None = None,
        twin: str | None = None,
        type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        namespaces: frozenset[str] | None = None,
    ) -> dict:
        """Alarms matching the filters, newest first. `state` and `severity` take comma lists;
        state `open` means active or acknowledged; `namespaces`: of twins in these only."""
        if not 1 <= limit <= 1000:
            raise InvalidInput(
                "limit must be between 1 and 1000", field="limit", fix="page with limit and offset"
            )
        if offset < 0:
            raise InvalidInput("offset must not be negative", field="offset", fix="use 0 or more")
        with self._lock:
            return self._store.list(
                state=state, severity=severity, twin=twin, type_name=type, limit=limit,
                offset=offset, namespaces=namespaces,
            )  # fmt: skip

    def counts(self, namespaces: frozenset[str] | None = None) -> dict:
        """Open alarms per severity and state, and their totals (`namespaces`: of twins in
        these only)."""
        out = {s: {"active": 0, "acknowledged": 0, "total": 0} for s in reversed(SEVERITIES)}
        with self._lock:
            rows = self._store.open_counts(namespaces)
        for severity, state, n in rows:
            out[severity][state] = n
            out[severity]["total"] += n
        out["total"] = {
            key: sum(out[s][key] for s in SEVERITIES) for key in ("active", "acknowledged", "total")
        }
        return out

    # ---- helpers -----------------------------------------------------------------------------

    def _existing(self, alarm_id: int) -> dict:
        row = self._store.row(alarm_id)
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


def _check_text(value: Any, field: str, limit: int = MAX_NAME) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidInput(
            f"{field} must be a non-empty string of at most {limit} characters",
            field=field,
            fix=f"send a {field}",
        )
