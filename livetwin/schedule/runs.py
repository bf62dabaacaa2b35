"""The scheduler's runs: queueing, dispatch to the worker pool within each function's concurrency,
one attempt on a pool thread, retries with backoff, outcomes written in bulk, and run queries.

`RunQueue` is a part of `Scheduler` (service.py): it uses the state that class sets up.
"""

from __future__ import annotations

import heapq
import secrets
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from livetwin.engine.events import Notice
from livetwin.errors import Conflict, InvalidInput, NotFound
from livetwin.schedule import store
from livetwin.schedule.functions import MAX_LOG_CHARS, FunctionSpec, RunContext, json_result
from livetwin.schedule.model import (
    DISPATCH_BATCH,
    MAX_BACKOFF_S,
    RUN_STATES,
    Key,
    RunItem,
    dumps,
)
from livetwin.timefmt import format_ts


class RunQueue:
    """Runs from queued to finished, and reads of them (mixed into `Scheduler`)."""

    # ---- queueing and dispatch -----------------------------------------------------------

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
            item.id, key[0], key[1], schedule_id, "queued", dumps(trigger), dumps(merged),
            dumps(item.events), self.clock(),
        )  # fmt: skip
        if self._run_rows is not None:
            self._run_rows.append(row)  # written in bulk by the caller
        else:
            store.insert_runs(self._db, [row])
        self._enqueue(item)
        return item.id

    def _enqueue(self, item: RunItem) -> None:
        self._active[item.id] = item
        self._queues.setdefault(item.key, deque()).append(item.id)
        self._touched.add(item.key)

    def _has_active_run(self, schedule_id: str) -> bool:
        """Whether a run of the schedule is queued, running or waiting to retry."""
        return any(item.schedule_id == schedule_id for item in self._active.values())

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

    # ---- on a pool thread ----------------------------------------------------------------

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
            self.functions_platform, item.logs, item.progress, item.cancel,
        )  # fmt: skip
        result, error = None, None
        started = time.perf_counter()
        self._log_handler.attach(ctx)
        try:
            if spec is None:
                raise LookupError(f"function '{item.key[1]}' was deleted")
            if item.cancel.is_set():
                raise LookupError("cancelled before it started")
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

    # ---- outcomes ------------------------------------------------------------------------

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
        retry = not item.cancel.is_set()
        if error is not None and spec is not None and item.attempts <= spec.retries and retry:
            delay = min(spec.backoff_s * 2 ** (item.attempts - 1), MAX_BACKOFF_S)
            item.logs.append(f"retrying in {delay:g} s")
            heapq.heappush(self._delayed, (time.monotonic() + delay, run_id))
            self._retried.append((item.attempts, item.started, error, dumps(item.logs), run_id))
            return
        state = "failed" if error is not None else "succeeded"
        result_json = json_result(result) if error is None else None
        logs = dumps(item.logs) if item.logs else None
        self._finished.append(
            (state, item.attempts, item.started, result_json, error, logs, now, duration_ms, run_id)
        )
        del self._active[run_id]
        self._notices.append(
            Notice(
                "run",
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
            store.write_retried(self._db, self._retried)
            self._retried = []
        if self._finished:
            store.write_finished(self._db, self._finished)
            self._finished = []

    def _release_retries(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, run_id = heapq.heappop(self._delayed)
            item = self._active.get(run_id)
            if item is not None:
                self._queues.setdefault(item.key, deque()).append(run_id)
                self._touched.add(item.key)

    # ---- reads ---------------------------------------------------------------------------

    def runs(
        self,
        *,
        function: str | None = None,
        state: str | None = None,
        namespace: str | None = None,
        schedule: str | None = None,
        limit: int = 100,
        namespaces: frozenset[str] | None = None,
    ) -> list[dict]:
        """Runs, newest first, filtered by function, state, namespace (or any of `namespaces`)
        and schedule."""
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
        filters = {
            "namespace": namespace if namespaces is None else frozenset(namespaces),
            "function": function,
            "state": state,
            "schedule_id": schedule,
        }
        rows = store.select_runs(self._db, filters, limit)
        return [self._live(store.run_dict(row, logs=False)) for row in rows]

    def run(self, run_id: str) -> dict:
        """One run with its logs, result or error."""
        row = store.select_run(self._db, run_id)
        if row is None:
            raise NotFound(f"no run '{run_id}'", field="id", fix="list runs with GET /api/runs")
        return self._live(store.run_dict(row))

    def _live(self, run: dict) -> dict:
        """A stored run with what only memory knows yet: that it is running, and its attempt."""
        item = self._active.get(run["id"])
        if item is not None and run["id"] in self._executing:
            run.update(state="running", attempts=item.attempts, started=format_ts(item.started))
            run["progress"] = dict(item.progress) or None
        if item is not None and item.cancel.is_set():
            run["cancel_requested"] = True
        return run

    def cancel(self, run_id: str) -> dict:
        """Ask a queued or running run to stop: a queued one fails when its turn comes, a
        running one when its job next checks `ctx.cancelled` (jobs that never check finish)."""
        with self._state_lock:
            item = self._active.get(run_id)
            if item is not None:
                item.cancel.set()
                item.logs.append("cancel requested")
        if item is None:
            run = self.run(run_id)  # NotFound for an unknown run
            raise Conflict(
                f"run '{run_id}' has finished ({run['state']}): there is nothing to cancel",
                field="id",
                fix="cancel a queued or running run (GET /api/runs?state=running)",
            )
        return self.run(run_id)

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
                "runs": store.runs_by_state(self._db),
                "leader": int(self._leading),  # 0: on standby (PostgreSQL, another node leads)
            }


def last_run(row: tuple | None) -> dict | None:
    """A function's last finished run as the API shows it."""
    if row is None:
        return None
    run_id, state, finished, error = row
    return {"run": run_id, "state": state, "finished": format_ts(finished), "error": error}


__all__ = ["RunQueue", "last_run"]
