"""REST routes for desired state: PUT/GET /api/twins/{twin_id}/desired (commands over MQTT)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from livetwin.api.body import read_body
from livetwin.api.openapi import MQTT_OFF, json_body
from livetwin.errors import Conflict

__all__ = ["commands_routes"]

DESIRED_BODY = json_body(
    {
        "type": "object",
        "required": ["values"],
        "properties": {"values": {"type": "object", "additionalProperties": {"type": "number"}}},
    },
    example={"values": {"speed": 12.5}},
)


def commands_routes(app: FastAPI, platform: Any, service: Any | None) -> None:
    """Add the desired-state routes of a `CommandService` (None when MQTT is off) to `app`.

    Call it before the app's `GET /api/twins/{twin_id:path}`, which would answer .../desired.
    """
    limit = platform.settings.max_body_bytes

    def need_service():
        if service is None:
            raise Conflict(
                "MQTT not configured: commands need an MQTT broker, and this server has none",
                field="mqtt",
                fix="start the server with livetwin serve --mqtt host:port",
            )
        return service

    @app.put(
        "/api/twins/{twin_id:path}/desired",
        tags=["commands"],
        responses=MQTT_OFF,
        openapi_extra=DESIRED_BODY,
    )
    async def put_desired(twin_id: str, request: Request) -> dict:
        """Store desired values and publish them to the device; returns the desired view."""
        body = await read_body(request, limit)
        values = body.get("values") if isinstance(body, dict) else body
        return await run_in_threadpool(need_service().set_desired, twin_id, values)

    @app.get("/api/twins/{twin_id:path}/desired", tags=["commands"], responses=MQTT_OFF)
    def get_desired(twin_id: str) -> dict:
        """Desired next to reported values and the names still pending."""
        return need_service().desired(twin_id)
