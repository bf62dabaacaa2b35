"""The built-in job kinds, registered with a scheduler by the composition root: `calibrate`
(with the system schedules of each type's calibration section), `train-baseline` and
`check-inactivity`. The scheduler itself knows no job kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from livetwin.jobs.baseline import check_inactivity_job, train_baseline_job
from livetwin.jobs.calibration import CALIBRATE_FUNCTION, calibrate_job, calibration_schedules


def register_builtins(
    scheduler: Any, *, calibrate: Callable[..., dict], baseline_host: Any
) -> None:
    """Register the built-in jobs with `scheduler`, bound to their ports: `calibrate(type,
    twins, run=...)` calibrates a type and returns its record; `baseline_host` is what the
    baseline jobs read and write through (twins, history, registry, alarms, ingest)."""
    scheduler.register_job("calibrate", calibrate_job(calibrate))
    scheduler.register_job("train-baseline", partial(train_baseline_job, platform=baseline_host))
    scheduler.register_job(
        "check-inactivity", partial(check_inactivity_job, platform=baseline_host)
    )
    scheduler.add_system_schedules(calibration_schedules, {"calibrate": CALIBRATE_FUNCTION})
