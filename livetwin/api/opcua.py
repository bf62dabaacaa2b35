"""REST routes for OPC UA ingest: connectors (endpoint, security, node mappings) and their
status, plus their health check and metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from livetwin.api.body import read_body
from livetwin.api.openapi import error_response, json_body
from livetwin.ingest.opcua import COUNTERS, asyncua_available
from livetwin.ingest.opcua_spec import EXAMPLE, OpcuaConnectorBody

__all__ = ["opcua_routes"]

# its parts (OpcuaSecurity, OpcuaNode, OpcuaBrowse) are components through the response models
BODY_SCHEMA = OpcuaConnectorBody.model_json_schema(ref_template="#/components/schemas/{model}")
BODY_SCHEMA.pop("$defs", None)
CONNECTOR_BODY = json_body(BODY_SCHEMA, example=EXAMPLE)
HIDDEN = {"password"}  # write-only
NOT_INSTALLED = {503: error_response("asyncua is not installed: pip install 'livetwin[opcua]'")}


class OpcuaConnectorStatus(BaseModel):
    """How a connector fares: connection, counters, the last error and its fix."""

    connected: bool
    nodes: int = 0
    values_received: int = 0
    values_rejected: int = 0
    observations_accepted: int = 0
    dropped: int = 0
    connects: int = 0
    last_value_at: str | None = None
    last_error: str | None = None
    fix: str | None = None
    last_rejected: dict[str, Any] | None = None


class OpcuaConnector(OpcuaConnectorBody):
    """A connector as shown: its spec without the password, and its status (a stored one that
    cannot run shows only its name, endpoint and why)."""

    model_config = ConfigDict(extra="ignore")
    name: str
    password_set: bool = False
    status: OpcuaConnectorStatus


class OpcuaConnectors(BaseModel):
    """`available`: whether the server has the OPC UA library (the `opcua` extra)."""

    available: bool
    connectors: list[OpcuaConnector]


def opcua_routes(app: FastAPI, platform: Any) -> None:
    """Add /api/opcua routes to `app` for `platform.opcua` (an `OpcuaConnectors`, or a
    cluster's `LeaderConnectors`), and its metrics and health check to `app.state.monitor`
    where the app has one (a single node's)."""
    limit = platform.settings.max_body_bytes
    service = platform.opcua
    if getattr(app.state, "monitor", None) is not None:
        _monitoring(app.state.monitor, service)

    @app.get(
        "/api/opcua",
        tags=["opcua"],
        response_model=OpcuaConnectors,
        response_model_exclude={"connectors": {"__all__": HIDDEN}},
    )
    def list_connectors() -> dict:
        """Every connector with its status (connected, last error and fix, counters)."""
        return {"available": asyncua_available(), "connectors": service.connectors()}

    @app.get(
        "/api/opcua/connectors/{name}",
        tags=["opcua"],
        response_model=OpcuaConnector,
        response_model_exclude=HIDDEN,
    )
    def get_connector(name: str) -> dict:
        return service.connector(name)

    @app.put(
        "/api/opcua/connectors/{name}",
        tags=["opcua"],
        response_model=OpcuaConnector,
        response_model_exclude=HIDDEN,
        responses=NOT_INSTALLED,
        openapi_extra=CONNECTOR_BODY,
    )
    async def put_connector(name: str, request: Request) -> dict:
        """Create or replace a connector (admin). It is tried at once: a server that refuses
        its security policy, credentials or nodes answers 422 with the fix and nothing is
        stored; one that cannot be reached is stored and retried with back-off."""
        body = await read_body(request, limit)
        return await run_in_threadpool(service.put_connector, name, body)

    @app.delete("/api/opcua/connectors/{name}", tags=["opcua"], status_code=204)
    async def delete_connector(name: str) -> Response:
        """Stop and forget a connector (admin); what it received is stored first."""
        await run_in_threadpool(service.delete_connector, name)
        return Response(status_code=204)


def _monitoring(monitor: Any, service: Any) -> None:
    """Each connector's connection and counters as metrics, and the `opcua` health check:
    down while a connector is not connected, left out while there is none."""

    class Collector:
        def collect(self) -> Iterator[Metric]:
            views = service.connectors()
            up = GaugeMetricFamily(
                "livetwin_opcua_connected", "1 when the connector is subscribed", labels=["name"]
            )
            counters = {
                key: CounterMetricFamily(
                    f"livetwin_opcua_{key}", f"OPC UA {key.replace('_', ' ')}", labels=["name"]
                )
                for key in COUNTERS
            }
            for view in views:
                status = view["status"]
                up.add_metric([view["name"]], int(bool(status["connected"])))
                for key, family in counters.items():
                    family.add_metric([view["name"]], status.get(key, 0))
            yield up
            yield from counters.values()

    def check() -> Any:
        views = service.connectors()
        down = [v for v in views if not v["status"]["connected"]]
        if down:
            raise ConnectionError(
                "; ".join(f"{v['name']}: {v['status']['last_error']}" for v in down)
            )
        return {"connectors": len(views)} if views else monitor.UNUSED

    monitor.add_collector(Collector())
    monitor.add_check("opcua", check)
