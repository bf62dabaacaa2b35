"""The scheduler service: triggers, event joins, and runs of functions on a worker pool.

One writer thread owns all scheduler state: every change (a posted event, a due trigger, a run
starting or finishing) is an operation on its queue, applied in groups that share one database
transaction (SQLite or PostgreSQL, see store.py), so a posted event is durable before the call
returns and a join consumes its events in the same transaction that records the run. Functions
run on a thread pool with a concurrency limit per function; a failing or slow one only occupies
its own slots.
"""

from __future__ import annotations

import heapq
import logging
import queue
import secrets
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from livetwin.engine.events import Event, Notice, StateChanged, TypeDefined
from livetwin.errors import Conflict, InvalidInput, LivetwinError, NotFound, Unavailable
from livetwin.expr import Compiled, compile_expression
from livetwin.namespaces import check_namespace
from livetwin.schedule import store
from livetwin.schedule.functions import (
    MAX_LOG_CHARS,
    FunctionSpec,
    Invoker,
    RunContext,
    json_result,
    parse_function,
)
from livetwin.schedule.triggers import (
    MISSED,
    TIME_KINDS,
    Trigger,
    check_name,
    due_instants,
    parse_trigger,
)
from livetwin.timefmt import format_ts

log = logging.getLogger(__name__)

RUN_STATES = ("queued", "running", "succeeded", "failed")
MAX_EVENT_BYTES = 64 * 1024
MAX_TRIGGER_TWINS = 1_000
MAX_BACKOFF_S = 300.0
DISPATCH_BATCH = 64
INSERT_RUN = (
    "INSERT INTO runs (id, namespace, function, schedule_id, state, trigger, args, events, "
    "created) VALUES (?,?,?,?,?,?,?,?,?)"
)
_STOP = object()
Key = tuple[str, str]  # (namespace, function name)


@dataclass
class Schedule:
    id: str
    namespace: str
    function: str
    trigger: Trigger
    missed: str
    args: dict
    description: str
    enabled: bool
    next_at: int | None
    last_fired: int | None
    fired: int
    last_error: str | None
    created: int
    true_twins: set[str] = field(default_factory=set)  # condition: twins now true
    pending_run: str | None = None  # event triggers: a queued run new events merge into
    compiled: tuple[int, Compiled] | None = None  # condition: (type version, expression)

    @property
    def key(self) -> Key:
        return self.namespace, self.function

    def public(self) -> dict:
        return {
            "id": self.id,
            "namespace": self.namespace,
            "function": self.function,
            "trigger": self.trigger.spec,
            "missed": self.missed,
            "args": self.args,
            "description": self.description,
            "enabled": self.enabled,
            "next": format_ts(self.next_at) if self.next_at is not None else None,
            "last_fired": format_ts(self.last_fired) if self.last_fired is not None else None,
            "fired": self.fired,
            "last_error": self.last_error,
            "created": format_ts(self.created),
        }


@dataclass
class RunItem:
    """A run that is queued, running or waiting to retry (in memory, mirrored in `runs`)."""

    id: str
    key: Key
    schedule_id: str | None
    trigger: dict
    args: dict
    events: list[dict]
    attempts: int = 0
    logs: list[str] = field(default_factory=list)
    started: int | None = None  # set by the pool thread; written with the outcome


@dataclass
class _Op:
    fn: Callable
    args: tuple
    future: Future | None


class Scheduler:
    """Triggers, event joins and function runs for one platform (state in `schedule.db`, or a
    PostgreSQL schema when `database_url` / LIVETWIN_DATABASE_URL is set).

    `tick()` fires the time triggers due at `platform.clock()`; the service's own thread calls
    it when a trigger falls due, and tests with a FakeClock call it directly after moving time.
    """

    def __init__(
        self,
        platform: Any,
        *,
        workers: int = 16,
        grace_ms: int = 60_000,
        max_wait_s: float = 0.5,
        catch_up_limit: int = 1_000,
        event_retention_ms: int = 7 * 86_400_000,
        allow_modules: tuple[str, ...] = (),
        database_url: str | None = None,
    ):
        self.platform = platform
        self.clock = platform.clock
        self.grace_ms = grace_ms
        self.max_wait_s = max_wait_s
        self.catch_up_limit = catch_up_limit
        self.event_retention_ms = event_retention_ms
        self.allow_modules = allow_modules
        self.path = platform.path / "schedule.db"
        self._store, self._owner_lock = store.open_owned(platform.path, database_url)
        self._sqlite = self._store.dialect == "sqlite"
        self._sync = threading.local()  # the synchronous level of this thread's SQLite connection
        self._state_lock = threading.RLock()
        self._changed = threading.Condition()
        self.invoker = Invoker()
        self._workflows = None  # an Executor, made by the first register_workflow
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: int | None = None
        self._stopping = False
        self._closed = False
        self._log_handler = _RunLogHandler()
        self._executing: set[str] = set()  # runs inside a function call right now
        self._load()

    # ---- lifecycle -----------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        """All durable state, read in one transaction (a consistent snapshot); nothing in
        memory changes, so a database that fails here leaves the scheduler as it was."""
        with self._store.write() as db:
            return {
                "functions": db.execute("SELECT namespace, name, spec FROM functions").fetchall(),
                "schedules": db.execute(
                    "SELECT id, namespace, function, trigger, missed, args, description, "
                    "enabled, next_at, last_fired, fired, last_error, created FROM schedules "
                    "ORDER BY created"
                ).fetchall(),
                "conditions": db.execute("SELECT schedule_id, twin FROM conditions").fetchall(),
                "inbox": db.execute(
                    "SELECT i.namespace, i.function, e.id, e.name, e.key, e.data, e.ts "
                    "FROM inbox i JOIN events e ON e.id = i.event_id ORDER BY e.id"
                ).fetchall(),
                "last_event_id": store.last_event_id(self._store),
                "runs": db.execute(
                    "SELECT id, namespace, function, schedule_id, trigger, args, events, "
                    "attempts, logs FROM runs WHERE state IN ('queued', 'running') ORDER BY n"
                ).fetchall(),
            }

    def _load(self) -> None:
        """Read functions, schedules, pending joins and unfinished runs from the database."""
        rows = self._read_state()
        self._reload = False  # set when memory may hold what a failed transaction undid
        self._functions: dict[Key, FunctionSpec] = {}
        for ns, name, spec in rows["functions"]:
            self._functions[(ns, name)] = parse_function(
                name, orjson.loads(spec), ns, resolve=False
            )
        self._schedules: dict[str, Schedule] = {}
        for row in rows["schedules"]:
            sid, ns, fn, trig, missed, args, desc, enabled, nxt, last, fired, err, created = row
            trigger = parse_trigger(orjson.loads(trig), created)
            self._schedules[sid] = Schedule(
                sid, ns, fn, trigger, missed, orjson.loads(args), desc, bool(enabled), nxt,
                last, fired, err, created,
            )  # fmt: skip
        for sid, twin in rows["conditions"]:
            if sid in self._schedules:
                self._schedules[sid].true_twins.add(twin)
        # inbox[(ns, fn)][key][event name] = FIFO of (event id, event dict)
        self._inbox: dict[Key, dict[str | None, dict[str, deque]]] = {}
        for ns, fn, eid, name, key, data, ts in rows["inbox"]:
            event = _event_dict(eid, name, key, data, ts)
            self._pending((ns, fn), key, name).append((eid, event))
        self._active: dict[str, RunItem] = {}
        self._queues: dict[Key, deque[str]] = {}
        self._running: Counter = Counter()
        self._delayed: list[tuple[float, str]] = []
        self._touched: set[Key] = set()
        self._notices: list[Notice] = []
        self._retried: list[tuple] = []  # outcomes of this group, written in bulk
        self._finished: list[tuple] = []
        self._posted = 0
        self._run_rows: list[tuple] | None = None
        self._next_event_id = rows["last_event_id"] + 1
        for row in rows["runs"]:
            run_id, ns, fn, sid, trig, args, events, attempts, logs = row
            item = RunItem(
                run_id, (ns, fn), sid, orjson.loads(trig), orjson.loads(args),
                orjson.loads(events), attempts, orjson.loads(logs) if logs else [],
            )  # fmt: skip
            self._enqueue(item)
        self._refresh_watch()

    def start(self) -> Scheduler:
        """Start the worker pool, the scheduler thread and the bus subscription (idempotent)."""
        if self._thread is not None:
            return self
        if self._closed:
            raise Unavailable("the scheduler was stopped", fix="create a new Scheduler")
        with self._state_lock, self._store.write() as db:
            db.execute(
                "UPDATE runs SET state='queued' WHERE state='running'"
            )  # interrupted by the last stop or crash: they run again
            self._prune_events(self.clock())
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="livetwin-run")
        logging.getLogger().addHandler(self._log_handler)
        self._thread = threading.Thread(target=self._loop, name="livetwin-scheduler", daemon=True)
        self._thread.start()
        self._token = self.platform.bus.subscribe(self._on_bus)
        self._queue.put(_Op(self._op_wake, (), None))  # dispatch recovered runs, first tick
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop taking work, wait up to `timeout_s` for running functions, then close.

        Runs still queued (or running past the timeout) stay in the database and run again
        on the next start.
        """
        if self._closed:
            return
        if self._token is not None:
            self.platform.bus.unsubscribe(self._token)
        self._stopping = True
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while sum(self._running.values()) and time.monotonic() < deadline:
                self._changed.wait(0.05)
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        logging.getLogger().removeHandler(self._log_handler)
        self.invoker.close()
        if self._workflows is not None:
            self._workflows.close()
        with self._state_lock:
            self._store.close()
        self._owner_lock.close()

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- the writer thread ---------------------------------------------------------------

    @property
    def _db(self) -> Any:
        """The connection for this thread: inside `_apply`'s transaction, that transaction."""
        return self._store.read()

    def _call(self, fn: Callable, *args) -> Any:
        """Apply an operation on the writer thread and wait for its result."""
        if self._closed or self._stopping:
            raise Unavailable("the scheduler is stopped", fix="start the server again")
        op = _Op(fn, args, Future())
        if self._thread is None:  # not started: nothing else runs, apply right here
            with self._state_lock:
                self._apply([op])
        else:
            self._queue.put(op)
        return op.future.result(timeout=60)

    def _submit(self, fn: Callable, *args) -> None:
        """Queue an operation without waiting (worker threads, the bus callback)."""
        if not self._closed:
            self._queue.put(_Op(fn, args, None))

    def _loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._wait_s())
            except queue.Empty:
                first = None
            ops = [] if first is None else [first]
            while len(ops) < 10_000:
                try:
                    ops.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(op is _STOP for op in ops)
            try:
                with self._state_lock:
                    self._apply([op for op in ops if op is not _STOP])
            except Exception:
                log.exception("the scheduler loop failed; continuing")
            if stop:
                return

    def _wait_s(self) -> float:
        waits = [self.max_wait_s]
        if self._next_due is not None:
            waits.append((self._next_due - self.clock()) / 1000)
        if self._delayed:
            waits.append(self._delayed[0][0] - time.monotonic())
        return max(0.0, min(waits))

    def _apply(self, ops: list[_Op]) -> None:
        """Apply operations, release due retries and fire due triggers in one transaction."""
        now = self.clock()
        due = self._next_due is not None and self._next_due <= now and not self._stopping
        retry = bool(self._delayed) and self._delayed[0][0] <= time.monotonic()
        if not ops and not due and not retry and not self._reload:  # a reload is retried
            return
        if self._reload and not self._recovered(ops):
            return
        # Acknowledged work (a posted event, a new schedule) is fsynced before the answer; run
        # bookkeeping alone is not on SQLite: an OS crash may lose it, and those runs then run
        # again. (A PostgreSQL commit is durable either way.)
        if self._sqlite:
            self._set_sync("FULL" if any(op.future is not None for op in ops) else "NORMAL")
        results: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            with self._store.write() as db:
                for op in ops:
                    if op.future is None:  # internal bookkeeping: no caller to answer
                        try:
                            op.fn(*op.args)
                        except Exception:
                            log.exception("scheduler operation %s failed", op.fn.__name__)
                        continue
                    db.execute("SAVEPOINT op")  # a caller's error undoes only its own writes
                    try:
                        results.append((op, op.fn(*op.args), None))
                        db.execute("RELEASE op")
                    except Exception as exc:
                        db.execute("ROLLBACK TO op")
                        db.execute("RELEASE op")
                        if not isinstance(exc, LivetwinError):
                            log.exception("scheduler operation %s failed", op.fn.__name__)
                        results.append((op, None, exc))
                if due:
                    self._fire_due(now)
                self._release_retries()
                self._write_outcomes()
        except BaseException as exc:  # rolled back by write()
            log.exception("a scheduler transaction failed; reloading its state")
            error = Unavailable(
                f"nothing was stored: {exc}", fix="check the disk or the database and retry"
            )
            for op in ops:
                if op.future is not None:
                    op.future.set_exception(error)
            self._reload = True
            self._recovered([])
            return
        for op, value, exc in results:
            if op.future is not None:
                if exc is None:
                    op.future.set_result(value)
                else:
                    op.future.set_exception(exc)
        notices, self._notices = self._notices, []
        for notice in notices:
            self.platform.bus.publish(notice)
        self._dispatch()
        with self._changed:
            self._changed.notify_all()

    def _set_sync(self, level: str) -> None:
        """PRAGMA synchronous on this thread's SQLite connection, when it changes."""
        if getattr(self._sync, "level", "FULL") != level:  # servicedb connects with FULL
            self._db.execute(f"PRAGMA synchronous={level}")
            self._sync.level = level

    def _recovered(self, ops: list[_Op]) -> bool:
        """Reload the durable state after a failed transaction; False (and `ops` answered
        Unavailable) while the database cannot be read."""
        try:
            self._recover()
            return True
        except Exception as exc:
            log.warning("the scheduler cannot reload its state yet: %s", exc)
            error = Unavailable(
                f"the scheduler's database is unavailable: {exc}",
                fix="check the disk or the database and retry",
            )
            for op in ops:
                if op.future is not None:
                    op.future.set_exception(error)
            return False

    def _recover(self) -> None:
        """After a failed commit: reload what is durable, keeping track of runs on the pool
        (they finish normally; they must not start a second time)."""
        queued = {rid for q in self._queues.values() for rid in q}
        queued.update(rid for _, rid in self._delayed)
        dispatched = {rid: item for rid, item in self._active.items() if rid not in queued}
        running = self._running
        self._load()
        self._running = running
        for rid, item in dispatched.items():
            self._active[rid] = item
            waiting = self._queues.get(item.key)
            if waiting is not None and rid in waiting:
                waiting.remove(rid)

    def _op_wake(self) -> None:
        """Dispatch whatever is queued (after start) and let the loop fire due triggers."""
        self._touched.update(self._queues)

    # ---- runs ----------------------------------------------------------------------------

    def _new_run(
        self,
        key: Key,
        trigger: dict,
        *,
        args: dict | None = None,
        events: list[dict] | None = None,
        schedule_id: str | None = None,
    ) -> str:
        spec = self._functions.get(key)
        if spec is None:
            raise NotFound(
                f"no function '{key[1]}' in namespace '{key[0]}'",
                field="function",
                fix="declare it with PUT /api/functions/{name} or scheduler.register",
            )
        merged = {**spec.args, **(args or {})}
        item = RunItem(
            "run_" + secrets.token_hex(8), key, schedule_id, trigger, merged, events or []
        )
        row = (
            item.id, key[0], key[1], schedule_id, "queued", _dumps(trigger), _dumps(merged),
            _dumps(item.events), self.clock(),
        )  # fmt: skip
        if self._run_rows is not None:
            self._run_rows.append(row)  # written in bulk by the caller
        else:
            self._db.execute(INSERT_RUN, row)
        self._enqueue(item)
        return item.id

    def _enqueue(self, item: RunItem) -> None:
        self._active[item.id] = item
        self._queues.setdefault(item.key, deque()).append(item.id)
        self._touched.add(item.key)

    def _dispatch(self) -> None:
        """Hand queued runs to the pool, within each function's concurrency limit.

        A slot takes a short FIFO batch of its function's runs and runs them one after another,
        so a busy function does not pay a round trip through this thread per run.
        """
        if self._pool is None or self._stopping:
            return
        touched, self._touched = self._touched, set()
        for key in touched:
            waiting = self._queues.get(key)
            spec = self._functions.get(key)
            if spec is not None and not self._callable_known(spec):
                continue  # waits until this process registers the callable
            limit = spec.concurrency if spec is not None else 1
            while waiting and self._running[key] < limit:
                size = min(DISPATCH_BATCH, -(-len(waiting) // (limit - self._running[key])))
                ids = [waiting.popleft() for _ in range(size)]
                items = [self._active[rid] for rid in ids if rid in self._active]
                if not items:
                    continue
                for item in items:
                    sched = self._schedules.get(item.schedule_id or "")
                    if sched is not None and sched.pending_run == item.id:
                        sched.pending_run = None  # started: later events start another run
                    item.attempts += 1
                self._running[key] += 1
                self._pool.submit(self._execute_batch, key, spec, items)
            if not waiting:
                self._queues.pop(key, None)

    def _callable_known(self, spec: FunctionSpec) -> bool:
        """False for a function registered in code that this process has not registered yet."""
        return spec.kind != "python" or spec.ref is not None or spec.key in self.invoker.callables

    def _execute_batch(self, key: Key, spec: FunctionSpec | None, items: list[RunItem]) -> None:
        try:
            for item in items:
                if self._stopping:
                    break  # still queued in the database: runs after the next start
                self._execute(item, spec, item.attempts)
        finally:
            self._submit(self._op_slot_free, key)

    def _op_slot_free(self, key: Key) -> None:
        self._running[key] -= 1
        self._touched.add(key)

    def _execute(self, item: RunItem, spec: FunctionSpec | None, attempt: int) -> None:
        """One attempt of a run, on a pool thread."""
        item.started = item.started or self.clock()
        self._executing.add(item.id)
        ctx = RunContext(
            item.id, item.key[1], item.key[0], attempt, item.args, item.events, item.trigger,
            self.platform, item.logs,
        )  # fmt: skip
        result, error = None, None
        started = time.perf_counter()
        self._log_handler.attach(ctx)
        try:
            if spec is None:
                raise LookupError(f"function '{item.key[1]}' was deleted")
            result = self.invoker.invoke(spec, ctx)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_LOG_CHARS]
            ctx.log(f"attempt {attempt} failed: {error}")
            if not isinstance(exc, LookupError):
                for line in traceback.format_exc().splitlines()[-6:]:
                    ctx.log(line)
        finally:
            self._log_handler.detach()
        duration_ms = (time.perf_counter() - started) * 1000
        self._executing.discard(item.id)
        self._submit(self._op_finished, item.id, spec, result, error, duration_ms, self.clock())

    def _op_finished(
        self,
        run_id: str,
        spec: FunctionSpec | None,
        result: Any,
        error: str | None,
        duration_ms: float,
        now: int,
    ) -> None:
        item = self._active.get(run_id)
        if item is None:
            return
        if error is not None and spec is not None and item.attempts <= spec.retries:
            delay = min(spec.backoff_s * 2 ** (item.attempts - 1), MAX_BACKOFF_S)
            item.logs.append(f"retrying in {delay:g} s")
            heapq.heappush(self._delayed, (time.monotonic() + delay, run_id))
            self._retried.append((item.attempts, item.started, error, _dumps(item.logs), run_id))
            return
        state = "failed" if error is not None else "succeeded"
        result_json = json_result(result) if error is None else None
        logs = _dumps(item.logs) if item.logs else None
        self._finished.append(
            (state, item.attempts, item.started, result_json, error, logs, now, duration_ms, run_id)
        )
        del self._active[run_id]
        self._notices.append(
            Notice(
                "job",
                run_id,
                {
                    "run": run_id,
                    "namespace": item.key[0],
                    "function": item.key[1],
                    "schedule": item.schedule_id,
                    "state": state,
                    "attempts": item.attempts,
                    "error": error,
                    "result": orjson.loads(result_json) if result_json is not None else None,
                    "duration_ms": round(duration_ms, 3),
                    "finished": format_ts(now),
                },
            )
        )

    def _write_outcomes(self) -> None:
        """Write the attempts and runs that finished in this group, in bulk."""
        if self._retried:
            self._db.executemany(
                "UPDATE runs SET state='queued', attempts=?, started=?, error=?, logs=? WHERE id=?",
                self._retried,
            )
            self._retried = []
        if self._finished:
            self._db.executemany(
                "UPDATE runs SET state=?, attempts=?, started=?, result=?, error=?, logs=?, "
                "finished=?, duration_ms=? WHERE id=?",
                self._finished,
            )
            self._finished = []

    def _release_retries(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, run_id = heapq.heappop(self._delayed)
            item = self._active.get(run_id)
            if item is not None:
                self._queues.setdefault(item.key, deque()).append(run_id)
                self._touched.add(item.key)

    # ---- functions -----------------------------------------------------------------------

    def define_function(
        self, name: str, spec: dict, namespace: str | None = None, *, trusted: bool = True
    ) -> dict:
        """Declare or replace a function. Untrusted callers (the API) may reference only
        modules under `allow_modules`."""
        parsed = parse_function(
            name, spec, namespace, allow_modules=None if trusted else self.allow_modules
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
        return self._call(self._op_define, parsed)

    def register_workflow(self, name: str, wf: Any, **spec) -> dict:
        """Register a `@workflow` as a function: its runs execute it on the platform's lineage."""
        from livetwin.schedule.workflow import Executor, workflow_job

        if self._workflows is None:
            self._workflows = Executor(self.platform.lineage)
        return self.register(name, workflow_job(self._workflows, wf), **spec)

    def _op_define(self, spec: FunctionSpec) -> dict:
        old = self._functions.get(spec.key)
        body = spec.to_dict()
        self._db.execute(
            "INSERT INTO functions (namespace, name, spec, created) VALUES (?,?,?,?) "
            "ON CONFLICT (namespace, name) DO UPDATE SET spec=excluded.spec",
            (spec.namespace, spec.name, _dumps(body), self.clock()),
        )
        dropped = set(old.events) - set(spec.events) if old is not None else set()
        for groups in self._inbox.get(spec.key, {}).values():
            for name in dropped:
                for eid, _ in groups.pop(name, ()):
                    self._db.execute(
                        "DELETE FROM inbox WHERE namespace=? AND function=? AND event_id=?",
                        (*spec.key, eid),
                    )
        self._functions[spec.key] = spec
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
        self._db.execute("DELETE FROM functions WHERE namespace=? AND name=?", key)
        self._db.execute("DELETE FROM inbox WHERE namespace=? AND function=?", key)
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
        last = self._db.execute(
            "SELECT id, state, finished, error FROM runs WHERE namespace=? AND function=? "
            "AND state IN ('succeeded', 'failed') ORDER BY n DESC LIMIT 1",
            key,
        ).fetchall()
        failed = self._db.execute(
            "SELECT id, finished, error FROM runs WHERE namespace=? AND function=? "
            "AND state='failed' ORDER BY n DESC LIMIT 1",
            key,
        ).fetchall()
        return {
            **spec.to_dict(),
            "joins": joins,
            "queued": queued,
            "running": running,
            "registered": self._callable_known(spec),
            "last_run": _last_run(last[0] if last else None),
            "last_error": None
            if not failed
            else {"run": failed[0][0], "finished": format_ts(failed[0][1]), "error": failed[0][2]},
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
        self._db.execute(
            "INSERT INTO schedules (id, namespace, function, trigger, missed, args, description, "
            "enabled, next_at, created) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                sched.id, sched.namespace, sched.function, _dumps(sched.trigger.spec),
                sched.missed, _dumps(sched.args), sched.description, int(sched.enabled),
                sched.next_at, sched.created,
            ),
        )  # fmt: skip
        self._db.executemany(
            "INSERT INTO conditions (schedule_id, twin) VALUES (?,?)",
            [(sched.id, t) for t in sched.true_twins],
        )
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
        self._db.execute(
            "UPDATE schedules SET enabled=?, next_at=? WHERE id=?",
            (int(enabled), sched.next_at, schedule_id),
        )
        self._refresh_watch()
        return sched.public()

    def delete_schedule(self, schedule_id: str) -> dict:
        return self._call(self._op_delete_schedule, schedule_id)

    def _op_delete_schedule(self, schedule_id: str) -> dict:
        self._schedule(schedule_id)
        self._db.execute("DELETE FROM schedules WHERE id=?", (schedule_id,))
        self._db.execute("DELETE FROM conditions WHERE schedule_id=?", (schedule_id,))
        del self._schedules[schedule_id]
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

    # ---- time triggers -------------------------------------------------------------------

    def tick(self) -> None:
        """Fire every time trigger due at `platform.clock()` now (the loop calls this too)."""
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
            for at in instants:
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
            if not instants:
                log.info("schedule %s: skipped runs missed before %s", sched.id, format_ts(now))
            sched.next_at = following
            sched.fired += len(instants)
            sched.last_fired = now if instants else sched.last_fired
            if following is None:
                sched.enabled = False
            self._db.execute(
                "UPDATE schedules SET next_at=?, enabled=?, fired=?, last_fired=?, last_error=? "
                "WHERE id=?",
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

    # ---- events: posted and from the engine ----------------------------------------------

    def post_event(
        self, name: str, data: Any = None, key: str | None = None, namespace: str | None = None
    ) -> dict:
        """Store an event durably, feed joins and event triggers; {id, runs} once durable."""
        return self.post_events([{"name": name, "data": data, "key": key, "namespace": namespace}])[
            0
        ]

    def post_events(self, events: list[dict]) -> list[dict]:
        """Like `post_event` for many events in order, sharing one transaction."""
        checked = [
            _check_event(e, f"[{i}]" if len(events) > 1 else "") for i, e in enumerate(events)
        ]
        return self._call(self._op_events, checked)

    def _op_events(self, events: list[tuple[str, str, str | None, bytes]]) -> list[dict]:
        """Store events, feed joins and event triggers; rows are written in bulk at the end
        (an event consumed by a join at once never enters the inbox)."""
        now = self.clock()
        out = []
        event_rows: list[tuple] = []
        waiting: dict[tuple[str, str, int], None] = {}  # inbox rows to add (ordered set)
        consumed: list[tuple[str, str, int]] = []  # inbox rows to delete
        self._run_rows = []
        try:
            for namespace, name, key, data in events:
                eid = self._next_event_id
                self._next_event_id += 1
                event_rows.append((eid, namespace, name, key, data, now))
                event = _event_dict(eid, name, key, data, now)
                runs = []
                for fkey in self._subscribers.get((namespace, name), ()):
                    self._pending(fkey, key, name).append((eid, event))
                    waiting[(*fkey, eid)] = None
                    run_id = self._join(fkey, key, waiting, consumed)
                    if run_id is not None:
                        runs.append(run_id)
                if "event" in self._watch_sources:
                    runs.extend(self._named_event_runs(namespace, name, event))
                out.append({"id": eid, "name": name, "key": key, "runs": runs})
            db = self._db
            db.executemany(
                "INSERT INTO events (id, namespace, name, key, data, ts) VALUES (?,?,?,?,?,?)",
                event_rows,
            )
            db.executemany(
                "INSERT INTO inbox (namespace, function, event_id) VALUES (?,?,?)", waiting
            )
            db.executemany(
                "DELETE FROM inbox WHERE namespace=? AND function=? AND event_id=?", consumed
            )
            db.executemany(INSERT_RUN, self._run_rows)
        finally:
            self._run_rows = None
        self._posted += len(events)
        if self._posted >= 100_000:
            self._prune_events(now)
        return out

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
        store.keep_last_event_id(self._db, self._next_event_id - 1)  # deleted ids stay used
        self._db.execute(
            "DELETE FROM events WHERE ts < ? AND id NOT IN (SELECT event_id FROM inbox)",
            (now - self.event_retention_ms,),
        )

    def _on_bus(self, event: Event) -> None:
        """On the publishing thread: hand matching engine events to the scheduler thread."""
        if self._stopping:
            return
        if isinstance(event, StateChanged):
            applied = event.applied
            if applied.type in self._watch_types or (
                None in self._watch_types and applied.type is not None
            ):
                twins = list(dict.fromkeys(applied.twins))
                self._submit(self._op_state, applied.type, twins, list(applied.created), event.seq)
        elif isinstance(event, TypeDefined) and "type" in self._watch_sources:
            info = {"type": event.ctype.name, "version": event.ctype.version, "seq": event.seq}
            self._submit(self._op_source, "type", info)
        elif isinstance(event, Notice) and event.kind == "job" and "job" in self._watch_sources:
            self._submit(self._op_source, "job", event.data)

    def _op_state(self, type_name: str, twins: list[str], created: list[str], seq: int) -> None:
        for sched in list(self._schedules.values()):
            spec = sched.trigger.spec
            if not sched.enabled or spec.get("type", type_name) != type_name:
                continue
            if sched.trigger.kind == "condition":
                self._evaluate_condition(sched, twins)
            elif sched.trigger.kind == "event" and spec["on"] in ("state", "created"):
                picked = twins if spec["on"] == "state" else created
                prefix = spec.get("twin_prefix")
                if prefix is not None:
                    picked = [t for t in picked if t.startswith(prefix)]
                if picked:
                    self._fire_event(sched, {"type": type_name, "twins": picked, "seq": seq})

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
            self._db.execute(
                "UPDATE runs SET trigger=? WHERE id=?", (_dumps(pending.trigger), pending.id)
            )
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
        self._db.execute(
            "UPDATE schedules SET fired=?, last_fired=? WHERE id=?",
            (sched.fired, sched.last_fired, sched.id),
        )

    # ---- conditions ----------------------------------------------------------------------

    def _condition_values(self, sched: Schedule, twins: list[str] | None) -> dict[str, bool]:
        """twin -> whether the condition holds now (all twins of the type when `twins` is None)."""
        spec = sched.trigger.spec
        with self.platform.lock:
            st = self.platform.engine.states.get(spec["type"])
            if st is None:
                raise InvalidInput(
                    f"no twin type '{spec['type']}'",
                    field="trigger.type",
                    fix=f"declare it with PUT /api/types/{spec['type']}",
                )
            version = st.ctype.version
            if sched.compiled is None or sched.compiled[0] != version:
                compiled = compile_expression(
                    spec["when"], st.col, allow_windows=False, field="trigger.when"
                )
                sched.compiled = (version, compiled)
            compiled = sched.compiled[1]
            if twins is None:
                names = list(st.ids)
            else:
                names = [t for t in twins if t in st.index]
            prefix = spec.get("twin_prefix")
            if prefix is not None:
                names = [t for t in names if t.startswith(prefix)]
            rows = np.fromiter((st.index[t] for t in names), np.int64, len(names))
            env = {n: st.data[st.col[n], rows] for n in compiled.names}
            with np.errstate(invalid="ignore"):
                truth = compiled.evaluate(env, size=len(rows)) > 0.5
        return dict(zip(names, truth.tolist(), strict=True))

    def _init_condition(self, sched: Schedule) -> None:
        """Twins already true when the schedule is created do not fire: only rising edges do."""
        sched.true_twins = {t for t, v in self._condition_values(sched, None).items() if v}

    def _evaluate_condition(self, sched: Schedule, twins: list[str]) -> None:
        try:
            values = self._condition_values(sched, twins)
        except LivetwinError as exc:
            if sched.last_error != exc.message:
                sched.last_error = exc.message
                self._db.execute(
                    "UPDATE schedules SET last_error=? WHERE id=?", (exc.message, sched.id)
                )
            return
        rising = [t for t, v in values.items() if v and t not in sched.true_twins]
        falling = [t for t, v in values.items() if not v and t in sched.true_twins]
        if falling:
            sched.true_twins.difference_update(falling)
            self._db.executemany(
                "DELETE FROM conditions WHERE schedule_id=? AND twin=?",
                [(sched.id, t) for t in falling],
            )
        if not rising:
            return
        sched.true_twins.update(rising)
        self._db.executemany(
            "INSERT INTO conditions (schedule_id, twin) VALUES (?,?) ON CONFLICT DO NOTHING",
            [(sched.id, t) for t in rising],
        )
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
        self._db.execute(
            "UPDATE schedules SET fired=?, last_fired=? WHERE id=?",
            (sched.fired, sched.last_fired, sched.id),
        )

    # ---- runs: reads ---------------------------------------------------------------------

    def runs(
        self,
        *,
        function: str | None = None,
        state: str | None = None,
        namespace: str | None = None,
        schedule: str | None = None,
        limit: int = 100,
    ) -> list[dict]:
        """Runs, newest first, filtered by function, state, namespace and schedule."""
        if state is not None and state not in RUN_STATES:
            raise InvalidInput(
                f"unknown run state '{state}'",
                field="state",
                fix=f"use one of: {', '.join(RUN_STATES)}",
            )
        if not 1 <= limit <= 1000:
            raise InvalidInput(
                "limit must be between 1 and 1000", field="limit", fix="use e.g. limit=100"
            )
        where, args = [], []
        for column, value in (
            ("namespace", namespace),
            ("function", function),
            ("state", state),
            ("schedule_id", schedule),
        ):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        sql = f"SELECT {store.RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._db.execute(sql + " ORDER BY n DESC LIMIT ?", (*args, limit)).fetchall()
        return [self._live(store.run_dict(row, logs=False)) for row in rows]

    def run(self, run_id: str) -> dict:
        """One run with its logs, result or error."""
        rows = self._db.execute(
            f"SELECT {store.RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)
        ).fetchall()
        if not rows:
            raise NotFound(f"no run '{run_id}'", field="id", fix="list runs with GET /api/runs")
        return self._live(store.run_dict(rows[0]))

    def _live(self, run: dict) -> dict:
        """A stored run with what only memory knows yet: that it is running, and its attempt."""
        item = self._active.get(run["id"])
        if item is not None and run["id"] in self._executing:
            run.update(state="running", attempts=item.attempts, started=format_ts(item.started))
        return run

    def wait(self, run_id: str, timeout_s: float = 30.0) -> dict:
        """Block until a run has finished (succeeded or failed); the run."""
        self._wait_until(lambda: run_id not in self._active, timeout_s, f"run {run_id}")
        return self.run(run_id)

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Block until no run is queued, running or waiting to retry."""
        self._wait_until(lambda: not self._active and self._queue.empty(), timeout_s, "runs")

    def _wait_until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        # `done` reads state between groups (under the state lock), so what it sees is committed
        deadline = time.monotonic() + timeout_s
        while True:
            with self._state_lock:
                if done():
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what} still active after {timeout_s} s")
            with self._changed:
                self._changed.wait(min(left, 0.05))

    def stats(self) -> dict:
        with self._state_lock:
            return {
                "functions": len(self._functions),
                "schedules": len(self._schedules),
                "active_runs": len(self._active),
                "running": sum(self._running.values()),
                "pending_events": sum(
                    len(d) for g in self._inbox.values() for n in g.values() for d in n.values()
                ),
                "runs": self._runs_by_state(),
            }

    def _runs_by_state(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT state, count(*) FROM runs GROUP BY state"))


class _RunLogHandler(logging.Handler):
    """Copies log records emitted on a pool thread during a run into that run's log."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self._local = threading.local()

    def attach(self, ctx: RunContext) -> None:
        self._local.ctx = ctx

    def detach(self) -> None:
        self._local.ctx = None

    def emit(self, record: logging.LogRecord) -> None:
        ctx = getattr(self._local, "ctx", None)
        if ctx is not None and not record.name.startswith("livetwin.schedule"):
            try:
                ctx.log(f"{record.levelname} {record.name}: {record.getMessage()}")
            except Exception:
                pass


def _check_event(raw: Any, where: str) -> tuple[str, str, str | None, bytes]:
    if not isinstance(raw, dict):
        raise InvalidInput(
            "an event must be a JSON object",
            field=f"body{where}",
            fix='send {"name": "data-ready", "data": {...}, "key": "pump-1"}',
        )
    unknown = sorted(set(raw) - {"name", "data", "key", "namespace"})
    if unknown:
        raise InvalidInput(
            f"unknown field(s): {', '.join(unknown)}",
            field=f"{unknown[0]}{where}",
            fix="use only name, data, key and namespace",
        )
    name = check_name(raw.get("name"), f"name{where}")
    namespace = check_namespace(raw.get("namespace"), f"namespace{where}")
    key = raw.get("key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 200):
        raise InvalidInput(
            "key must be a string of 1-200 characters",
            field=f"key{where}",
            fix="use a correlation id such as a twin id, or leave key out for a global join",
        )
    try:
        data = orjson.dumps(raw.get("data"))
    except TypeError as exc:
        raise InvalidInput(
            f"data is not JSON: {exc}", field=f"data{where}", fix="send JSON data"
        ) from None
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidInput(
            f"data is larger than {MAX_EVENT_BYTES} bytes",
            field=f"data{where}",
            fix="send a reference (a URL or a twin id) instead of the payload",
        )
    return namespace, name, key, data


def _event_dict(eid: int, name: str, key: str | None, data: bytes, ts: int) -> dict:
    return {"id": eid, "name": name, "key": key, "data": orjson.loads(data), "ts": ts}


def _last_run(row: tuple | None) -> dict | None:
    if row is None:
        return None
    run_id, state, finished, error = row
    return {"run": run_id, "state": state, "finished": format_ts(finished), "error": error}


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
