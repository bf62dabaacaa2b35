"""The scheduler service: its state, lifecycle and the one writer thread that changes it.

One writer thread owns all scheduler state: every change (a posted event, a due trigger, a run
starting or finishing) is an operation on its queue, applied in groups that share one database
transaction (SQLite or PostgreSQL, see store.py), so a posted event is durable before the call
returns and a join consumes its events in the same transaction that records the run. Functions
run on a thread pool with a concurrency limit per function; a failing or slow one only occupies
its own slots. The parts: definitions.py (functions, schedules), firing.py (triggers, events),
runs.py (queue, attempts, outcomes, reads).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson

from livetwin.errors import LivetwinError, Unavailable
from livetwin.outbound import OutboundPolicy
from livetwin.ports import Bus, Clock, OpenServiceDB
from livetwin.schedule import store
from livetwin.schedule.definitions import Definitions
from livetwin.schedule.firing import Firing
from livetwin.schedule.functions import FunctionSpec, Invoker, JobFn, parse_function
from livetwin.schedule.model import STOP, Key, Op, RunItem, RunLogHandler, Schedule
from livetwin.schedule.runs import RunQueue
from livetwin.schedule.triggers import parse_trigger

log = logging.getLogger(__name__)

__all__ = ["Scheduler"]


class Scheduler(Definitions, Firing, RunQueue):
    """Triggers, event joins and function runs for one twin core (state in `schedule.db`, or a
    PostgreSQL schema when the deployment's database is PostgreSQL).

    It receives narrow ports: `clock` (epoch ms), `bus` (engine events in, run notices out),
    `reader` (a `livetwin.query.Query`: condition triggers, types for system schedules),
    `open_db` (its own database), `lineage` (a LineageStore, for workflows), `database_url` (the
    PostgreSQL server its one-scheduler lock is held on; default LIVETWIN_DATABASE_URL),
    `outbound` (where http functions may call; default: public addresses only).
    `functions_platform` is handed to Python functions as `ctx.platform` and never used by the
    scheduler itself. Job kinds come from outside (`register_job`, `add_system_schedules`).

    `tick()` fires the time triggers due at `clock()`; the service's own thread calls it when a
    trigger falls due, and tests with a FakeClock call it directly after moving time.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        bus: Bus,
        reader: Any,
        open_db: OpenServiceDB,
        lineage: Any = None,
        functions_platform: Any = None,
        workers: int = 16,
        grace_ms: int = 60_000,
        max_wait_s: float = 0.5,
        catch_up_limit: int = 1_000,
        event_retention_ms: int = 7 * 86_400_000,
        allow_modules: tuple[str, ...] = (),
        database_url: str | None = None,
        outbound: OutboundPolicy | None = None,
    ):
        self.clock = clock
        self.bus = bus
        self.reader = reader
        self.lineage = lineage
        self.functions_platform = functions_platform
        self.grace_ms = grace_ms
        self.max_wait_s = max_wait_s
        self.catch_up_limit = catch_up_limit
        self.event_retention_ms = event_retention_ms
        self.allow_modules = allow_modules
        self._store, self._owner_lock = store.open_owned(open_db, database_url)
        self._sqlite = self._store.dialect == "sqlite"
        self._sync = threading.local()  # the synchronous level of this thread's SQLite connection
        self._state_lock = threading.RLock()
        self._changed = threading.Condition()
        self.jobs: dict[str, JobFn] = {}  # job kinds of this scheduler (register_job)
        self.outbound = outbound or OutboundPolicy()  # where http functions may call
        self.invoker = Invoker(self.jobs, self.outbound)
        self._workflows = None  # an Executor, made by the first register_workflow
        self._system_sources: list[Callable] = []
        self._system_functions: dict[str, FunctionSpec] = {}
        self._system_types: dict[str, str] = {}  # system schedule id -> the type it follows
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: int | None = None
        self._stopping = False
        self._closed = False
        self._log_handler = RunLogHandler()
        self._executing: set[str] = set()  # runs inside a function call right now
        self._load()

    # ---- lifecycle -----------------------------------------------------------------------

    def _load(self) -> None:
        """Read functions, schedules, pending joins and unfinished runs from the database (one
        consistent snapshot; a database that fails here leaves memory as it was)."""
        rows = store.read_state(self._store)
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
            event = {"id": eid, "name": name, "key": key, "data": orjson.loads(data), "ts": ts}
            self._pending((ns, fn), key, name).append((eid, event))
        self._expire_at: float = 0  # when the next join event may expire (0: look at once)
        self._active: dict[str, RunItem] = {}
        self._queues: dict[Key, deque[str]] = {}
        self._running: Counter = Counter()
        self._delayed: list[tuple[float, str]] = []
        self._touched: set[Key] = set()
        self._notices: list = []
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
        """Start the worker pool, the scheduler thread and the bus subscription (idempotent);
        system schedules are brought in step with the types declared so far."""
        if self._thread is not None:
            return self
        if self._closed:
            raise Unavailable("the scheduler was stopped", fix="create a new Scheduler")
        with self._state_lock, self._store.write() as db:
            store.requeue_interrupted(db)  # interrupted by the last stop or crash: run again
            self._prune_events(self.clock())
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="livetwin-run")
        logging.getLogger().addHandler(self._log_handler)
        self._thread = threading.Thread(target=self._loop, name="livetwin-scheduler", daemon=True)
        self._thread.start()
        self._token = self.bus.subscribe(self._on_bus)
        if self._system_sources:  # after subscribing: a type declared now is not missed
            types = list(self.reader.compiled_types().values())
            self._queue.put(Op(self._op_sync_system, (types, True), None))
        self._queue.put(Op(self._op_wake, (), None))  # dispatch recovered runs, first tick
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop taking work, wait up to `timeout_s` for running functions, then close.

        Runs still queued (or running past the timeout) stay in the database and run again
        on the next start.
        """
        if self._closed:
            return
        if self._token is not None:
            self.bus.unsubscribe(self._token)
        self._stopping = True
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while sum(self._running.values()) and time.monotonic() < deadline:
                self._changed.wait(0.05)
        if self._thread is not None:
            self._queue.put(STOP)
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
        op = Op(fn, args, Future())
        if self._thread is None:  # not started: nothing else runs, apply right here
            with self._state_lock:
                self._apply([op])
        else:
            self._queue.put(op)
        return op.future.result(timeout=60)

    def _submit(self, fn: Callable, *args) -> None:
        """Queue an operation without waiting (worker threads, the bus callback)."""
        if not self._closed:
            self._queue.put(Op(fn, args, None))

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
            stop = any(op is STOP for op in ops)
            try:
                with self._state_lock:
                    self._apply([op for op in ops if op is not STOP])
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
        if self._expire_at != math.inf:
            waits.append((self._expire_at - self.clock()) / 1000)
        return max(0.0, min(waits))

    def _apply(self, ops: list[Op]) -> None:
        """Apply operations, release due retries and fire due triggers in one transaction."""
        now = self.clock()
        due = self._next_due is not None and self._next_due <= now and not self._stopping
        retry = bool(self._delayed) and self._delayed[0][0] <= time.monotonic()
        expire = self._expire_at <= now
        if not (ops or due or retry or expire or self._reload):  # a reload is retried
            return
        if self._reload and not self._recovered(ops):
            return
        # Acknowledged work (a posted event, a new schedule) is fsynced before the answer; run
        # bookkeeping alone is not on SQLite: an OS crash may lose it, and those runs then run
        # again. (A PostgreSQL commit is durable either way.)
        if self._sqlite:
            self._set_sync("FULL" if any(op.future is not None for op in ops) else "NORMAL")
        results: list[tuple[Op, Any, BaseException | None]] = []
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
                self._expire_joins(now)
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
            self.bus.publish(notice)
        self._dispatch()
        with self._changed:
            self._changed.notify_all()

    def _set_sync(self, level: str) -> None:
        """PRAGMA synchronous on this thread's SQLite connection, when it changes."""
        if getattr(self._sync, "level", "FULL") != level:  # servicedb connects with FULL
            self._db.execute(f"PRAGMA synchronous={level}")
            self._sync.level = level

    def _recovered(self, ops: list[Op]) -> bool:
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
