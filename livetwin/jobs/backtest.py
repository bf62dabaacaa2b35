"""The `backtest` job: a back-test run by the scheduler (progress, cancel, logs, a lineage node
with the run's id); `POST /api/backtests` queues it as a run of the system function `backtest`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from livetwin.errors import NotFound
from livetwin.schedule.model import SYSTEM

if TYPE_CHECKING:
    from livetwin.backtest.service import BacktestService
    from livetwin.schedule.functions import RunContext

BACKTEST = "backtest"  # the job kind, and the system function that runs it
BACKTEST_FUNCTION = {
    "kind": "builtin",
    "job": BACKTEST,
    "concurrency": 1,  # one replay at a time: each one keeps a core busy
    "retries": 0,
    "description": "back-tests a candidate twin type against the journal (POST /api/backtests)",
}


def backtest_job(service: BacktestService) -> Callable[[RunContext], dict]:
    """The job: args as `POST /api/backtests` takes them (checked again here, before any work);
    the result is the report's summary, the report itself is kept under the run's id."""

    def run(ctx: RunContext) -> dict:
        plan = service.plan(ctx.args)
        return service.run(
            plan,
            ctx.run_id,
            progress=ctx.progress,
            cancelled=lambda: ctx.cancelled,
            log=ctx.log,
        )

    return run


def queue_backtest(scheduler: Any, args: dict) -> dict:
    """Queue a back-test run with checked `args` (`BacktestService.plan(...).args`); the run.
    The system function `backtest` is declared on first use."""
    try:
        scheduler.function(BACKTEST, SYSTEM)
    except NotFound:
        scheduler.define_function(BACKTEST, BACKTEST_FUNCTION, SYSTEM)
    return scheduler.run_function(BACKTEST, SYSTEM, args)
