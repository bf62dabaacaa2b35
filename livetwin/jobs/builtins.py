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
    import_file: Callable[..., dict],
    s3_client: Callable[[str], Any],
    compact: tuple[Callable[[str, int], dict], Callable[[int], dict]],
    journal_retention: str | None,
    backtests: Any,
    scenarios: Any,
) -> None:
    """Register the built-in jobs with `scheduler`, bound to their ports (a single node's own,
    or a cluster front end's, which fan out over the shards): `calibrate(type, twins, run=...)`
    calibrates a type and returns its record (the entry that serialises runs of one type); the
    baseline jobs read through `query`, write through `ingest` and keep their models in
    `registry`; `import_file(path, mapping)` imports a file (the `import` job; `s3_client(bucket)`
    for its S3 prefixes); `compact` applies a type's retention and compacts the journal (the
    `compact` job, with system schedules per type and per `journal_retention`); `backtests` (a
    BacktestService) runs back-tests; `scenarios` (a `Scenarios`) queues its runs here."""
    register_calibration(scheduler, calibrate)
    ports = BaselinePorts(clock=clock, query=query, ingest_port=ingest, registry=registry)
    scheduler.register_job("train-baseline", partial(train_baseline_job, platform=ports))
    scheduler.register_job("check-inactivity", partial(check_inactivity_job, platform=ports))
    scheduler.register_job("import", import_job(import_file, s3_client))
    scheduler.register_job(COMPACT, compact_job(*compact, clock))
    scheduler.add_system_schedules(
        retention_schedules(journal_retention), {COMPACT: COMPACT_FUNCTION}
    )
    scheduler.register_job(BACKTEST, backtest_job(backtests))
    register_scenarios(scheduler, scenarios)


def register_calibration(scheduler: Any, calibrate: Callable[..., dict]) -> None:
    """The `calibrate` job and the system schedules of the types that declare
    `calibration.every`."""
    scheduler.register_job("calibrate", calibrate_job(calibrate))
    scheduler.add_system_schedules(calibration_schedules, {"calibrate": CALIBRATE_FUNCTION})


def register_scenarios(scheduler: Any, scenarios: Any) -> None:
    """The `scenario` job of `scenarios` (a `Scenarios`), which queues its runs here (a single
    node's, and a cluster front end's: its scenarios are forecast by the shards)."""
    scheduler.register_job("scenario", scenarios.job())

    def queue_scenario(args: dict) -> str:  # the function is declared on first use
        scheduler.define_function("scenario", SCENARIO_FUNCTION, SYSTEM)
        return scheduler.run_function("scenario", SYSTEM, args)["id"]

    scenarios.queue = queue_scenario
