"""Workflow definitions: `@task` and `@workflow`, the context a running task reports its reads
to (`current_task()`), a task run's handle (`TaskFuture`), and the summaries lineage keeps of
values. Running them is `workflow_run.py`'s business.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np

from livetwin.errors import InvalidInput
from livetwin.timefmt import parse_ts

if TYPE_CHECKING:
    from livetwin.schedule.workflow_run import WorkflowRun


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


current_task_var: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "livetwin_task", default=None
)
current_run_var: contextvars.ContextVar[WorkflowRun | None] = contextvars.ContextVar(
    "livetwin_workflow_run", default=None
)


def current_task() -> TaskContext:
    """The context of the task running in this thread (or process)."""
    ctx = current_task_var.get()
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
        run = current_run_var.get()
        if run is None:
            token = current_task_var.set(TaskContext(self.name, 1, None))
            try:
                return self.fn(*args, **kwargs)
            finally:
                current_task_var.reset(token)
        return run.submit(self, args, kwargs)

    def submit(self, *args: Any, after: Iterable[TaskFuture] = (), **kwargs: Any) -> TaskFuture:
        """Schedule the task in the running workflow, also waiting for the futures in `after`."""
        run = current_run_var.get()
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
        if current_run_var.get() is None:
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
        self.step = ""  # "<task name>#<n>": the key of its kept value in a durable run
        self.resumed = False  # its value was kept by an interrupted run: not run again
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
            "error": error_text(error) if error is not None else None,
            **({"resumed": True} if self.resumed else {}),
        }

    def __repr__(self) -> str:
        return f"<task run {self.name} {self.state}>"


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


def error_text(error: BaseException | None) -> str:
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
