"""Workflows: `@task` and `@workflow` as ordinary Python (loops, conditions), run by a local
executor that respects dependencies, retries tasks and records every task and workflow run in the
platform's `LineageStore`; plus a declarative YAML form for chains of registered functions.

This is the module users import; the parts are tasks.py (definitions), workflow_run.py (running
them) and workflow_yaml.py (the declarative form).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from livetwin.schedule.tasks import (
    Task,
    TaskContext,
    TaskFuture,
    UpstreamFailed,
    Workflow,
    current_task,
    source_hash,
    summary,
    task,
    workflow,
)
from livetwin.schedule.workflow_run import Executor, WorkflowRun
from livetwin.schedule.workflow_yaml import load_workflow

__all__ = [
    "Executor",
    "Task",
    "TaskContext",
    "TaskFuture",
    "UpstreamFailed",
    "Workflow",
    "WorkflowRun",
    "current_task",
    "load_workflow",
    "source_hash",
    "summary",
    "task",
    "workflow",
    "workflow_job",
]


def workflow_job(executor: Executor, wf: Workflow) -> Callable[[Any], dict]:
    """A scheduler function `job(ctx)`: runs `wf` with the run's `ctx.args` as keyword
    arguments and returns the run record; raises the run's error when it failed. The workflow
    run has the scheduler run's id, so a run interrupted by a crash (run again on the next
    start) or retried resumes after its finished tasks (when the executor is durable)."""

    def job(ctx: Any) -> dict:
        run = executor.start(wf, run_id=ctx.run_id, **ctx.args)
        run.wait()
        if run.error is not None:
            raise run.error
        return {**run.to_dict(), "value": summary(run.value)}

    job.__name__ = f"workflow_{wf.name}"
    return job
