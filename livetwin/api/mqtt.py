"""REST routes for MQTT ingest: subscriptions (topic pattern -> extractor) and bridge stats."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from livetwin.api.body import read_body
from livetwin.api.openapi import MQTT_OFF
from livetwin.errors import Conflict

__all__ = ["mqtt_routes"]

SUBSCRIPTION_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["topic", "extractor"],
                    "properties": {
                        "topic": {"type": "string"},
                        "extractor": {"type": "string"},
                        "qos": {"type": "integer", "enum": [0, 1], "default": 1},
                        "twin_from_topic": {"type": ["integer", "null"], "minimum": 1},
                    },
                },
                "example": {
                    "topic": "plant/+/line/+/telemetry",
                    "extractor": "line-telemetry",
                    "qos": 1,
                    "twin_from_topic": 2,
                },
            }
        },
    }
}


def mqtt_routes(app: FastAPI, platform: Any, bridge: Any | None) -> None:
    """Add /api/mqtt routes to `app`; `bridge` is an `MqttBridge`, or None when MQTT is off."""
    limit = platform.settings.max_body_bytes

    def need_bridge():
        if bridge is None:
            raise Conflict(
                "MQTT not configured: MQTT ingest is not enabled on this server",
                field="mqtt",
                fix="start the server with livetwin serve --mqtt host:port",
            )
        return bridge

    @app.get("/api/mqtt", tags=["mqtt"])
    def mqtt_stats() -> dict:
        """Broker connection state, queue depth and message counters."""
        if bridge is None:
            return {"enabled": False, "connected": False}
        return {"enabled": True, **bridge.stats()}

    @app.get("/api/mqtt/subscriptions", tags=["mqtt"], responses=MQTT_OFF)
    def list_subscriptions() -> list[dict]:
        return need_bridge().subscriptions()

    @app.get("/api/mqtt/subscriptions/{name}", tags=["mqtt"], responses=MQTT_OFF)
    def get_subscription(name: str) -> dict:
        return need_bridge().subscription(name)

    @app.put(
        "/api/mqtt/subscriptions/{name}",
        tags=["mqtt"],
        responses=MQTT_OFF,
        openapi_extra=SUBSCRIPTION_BODY,
    )
    async def put_subscription(name: str, request: Request) -> dict:
        """Create or replace a subscription; persisted, so a restart subscribes again."""
        active = need_bridge()
        body = await read_body(request, limit)
        return await run_in_threadpool(active.put_subscription, name, body)

    @app.delete(
        "/api/mqtt/subscriptions/{name}", tags=["mqtt"], responses=MQTT_OFF, status_code=204
    )
    async def delete_subscription(name: str) -> Response:
        await run_in_threadpool(need_bridge().delete_subscription, name)
        return Response(status_code=204)
