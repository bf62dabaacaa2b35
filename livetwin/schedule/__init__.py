"""The scheduler: triggers (once, interval, cron, event, condition), event joins, and runs of
built-in, Python and remote HTTP functions with retries, logs and namespaces.
"""

from livetwin.schedule.functions import JOBS, FunctionSpec, RunContext, register_job
from livetwin.schedule.service import Scheduler
from livetwin.schedule.triggers import CronTrigger

__all__ = ["JOBS", "CronTrigger", "FunctionSpec", "RunContext", "Scheduler", "register_job"]
