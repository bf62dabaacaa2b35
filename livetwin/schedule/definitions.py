"""What the scheduler runs and when: functions (declared, registered in code, built-in jobs),
schedules (a trigger bound to a function), and system schedules kept in step with the twin
types they derive from (a type's `calibration.every` becomes an interval schedule).

`Definitions` is a part of `Scheduler` (service.py): it uses the state that class sets up.
"""

from __future__ import annotations

import heapq
import logging
import secrets
from collections.abc import Callable
from typing import Any

from livetwin.errors import Conflict, InvalidInput, NotFound
from livetwin.namespaces import check_namespace
from livetwin.schedule import store
from livetwin.schedule.functions import JOBS, FunctionSpec, JobFn, RunContext, parse_function
from livetwin.schedule.model import SYSTEM, Key, Schedule, dumps
from livetwin.schedule.runs import last_run
from livetwin.schedule.triggers import MISSED, TIME_KINDS, check_name, parse_trigger
from livetwin.timefmt import format_ts

log = logging.getLogger(__name__)

SystemSource = Callable[[Any], list[dict]]
"""A twin type (CompiledType) -> the system schedules it implies: bodies with `id`, `function`
(a system function), `trigger`, `args` and `description`."""


class Definitions:
    """Functions, schedules and system schedules (mixed into `Scheduler`)."""

    # ---- functions -----------------------------------------------------------------------

    def register_job(self, name: str, fn: JobFn) -> None:
        """Make a job kind available to this scheduler's `builtin` functions by name (the
        composition root registers calibrate, train-baseline and check-inactivity, bound to
        their ports; `livetwin.schedule.register_job` adds one for every scheduler)."""
        self.jobs[check_name(name, "job")] = fn

    def job_names(self) -> set[str]:
        return set(self.jobs) | set(JOBS)

    def define_function(
        self, name: str, spec: dict, namespace: str | None = None, *, trusted: bool = True
    ) -> dict:
        """Declare or replace a function. Untrusted callers (the API) may reference only
        modules under `allow_modules`; an http function's URL must pass the outbound policy."""
        parsed = parse_function(
            name,
            spec,
            namespace,
            allow_modules=None if trusted else self.allow_modules,
            jobs=self.job_names(),
            outbound=self.outbound,
        )
        return self._call(self._op_define, parsed)

    def register(
        self, name: str, fn: Callable[[RunContext], Any], *, namespace: str = "default", **spec
    ) -> dict:
        """Register a Python callable `fn(ctx)` under `name` (its declaration is stored; each
        process registers the callable again, and until then the function's runs wait).

        Settings not given (events, concurrency ...) keep their stored values, so registering
        the callable again never drops the pending events of a join declared through the API.
        """
        stored = self._functions.get((check_namespace(namespace), name))
        base = stored.to_dict() if stored is not None and stored.kind == "python" else {}
        base.pop("ref", None)
        parsed = parse_function(name, {**base, **spec, "kind": "python"}, namespace)
        self.invoker.callables[parsed.key] = fn
        if not self._leading:  # stored when this scheduler takes the lead
            self._standby_defs[parsed.key] = parsed
            return {**parsed.to_dict(), "changed": None, "standby": True}
        return self._call(self._op_define, parsed)

    def register_workflow(self, name: str, wf: Any, **spec) -> dict:
        """Register a `@workflow` as a function: its runs execute it on the lineage store."""
        from livetwin.schedule.workflow import Executor, workflow_job
        from livetwin.schedule.workflow_store import WorkflowStore

        if self._workflows is None:
            if self.lineage is None:
                raise InvalidInput(
                    "this scheduler has no lineage store for workflows",
                    field="lineage",
                    fix="create the Scheduler with lineage=LineageStore(...)",
                )
            self._workflows = Executor(
                self.lineage, kind=self.workflow_kind, results=WorkflowStore(self._open_db)
            )
        return self.register(name, workflow_job(self._workflows, wf), **spec)

    def _op_define(self, spec: FunctionSpec) -> dict:
        old = self._functions.get(spec.key)
        body = spec.to_dict()
        store.upsert_function(self._db, spec.key, dumps(body), self.clock())
        dropped = set(old.events) - set(spec.events) if old is not None else set()
        for groups in self._inbox.get(spec.key, {}).values():
            for name in dropped:
                rows = [(*spec.key, eid) for eid, _ in groups.pop(name, ())]
                if rows:
                    store.take_from_inbox(self._db, rows)
        self._functions[spec.key] = spec
        self._expire_at = 0  # its ttl may have changed
        self._refresh_watch()
        self._touched.add(spec.key)
        return {**body, "changed": old is None or old.to_dict() != body}

    def delete_function(self, name: str, namespace: str | None = None) -> dict:
        return self._call(self._op_delete_function, (check_namespace(namespace), name))

    def _op_delete_function(self, key: Key) -> dict:
        self._function(key)
        users = sorted(s.id for s in self._schedules.values() if s.key == key)
        if users:
            raise Conflict(
                f"function '{key[1]}' is used by schedule(s) {', '.join(users)}",
                field="name",
                fix="delete those schedules first (DELETE /api/schedules/{id})",
            )
        store.delete_function(self._db, key)
        self._inbox.pop(key, None)
        del self._functions[key]
        self._refresh_watch()
        return {"namespace": key[0], "name": key[1], "deleted": True}

    def _function(self, key: Key) -> FunctionSpec:
        spec = self._functions.get(key)
        if spec is None:
            known = sorted(n for ns, n in self._functions if ns == key[0])
            raise NotFound(
                f"no function '{key[1]}' in namespace '{key[0]}'",
                field="function",
                fix="declare it with PUT /api/functions/{name}"
                + (f"; known here: {', '.join(known[:20])}" if known else ""),
            )
        return spec

    def functions(self, namespace: str | None = None) -> list[dict]:
        """Declared functions with their join state (ready and waiting events), queue, last
        run and last error."""
        with self._state_lock:
            keys = sorted(k for k in self._functions if namespace is None or k[0] == namespace)
        return [self.function(name, ns) for ns, name in keys]

    def waiting_events(
        self, namespace: str | None = None, function: str | None = None, limit: int = 100
    ) -> list[dict]:
        """Events waiting in joins (neither consumed nor expired), oldest first, at most
        `limit`: namespace, function, key, id, name, ts and, with the function's ttl, expires."""
        if namespace is not None:
            namespace = check_namespace(namespace)
        with self._state_lock:
            held = [
                (eid, fkey, key, event)
                for fkey, groups in self._inbox.items()
                if namespace in (None, fkey[0]) and function in (None, fkey[1])
                for key, names in groups.items()
                for fifo in names.values()
                for eid, event in fifo
            ]
            ttls = {fkey: spec.ttl_ms for fkey, spec in self._functions.items()}
        out = []
        for eid, fkey, key, event in heapq.nsmallest(limit, held, key=lambda h: (h[0], h[1])):
            item = {"namespace": fkey[0], "function": fkey[1], "key": key, "id": eid}
            item.update(name=event["name"], ts=format_ts(event["ts"]))
            if ttls.get(fkey) is not None:
                item["expires"] = format_ts(event["ts"] + ttls[fkey])
            out.append(item)
        return out

    def function(self, name: str, namespace: str | None = None) -> dict:
        key = (check_namespace(namespace), name)
        with self._state_lock:
            spec = self._function(key)
            joins = []
            for group_key, groups in self._inbox.get(key, {}).items():
                ready = {n: len(groups[n]) for n in spec.events if groups.get(n)}
                if ready:
                    waiting = [n for n in spec.events if n not in ready]
                    joins.append({"key": group_key, "ready": ready, "waiting": waiting})
            running = self._running[key]
            queued = sum(1 for item in self._active.values() if item.key == key) - running
        last, failed = store.last_outcomes(self._db, key)
        return {
            **spec.to_dict(),
            "joins": joins,
            "queued": queued,
            "running": running,
            "registered": self._callable_known(spec),
            "last_run": last_run(last),
            "last_error": None
            if failed is None
            else {"run": failed[0], "finished": format_ts(failed[1]), "error": failed[2]},
        }

    def run_function(
        self, name: str, namespace: str | None = None, args: dict | None = None
    ) -> dict:
        """Queue a run of a function now (manual trigger)."""
        if args is not None and not isinstance(args, dict):
            raise InvalidInput("args must be an object", field="args", fix='e.g. {"type": "pump"}')
        key = (check_namespace(namespace), name)
        run_id = self._call(self._op_run_function, key, args or {})
        return self.run(run_id)

    def _op_run_function(self, key: Key, args: dict) -> str:
        self._function(key)
        return self._new_run(key, {"kind": "manual"}, args=args)

    # ---- schedules -----------------------------------------------------------------------

    def add_schedule(self, body: Any) -> dict:
        """Validate and store a schedule (a trigger bound to a function); its public form."""
        if not isinstance(body, dict):
            raise InvalidInput(
                "a schedule must be a JSON object",
                field="body",
                fix='e.g. {"function": "recalibrate", "trigger": {"kind": "cron", '
                '"cron": "0 3 * * *", "tz": "Europe/Berlin"}}',
            )
        allowed = {"id", "function", "namespace", "trigger", "missed", "args", "enabled"}
        unknown = sorted(set(body) - allowed - {"description"})
        if unknown:
            raise InvalidInput(
                f"unknown field(s): {', '.join(unknown)}",
                field=unknown[0],
                fix=f"use only: {', '.join(sorted(allowed | {'description'}))}",
            )
        sid = body.get("id")
        sid = "sch_" + secrets.token_hex(6) if sid is None else check_name(sid, "id")
        namespace = check_namespace(body.get("namespace"))
        function = check_name(body.get("function"), "function")
        now = self.clock()
        trigger = parse_trigger(body.get("trigger"), now)
        missed = body.get("missed", "once")
        if missed not in MISSED:
            raise InvalidInput(
                f"unknown missed-run policy {missed!r}",
                field="missed",
                fix=f"use one of: {', '.join(MISSED)} (what to do with runs missed while down)",
            )
        args = body.get("args") or {}
        if not isinstance(args, dict):
            raise InvalidInput("args must be an object", field="args", fix='e.g. {"type": "pump"}')
        enabled = body.get("enabled", True)
        if not isinstance(enabled, bool):
            raise InvalidInput("enabled must be true or false", field="enabled", fix="use true")
        if trigger.spec.get("on") == "job" and trigger.spec.get("function") in (None, function):
            raise InvalidInput(
                "a job trigger must name another function, or the function triggers itself",
                field="trigger.function",
                fix="set trigger.function to the function whose runs should start this one",
            )
        sched = Schedule(
            sid, namespace, function, trigger, missed, args, str(body.get("description") or ""),
            enabled, trigger.first_due(now), None, 0, None, now,
        )  # fmt: skip
        return self._call(self._op_add_schedule, sched)

    def _op_add_schedule(self, sched: Schedule) -> dict:
        if sched.id in self._schedules:
            raise Conflict(
                f"schedule '{sched.id}' exists",
                field="id",
                fix="choose another id, or delete the old schedule first",
            )
        spec = self._functions.get(sched.key)
        if spec is None:
            known = sorted(n for ns, n in self._functions if ns == sched.namespace)
            raise InvalidInput(
                f"unknown function '{sched.function}' in namespace '{sched.namespace}'",
                field="function",
                fix="declare it first with PUT /api/functions/{name}"
                + (f"; known here: {', '.join(known[:20])}" if known else ""),
            )
        if sched.trigger.kind == "condition":
            self._init_condition(sched)
        row = (
            sched.id, sched.namespace, sched.function, dumps(sched.trigger.spec), sched.missed,
            dumps(sched.args), sched.description, int(sched.enabled), sched.next_at, sched.created,
        )  # fmt: skip
        store.insert_schedule(self._db, row, list(sched.true_twins))
        self._schedules[sched.id] = sched
        self._refresh_watch()
        return sched.public()

    def schedules(self, namespace: str | None = None) -> list[dict]:
        with self._state_lock:
            return [
                s.public()
                for s in self._schedules.values()
                if namespace is None or s.namespace == namespace
            ]

    def schedule(self, schedule_id: str) -> dict:
        with self._state_lock:
            return self._schedule(schedule_id).public()

    def _schedule(self, schedule_id: str) -> Schedule:
        sched = self._schedules.get(schedule_id)
        if sched is None:
            raise NotFound(
                f"no schedule '{schedule_id}'",
                field="id",
                fix="list schedules with GET /api/schedules",
            )
        return sched

    def update_schedule(self, schedule_id: str, body: Any) -> dict:
        """Enable or disable a schedule (`{"enabled": false}`)."""
        if (
            not isinstance(body, dict)
            or set(body) != {"enabled"}
            or not isinstance(body["enabled"], bool)
        ):
            raise InvalidInput(
                'send {"enabled": true} or {"enabled": false}',
                field="enabled",
                fix="to change a trigger, delete the schedule and create a new one",
            )
        return self._call(self._op_enable, schedule_id, body["enabled"])

    def _op_enable(self, schedule_id: str, enabled: bool) -> dict:
        sched = self._schedule(schedule_id)
        if enabled and not sched.enabled and sched.trigger.kind in TIME_KINDS:
            now = self.clock()
            if sched.next_at is not None and sched.next_at <= now and sched.missed == "skip":
                sched.next_at = sched.trigger.next_after(sched.next_at, now)
        sched.enabled = enabled
        store.set_enabled(self._db, schedule_id, enabled, sched.next_at)
        self._refresh_watch()
        return sched.public()

    def delete_schedule(self, schedule_id: str) -> dict:
        return self._call(self._op_delete_schedule, schedule_id)

    def _op_delete_schedule(self, schedule_id: str) -> dict:
        self._schedule(schedule_id)
        store.delete_schedule(self._db, schedule_id)
        del self._schedules[schedule_id]
        self._system_types.pop(schedule_id, None)
        self._refresh_watch()
        return {"id": schedule_id, "deleted": True}

    def run_schedule(self, schedule_id: str) -> dict:
        """Run a schedule's function now, with the schedule's args (`POST .../run`)."""
        run_id = self._call(self._op_run_schedule, schedule_id)
        return self.run(run_id)

    def _op_run_schedule(self, schedule_id: str) -> str:
        sched = self._schedule(schedule_id)
        return self._new_run(
            sched.key,
            {"kind": "manual", "schedule": sched.id},
            args=sched.args,
            schedule_id=sched.id,
        )

    # ---- system schedules ----------------------------------------------------------------

    def add_system_schedules(self, source: SystemSource, functions: dict[str, dict]) -> None:
        """Keep system schedules (namespace `system`) in step with the twin types: `source(ctype)`
        lists a type's schedules, run by `functions` (name -> declaration, defined in namespace
        `system` when first needed). Applied to every type at start and whenever a type is
        (re)declared; a schedule whose trigger, function and args are unchanged keeps its
        timing."""
        for name, raw in functions.items():
            self._system_functions[name] = parse_function(name, raw, SYSTEM, jobs=self.job_names())
        self._system_sources.append(source)

    def _op_sync_system(self, ctypes: list[Any], everything: bool) -> None:
        """Add, replace and delete system schedules to match `ctypes` (all types when
        `everything`, so schedules of no type at all are deleted too)."""
        names = {ctype.name for ctype in ctypes}
        desired: dict[str, tuple[str, dict]] = {}
        for ctype in ctypes:
            for source in self._system_sources:
                try:
                    bodies = source(ctype)
                except Exception as exc:  # one bad type never stops the others
                    log.warning("system schedules of type %s: %s", ctype.name, exc)
                    continue
                desired.update((body["id"], (ctype.name, body)) for body in bodies)
        for sid, sched in list(self._schedules.items()):
            if not self._derived(sched):
                continue
            if not everything and self._system_types.get(sid) not in names:
                continue
            wanted = desired.get(sid)
            if wanted is None or not self._same_schedule(sched, wanted[1]):
                self._op_delete_schedule(sid)
        now = self.clock()
        for sid, (type_name, body) in desired.items():
            existing = self._schedules.get(sid)
            if existing is not None:
                if not self._derived(existing):
                    log.warning("schedule %s was declared by hand: no system schedule", sid)
                else:
                    self._system_types[sid] = type_name
                continue
            self._system_types[sid] = type_name
            fn = self._system_functions[body["function"]]
            if self._functions.get(fn.key) != fn:
                self._op_define(fn)
            trigger = parse_trigger(body["trigger"], now)
            self._op_add_schedule(
                Schedule(
                    sid,
                    SYSTEM,
                    fn.name,
                    trigger,
                    "skip",
                    body.get("args", {}),
                    body.get("description", ""),
                    True,
                    trigger.first_due(now),
                    None,
                    0,
                    None,
                    now,
                )  # fmt: skip
            )

    def _derived(self, sched: Schedule) -> bool:
        """Whether a schedule is one this scheduler derives (not one declared by hand)."""
        return sched.system and sched.function in self._system_functions

    def _same_schedule(self, sched: Schedule, body: dict) -> bool:
        trigger = parse_trigger(body["trigger"], sched.created)
        return (
            sched.function == body["function"]
            and sched.trigger.spec == trigger.spec
            and sched.args == body.get("args", {})
        )
