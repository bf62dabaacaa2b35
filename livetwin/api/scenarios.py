"""REST routes of what-if scenarios: `POST /api/scenarios` (checked, then run as a scheduler
job) and `GET /api/scenarios[/{id}]` (status, progress, summary and forecast series)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool

from livetwin.api.body import read_body
from livetwin.api.openapi import json_body
from livetwin.api.tenancy import TENANT
from livetwin.auth import Access
from livetwin.errors import InvalidInput, NotFound
from livetwin.jobs.scenario import Scenarios

MAX_BODY = 4 * 1024 * 1024  # uploaded series included

_INPUT = {
    "type": "object",
    "required": ["kind"],
    "properties": {
        "kind": {
            "type": "string",
            "enum": ["constant", "step", "ramp", "schedule", "recorded", "series"],
        },
        "value": {"type": "number"},
        "at": {"type": ["string", "number"], "description": "offset from the start"},
        "over": {"type": ["string", "number"]},
        "to": {"type": ["number", "string"], "description": "a level, or a window's end"},
        "by": {"type": "number"},
        "factor": {"type": "number"},
        "points": {"type": "array", "items": {"type": "array"}},
        "interpolate": {"type": "string", "enum": ["hold", "linear"]},
        "from": {"type": ["string", "integer"]},
        "scale": {"type": "number"},
        "offset": {"type": "number"},
        "values": {"type": "array", "items": {"type": "number"}},
        "every": {"type": ["string", "number"]},
    },
}
SCENARIO_BODY = json_body(
    {
        "type": "object",
        "required": ["twins", "horizon"],
        "properties": {
            "name": {"type": "string"},
            "twins": {
                "oneOf": [
                    {"type": "array", "items": {"type": "string"}},
                    {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {"type": "string"},
                            "parent": {"type": "string"},
                            "where": {"type": "string"},
                        },
                    },
                ]
            },
            "horizon": {"type": ["string", "number"]},
            "step": {"type": ["string", "number"]},
            "inputs": {"type": "object", "additionalProperties": _INPUT},
        },
    },
    example={
        "name": "brake +20 % after a minute",
        "twins": ["line-1"],
        "horizon": "10m",
        "step": "10s",
        "inputs": {"brake_torque": {"kind": "step", "at": "1m", "factor": 1.2}},
    },
)


def _twins_reachable(request: Any, access: Access) -> bool:
    """Whether a scenario request names its twins (a list) all in the caller's namespaces."""
    twins = request.get("twins") if isinstance(request, dict) else None
    return isinstance(twins, list) and all(
        isinstance(t, str) and access.allows_twin(t) for t in twins
    )


def scenario_routes(app: FastAPI, scenarios: Scenarios) -> None:
    """Add the `/api/scenarios` routes. A namespace-scoped token names its twins (a list, all
    in its namespaces) and sees the scenarios of such lists only."""

    def reachable(scenario_id: str, access: Access) -> None:
        if not access.fleet and not _twins_reachable(scenarios.get(scenario_id)["request"], access):
            raise NotFound(
                f"no scenario '{scenario_id}'",
                field="scenario_id",
                fix="list scenarios with GET /api/scenarios",
            )

    @app.post("/api/scenarios", tags=["scenarios"], status_code=202, openapi_extra=SCENARIO_BODY)
    async def create_scenario(request: Request, access: Access = TENANT) -> dict:
        """Fork twins from their calibrated state and forecast them under the given inputs,
        beside a baseline (inputs as they are now). Checked before any work; runs as the
        scheduler's `scenario` job (its run id is `run`)."""
        body = await read_body(request, MAX_BODY)
        if not access.fleet and not _twins_reachable(body, access):
            raise InvalidInput(
                "twins must list twin ids of your namespaces",
                field="twins",
                fix='name the twins, e.g. ["home-7/heater"]; a selection by type may span '
                "namespaces",
            )
        return await run_in_threadpool(scenarios.submit, body)

    @app.get("/api/scenarios", tags=["scenarios"])
    def list_scenarios(
        limit: int = Query(50, ge=1, le=1000), access: Access = TENANT
    ) -> list[dict]:
        """Scenarios, newest first (without summaries)."""
        found = scenarios.list(limit)
        return (
            found if access.fleet else [s for s in found if _twins_reachable(s["request"], access)]
        )

    @app.get("/api/scenarios/{scenario_id}", tags=["scenarios"])
    def get_scenario(
        scenario_id: str,
        twin: list[str] | None = Query(
            None, description="the twins whose series to include (default: the first 10)"
        ),
        access: Access = TENANT,
    ) -> dict:
        """Status and progress; once succeeded, the summary (differences and alarms per twin)
        and each forecast's mean and 95 % band per output, scenario beside baseline."""
        reachable(scenario_id, access)
        return scenarios.get(scenario_id, twin)
