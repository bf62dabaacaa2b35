"""The scheduler: triggers (once, interval, cron, event, condition), event joins, and runs of
built-in, Python and remote HTTP functions with retries, logs and namespaces.

Names load on first use, so `import livetwin.schedule.workflow` (where `@task` lives) does not
pull in the scheduler's HTTP client, database and job modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from livetwin.schedule.functions import JOBS, FunctionSpec, RunContext, register_job
    from livetwin.schedule.service import Scheduler
    from livetwin.schedule.triggers import CronTrigger

__all__ = ["JOBS", "CronTrigger", "FunctionSpec", "RunContext", "Scheduler", "register_job"]


def __getattr__(name: str):
    """`from livetwin.schedule import Scheduler` imports `livetwin.schedule.service` then."""
    if name in ("JOBS", "FunctionSpec", "RunContext", "register_job"):
        from livetwin.schedule import functions as home
    elif name == "Scheduler":
        from livetwin.schedule import service as home
    elif name == "CronTrigger":
        from livetwin.schedule import triggers as home
    else:
        raise AttributeError(f"module 'livetwin.schedule' has no attribute {name!r}")
    return getattr(home, name)
