"""REST routes for alarms (`/api/alarms`): list, counts, one alarm with history, ack, clear,
comments."""

from __future__ import annotations

from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from livetwin.actions.alarms import MAX_COMMENT, MAX_NAME, AlarmService
from livetwin.api.params import Int64


class ChangeBody(BaseModel):
    """Who acknowledges or clears, and an optional note for the history."""

    model_config = ConfigDict(extra="forbid")

    by: str | None = Field(None, max_length=MAX_NAME)
    note: str | None = Field(None, max_length=MAX_COMMENT)


class CommentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_COMMENT)
    author: str | None = Field(None, max_length=MAX_NAME)


def alarm_routes(app: FastAPI, service: AlarmService) -> None:
    """Add the alarm routes to `app`."""

    @app.get("/api/alarms", tags=["alarms"])
    def list_alarms(
        state: str | None = Query(None, description="active, acknowledged, cleared or open"),
        severity: str | None = Query(None, description="critical, warning, info (comma list)"),
        twin: str | None = None,
        type: str | None = None,
        limit: Int64 = 100,
        offset: Int64 = 0,
    ) -> dict:
        """Alarms, newest first, filtered and paged."""
        return service.list(
            state=state, severity=severity, twin=twin, type=type, limit=limit, offset=offset
        )

    @app.get("/api/alarms/counts", tags=["alarms"])
    def alarm_counts() -> dict:
        """Open alarms per severity: active, acknowledged and total."""
        return service.counts()

    @app.get("/api/alarms/{alarm_id}", tags=["alarms"])
    def get_alarm(alarm_id: Int64) -> dict:
        """One alarm with its history and comments."""
        return service.get(alarm_id)

    @app.post("/api/alarms/{alarm_id}/ack", tags=["alarms"])
    async def acknowledge(alarm_id: Int64, body: ChangeBody | None = None) -> dict:
        """active -> acknowledged (409 in any other state)."""
        body = body or ChangeBody()
        return await run_in_threadpool(service.acknowledge, alarm_id, by=body.by, note=body.note)

    @app.post("/api/alarms/{alarm_id}/clear", tags=["alarms"])
    async def clear(alarm_id: Int64, body: ChangeBody | None = None) -> dict:
        """active or acknowledged -> cleared (409 when it is cleared already)."""
        body = body or ChangeBody()
        return await run_in_threadpool(service.clear, alarm_id, by=body.by, note=body.note)

    @app.post("/api/alarms/{alarm_id}/comments", tags=["alarms"], status_code=201)
    async def comment(alarm_id: Int64, body: CommentBody) -> dict:
        """Add a comment; returns the alarm with its history and comments."""
        return await run_in_threadpool(service.comment, alarm_id, body.text, body.author)
