"""The built-in job kinds, registered with a scheduler by the composition root: `calibrate`
(with the system schedules of each type's calibration section), `train-baseline` and
`check-inactivity`. The scheduler itself knows no job kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from livetwin.jobs.baseline import check_inactivity_job, train_baseline_job
from livetwin.jobs.calibration import CALIBRATE_FUNCTION, calibrate_job, calibration_schedules

if TYPE_CHECKING:
    from livetwin.ports import Clock, Ingest


@dataclass(frozen=True)
class BaselinePorts:
    """What the baseline jobs read and write through, under the names they call: reads from
    `query` (a `livetwin.query.Query`), observations into `ingest_port`, model versions in
    `registry` (register, predictor)."""

    clock: Clock
    query: Any
    ingest_port: Ingest
    registry: Any

    def get_type(self, name: str, version: int | None = None) -> dict:
        return self.query.get_type(name, version)

    def list_types(self) -> list[dict]:
        return self.query.list_types()

    def twin(self, twin_id: str) -> dict:
        return self.query.twin(twin_id)

    def twins(self, **filters: Any) -> dict:
        return self.query.twins(**filters)

    def history(self, twin_id: str, names: list[str] | None = None, **window: Any) -> dict:
        return self.query.history(twin_id, names, **window)

    def ingest(self, observations: Any, *, atomic: bool = False) -> Any:
        return self.ingest_port.ingest(observations, atomic=atomic)


def register_builtins(
    scheduler: Any,
    *,
    calibrate: Callable[..., dict],
    clock: Clock,
    query: Any,
    ingest: Ingest,
    registry: Any,
) -> None:
    """Register the built-in jobs with `scheduler`, bound to their ports: `calibrate(type,
    twins, run=...)` calibrates a type and returns its record (the platform's entry, which
    serialises runs of one type); the baseline jobs read through `query`, write through `ingest`
    and keep their models in `registry`."""
    scheduler.register_job("calibrate", calibrate_job(calibrate))
    ports = BaselinePorts(clock=clock, query=query, ingest_port=ingest, registry=registry)
    scheduler.register_job("train-baseline", partial(train_baseline_job, platform=ports))
    scheduler.register_job("check-inactivity", partial(check_inactivity_job, platform=ports))
    scheduler.add_system_schedules(calibration_schedules, {"calibrate": CALIBRATE_FUNCTION})
