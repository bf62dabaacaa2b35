"""What-if scenarios on a cluster front end: the single node's `Scenarios` (store, lineage, the
scheduler's `scenario` job) in the cluster's service schema `<cluster>_scenarios`, forecast by
the shards: each forks and forecasts its own twins (their calibrated filter state and history
live there), all at once, and the front end merges their parts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from livetwin.jobs.scenario import (
    Forecast,
    Progress,
    ScenarioPorts,
    Scenarios,
    choose_twins,
    merge_forecasts,
)

if TYPE_CHECKING:
    from livetwin.cluster.frontend import ClusterFrontend
    from livetwin.scenario.request import ScenarioRequest
    from livetwin.spec.types import CompiledType

CHECK_TIMEOUT_S = 60.0  # a shard's check reads the history of recorded inputs


def cluster_scenarios(frontend: ClusterFrontend) -> Scenarios:
    """The scenario service of a front end (shared by every front end through PostgreSQL)."""
    return Scenarios(
        ScenarioPorts(
            clock=frontend.clock,
            forecasts=ClusterForecasts(frontend),
            open_db=frontend.open_db,
            lineage=frontend.lineage,
            models=frontend.registry.store,
        )
    )


class ClusterForecasts:
    """`Forecasts` over the shards: a request's twins are chosen through the front end (a list
    asks each twin's shard, a filter every shard), then each shard involved checks or forecasts
    its own ones (`Shard.scenario_check`, `Shard.scenario`); the limits count them all."""

    def __init__(self, frontend: ClusterFrontend):
        self.frontend = frontend

    def compiled_types(self) -> dict[str, CompiledType]:
        return self.frontend.compiled_types()

    def _parts(self, request: ScenarioRequest) -> tuple[list[str], dict[int, tuple]]:
        """The request's twins and each shard's part: (type, its twins, all twins' count)."""
        type_name, ids = choose_twins(request.twins, self.frontend)
        parts = self.frontend.by_shard(ids)
        return ids, {i: (type_name, twins, len(ids)) for i, twins in parts.items()}

    def check(self, request: ScenarioRequest) -> None:
        _, parts = self._parts(request)
        calls = {i: ("scenario_check", request, *part) for i, part in parts.items()}
        self.frontend.fan_out(calls, timeout=CHECK_TIMEOUT_S)

    def forecast(
        self,
        request: ScenarioRequest,
        *,
        job: str,
        progress: Progress | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Forecast:
        ids, parts = self._parts(request)
        calls = {i: ("scenario", request, *part, job) for i, part in parts.items()}
        answers = self.frontend.fan_out(calls, job=job, progress=progress, cancelled=cancelled)
        return merge_forecasts([answers[i] for i in sorted(answers)], ids)
