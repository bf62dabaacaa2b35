"""Running workflows: one `WorkflowRun` (dependencies, retries, failure isolation, a lineage node
per task run and per workflow run, finished tasks kept when the executor has a `WorkflowStore`)
and the local `Executor` (a thread or process pool).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import multiprocessing
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from livetwin.errors import InvalidInput
from livetwin.schedule.tasks import (
    Task,
    TaskContext,
    TaskFuture,
    UpstreamFailed,
    Workflow,
    current_run_var,
    current_task_var,
    error_text,
    summary,
)
from livetwin.timefmt import wall_clock_ms

if TYPE_CHECKING:
    from livetwin.registry.lineage import LineageStore
    from livetwin.schedule.workflow_store import WorkflowStore

log = logging.getLogger(__name__)


class WorkflowRun:
    """One run of a workflow: its task runs, state, value or error, and lineage node. With a
    durable executor, tasks `run_id` finished before (a crash) are not run again."""

    def __init__(
        self,
        executor: Executor,
        workflow: Workflow,
        args: tuple,
        kwargs: dict,
        run_id: str | None = None,
    ):
        self.id = run_id or uuid.uuid4().hex
        results = executor.results
        self._kept = results.load(self.id) if results is not None and run_id else {}
        self._steps: dict[str, int] = {}  # task name -> calls so far (the step key)
        self.executor = executor
        self.workflow = workflow
        self.name = workflow.name
        self.args = args
        self.kwargs = kwargs
        self.state = "running"
        self.tasks: list[TaskFuture] = []
        self.started_ms = executor.clock()
        self.finished_ms: int | None = None
        self.node_id: str | None = None
        self.value: Any = None
        self.error: BaseException | None = None
        self._failures: list[TaskFuture] = []
        self._lock = threading.Lock()
        self._finished = threading.Event()

    # -- called by workflow code (through Task.__call__) --

    def submit(
        self, task: Task, args: tuple, kwargs: dict, *, after: Iterable[TaskFuture] = ()
    ) -> TaskFuture:
        """Schedule `task`; it starts once every future among its arguments and `after` is done."""
        deps = [*_futures_in((args, kwargs)), *after]
        for dep in deps:
            if not isinstance(dep, TaskFuture) or dep.run is not self:
                raise InvalidInput(
                    f"task '{task.name}' waits for something that is not a task of this run",
                    field="after",
                    fix="pass futures returned by tasks of the same workflow run",
                )
        if self.executor.kind == "process":
            _check_importable(task)
        deps = list(dict.fromkeys(deps))
        future = TaskFuture(task, self, args, kwargs, deps)
        with self._lock:
            self.tasks.append(future)
            future.step = f"{task.name}#{self._steps.get(task.name, 0)}"
            self._steps[task.name] = self._steps.get(task.name, 0) + 1
        kept = self._kept.get(future.step)
        if kept is not None:  # finished before this run was interrupted: not run again
            future.state, future.resumed = "succeeded", True
            future._outcome.set_result(kept[0])
            future.node_id = kept[1]
            return future
        for dep in deps:
            dep._outcome.add_done_callback(lambda _, f=future: self._dependency_done(f))
        self._dependency_done(future)  # the submit itself counts as one "dependency"
        return future

    # -- scheduling --

    def _dependency_done(self, future: TaskFuture) -> None:
        with self._lock:
            future._waiting -= 1
            ready = future._waiting == 0
        if ready:
            self._start(future)

    def _start(self, future: TaskFuture) -> None:
        failed = [d for d in future.deps if d._outcome.exception() is not None]
        if failed:
            future.state = "skipped"
            future._outcome.set_exception(
                UpstreamFailed(
                    f"task '{future.name}' did not run: '{failed[0].name}' failed "
                    f"({error_text(failed[0].exception())})"
                )
            )
            return
        args = _resolve(future.args)
        kwargs = _resolve(future.kwargs)
        future.started_ms = self.executor.clock()
        self._attempt(future, args, kwargs)

    def _attempt(self, future: TaskFuture, args: tuple, kwargs: dict) -> None:
        future.attempts += 1
        future.state = "running"
        try:
            pool_future = self.executor._dispatch(future, args, kwargs)
        except BaseException as exc:  # the pool is gone (executor closed)
            self._finish(future, error=exc)
            return
        pool_future.add_done_callback(lambda done: self._attempt_done(future, args, kwargs, done))

    def _attempt_done(self, future: TaskFuture, args: tuple, kwargs: dict, done: Future) -> None:
        error = done.exception()
        if error is None:
            value, data, models = done.result()
            self._finish(future, value=value, data=data, models=models)
            return
        if future.attempts <= future.task.retries:
            log.info(
                "task %s attempt %d failed (%s), retrying",
                future.name,
                future.attempts,
                error_text(error),
            )
            delay = future.task.retry_delay_s
            if delay > 0:
                timer = threading.Timer(delay, self._attempt, (future, args, kwargs))
                timer.daemon = True
                timer.start()
            else:
                self._attempt(future, args, kwargs)
            return
        self._finish(future, error=error)

    def _finish(
        self,
        future: TaskFuture,
        *,
        value: Any = None,
        error: BaseException | None = None,
        data: list | None = None,
        models: list | None = None,
    ) -> None:
        """Record the task run's lineage node, then complete its future."""
        future.finished_ms = self.executor.clock()
        future.node_id, error = self._record(
            "task",
            future.task.fn,
            future.args,
            future.kwargs,
            {"data": data or [], "models": models or [], "attempts": future.attempts},
            value,
            error,
            name=future.name,
            parents=[d.node_id for d in future.deps if d.node_id],
            code_hash=future.task.code_hash,
            started=future.started_ms,
            finished=future.finished_ms,
        )
        results = self.executor.results
        if error is None and results is not None:
            try:
                results.save(self.id, future.step, value, future.node_id, future.finished_ms)
            except Exception as exc:  # not kept: the task counts as failed (retry resumes)
                log.exception("keeping the value of %s failed", future.step)
                error = exc
        if error is None:
            future.state = "succeeded"
            future._outcome.set_result(value)
        else:
            future.state = "failed"
            with self._lock:
                self._failures.append(future)
            future._outcome.set_exception(error)

    # -- the body --

    def _execute(self) -> None:
        token = current_run_var.set(self)
        returned: Any = None
        body_error: BaseException | None = None
        try:
            returned = self.workflow.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # the run reports it; nothing escapes the thread
            body_error = exc
        finally:
            current_run_var.reset(token)
        while True:  # independent branches keep going: wait for every task submitted
            with self._lock:
                pending = [t for t in self.tasks if not t.done()]
            if not pending:
                break
            for t in pending:
                t._outcome.exception()
        with self._lock:
            first_failure = self._failures[0] if self._failures else None
        error = body_error
        if error is None or isinstance(error, UpstreamFailed):
            error = first_failure.exception() if first_failure is not None else error
        if error is None:
            self.value = _resolve(returned)
        returned_tasks = list(dict.fromkeys(_futures_in(returned)))
        if not returned_tasks:  # the leaves: tasks no other task waits for
            needed = {d for t in self.tasks for d in t.deps}
            returned_tasks = [t for t in self.tasks if t not in needed]
        self.finished_ms = self.executor.clock()
        self.node_id, self.error = self._record(
            "workflow",
            self.workflow.fn,
            self.args,
            self.kwargs,
            {"tasks": len(self.tasks)},
            self.value,
            error,
            name=self.name,
            parents=[t.node_id for t in returned_tasks if t.node_id],
            code_hash=self.workflow.code_hash,
            started=self.started_ms,
            finished=self.finished_ms,
        )
        self.state = "failed" if error is not None else "succeeded"
        self._finished.set()

    def _record(
        self,
        kind: str,
        fn: Callable,
        args: tuple,
        kwargs: dict,
        inputs: dict,
        value: Any,
        error: BaseException | None,
        **fields: Any,
    ) -> tuple[str | None, BaseException | None]:
        """Record the lineage node of a task or workflow run: (its id, the run's error).

        A run whose node cannot be recorded fails: lineage is never lost silently.
        """
        try:
            node_id = self.executor.lineage.record(
                kind,
                inputs={
                    "args": _bound_summary(fn, args, kwargs),
                    **inputs,
                    "workflow": self.name,
                    "workflow_run": self.id,
                },
                outputs={"value": summary(value)}
                if error is None
                else {"error": error_text(error)},
                **fields,
            )
            return node_id, error
        except Exception as exc:
            log.exception("recording the lineage of %s %s failed", kind, fields.get("name"))
            return None, error or exc

    # -- for the caller --

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the run and all its tasks are done; False on timeout."""
        return self._finished.wait(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The workflow's value (futures it returned are resolved); raises the run's error."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"workflow run {self.id} is still running")
        if self.error is not None:
            raise self.error
        return self.value

    def to_dict(self) -> dict:
        """The run record (for run logs and `GET /api/runs`)."""
        with self._lock:
            tasks = [t.to_dict() for t in self.tasks]
        return {
            "id": self.id,
            "workflow": self.name,
            "state": self.state,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "node": self.node_id,
            "error": error_text(self.error) if self.error is not None else None,
            "tasks": tasks,
        }


class Executor:
    """Runs workflows: tasks on a local thread pool (default), a local process pool, or as Ray
    tasks on any node of the Ray cluster this process joined (`kind="ray"`: a cluster front
    end; functions travel by value, arguments and values must pickle).

    Every task run and workflow run becomes a node of `lineage` (`platform.lineage`), timed by
    that store's clock. With `kind="process"` task functions must be defined at module level,
    and their arguments and values must pickle. With `results` (a `WorkflowStore`) runs are
    durable: `start(..., run_id=...)` of an interrupted run resumes after its finished tasks.
    """

    def __init__(
        self,
        lineage: LineageStore,
        *,
        kind: str = "thread",
        max_workers: int | None = None,
        results: WorkflowStore | None = None,
    ):
        if kind not in ("thread", "process", "ray"):
            raise InvalidInput(
                f"executor kind must be 'thread', 'process' or 'ray', not {kind!r}",
                field="kind",
                fix="use thread (default), process or ray (in a Ray cluster's driver)",
            )
        self.kind = kind
        self.lineage = lineage
        self.results = results
        self.clock: Callable[[], int] = lineage.clock or wall_clock_ms
        self._pool: Any = None
        if kind == "thread":
            self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="livetwin-task")
        elif kind == "ray":  # a task lost with its node is run again by Ray (max_retries)
            import ray

            self._remote = ray.remote(_call)
        else:  # spawned, never forked: a fork of this many-threaded process (JAX, the writer,
            # the scheduler) may copy a held lock into the child and deadlock it
            spawn = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=max_workers, mp_context=spawn)

    def start(
        self, wf: Workflow | Callable, *args: Any, run_id: str | None = None, **kwargs: Any
    ) -> WorkflowRun:
        """Start a run in the background; returns its `WorkflowRun` at once. `run_id` names a
        durable run: given again after a crash, the run resumes after its finished tasks."""
        if not isinstance(wf, Workflow):
            wf = Workflow(wf)
        run = WorkflowRun(self, wf, args, kwargs, run_id)
        threading.Thread(target=run._execute, name=f"workflow-{wf.name}", daemon=True).start()
        return run

    def run(self, wf: Workflow | Callable, *args: Any, **kwargs: Any) -> Any:
        """Run a workflow to its end; its value, or the error of its first failed task."""
        return self.start(wf, *args, **kwargs).result()

    def _dispatch(self, future: TaskFuture, args: tuple, kwargs: dict) -> Future:
        where = (future.name, future.attempts, future.run.id)
        if self.kind == "ray":
            return self._remote.remote(future.task.fn, where, args, kwargs).future()
        if self.kind == "process":
            fn = future.task.fn
            return self._pool.submit(
                _call_by_reference, fn.__module__, fn.__qualname__, where, args, kwargs
            )
        return self._pool.submit(_call, future.task.fn, where, args, kwargs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _call(fn: Callable, where: tuple, args: tuple, kwargs: dict) -> tuple[Any, list, list]:
    """Run one attempt with a task context; returns (value, data windows, model versions)."""
    ctx = TaskContext(*where)
    token = current_task_var.set(ctx)
    try:
        return fn(*args, **kwargs), ctx.data, ctx.models
    finally:
        current_task_var.reset(token)


def _call_by_reference(module: str, qualname: str, where: tuple, args: tuple, kwargs: dict):
    """`_call` in a worker process: the function is imported there by name."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return _call(obj.fn if isinstance(obj, Task) else obj, where, args, kwargs)


def _check_importable(task: Task) -> None:
    if "<" in task.fn.__qualname__:
        raise InvalidInput(
            f"task '{task.name}' is defined inside a function or is a lambda, so a worker "
            "process cannot import it",
            field="kind",
            fix="define the task at module level or use the thread executor",
        )


def _bound_summary(fn: Callable, args: tuple, kwargs: dict) -> dict:
    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = {**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs}
    return {name: summary(value) for name, value in bound.items()}


def _futures_in(value: Any) -> Iterable[TaskFuture]:
    if isinstance(value, TaskFuture):
        yield value
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from _futures_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _futures_in(v)


def _resolve(value: Any) -> Any:
    """`value` with every TaskFuture inside replaced by its result."""
    if isinstance(value, TaskFuture):
        return value.result()
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(_resolve(v) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    return value
