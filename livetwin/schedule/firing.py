"""When runs start: time triggers falling due, posted events (joins and event triggers), engine
events from the bus (state, created, type, job) and conditions on twin state (rising edges).

`Firing` is a part of `Scheduler` (service.py): it uses the state that class sets up.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any

import numpy as np

from livetwin.engine.events import Event, Notice, StateChanged, TypeDefined
from livetwin.errors import InvalidInput, LivetwinError, NotFound
from livetwin.expr import compile_expression
from livetwin.schedule import store
from livetwin.schedule.model import (
    MAX_TRIGGER_TWINS,
    Key,
    Schedule,
    check_event,
    dumps,
    event_dict,
)
from livetwin.schedule.triggers import TIME_KINDS, due_instants
from livetwin.timefmt import format_ts

RUN_NOTICES = ("run", "job")  # a finished run; "job" is its older name

log = logging.getLogger(__name__)


class Firing:
    """Triggers and events turned into runs (mixed into `Scheduler`)."""

    # ---- time triggers -------------------------------------------------------------------

    def tick(self) -> None:
        """Fire every time trigger due at `clock()` now (the loop calls this too)."""
        self._call(self._op_tick)

    def _op_tick(self) -> None:
        self._fire_due(self.clock())

    def _fire_due(self, now: int) -> None:
        for sched in list(self._schedules.values()):
            if not sched.enabled or sched.next_at is None or sched.next_at > now:
                continue
            instants, following = due_instants(
                sched.trigger, sched.next_at, now, sched.missed, self.grace_ms,
                self.catch_up_limit,
            )  # fmt: skip
            if sched.system and instants and self._has_active_run(sched.id):
                log.info("schedule %s: its last run is still going; not started again", sched.id)
                instants = []  # coalesced: the run still going covers this instant
            for at in instants:
                if not store.claim_instant(self._db, sched.id, at):
                    log.warning("schedule %s: %s fired already; not again", sched.id, format_ts(at))
                    continue
                trigger = {
                    "kind": sched.trigger.kind,
                    "schedule": sched.id,
                    "scheduled_for": at,
                    "late_ms": now - at,
                }
                try:
                    self._new_run(sched.key, trigger, args=sched.args, schedule_id=sched.id)
                except NotFound as exc:
                    sched.last_error = exc.message
            if not instants and not sched.system:
                log.info("schedule %s: skipped runs missed before %s", sched.id, format_ts(now))
            sched.next_at = following
            sched.fired += len(instants)
            sched.last_fired = now if instants else sched.last_fired
            if following is None:
                sched.enabled = False
            store.set_after_firing(
                self._db,
                (
                    sched.next_at, int(sched.enabled), sched.fired, sched.last_fired,
                    sched.last_error, sched.id,
                ),
            )  # fmt: skip
        self._refresh_due()

    def _refresh_due(self) -> None:
        due = [
            s.next_at
            for s in self._schedules.values()
            if s.enabled and s.next_at is not None and s.trigger.kind in TIME_KINDS
        ]
        self._next_due = min(due) if due else None

    def _refresh_watch(self) -> None:
        """What the bus callback looks for: types of state/condition triggers, other sources."""
        types: set[str | None] = set()
        sources: set[str] = set()
        for s in self._schedules.values():
            if not s.enabled:
                continue
            spec = s.trigger.spec
            if s.trigger.kind == "condition":
                types.add(spec["type"])
            elif s.trigger.kind == "event" and spec["on"] in ("state", "created"):
                types.add(spec.get("type"))
            elif s.trigger.kind == "event":
                sources.add(spec["on"])
        subscribers: dict[tuple[str, str], list[Key]] = {}
        for key, fn in self._functions.items():
            for name in fn.events:
                subscribers.setdefault((key[0], name), []).append(key)
        self._subscribers = subscribers
        self._watch_types = frozenset(types)
        self._watch_sources = frozenset(sources)
        self._refresh_due()

    # ---- posted events -------------------------------------------------------------------

    def post_event(
        self,
        name: str,
        data: Any = None,
        key: str | None = None,
        namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict:
        """Store an event durably, feed joins and event triggers; {id, runs} once durable.
        An event whose `idempotency_key` is stored already (same namespace and name) is
        answered with the stored event's id and `duplicate: true`, and changes nothing."""
        event = {"name": name, "data": data, "key": key, "namespace": namespace}
        if idempotency_key is not None:
            event["idempotency_key"] = idempotency_key
        return self.post_events([event])[0]

    def post_events(self, events: list[dict]) -> list[dict]:
        """Like `post_event` for many events in order, sharing one transaction."""
        checked = [
            check_event(e, f"[{i}]" if len(events) > 1 else "") for i, e in enumerate(events)
        ]
        return self._call(self._op_events, checked)

    def _op_events(self, events: list[tuple]) -> list[dict]:
        """Store events, feed joins and event triggers; rows are written in bulk at the end
        (an event consumed by a join at once never enters the inbox)."""
        now = self.clock()
        self._expire_joins(now)
        out = []
        event_rows: list[tuple] = []
        key_rows: list[tuple] = []
        stored = self._stored_event_keys(events)
        waiting: dict[tuple[str, str, int], None] = {}  # inbox rows to add (ordered set)
        consumed: list[tuple[str, str, int]] = []  # inbox rows to delete
        self._run_rows = []
        try:
            for namespace, name, key, data, idempotency_key in events:
                if idempotency_key is not None:
                    first = stored.get((namespace, name, idempotency_key))
                    if first is not None:
                        out.append({"id": first, "name": name, "key": key, "runs": [],
                                    "duplicate": True})  # fmt: skip
                        continue
                eid = self._next_event_id
                self._next_event_id += 1
                event_rows.append((eid, namespace, name, key, data, now))
                if idempotency_key is not None:
                    stored[(namespace, name, idempotency_key)] = eid
                    key_rows.append((namespace, name, idempotency_key, eid))
                event = event_dict(eid, name, key, data, now)
                runs = []
                for fkey in self._subscribers.get((namespace, name), ()):
                    self._pending(fkey, key, name).append((eid, event))
                    waiting[(*fkey, eid)] = None
                    self._note_expiry(fkey, now)
                    run_id = self._join(fkey, key, waiting, consumed)
                    if run_id is not None:
                        runs.append(run_id)
                if "event" in self._watch_sources:
                    runs.extend(self._named_event_runs(namespace, name, event))
                out.append({"id": eid, "name": name, "key": key, "runs": runs})
            store.insert_events(self._db, event_rows)
            if key_rows:
                store.insert_event_keys(self._db, key_rows)
            store.add_to_inbox(self._db, waiting)
            store.take_from_inbox(self._db, consumed)
            store.insert_runs(self._db, self._run_rows)
        finally:
            self._run_rows = None
        self._posted += len(event_rows)
        if self._posted >= 100_000:
            self._prune_events(now)
        return out

    def _stored_event_keys(self, events: list[tuple]) -> dict[tuple, int]:
        """Event ids of the stored events that have these events' idempotency keys."""
        keys = [(e[0], e[1], e[4]) for e in events if e[4] is not None]
        return store.stored_event_keys(self._db, keys) if keys else {}

    # ---- join expiry (a function's `ttl`) --------------------------------------------------

    def _note_expiry(self, fkey: Key, posted: int) -> None:
        """An event posted at `posted` now waits in a join of `fkey`: when may it expire?"""
        ttl = self._functions[fkey].ttl_ms
        if ttl is not None:
            self._expire_at = min(self._expire_at, posted + ttl)

    def _expire_joins(self, now: int) -> None:
        """Drop events that waited in a join longer than their function's `ttl` (from memory
        and the inbox); they never count into a join. Cheap until the earliest expiry."""
        if now < self._expire_at:
            return
        rows: list[tuple[str, str, int]] = []
        earliest = math.inf
        for fkey, groups in self._inbox.items():
            spec = self._functions.get(fkey)
            if spec is None or spec.ttl_ms is None:
                continue
            cutoff = now - spec.ttl_ms
            for key in list(groups):
                for fifo in groups[key].values():
                    while fifo and fifo[0][1]["ts"] <= cutoff:
                        rows.append((*fkey, fifo.popleft()[0]))
                    if fifo:
                        earliest = min(earliest, fifo[0][1]["ts"] + spec.ttl_ms)
                if not any(groups[key].values()):
                    del groups[key]
        if rows:
            store.take_from_inbox(self._db, rows)
            log.info("%d event(s) waiting in joins expired (ttl)", len(rows))
        self._expire_at = earliest

    def _named_event_runs(self, namespace: str, name: str, event: dict) -> list[str]:
        runs = []
        for sched in self._schedules.values():
            spec = sched.trigger.spec
            if (
                sched.enabled
                and spec.get("on") == "event"
                and spec["name"] == name
                and sched.namespace == namespace
            ):
                trigger = {"kind": "event", "on": "event", "schedule": sched.id}
                runs.append(
                    self._new_run(
                        sched.key, trigger, args=sched.args, events=[event], schedule_id=sched.id
                    )
                )
        return runs

    def _pending(self, fkey: Key, key: str | None, name: str) -> deque:
        return self._inbox.setdefault(fkey, {}).setdefault(key, {}).setdefault(name, deque())

    def _join(self, fkey: Key, key: str | None, waiting: dict, consumed: list) -> str | None:
        """Start a run if every subscribed event of `fkey` has arrived for `key` (FIFO)."""
        spec = self._functions[fkey]
        groups = self._inbox[fkey][key]
        if not all(groups.get(n) for n in spec.events):
            return None
        taken = [groups[n].popleft() for n in spec.events]
        for eid, _ in taken:
            row = (*fkey, eid)
            if row in waiting:
                del waiting[row]  # arrived in this operation: never stored in the inbox
            else:
                consumed.append(row)
        if not any(groups.values()):
            del self._inbox[fkey][key]
        return self._new_run(fkey, {"kind": "join", "key": key}, events=[e for _, e in taken])

    def _prune_events(self, now: int) -> None:
        """Forget posted events past retention that no join still waits for."""
        self._posted = 0
        store.prune_events(self._db, self._next_event_id, now - self.event_retention_ms)

    # ---- engine events -------------------------------------------------------------------

    def _on_bus(self, event: Event) -> None:
        """On the publishing thread: hand matching engine events to the scheduler thread."""
        if self._stopping:
            return
        if isinstance(event, StateChanged):
            applied = event.applied
            if applied.type in self._watch_types or (
                None in self._watch_types and applied.type is not None
            ):
                self._submit(self._op_state, applied, event.seq)
        elif isinstance(event, TypeDefined):
            if self._system_sources:
                self._submit(self._op_sync_system, [event.ctype], False)
            if "type" in self._watch_sources:
                info = {"type": event.ctype.name, "version": event.ctype.version, "seq": event.seq}
                self._submit(self._op_source, "type", info)
        elif (
            isinstance(event, Notice) and event.kind in RUN_NOTICES and "job" in self._watch_sources
        ):
            self._submit(self._op_source, "job", event.data)

    def _op_state(self, applied: Any, seq: int) -> None:
        type_name = applied.type
        twins = list(dict.fromkeys(applied.twins))
        for sched in list(self._schedules.values()):
            spec = sched.trigger.spec
            if not sched.enabled or spec.get("type", type_name) != type_name:
                continue
            if sched.trigger.kind == "condition":
                self._evaluate_condition(sched, twins)
            elif sched.trigger.kind == "event" and spec["on"] in ("state", "created"):
                if spec["on"] == "created":
                    picked = list(applied.created)
                elif spec.get("names"):
                    picked = self._reporting(applied, spec["names"])
                else:
                    picked = twins
                prefix = spec.get("twin_prefix")
                if prefix is not None:
                    picked = [t for t in picked if t.startswith(prefix)]
                if picked:
                    self._fire_event(sched, {"type": type_name, "twins": picked, "seq": seq})

    def _reporting(self, applied: Any, names: list[str]) -> list[str]:
        """Twins of a batch that carry a value of one of `names` (not only other columns)."""
        if applied.values is None:
            return []
        columns = self.reader.layout(applied.type, applied.version)[0]
        index = [columns.index(n) for n in names if n in columns]
        if not index:
            return []
        carried = ~np.isnan(applied.values[:, index]).all(axis=1)
        return list(dict.fromkeys(t for t, c in zip(applied.twins, carried, strict=True) if c))

    def _op_source(self, source: str, info: dict) -> None:
        for sched in list(self._schedules.values()):
            spec = sched.trigger.spec
            if not sched.enabled or spec.get("on") != source:
                continue
            if source == "type" and spec.get("type", info["type"]) != info["type"]:
                continue
            if source == "job" and (
                info["namespace"] != sched.namespace
                or spec.get("function", info["function"]) != info["function"]
                or spec.get("state", info["state"]) != info["state"]
            ):
                continue
            self._fire_event(sched, info)

    def _fire_event(self, sched: Schedule, info: dict) -> None:
        """A run for an engine event; while one is still queued, new twins merge into it."""
        pending = self._active.get(sched.pending_run or "")
        if pending is not None and "twins" in info and "twins" in pending.trigger:
            merged = list(dict.fromkeys(pending.trigger["twins"] + info["twins"]))
            pending.trigger["twins"] = merged[:MAX_TRIGGER_TWINS]
            pending.trigger["coalesced"] = pending.trigger.get("coalesced", 1) + 1
            store.set_run_trigger(self._db, pending.id, dumps(pending.trigger))
            return
        trigger = {"kind": "event", "on": sched.trigger.spec["on"], "schedule": sched.id, **info}
        if "twins" in trigger:
            trigger["twins"] = trigger["twins"][:MAX_TRIGGER_TWINS]
        try:
            run_id = self._new_run(sched.key, trigger, args=sched.args, schedule_id=sched.id)
        except NotFound as exc:
            sched.last_error = exc.message
            return
        sched.pending_run = run_id if "twins" in info else None
        sched.fired += 1
        sched.last_fired = self.clock()
        store.set_fired(self._db, sched.id, sched.fired, sched.last_fired)

    # ---- conditions ----------------------------------------------------------------------

    def _condition_values(self, sched: Schedule, twins: list[str] | None) -> dict[str, bool]:
        """twin -> whether the condition holds now (all twins of the type when `twins` is None)."""
        spec = sched.trigger.spec
        prefix = spec.get("twin_prefix")
        if twins is not None and prefix is not None:
            twins = [t for t in twins if t.startswith(prefix)]

        def compiled_for(ctype: Any):
            if sched.compiled is None or sched.compiled[0] != ctype.version:
                compiled = compile_expression(
                    spec["when"], ctype.column_index(), allow_windows=False, field="trigger.when"
                )
                sched.compiled = (ctype.version, compiled)
            return sched.compiled[1]

        found = self.reader.truth(spec["type"], compiled_for, twins)
        if found is None:
            raise InvalidInput(
                f"no twin type '{spec['type']}'",
                field="trigger.type",
                fix=f"declare it with PUT /api/types/{spec['type']}",
            )
        names, truth = found
        values = dict(zip(names, truth.tolist(), strict=True))
        if twins is None and prefix is not None:
            values = {t: v for t, v in values.items() if t.startswith(prefix)}
        return values

    def _init_condition(self, sched: Schedule) -> None:
        """Twins already true when the schedule is created do not fire: only rising edges do."""
        sched.true_twins = {t for t, v in self._condition_values(sched, None).items() if v}

    def _evaluate_condition(self, sched: Schedule, twins: list[str]) -> None:
        try:
            values = self._condition_values(sched, twins)
        except LivetwinError as exc:
            if sched.last_error != exc.message:
                sched.last_error = exc.message
                store.set_last_error(self._db, sched.id, exc.message)
            return
        rising = [t for t, v in values.items() if v and t not in sched.true_twins]
        falling = [t for t, v in values.items() if not v and t in sched.true_twins]
        if falling:
            sched.true_twins.difference_update(falling)
            store.remove_conditions(self._db, sched.id, falling)
        if not rising:
            return
        sched.true_twins.update(rising)
        store.add_conditions(self._db, sched.id, rising)
        for twin in rising:
            trigger = {
                "kind": "condition",
                "schedule": sched.id,
                "type": sched.trigger.spec["type"],
                "twin": twin,
                "twins": [twin],
            }
            try:
                self._new_run(sched.key, trigger, args=sched.args, schedule_id=sched.id)
            except NotFound as exc:
                sched.last_error = exc.message
        sched.fired += len(rising)
        sched.last_fired = self.clock()
        store.set_fired(self._db, sched.id, sched.fired, sched.last_fired)
