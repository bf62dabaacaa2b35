"""The cluster front end's app: every route of a single node (the same route functions, over a
`ClusterFrontend`), `GET /api/cluster`, a health check and the shards' metrics
(docs/cluster.md)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.concurrency import run_in_threadpool

from livetwin import __version__
from livetwin.api.alarms import alarm_routes
from livetwin.api.app import (
    FastJSON,
    calibration_routes,
    cluster_route,
    extractor_routes,
    ingest_routes,
    install_error_handlers,
    stream_route,
    twin_read_routes,
    type_routes,
)
from livetwin.api.backtests import backtest_routes
from livetwin.api.commands import commands_routes
from livetwin.api.devices import device_routes
from livetwin.api.files import file_routes
from livetwin.api.interop import interop_routes
from livetwin.api.login import login_routes
from livetwin.api.mqtt import mqtt_routes
from livetwin.api.namespaces import namespace_routes
from livetwin.api.opcua import opcua_routes
from livetwin.api.openapi import document
from livetwin.api.registry import lineage_routes, registry_routes
from livetwin.api.scenarios import scenario_routes
from livetwin.api.schedule import schedule_routes
from livetwin.api.twins import twin_routes
from livetwin.api.webhooks import webhook_routes
from livetwin.ui import mount as mount_ui


def create_cluster_app(frontend: Any) -> FastAPI:
    """The app of a stateless cluster front end over `frontend` (a `ClusterFrontend`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(frontend.close)

    app = FastAPI(
        title="livetwin (cluster front end)",
        version=__version__,
        default_response_class=FastJSON,
        lifespan=lifespan,
        description="Living digital twins, sharded over a Ray cluster (docs/cluster.md).",
    )
    app.state.platform = frontend
    document(app)
    install_error_handlers(app)
    type_routes(app, frontend)
    interop_routes(app, frontend)  # POST /api/types/import, the NGSI-LD view
    extractor_routes(app, frontend)
    ingest_routes(app, frontend)
    calibration_routes(app, frontend)
    commands_routes(app, frontend, frontend.commands)  # .../desired before the catch-all
    twin_read_routes(app, frontend)
    twin_routes(app, frontend)
    cluster_route(app, frontend.cluster)
    stream_route(app, frontend, frontend.feed)
    mqtt_routes(app, frontend, frontend.mqtt)
    alarm_routes(app, frontend.alarms)
    registry_routes(app, frontend.registry)
    lineage_routes(app, frontend.lineage)
    schedule_routes(app, frontend.scheduler)
    backtest_routes(app, frontend.backtests, frontend.scheduler)
    scenario_routes(app, frontend.scenarios)
    webhook_routes(app, frontend.webhooks)
    device_routes(app, frontend.devices)
    file_routes(app, frontend)
    opcua_routes(app, frontend)  # run by the leading front end
    namespace_routes(app, frontend)
    login_routes(app)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics of the shards, as this front end sees them (text format)."""
        view = await run_in_threadpool(frontend.cluster)
        registry = CollectorRegistry()
        registry.register(_ShardMetrics(view))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/health", tags=["ops"])
    async def health() -> FastJSON:
        """200 when every shard is live, 503 (with the shards' states) otherwise."""
        view = await run_in_threadpool(frontend.cluster)
        states = {str(s["shard"]): s["state"] for s in view["shard_list"]}
        ok = view["live"] == view["shards"]
        body = {"status": "ok" if ok else "degraded", "shards": states}
        return FastJSON(body, status_code=200 if ok else 503)

    mount_ui(app)
    return app


class _ShardMetrics:
    """`GET /api/cluster` as Prometheus gauges: shards by state, and per shard its twins, lag
    (queued write groups) and journal position."""

    def __init__(self, view: dict):
        self.view = view

    def collect(self):
        states = GaugeMetricFamily(
            "livetwin_cluster_shards",
            "Shards by state, as this front end sees them",
            labels=["state"],
        )
        for state in ("live", "recovering", "lost"):
            count = sum(s["state"] == state for s in self.view["shard_list"])
            states.add_metric([state], count)
        yield states
        for name, key, doc in (
            ("livetwin_cluster_shard_twins", "twins", "Twins held by the shard"),
            ("livetwin_cluster_shard_lag", "lag", "Write groups queued in the shard's writer"),
            ("livetwin_cluster_shard_last_seq", "last_seq", "The shard's newest journal entry"),
        ):
            family = GaugeMetricFamily(name, doc, labels=["shard"])
            for shard in self.view["shard_list"]:
                if shard[key] is not None:
                    family.add_metric([str(shard["shard"])], shard[key])
            yield family
