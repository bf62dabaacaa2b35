"""Workflows: `@task` and `@workflow` as ordinary Python (loops, conditions), run by a local
executor that respects dependencies, retries tasks and records every task and workflow run in the
platform's `LineageStore`; plus a declarative YAML form for chains of registered functions.
"""

from __future__ import annotations

import contextvars
import functools
import graphlib
import hashlib
import importlib
import inspect
import logging
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import yaml

from livetwin.errors import InvalidInput
from livetwin.timefmt import parse_ts, wall_clock_ms

if TYPE_CHECKING:
    from livetwin.registry.lineage import LineageStore

log = logging.getLogger(__name__)

# ---- tasks and their context -----------------------------------------------------------------


def source_hash(fn: Callable) -> str:
    """sha256 of a function's source (of its bytecode when the source is not available)."""
    fn = inspect.unwrap(fn)
    try:
        text = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = code.co_code if code is not None else repr(fn).encode()
    return hashlib.sha256(text).hexdigest()


class TaskContext:
    """What a running task may tell about itself: the data windows and model versions it read."""

    def __init__(self, name: str, attempt: int, run_id: str | None):
        self.name = name
        self.attempt = attempt
        self.run_id = run_id
        self.data: list[dict] = []
        self.models: list[dict] = []

    def reads(self, *, data: Any = None, model: Any = None) -> TaskContext:
        """Declare inputs read besides the arguments: data windows and model versions.

        `data` is a dict (or a list of them) with `start` and `end` (ISO 8601 or epoch ms) and
        whatever names the data, such as `type` or `twin`; `model` is a `(name, version)` tuple,
        a `{"name", "version"}` dict, or a list of those.
        """
        for item in _as_list(data):
            self.data.append(_data_window(item))
        for item in _as_list(model):
            self.models.append(_model_ref(item))
        return self


_current_task: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "livetwin_task", default=None
)
_current_run: contextvars.ContextVar[WorkflowRun | None] = contextvars.ContextVar(
    "livetwin_workflow_run", default=None
)


def current_task() -> TaskContext:
    """The context of the task running in this thread (or process)."""
    ctx = _current_task.get()
    if ctx is None:
        raise RuntimeError("current_task() is only available inside a @task function")
    return ctx


class Task:
    """A function the executor runs as one step of a workflow (see `task`)."""

    def __init__(
        self,
        fn: Callable,
        *,
        name: str | None = None,
        retries: int = 0,
        retry_delay_s: float = 0.0,
    ):
        if retries < 0 or retry_delay_s < 0:
            raise InvalidInput(
                "retries and retry_delay_s must not be negative",
                field="retries",
                fix="use 0 or more",
            )
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = name or fn.__name__
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.code_hash = source_hash(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Inside a running workflow: schedule the task and return its `TaskFuture`.

        Anywhere else: run the function now and return its value.
        """
        run = _current_run.get()
        if run is None:
            token = _current_task.set(TaskContext(self.name, 1, None))
            try:
                return self.fn(*args, **kwargs)
            finally:
                _current_task.reset(token)
        return run.submit(self, args, kwargs)

    def submit(self, *args: Any, after: Iterable[TaskFuture] = (), **kwargs: Any) -> TaskFuture:
        """Schedule the task in the running workflow, also waiting for the futures in `after`."""
        run = _current_run.get()
        if run is None:
            raise RuntimeError(f"task '{self.name}' can only be submitted inside a workflow")
        return run.submit(self, args, kwargs, after=after)

    def __repr__(self) -> str:
        return f"<task {self.name}>"


def task(
    fn: Callable | None = None,
    *,
    name: str | None = None,
    retries: int = 0,
    retry_delay_s: float = 0.0,
) -> Any:
    """Make a function a workflow task: `@task` or `@task(retries=2, retry_delay_s=1)`."""

    def wrap(f: Callable) -> Task:
        return Task(f, name=name, retries=retries, retry_delay_s=retry_delay_s)

    return wrap(fn) if fn is not None else wrap


class Workflow:
    """Ordinary Python that calls tasks (see `workflow`)."""

    def __init__(self, fn: Callable, *, name: str | None = None, code_hash: str | None = None):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = name or fn.__name__
        self.code_hash = code_hash or source_hash(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Inside a running workflow: run inline, as a sub-workflow of that run."""
        if _current_run.get() is None:
            raise RuntimeError(
                f"workflow '{self.name}' runs on an executor that records its lineage: "
                f"Executor(platform.lineage).run({self.name}, ...)"
            )
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<workflow {self.name}>"


def workflow(fn: Callable | None = None, *, name: str | None = None) -> Any:
    """Make a function a workflow: `@workflow` or `@workflow(name="nightly")`."""

    def wrap(f: Callable) -> Workflow:
        return Workflow(f, name=name)

    return wrap(fn) if fn is not None else wrap


class UpstreamFailed(Exception):
    """A task did not run because a task it depends on failed."""


# ---- one run ---------------------------------------------------------------------------------


class TaskFuture:
    """The handle of one task run inside a workflow run: `result()` waits for its value."""

    def __init__(self, task: Task, run: WorkflowRun, args: tuple, kwargs: dict, deps: list):
        self.task = task
        self.run = run
        self.name = task.name
        self.args = args
        self.kwargs = kwargs
        self.deps: list[TaskFuture] = deps
        self.state = "waiting"
        self.attempts = 0
        self.node_id: str | None = None
        self.started_ms: int | None = None
        self.finished_ms: int | None = None
        self._outcome: Future = Future()
        self._waiting = len(deps) + 1

    def result(self, timeout: float | None = None) -> Any:
        """The task's value; raises the task's error if it failed."""
        return self._outcome.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._outcome.exception(timeout)

    def done(self) -> bool:
        return self._outcome.done()

    def to_dict(self) -> dict:
        error = self._outcome.exception() if self._outcome.done() else None
        return {
            "name": self.name,
            "state": self.state,
            "attempts": self.attempts,
            "node": self.node_id,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "after": [d.name for d in self.deps],
            "error": _error_text(error) if error is not None else None,
        }

    def __repr__(self) -> str:
        return f"<task run {self.name} {self.state}>"


class WorkflowRun:
    """One run of a workflow: its task runs, state, value or error, and lineage node."""

    def __init__(self, executor: Executor, workflow: Workflow, args: tuple, kwargs: dict):
        self.id = uuid.uuid4().hex
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
                    f"({_error_text(failed[0].exception())})"
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
                _error_text(error),
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
        token = _current_run.set(self)
        returned: Any = None
        body_error: BaseException | None = None
        try:
            returned = self.workflow.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # the run reports it; nothing escapes the thread
            body_error = exc
        finally:
            _current_run.reset(token)
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
                else {"error": _error_text(error)},
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
            "error": _error_text(self.error) if self.error is not None else None,
            "tasks": tasks,
        }


# ---- the executor ----------------------------------------------------------------------------


class Executor:
    """Runs workflows locally: tasks on a thread pool (default) or a process pool.

    Every task run and workflow run becomes a node of `lineage` (`platform.lineage`), timed by
    that store's clock. With `kind="process"` task functions must be defined at module level,
    and their arguments and values must pickle.
    """

    def __init__(
        self, lineage: LineageStore, *, kind: str = "thread", max_workers: int | None = None
    ):
        if kind not in ("thread", "process"):
            raise InvalidInput(
                f"executor kind must be 'thread' or 'process', not {kind!r}",
                field="kind",
                fix="use thread (default) or process",
            )
        self.kind = kind
        self.lineage = lineage
        self.clock: Callable[[], int] = lineage.clock or wall_clock_ms
        pool_class = ThreadPoolExecutor if kind == "thread" else ProcessPoolExecutor
        extra = {"thread_name_prefix": "livetwin-task"} if kind == "thread" else {}
        self._pool = pool_class(max_workers=max_workers, **extra)

    def start(self, wf: Workflow | Callable, *args: Any, **kwargs: Any) -> WorkflowRun:
        """Start a run in the background; returns its `WorkflowRun` at once."""
        if not isinstance(wf, Workflow):
            wf = Workflow(wf)
        run = WorkflowRun(self, wf, args, kwargs)
        threading.Thread(target=run._execute, name=f"workflow-{wf.name}", daemon=True).start()
        return run

    def run(self, wf: Workflow | Callable, *args: Any, **kwargs: Any) -> Any:
        """Run a workflow to its end; its value, or the error of its first failed task."""
        return self.start(wf, *args, **kwargs).result()

    def _dispatch(self, future: TaskFuture, args: tuple, kwargs: dict) -> Future:
        where = (future.name, future.attempts, future.run.id)
        if self.kind == "process":
            fn = future.task.fn
            return self._pool.submit(
                _call_by_reference, fn.__module__, fn.__qualname__, where, args, kwargs
            )
        return self._pool.submit(_call, future.task.fn, where, args, kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _call(fn: Callable, where: tuple, args: tuple, kwargs: dict) -> tuple[Any, list, list]:
    """Run one attempt with a task context; returns (value, data windows, model versions)."""
    ctx = TaskContext(*where)
    token = _current_task.set(ctx)
    try:
        return fn(*args, **kwargs), ctx.data, ctx.models
    finally:
        _current_task.reset(token)


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


# ---- the declarative form --------------------------------------------------------------------

_STEP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_STEP_KEYS = {"name", "function", "args", "after", "retries", "retry_delay_s"}


def load_workflow(spec: str | bytes | Mapping, functions: Mapping[str, Callable]) -> Workflow:
    """A `Workflow` from YAML/JSON text or a dict of the form

    ```yaml
    name: nightly
    steps:
      - {name: load, function: load_history, args: {days: 7}}
      - {name: fit, function: fit_baseline, args: {rows: $load}, retries: 2}
      - {name: check, function: check_emergency, after: [fit]}
    ```

    `function` names an entry of `functions` (only registered functions can run); `args` is a
    dict (keyword arguments) or a list; a string `$step` stands for that step's value and makes
    the step wait for it (`$$` escapes a literal `$`). The run's value is `{step: value}`.
    Unknown keys, unknown functions, unknown steps and cycles raise `InvalidInput`.
    """
    if isinstance(spec, str | bytes):
        try:
            spec = yaml.safe_load(spec)
        except yaml.YAMLError as exc:
            raise InvalidInput(
                f"the workflow is not valid YAML: {exc}".splitlines()[0],
                field="workflow",
                fix="send a YAML or JSON object with a steps list",
            ) from None
    if not isinstance(spec, Mapping):
        raise InvalidInput(
            "a workflow must be an object with name and steps",
            field="workflow",
            fix="send {name: ..., steps: [{name, function, args, after}]}",
        )
    unknown = set(spec) - {"name", "steps", "description"}
    if unknown:
        raise InvalidInput(
            f"unknown workflow field(s): {', '.join(sorted(map(str, unknown)))}",
            field=str(sorted(map(str, unknown))[0]),
            fix="use name, description and steps",
        )
    name = _checked_name(spec.get("name", "workflow"), "workflow name", "name")
    steps = spec.get("steps")
    if not isinstance(steps, list) or not steps:
        raise InvalidInput(
            "a workflow needs a non-empty steps list",
            field="steps",
            fix="add steps: [{name, function, args, after}]",
        )
    parsed = [_parse_step(i, step, functions) for i, step in enumerate(steps)]
    index = {}
    for i, step in enumerate(parsed):
        if step["name"] in index:
            raise InvalidInput(
                f"step name '{step['name']}' is used twice",
                field=f"steps[{i}].name",
                fix="give every step its own name",
            )
        index[step["name"]] = i
    graph = {}
    for i, step in enumerate(parsed):
        for field, waits in (("after", step["after"]), ("args", step["refs"])):
            for other in waits:
                if other not in index:
                    raise InvalidInput(
                        f"step '{step['name']}' refers to unknown step '{other}'",
                        field=f"steps[{i}].{field}",
                        fix=f"use one of: {', '.join(index)}",
                    )
        graph[step["name"]] = step["after"] + step["refs"]
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        raise InvalidInput(
            f"step '{cycle[1]}' is part of a cycle: {' -> '.join(cycle)} "
            "(each step runs after the one before it)",
            field=f"steps[{index[cycle[1]]}].after",
            fix="remove one of the dependencies so the steps form a chain or a tree",
        ) from None
    by_name = {step["name"]: step for step in parsed}

    def body() -> dict:
        run = _current_run.get()
        assert run is not None
        futures: dict[str, TaskFuture] = {}
        for step_name in order:
            step = by_name[step_name]
            args = _substitute(step["args"], futures)
            after = [futures[a] for a in step["after"]]
            if isinstance(args, list):
                futures[step_name] = run.submit(step["task"], tuple(args), {}, after=after)
            else:
                futures[step_name] = run.submit(step["task"], (), args, after=after)
        return {s["name"]: futures[s["name"]] for s in parsed}

    body.__name__ = name
    canonical = orjson.dumps(
        {"name": name, "steps": steps}, option=orjson.OPT_SORT_KEYS, default=str
    )
    return Workflow(body, name=name, code_hash=hashlib.sha256(canonical).hexdigest())


def _parse_step(i: int, step: Any, functions: Mapping[str, Callable]) -> dict:
    where = f"steps[{i}]"
    if not isinstance(step, Mapping):
        raise InvalidInput(
            "a step must be an object", field=where, fix="write {name, function, args, after}"
        )
    unknown = set(step) - _STEP_KEYS
    if unknown:
        raise InvalidInput(
            f"unknown step field(s): {', '.join(sorted(map(str, unknown)))}",
            field=where,
            fix=f"use {', '.join(sorted(_STEP_KEYS))}",
        )
    name = _checked_name(step.get("name"), "step name", f"{where}.name")
    fn_name = step.get("function")
    fn = functions.get(fn_name) if isinstance(fn_name, str) else None
    if fn is None:
        known = ", ".join(sorted(functions)) or "(none registered)"
        raise InvalidInput(
            f"unknown function {fn_name!r} in step '{name}'",
            field=f"{where}.function",
            fix=f"register the function first or use one of: {known}",
        )
    args = step.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict | list):
        raise InvalidInput(
            "args must be an object (keyword arguments) or a list",
            field=f"{where}.args",
            fix="write args: {name: value} or args: [value, ...]",
        )
    after = step.get("after", [])
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise InvalidInput(
            "after must be a list of step names",
            field=f"{where}.after",
            fix="write after: [other_step]",
        )
    retries = step.get("retries", getattr(fn, "retries", 0))
    delay = step.get("retry_delay_s", getattr(fn, "retry_delay_s", 0.0))
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100:
        raise InvalidInput(
            "retries must be an integer from 0 to 100", field=f"{where}.retries", fix="e.g. 2"
        )
    if not isinstance(delay, int | float) or isinstance(delay, bool) or not 0 <= delay <= 3600:
        raise InvalidInput(
            "retry_delay_s must be a number of seconds from 0 to 3600",
            field=f"{where}.retry_delay_s",
            fix="e.g. 1.5",
        )
    plain = fn.fn if isinstance(fn, Task) else fn
    return {
        "name": name,
        "task": Task(plain, name=name, retries=retries, retry_delay_s=float(delay)),
        "args": args,
        "after": list(dict.fromkeys(after)),
        "refs": list(dict.fromkeys(_references(args))),
    }


def _checked_name(name: Any, what: str, field: str) -> str:
    if not isinstance(name, str) or not _STEP_NAME.match(name):
        raise InvalidInput(
            f"{what} {name!r} is not valid",
            field=field,
            fix="use letters, digits, '_' and '-' (at most 64, starting with a letter)",
        )
    return name


def _references(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        if value.startswith("$") and not value.startswith("$$"):
            yield value[1:]
    elif isinstance(value, dict):
        for v in value.values():
            yield from _references(v)
    elif isinstance(value, list):
        for v in value:
            yield from _references(v)


def _substitute(value: Any, futures: Mapping[str, TaskFuture]) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        return value[1:] if value.startswith("$$") else futures[value[1:]]
    if isinstance(value, dict):
        return {k: _substitute(v, futures) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, futures) for v in value]
    return value


# ---- glue for the scheduler -------------------------------------------------------------------


def workflow_job(executor: Executor, wf: Workflow) -> Callable[[Any], dict]:
    """A scheduler function `job(ctx)`: runs `wf` with the run's `ctx.args` as keyword
    arguments and returns the run record; raises the run's error when it failed."""

    def job(ctx: Any) -> dict:
        run = executor.start(wf, **ctx.args)
        run.wait()
        if run.error is not None:
            raise run.error
        return {**run.to_dict(), "value": summary(run.value)}

    job.__name__ = f"workflow_{wf.name}"
    return job


# ---- helpers ---------------------------------------------------------------------------------


def summary(value: Any, depth: int = 0) -> Any:
    """A small JSON-able description of a value for lineage (big things are described, not
    copied)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "..."
    if isinstance(value, np.generic):
        return summary(value.item(), depth)
    if isinstance(value, np.ndarray):
        if value.size <= 8 and value.ndim <= 1 and value.dtype.kind in "biuf":
            return [summary(v) for v in value.tolist()]
        return {"array": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, TaskFuture):
        return {"task": value.name, "node": value.node_id}
    if isinstance(value, bytes | bytearray):
        return {"bytes": len(value)}
    if isinstance(value, list | tuple):
        if len(value) > 20 or depth >= 3:
            return {"list": len(value)}
        return [summary(v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        if len(value) > 20 or depth >= 3:
            return {"dict": len(value)}
        return {str(k): summary(v, depth + 1) for k, v in value.items()}
    return {"object": type(value).__name__, "repr": repr(value)[:120]}


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


def _error_text(error: BaseException | None) -> str:
    return f"{type(error).__name__}: {error}"


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _data_window(item: Any) -> dict:
    if not isinstance(item, Mapping) or "start" not in item or "end" not in item:
        raise InvalidInput(
            "a data window must be a dict with start and end",
            field="data",
            fix='e.g. reads(data={"type": "room", "start": t0, "end": t1})',
        )
    out = {str(k): summary(v) for k, v in item.items()}
    for key in ("start", "end"):
        try:
            out[key] = parse_ts(item[key])
        except ValueError as exc:
            raise InvalidInput(
                str(exc), field=f"data.{key}", fix="use ISO 8601 or epoch ms"
            ) from None
    if out["end"] < out["start"]:
        raise InvalidInput("a data window ends before it starts", field="data.end", fix="swap them")
    return out


def _model_ref(item: Any) -> dict:
    if isinstance(item, tuple) and len(item) == 2:
        name, version = item
    elif isinstance(item, Mapping) and "name" in item:
        name, version = item["name"], item.get("version")
    else:
        raise InvalidInput(
            f"a model read must be (name, version) or {{name, version}}, not {item!r}"[:200],
            field="model",
            fix='e.g. reads(model=("room-baseline", 3))',
        )
    if not isinstance(name, str) or not name:
        raise InvalidInput("a model name must be a non-empty string", field="model", fix="name it")
    if isinstance(version, np.integer):
        version = int(version)
    if not (isinstance(version, int | str) and not isinstance(version, bool)):
        raise InvalidInput(
            f"model version of '{name}' must be a number or an alias",
            field="model",
            fix="pass the version number the task loaded",
        )
    return {"name": name, "version": version}
