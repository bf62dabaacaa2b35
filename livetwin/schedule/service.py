"""The scheduler service: its state, lifecycle and the one writer thread that changes it.

One writer thread owns all scheduler state: every change (a posted event, a due trigger, a run
starting or finishing) is an operation on its queue, applied in groups that share one database
transaction (SQLite or PostgreSQL, see store.py), so a posted event is durable before the call
returns and a join consumes its events in the same transaction that records the run. Functions
run on a thread pool with a concurrency limit per function; a failing or slow one only occupies
its own slots. The parts: definitions.py (functions, schedules), firing.py (triggers, events),
runs.py (queue, attempts, outcomes, reads).

On PostgreSQL several processes may run a scheduler on one schema: the one holding the leader
lease (store/lease.py) fires triggers and runs functions; the others wait on standby, refuse
changes (503, naming the leader) and take over, from the durable state, when the leader is lost.
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
from livetwin.store.lease import Lease, holder_name

log = logging.getLogger(__name__)

__all__ = ["Scheduler"]

LEAD = object()  # put on the operation queue: this process took the lease
FOLLOW = object()  # ... and lost it


class Scheduler(Definitions, Firing, RunQueue):
    """Triggers, event joins and function runs for one twin core (state in `schedule.db`, or a
    PostgreSQL schema when the deployment's database is PostgreSQL).

    It receives narrow ports: `clock` (epoch ms), `bus` (engine events in, run notices out),
    `reader` (a `livetwin.query.Query`: condition triggers, types for system schedules),
    `open_db` (its own database), `lineage` (a LineageStore, for workflows), `database_url` (the
    PostgreSQL server its one-scheduler lock is held on; default LIVETWIN_DATABASE_URL),
    `outbound` (where http functions may call; default: public addresses only).
    `functions_platform` is handed to Python functions as `ctx.platform` and never used by the
    scheduler itself. `lease_retry_s`: how often a standby scheduler on PostgreSQL tries to
    take the lead (and a leader checks it still holds it). `workflow_kind`: where workflow
    tasks run, "thread" or "ray" (a cluster front end). Job kinds come from outside
    (`register_job`, `add_system_schedules`).

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
        lease_retry_s: float = 1.0,
        workflow_kind: str = "thread",
    ):
        self.clock = clock
        self.workflow_kind = workflow_kind  # where workflow tasks run (workflow_run.Executor)
        self.bus = bus
        self.reader = reader
        self.lineage = lineage
        self.functions_platform = functions_platform
        self.grace_ms = grace_ms
        self.max_wait_s = max_wait_s
        self.catch_up_limit = catch_up_limit
        self.event_retention_ms = event_retention_ms
        self.allow_modules = allow_modules
        self._open_db = open_db
        self._store, self._owner_lock = store.open_owned(
            open_db, database_url, retry_s=lease_retry_s
        )
        lease = self._owner_lock if isinstance(self._owner_lock, Lease) else None
        self._lease = lease
        self._leading = lease is None or lease.held  # a file lock is held, or it raised
        self._standby_defs: dict[Key, FunctionSpec] = {}  # registered in code while on standby
        self._loaded_at = time.monotonic()
        self._sqlite = self._store.dialect == "sqlite"
        self._sync = threading.local()  # the synchronous level of this thread's SQLite connection
        self._state_lock = threading.RLock()
        self._changed = threading.Condition()
        self.jobs: dict[str, JobFn] = {}  # job kinds of this scheduler (register_job)
        self.outbound = outbound or OutboundPolicy()  # where http functions may call
        self.invoker = Invoker(self.jobs, self.outbound)
        self._workflows = None  # an Executor, made by the first register_workflow
        self._system_sources: list[Callable] = []
        self._role_watchers: list[Callable[[bool], None]] = []  # told when this leads or not
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
        if self._leading:
            with self._state_lock, self._store.write() as db:
                store.requeue_interrupted(db)  # interrupted by the last stop or crash: run again
                self._prune_events(self.clock())
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="livetwin-run")
        logging.getLogger().addHandler(self._log_handler)
        self._thread = threading.Thread(target=self._loop, name="livetwin-scheduler", daemon=True)
        self._thread.start()
        self._token = self.bus.subscribe(self._on_bus)
        if self._leading:
            self._begin_term()
        if self._lease is not None:
            self._lease.on_acquired = lambda: self._queue.put(LEAD)
            self._lease.on_lost = lambda: self._queue.put(FOLLOW)
            self._lease.start()
        return self

    def _begin_term(self) -> None:
        """Queue what a leader does first: system schedules in step with the types, recovered
        runs dispatched, the first tick."""
        if self._system_sources:  # after subscribing: a type declared now is not missed
            types = list(self.reader.compiled_types().values())
            self._queue.put(Op(self._op_sync_system, (types, True), None))
        for spec in self._standby_defs.values():
            self._queue.put(Op(self._op_define, (spec,), None))
        self._standby_defs.clear()
        self._queue.put(Op(self._op_wake, (), None))  # dispatch recovered runs, first tick
        self._tell_role(True)

    # ---- leader and standby (PostgreSQL) ---------------------------------------------------

    def watch_role(self, watcher: Callable[[bool], None]) -> None:
        """Call `watcher(True)` whenever this scheduler starts leading (also at start) and
        `watcher(False)` when it loses the lead, each on a thread of its own: what must run on
        exactly one process of a deployment (a cluster's OPC UA connectors) follows the lead."""
        self._role_watchers.append(watcher)

    def _tell_role(self, leading: bool) -> None:
        for watcher in self._role_watchers:
            threading.Thread(target=watcher, args=(leading,), daemon=True).start()

    def refuse_on_standby(self) -> None:
        """Raise 503 naming the leader unless this scheduler leads."""
        if not self._leading:
            raise self._standby_error()

    @property
    def role(self) -> str:
        """'leader' (fires triggers, runs functions) or 'standby' (waits to take over)."""
        return "leader" if self._leading else "standby"

    def leader(self) -> str | None:
        """The process (host:pid) whose scheduler leads (this one's on SQLite)."""
        if self._lease is None or self._lease.held:
            return holder_name()
        return self._lease.holder()

    def _standby_error(self) -> Unavailable:
        try:
            leader = self.leader() or "no process (one takes over within a second)"
        except LivetwinError:
            leader = "unknown (PostgreSQL is unreachable)"
        return Unavailable(
            f"this node's scheduler is on standby; the leader is {leader}",
            field="scheduler",
            fix="send scheduler changes to the leader's node, or retry: a standby takes over "
            "when the leader is lost",
        )

    def _lead(self) -> None:
        """This process took the lease: load what the last leader left, and run it (if that
        fails, the lease goes back and is tried again)."""
        try:
            with self._store.write() as db:
                store.requeue_interrupted(db)  # the last leader's running runs run again here
            self._load()
        except Exception:
            self._lease.release()
            raise
        self._running = Counter()
        self._leading = True
        log.warning("this scheduler leads now (%s)", self._store_name())
        self._begin_term()

    def _follow(self) -> None:
        """The lease is lost: stop firing and dispatching; the new leader runs what was queued."""
        self._leading = False
        self._queues.clear()
        self._delayed.clear()
        self._active.clear()
        log.warning("this scheduler is on standby now (%s)", self._store_name())
        self._tell_role(False)

    def _store_name(self) -> str:
        return getattr(self._store, "schema", "")

    def _refresh_standby(self) -> None:
        """On standby, reads show the leader's definitions as of at most `retry_s` ago."""
        if self._lease is None or time.monotonic() - self._loaded_at < self._lease.retry_s:
            return
        self._loaded_at = time.monotonic()
        try:
            self._load()
        except Exception as exc:
            log.debug("the standby scheduler cannot reload its state: %s", exc)

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
            self._workflows.results.close()
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
        self.refuse_on_standby()
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
                    for op in ops:
                        if op is LEAD and not self._leading:
                            self._lead()
                        elif op is FOLLOW and self._leading:
                            self._follow()
                    if self._leading:
                        self._apply([op for op in ops if op not in (STOP, LEAD, FOLLOW)])
                    else:
                        self._refuse(ops)
            except Exception:
                log.exception("the scheduler loop failed; continuing")
            if stop:
                return

    def _refuse(self, ops: list[Op]) -> None:
        """On standby: callers are told who leads; internal operations are dropped (the leader
        works from the durable state)."""
        error = None
        for op in ops:
            if isinstance(op, Op) and op.future is not None:
                error = error or self._standby_error()
                op.future.set_exception(error)
        self._refresh_standby()

    def _wait_s(self) -> float:
        if not self._leading:
            return self.max_wait_s
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
