"""REST routes for alarms (`/api/alarms`): list, counts, one alarm with history, ack, clear,
comments."""

from __future__ import annotations

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from livetwin.actions.alarms import MAX_COMMENT, MAX_NAME, AlarmService
from livetwin.api.body import read_body
from livetwin.api.openapi import json_body
from livetwin.api.params import Int64
from livetwin.api.tenancy import NAMESPACE_QUERY, TENANT
from livetwin.auth import Access
from livetwin.errors import NotFound
from livetwin.spec import parse_model

MAX_BODY = 64 * 1024  # a comment and its author, with room to spare


class ChangeBody(BaseModel):
    """Who acknowledges or clears, and an optional note for the history."""

    model_config = ConfigDict(extra="forbid")

    by: str | None = Field(None, max_length=MAX_NAME)
    note: str | None = Field(None, max_length=MAX_COMMENT)


class CommentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_COMMENT)
    author: str | None = Field(None, max_length=MAX_NAME)


def _body_of(model: type[BaseModel], *, required: bool) -> dict:
    """The OpenAPI request body of a route that reads `model` through `read_body`."""
    return json_body(model.model_json_schema(), required=required)


async def _read(request: Request, model: type[BaseModel], *, required: bool = True):
    """The body as `model`, read through the one body reader (413 past MAX_BODY)."""
    body = await read_body(request, MAX_BODY, required=required)
    return model() if body is None else parse_model(model, body, what="request body")


def alarm_routes(app: FastAPI, service: AlarmService) -> None:
    """Add the alarm routes to `app`; an alarm belongs to its twin's namespace."""

    def reachable(alarm_id: int, access: Access) -> dict:
        """The alarm, or 404 when its twin lies outside the caller's namespaces."""
        alarm = service.get(alarm_id)
        if not access.allows_twin(alarm["twin"]):
            raise NotFound(
                f"no alarm {alarm_id}", field="alarm_id", fix="list alarms: GET /api/alarms"
            )
        return alarm

    @app.get("/api/alarms", tags=["alarms"])
    def list_alarms(
        state: str | None = Query(None, description="active, acknowledged, cleared or open"),
        severity: str | None = Query(None, description="critical, warning, info (comma list)"),
        twin: str | None = None,
        type: str | None = None,
        limit: Int64 = 100,
        offset: Int64 = 0,
        access: Access = TENANT,
        namespace: str | None = NAMESPACE_QUERY,
    ) -> dict:
        """Alarms, newest first, filtered and paged."""
        return service.list(
            state=state, severity=severity, twin=twin, type=type, limit=limit, offset=offset,
            namespaces=access.pick(namespace).namespaces,
        )  # fmt: skip

    @app.get("/api/alarms/counts", tags=["alarms"])
    def alarm_counts(access: Access = TENANT, namespace: str | None = NAMESPACE_QUERY) -> dict:
        """Open alarms per severity: active, acknowledged and total."""
        return service.counts(access.pick(namespace).namespaces)

    @app.get("/api/alarms/{alarm_id}", tags=["alarms"])
    def get_alarm(alarm_id: Int64, access: Access = TENANT) -> dict:
        """One alarm with its history and comments."""
        return reachable(alarm_id, access)

    change = _body_of(ChangeBody, required=False)

    @app.post("/api/alarms/{alarm_id}/ack", tags=["alarms"], openapi_extra=change)
    async def acknowledge(alarm_id: Int64, request: Request, access: Access = TENANT) -> dict:
        """active -> acknowledged (409 in any other state)."""
        body = await _read(request, ChangeBody, required=False)
        reachable(alarm_id, access)
        return await run_in_threadpool(service.acknowledge, alarm_id, by=body.by, note=body.note)

    @app.post("/api/alarms/{alarm_id}/clear", tags=["alarms"], openapi_extra=change)
    async def clear(alarm_id: Int64, request: Request, access: Access = TENANT) -> dict:
        """active or acknowledged -> cleared (409 when it is cleared already)."""
        body = await _read(request, ChangeBody, required=False)
        reachable(alarm_id, access)
        return await run_in_threadpool(service.clear, alarm_id, by=body.by, note=body.note)

    @app.post(
        "/api/alarms/{alarm_id}/comments",
        tags=["alarms"],
        status_code=201,
        openapi_extra=_body_of(CommentBody, required=True),
    )
    async def comment(alarm_id: Int64, request: Request, access: Access = TENANT) -> dict:
        """Add a comment; returns the alarm with its history and comments."""
        body = await _read(request, CommentBody)
        reachable(alarm_id, access)
        return await run_in_threadpool(service.comment, alarm_id, body.text, body.author)
