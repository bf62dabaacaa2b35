"""The built-in job kinds, registered with a scheduler by the composition root: `calibrate`
(with the system schedules of each type's calibration section), `train-baseline`,
`check-inactivity`, `import`, `backtest`, `scenario` (what-if forecasts) and `compact`
(retention, with the system schedules of each type's retention). The scheduler
itself knows no job kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from livetwin.jobs.backtest import BACKTEST, backtest_job
from livetwin.jobs.baseline import train_baseline_job
from livetwin.jobs.calibration import CALIBRATE_FUNCTION, calibrate_job, calibration_schedules
from livetwin.jobs.imports import import_job
from livetwin.jobs.inactivity import check_inactivity_job
from livetwin.jobs.ports import BaselinePorts
from livetwin.jobs.retention import (
    COMPACT,
    COMPACT_FUNCTION,
    compact_job,
    compact_journal,
    compact_type,
    retention_schedules,
)
from livetwin.jobs.scenario import SCENARIO_FUNCTION
from livetwin.schedule.model import SYSTEM

if TYPE_CHECKING:
    from livetwin.ports import Clock, Ingest


def register_builtins(
    scheduler: Any,
    *,
    calibrate: Callable[..., dict],
    clock: Clock,
    query: Any,
    ingest: Ingest,
    registry: Any,
    import_file: Callable[..., dict] | None = None,
    s3_client: Callable[[str], Any] | None = None,
    backtests: Any = None,
    scenarios: Any = None,
) -> None:
    """Register the built-in jobs with `scheduler`, bound to their ports: `calibrate(type,
    twins, run=...)` calibrates a type and returns its record (the platform's entry, which
    serialises runs of one type); the baseline jobs read through `query`, write through `ingest`
    and keep their models in `registry`; `import_file(path, mapping)` imports a file (the
    `import` job; `s3_client(bucket)` for its S3 prefixes); `backtests` (a BacktestService)
    runs back-tests; `scenarios` (a `Scenarios`) queues its runs here."""
    register_calibration(scheduler, calibrate)
    ports = BaselinePorts(clock=clock, query=query, ingest_port=ingest, registry=registry)
    scheduler.register_job("train-baseline", partial(train_baseline_job, platform=ports))
    scheduler.register_job("check-inactivity", partial(check_inactivity_job, platform=ports))
    if import_file is not None:
        scheduler.register_job("import", import_job(import_file, s3_client))
    register_compaction(
        scheduler,
        compact_job(partial(compact_type, query), partial(compact_journal, query.core), clock),
        query.settings.journal_retention,
    )
    if backtests is not None:
        scheduler.register_job(BACKTEST, backtest_job(backtests))
    if scenarios is not None:
        register_scenarios(scheduler, scenarios)


def register_calibration(scheduler: Any, calibrate: Callable[..., dict]) -> None:
    """The `calibrate` job and the system schedules of the types that declare
    `calibration.every` (a cluster front end registers them with its fanned-out `calibrate`)."""
    scheduler.register_job("calibrate", calibrate_job(calibrate))
    scheduler.add_system_schedules(calibration_schedules, {"calibrate": CALIBRATE_FUNCTION})


def register_compaction(scheduler: Any, job: Callable, journal_retention: str | None) -> None:
    """The `compact` job and the system schedules of the types that declare a `retention` (and
    of the journal when `journal_retention` is set)."""
    scheduler.register_job(COMPACT, job)
    scheduler.add_system_schedules(
        retention_schedules(journal_retention), {COMPACT: COMPACT_FUNCTION}
    )


def register_scenarios(scheduler: Any, scenarios: Any) -> None:
    """The `scenario` job of `scenarios` (a `Scenarios`), which queues its runs here (a single
    node's, and a cluster front end's: its scenarios are forecast by the shards)."""
    scheduler.register_job("scenario", scenarios.job())

    def queue_scenario(args: dict) -> str:  # the function is declared on first use
        scheduler.define_function("scenario", SCENARIO_FUNCTION, SYSTEM)
        return scheduler.run_function("scenario", SYSTEM, args)["id"]

    scenarios.queue = queue_scenario
