"""REST routes of the scheduler: functions, schedules, events (joins) and runs."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool

from livetwin.api.body import read_body
from livetwin.api.params import Int64
from livetwin.api.tenancy import NAMESPACE_QUERY, TENANT
from livetwin.auth import Access
from livetwin.errors import InvalidInput, LivetwinError
from livetwin.schedule import Scheduler
from livetwin.schedule.model import RUN_STATES

MAX_BODY = 1024 * 1024
MAX_EVENTS_PER_POST = 1_000
NAMESPACE = Query(None, description="namespace (default 'default')")


def _body(schema: dict, example: Any) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema, "example": example}},
        }
    }


FUNCTION_BODY = _body(
    {
        "type": "object",
        "required": ["kind"],
        "properties": {
            "kind": {"type": "string", "enum": ["builtin", "python", "http"]},
            "job": {"type": "string"},
            "ref": {"type": "string"},
            "url": {"type": "string", "format": "uri"},
            "method": {"type": "string"},
            "timeout_s": {"type": "number"},
            "events": {"type": "array", "items": {"type": "string"}},
            "ttl": {"type": ["string", "integer"], "description": "join events expire after"},
            "args": {"type": "object"},
            "concurrency": {"type": "integer"},
            "retries": {"type": "integer"},
            "backoff_s": {"type": "number"},
        },
    },
    {"kind": "http", "url": "https://example.com/retrain", "events": ["data-ready"]},
)
SCHEDULE_BODY = _body(
    {
        "type": "object",
        "required": ["function", "trigger"],
        "properties": {
            "id": {"type": "string"},
            "function": {"type": "string"},
            "namespace": {"type": "string"},
            "trigger": {"type": "object"},
            "missed": {"type": "string", "enum": ["skip", "once", "catch_up"]},
            "args": {"type": "object"},
            "enabled": {"type": "boolean"},
        },
    },
    {
        "id": "nightly-calibration",
        "function": "calibrate-pumps",
        "trigger": {"kind": "cron", "cron": "0 3 * * *", "tz": "Europe/Berlin"},
        "missed": "once",
    },
)
_EVENT = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "data": {},
        "key": {"type": "string", "description": "join correlation key"},
        "namespace": {"type": "string"},
        "idempotency_key": {"type": "string", "description": "stored once per namespace+name"},
    },
}
EVENT_BODY = _body(
    {"oneOf": [_EVENT, {"type": "array", "items": _EVENT}]},
    {"name": "data-ready", "data": {"rows": 1200}, "key": "pump-1", "idempotency_key": "r-77"},
)


def _in_namespace(body: Any, access: Access, field: str = "namespace") -> Any:
    """A JSON object body with its `namespace` settled by the caller's access (see
    `Access.target`); other bodies go on unchanged (the scheduler says what is wrong)."""
    if not isinstance(body, dict):
        return body
    try:
        return {**body, "namespace": access.target(body.get("namespace"))}
    except LivetwinError as exc:
        exc.field = field
        raise


def schedule_routes(app: FastAPI, scheduler: Scheduler) -> None:
    """Add the `/api/functions`, `/api/schedules`, `/api/events` and `/api/runs` routes."""

    # ---- functions ------------------------------------------------------------------------

    @app.put("/api/functions/{name}", tags=["scheduler"], openapi_extra=FUNCTION_BODY)
    async def put_function(name: str, request: Request, namespace: str | None = NAMESPACE) -> dict:
        """Declare or replace a function: a built-in job, a Python reference or a remote URL."""
        body = await read_body(request, MAX_BODY)
        return await run_in_threadpool(
            scheduler.define_function, name, body, namespace, trusted=False
        )

    @app.get("/api/functions", tags=["scheduler"])
    def list_functions(
        access: Access = TENANT, namespace: str | None = NAMESPACE_QUERY
    ) -> list[dict]:
        """Functions with their ready and waiting events, queue, last run and last error."""
        return access.pick(namespace).filter(scheduler.functions(namespace))

    @app.get("/api/functions/{name}", tags=["scheduler"])
    def get_function(name: str, namespace: str | None = NAMESPACE, access: Access = TENANT) -> dict:
        return scheduler.function(name, access.target(namespace))

    @app.delete("/api/functions/{name}", tags=["scheduler"])
    def delete_function(name: str, namespace: str | None = NAMESPACE) -> dict:
        """Remove a function and its pending join events (refused while a schedule uses it)."""
        return scheduler.delete_function(name, namespace)

    @app.post("/api/functions/{name}/run", tags=["scheduler"], status_code=202)
    async def run_function(
        name: str, request: Request, namespace: str | None = NAMESPACE, access: Access = TENANT
    ) -> dict:
        """Queue a run now; an optional JSON object body gives its args."""
        namespace = access.target(namespace)
        args = await read_body(request, MAX_BODY, required=False)
        return await run_in_threadpool(scheduler.run_function, name, namespace, args)

    # ---- schedules ------------------------------------------------------------------------

    @app.post("/api/schedules", tags=["scheduler"], status_code=201, openapi_extra=SCHEDULE_BODY)
    async def create_schedule(request: Request, access: Access = TENANT) -> dict:
        """Bind a trigger (once, interval, cron, event, condition) to a function."""
        body = _in_namespace(await read_body(request, MAX_BODY), access)
        return await run_in_threadpool(scheduler.add_schedule, body)

    @app.get("/api/schedules", tags=["scheduler"])
    def list_schedules(
        access: Access = TENANT, namespace: str | None = NAMESPACE_QUERY
    ) -> list[dict]:
        return access.pick(namespace).filter(scheduler.schedules(namespace))

    def reachable(schedule_id: str, access: Access) -> dict:
        """The schedule, or 404 outside the caller's namespaces."""
        found = scheduler.schedule(schedule_id)
        access.check(found["namespace"], f"schedule '{schedule_id}'", "list: GET /api/schedules")
        return found

    @app.get("/api/schedules/{schedule_id}", tags=["scheduler"])
    def get_schedule(schedule_id: str, access: Access = TENANT) -> dict:
        return reachable(schedule_id, access)

    @app.patch("/api/schedules/{schedule_id}", tags=["scheduler"])
    async def patch_schedule(schedule_id: str, request: Request, access: Access = TENANT) -> dict:
        """Enable or disable: `{"enabled": false}`."""
        reachable(schedule_id, access)
        body = await read_body(request, MAX_BODY)
        return await run_in_threadpool(scheduler.update_schedule, schedule_id, body)

    @app.delete("/api/schedules/{schedule_id}", tags=["scheduler"])
    def delete_schedule(schedule_id: str, access: Access = TENANT) -> dict:
        reachable(schedule_id, access)
        return scheduler.delete_schedule(schedule_id)

    @app.post("/api/schedules/{schedule_id}/run", tags=["scheduler"], status_code=202)
    def run_schedule(schedule_id: str, access: Access = TENANT) -> dict:
        """Run the schedule's function now, with its args, whatever its trigger."""
        reachable(schedule_id, access)
        return scheduler.run_schedule(schedule_id)

    # ---- events ---------------------------------------------------------------------------

    @app.get("/api/events/waiting", tags=["scheduler"])
    def waiting_events(
        namespace: str | None = NAMESPACE_QUERY,
        function: str | None = Query(None),
        limit: int = Query(100, ge=1, le=1000),
        access: Access = TENANT,
    ) -> list[dict]:
        """Events waiting in joins (neither consumed nor expired), oldest first, with when
        they expire (functions with a `ttl`)."""
        waiting = scheduler.waiting_events(namespace, function, limit)
        return access.pick(namespace).filter(waiting)

    @app.post("/api/events", tags=["scheduler"], status_code=202, openapi_extra=EVENT_BODY)
    async def post_events(request: Request, access: Access = TENANT) -> dict:
        """Post one event (or a list): durable when answered; joins and event triggers fire.
        An event whose `idempotency_key` is stored already is a duplicate: stored once."""
        body = await read_body(request, MAX_BODY)
        events = body if isinstance(body, list) else [body]
        if not 1 <= len(events) <= MAX_EVENTS_PER_POST:
            raise InvalidInput(
                f"send 1 to {MAX_EVENTS_PER_POST} events",
                field="body",
                fix="split the list into smaller posts",
            )
        events = [_in_namespace(e, access, f"[{i}].namespace") for i, e in enumerate(events)]
        stored = await run_in_threadpool(scheduler.post_events, events)
        duplicates = sum(1 for e in stored if e.get("duplicate"))
        return {"accepted": len(stored) - duplicates, "duplicates": duplicates, "events": stored}

    # ---- runs -----------------------------------------------------------------------------

    @app.get("/api/runs", tags=["scheduler"])
    def list_runs(
        function: str | None = Query(None),
        state: str | None = Query(None, description=" | ".join(RUN_STATES)),
        namespace: str | None = NAMESPACE_QUERY,
        schedule: str | None = Query(None),
        limit: Int64 = Query(100),
        access: Access = TENANT,
    ) -> list[dict]:
        """Runs, newest first (logs are in GET /api/runs/{id})."""
        return scheduler.runs(
            function=function,
            state=state,
            namespaces=access.pick(namespace).namespaces,
            schedule=schedule,
            limit=limit,
        )

    def reachable_run(run_id: str, access: Access) -> dict:
        """The run, or 404 outside the caller's namespaces."""
        found = scheduler.run(run_id)
        access.check(found["namespace"], f"run '{run_id}'", "list runs with GET /api/runs")
        return found

    @app.get("/api/runs/{run_id}", tags=["scheduler"])
    def get_run(run_id: str, access: Access = TENANT) -> dict:
        return reachable_run(run_id, access)

    @app.post("/api/runs/{run_id}/cancel", tags=["scheduler"], status_code=202)
    def cancel_run(run_id: str, access: Access = TENANT) -> dict:
        """Ask a queued or running run to stop (409 when it has finished)."""
        reachable_run(run_id, access)
        return scheduler.cancel(run_id)
