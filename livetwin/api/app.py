"""The REST API: a thin FastAPI layer over `Platform`. Every error is JSON naming field and fix."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from livetwin import __version__
from livetwin.api.alarms import alarm_routes
from livetwin.api.backtests import backtest_routes
from livetwin.api.body import parse_body, read_body, read_raw_body
from livetwin.api.commands import commands_routes
from livetwin.api.devices import device_routes
from livetwin.api.files import file_routes
from livetwin.api.interop import interop_routes
from livetwin.api.login import login_routes
from livetwin.api.mqtt import mqtt_routes
from livetwin.api.namespaces import namespace_routes
from livetwin.api.opcua import opcua_routes
from livetwin.api.openapi import (
    AGGREGATE_RESPONSES,
    INGEST_RESPONSES,
    STREAM_RESPONSES,
    TWIN_LIST_RESPONSES,
    FleetAggregate,
    document,
)
from livetwin.api.ops import monitor_services, ops_routes
from livetwin.api.params import INT64_MAX, Int64
from livetwin.api.registry import lineage_routes, registry_routes
from livetwin.api.scenarios import scenario_routes
from livetwin.api.schedule import schedule_routes
from livetwin.api.stream import KINDS, Cursor, LiveFeed
from livetwin.api.tenancy import (
    NAMESPACE_QUERY,
    TENANT,
    check_owner,
    check_type,
    claim,
    claim_type,
)
from livetwin.api.twins import twin_routes
from livetwin.api.webhooks import webhook_routes
from livetwin.auth import Access
from livetwin.errors import InvalidInput, LivetwinError
from livetwin.ingest.chunks import CHUNKED_ABOVE_BYTES, normalize_chunked, split_array
from livetwin.interop.exports import export_twin, export_type
from livetwin.platform import Platform
from livetwin.timefmt import format_ts
from livetwin.ui import mount as mount_ui

log = logging.getLogger(__name__)

OBSERVATIONS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["twin", "type", "values"],
                        "properties": {
                            "twin": {"type": "string"},
                            "type": {"type": "string"},
                            "ts": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                            "values": {
                                "type": "object",
                                "additionalProperties": {"type": "number"},
                            },
                            "key": {"type": "string"},
                            "parent": {"type": "string"},
                        },
                    },
                },
                "example": [
                    {
                        "twin": "pump-1",
                        "type": "pump",
                        "ts": "2026-11-22T10:00:00Z",
                        "values": {"flow": 1.2, "pressure": 3.4},
                    }
                ],
            }
        },
    }
}
SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


class FastJSON(JSONResponse):
    """JSON rendered with orjson (NaN never reaches here: the platform sends None)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(error: LivetwinError) -> FastJSON:
    return FastJSON({"error": error.to_dict()}, status_code=error.status)


def create_app(
    platform: Platform,
    *,
    own_platform: bool = False,
    extra_routes: Iterable[Callable[[FastAPI], None]] = (),
) -> FastAPI:
    """The FastAPI app over `platform` (closed on shutdown when `own_platform`).

    `extra_routes` are callables that add routes to the app before the dashboard's catch-all.
    """

    feed = LiveFeed(platform.bus, last_seq=platform.recovered["last_seq"])

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        feed.close()
        if own_platform:
            await run_in_threadpool(platform.close)

    app = FastAPI(
        title="livetwin",
        version=__version__,
        default_response_class=FastJSON,
        lifespan=lifespan,
        description="Living digital twins: declare types, send telemetry, read state.",
    )
    app.state.platform = platform
    document(app)  # livetwin's error body and status codes in /openapi.json
    install_error_handlers(app)
    type_routes(app, platform)
    interop_routes(app, platform)  # POST /api/types/import, the NGSI-LD view
    extractor_routes(app, platform)
    ingest_routes(app, platform)
    calibration_routes(app, platform)

    stream_route(app, platform, feed)

    # ---- twins --------------------------------------------------------------------------

    commands_routes(app, platform, platform.commands)  # .../desired before the catch-all

    twin_read_routes(app, platform)
    twin_routes(app, platform)
    cluster_route(app, lambda: {"cluster": False, "shards": 0, "shard_list": []})
    monitor_services(ops_routes(app, platform, health_path="/api/health"), platform)
    alarm_routes(app, platform.alarms)
    mqtt_routes(app, platform, platform.mqtt)
    opcua_routes(app, platform)
    if platform.webhooks is not None:
        webhook_routes(app, platform.webhooks)
    schedule_routes(app, platform.scheduler)
    backtest_routes(app, platform.backtests, platform.scheduler)
    registry_routes(app, platform.registry)
    lineage_routes(app, platform.lineage)
    file_routes(app, platform)
    scenario_routes(app, platform.scenarios)
    namespace_routes(app, platform)
    device_routes(app, platform.devices)
    login_routes(app)  # /api/auth: how to sign in, who am I, stream tickets
    for add_routes in extra_routes:
        add_routes(app)
    mount_ui(app)  # the web dashboard at / (the API stays under /api)
    return app


def cluster_route(app: FastAPI, view: Callable[[], dict]) -> None:
    """GET /api/cluster: the cluster's shards, or `{"cluster": false}` on a single node."""

    @app.get("/api/cluster", tags=["cluster"])
    async def cluster() -> dict:
        """Cluster mode: the shards (`shard_list`), each with its state (live, recovering,
        lost), node, host, lag (queued writes) and twins; a single node answers
        `cluster: false`."""
        return await run_in_threadpool(view)


def stream_route(app: FastAPI, platform: Any, feed: Any) -> None:
    """GET /api/stream: Server-Sent Events from `feed` (a `LiveFeed`, or a cluster front end's
    feed of its shards), filtered per client."""

    @app.get(
        "/api/stream", tags=["live"], response_class=StreamingResponse, responses=STREAM_RESPONSES
    )
    async def stream(
        request: Request,
        type: str | None = None,
        twin: str | None = None,
        kinds: str = "state",
        last_event_id: str | None = Query(None, description="or the Last-Event-ID header"),
        access: Access = TENANT,
        namespace: str | None = NAMESPACE_QUERY,
    ):
        """Server-Sent Events of state changes, alarms and finished runs (`kinds`, comma-separated:
        state, alarm, run; `job` is the older name of run); reconnect with Last-Event-ID to
        resume."""
        wanted_kinds = frozenset(kinds.split(","))
        unknown = wanted_kinds - set(KINDS)
        if unknown:
            raise InvalidInput(
                f"unknown event kind(s): {', '.join(sorted(unknown))}",
                field="kinds",
                fix=f"use some of: {', '.join(KINDS)}",
            )
        cursor = Cursor.parse(request.headers.get("last-event-id") or last_event_id)
        reach = access.pick(namespace)

        def wanted(type_name: str | None, twin_id: str | None) -> bool:
            """The filters, and the caller's namespaces (events of no twin: fleet-wide only)."""
            if not reach.fleet and (twin_id is None or not reach.allows_twin(twin_id)):
                return False
            return (type is None or type_name == type) and (twin is None or twin_id == twin)

        events = feed.stream(
            cursor=cursor,
            kinds=wanted_kinds,
            wanted=wanted,
            columns_of=platform.layout,
            disconnected=request.is_disconnected,
        )
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error as JSON naming field and fix (a `LivetwinError` with `headers` sends
    them, e.g. Retry-After); an unexpected one is logged, never shown."""

    @app.exception_handler(LivetwinError)
    async def _livetwin_error(request: Request, exc: LivetwinError):
        response = error_response(exc)
        response.headers.update(getattr(exc, "headers", None) or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"][1:]) or str(first["loc"][0])
        return error_response(
            InvalidInput(
                f"{field}: {first['msg']}",
                field=field,
                fix="see /docs for this endpoint's parameters",
            )
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        error = LivetwinError(str(exc.detail), fix="see /docs for the API's routes")
        error.status, error.code = exc.status_code, "http_error"
        response = error_response(error)
        response.headers.update(exc.headers or {})  # e.g. Allow on 405
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        error = LivetwinError(
            "internal error; the server log has the details",
            fix="report it with the request that caused it",
        )
        error.status, error.code = 500, "internal"
        return error_response(error)


def type_routes(app: FastAPI, platform: Any) -> None:
    """Type routes: list, declare, read, fleet aggregates."""
    limit = platform.settings.max_body_bytes

    # ---- types --------------------------------------------------------------------------

    @app.get("/api/types", tags=["types"])
    def list_types(access: Access = TENANT, namespace: str | None = NAMESPACE_QUERY) -> list[dict]:
        """Types with their namespace, twin counts, key values and `stale_after` (ms;
        `stale_after_from`: 'type' when declared, 'observed' from recent reporting gaps, null
        before enough data)."""
        types = access.pick(namespace).filter(platform.list_types())
        for t in types:
            t["stale_after"], t["stale_after_from"] = platform.stale_after(t["name"])
        return types

    @app.put("/api/types/{name}", tags=["types"], openapi_extra=SPEC_BODY)
    async def put_type(name: str, request: Request, access: Access = TENANT) -> dict:
        """Declare or change a twin type (JSON or YAML). A change makes a new version. Its
        `namespace` defaults to the type's current one, else the token's only namespace."""
        body = claim_type(platform, name, await read_body(request, limit), access)
        return await run_in_threadpool(platform.put_type, name, body)

    @app.get("/api/types/{name}", tags=["types"])
    def get_type(
        name: str,
        version: int | None = Query(None, ge=1, le=INT64_MAX),
        format: Literal["json", "dtdl", "aas"] = "json",
        access: Access = TENANT,
    ) -> dict:
        """A type version; `format=dtdl` or `aas` exports it (docs/interop.md)."""
        check_type(platform, name, access)
        if format != "json":
            return export_type(platform.query, name, version, format)
        return platform.get_type(name, version)

    @app.get(
        "/api/types/{name}/aggregate",
        tags=["types"],
        response_model=FleetAggregate,
        responses=AGGREGATE_RESPONSES,
    )
    def aggregate_type(
        name: str,
        names: str | None = Query(None, description="comma-separated names (default: all)"),
        agg: str | None = Query(None, description="comma-separated: sum,avg,min,max,count"),
        where: str | None = Query(None, description="only twins where this holds"),
        parent: str | None = Query(None, description="only the children of this twin"),
    ) -> dict:
        """Fleet totals: each aggregate of each value over the type's twins (missing values
        left out; `count` says how many contributed)."""
        return platform.aggregate(
            name, _comma_list(names), _comma_list(agg), where=where, parent=parent
        )


def extractor_routes(app: FastAPI, platform: Any) -> None:
    """Extractors: how a device's own JSON maps to observations (declare, read, list)."""
    limit = platform.settings.max_body_bytes

    @app.get("/api/extractors", tags=["ingest"])
    def list_extractors(
        access: Access = TENANT, namespace: str | None = NAMESPACE_QUERY
    ) -> list[dict]:
        return access.pick(namespace).filter(platform.list_extractors())

    @app.put("/api/extractors/{name}", tags=["ingest"], openapi_extra=SPEC_BODY)
    async def put_extractor(name: str, request: Request, access: Access = TENANT) -> dict:
        """Declare how a device's own JSON maps to observations (JSONPath), in the body's
        `namespace` (default: the token's only one, else `default`)."""
        body = await read_body(request, limit)
        body = claim("extractor", name, body, platform.extractor_namespace, access)
        return await run_in_threadpool(platform.put_extractor, name, body)

    @app.get("/api/extractors/{name}", tags=["ingest"])
    def get_extractor(name: str, access: Access = TENANT) -> dict:
        fix = f"declare it with PUT /api/extractors/{name}"
        check_owner(platform.extractor_namespace, name, access, "extractor", fix)
        return platform.extractor(name).model_dump(mode="json", exclude_defaults=True)


def ingest_routes(app: FastAPI, platform: Any) -> None:
    """POST /api/ingest (and through an extractor): answered once durable."""
    limit = platform.settings.max_body_bytes
    ingest_slots = anyio.Semaphore(1)

    # ---- ingest -------------------------------------------------------------------------

    @app.post(
        "/api/ingest",
        tags=["ingest"],
        openapi_extra=OBSERVATIONS_BODY,
        responses=INGEST_RESPONSES,
    )
    async def ingest(request: Request, atomic: bool = False):
        """Observations; answered once they are durable. Bad rows are listed, good rows kept."""
        future = await submit_body(request, atomic)  # the body is gone once it is submitted
        return _ingest_response((await asyncio.wrap_future(future)).to_dict())

    async def submit_body(request: Request, atomic: bool) -> Future:
        raw = await read_raw_body(request, limit)  # outside the queue: a slow body holds no one up
        content_type = request.headers.get("content-type", "")
        elements = None
        if len(raw) > CHUNKED_ABOVE_BYTES and "yaml" not in content_type:  # YAML: whole body
            elements = await run_in_threadpool(split_array, raw)
        if elements is None:
            body = await run_in_threadpool(parse_body, raw, content_type)
            async with ingest_slots:  # checking rows is CPU-bound: wait here, not for the GIL
                return await run_in_threadpool(platform.submit, body, atomic=atomic)
        async with ingest_slots:
            return await run_in_threadpool(submit_elements, elements, raw, atomic)

    def submit_elements(elements: list, raw: bytes, atomic: bool) -> Future:
        """A large array, checked chunk by chunk but submitted as ONE unit: `atomic` and the
        answer are those of the whole-body path (livetwin/ingest/chunks.py)."""
        normalized = normalize_chunked(
            elements,
            platform.query.compiled_types(),
            now_ms=platform.clock(),
            max_future_ms=platform.settings.max_future_ms,
        )
        if normalized is None:  # JSON that only msgspec accepts: the whole path says why
            return platform.submit(parse_body(raw, "application/json"), atomic=atomic)
        return platform.submit_normalized(normalized, atomic=atomic)

    @app.post(
        "/api/ingest/{extractor}",
        tags=["ingest"],
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {}}}},
        responses=INGEST_RESPONSES,
    )
    async def ingest_with(extractor: str, request: Request, atomic: bool = False):
        """A device's own JSON payload, mapped to observations by the named extractor."""
        body = await read_body(request, limit)
        async with ingest_slots:
            future = await run_in_threadpool(
                platform.submit_extracted, extractor, body, atomic=atomic
            )
        return _ingest_response((await asyncio.wrap_future(future)).to_dict())


def calibration_routes(app: FastAPI, platform: Any) -> None:
    """Calibrate a type or a twin; calibration runs and views."""
    # ---- calibration --------------------------------------------------------------------

    @app.post("/api/types/{name}/calibrate", tags=["calibration"])
    async def calibrate_type(name: str) -> dict:
        """Calibrate every twin of the type on its new measurements; returns the run record
        (fleet-wide: its twins may lie in several namespaces)."""
        return await run_in_threadpool(platform.calibrate, name)

    @app.get("/api/types/{name}/calibration", tags=["calibration"])
    def calibration_runs(
        name: str, limit: int = Query(20, ge=1, le=1000), access: Access = TENANT
    ) -> list[dict]:
        """Recent calibration runs of a type, newest first."""
        check_type(platform, name, access)  # NotFound, with the fix
        return platform.calibration_runs(name, limit)

    @app.post("/api/twins/{twin_id:path}/calibrate", tags=["calibration"])
    async def calibrate_twin(twin_id: str) -> dict:
        """Calibrate one twin on its new measurements; returns the run record."""
        type_name = platform.twin(twin_id)["type"]
        return await run_in_threadpool(platform.calibrate, type_name, [twin_id])

    @app.get("/api/twins/{twin_id:path}/calibration", tags=["calibration"])
    def twin_calibration(twin_id: str) -> dict:
        """Calibrated parameters and virtual sensors with std and 95 % bands; recent runs."""
        return platform.calibration(twin_id)


def twin_read_routes(app: FastAPI, platform: Any) -> None:
    """Twin reads: the filtered list, history, observations, one twin's state (the
    catch-all GET /api/twins/{id}: after every more specific twin route)."""

    @app.get("/api/twins", tags=["twins"], responses=TWIN_LIST_RESPONSES)
    def list_twins(
        type: str | None = None,
        parent: str | None = None,
        where: str | None = None,
        limit: Int64 = 100,
        offset: Int64 = 0,
        values: bool = Query(False, description="add each twin's key values (`values`)"),
        access: Access = TENANT,
        namespace: str | None = NAMESPACE_QUERY,
    ) -> dict:
        """Twins filtered by namespace, type, parent and an expression over their current
        values (only those of the credentials' namespaces)."""
        return platform.twins(
            type=type,
            parent=parent,
            where=where,
            limit=limit,
            offset=offset,
            values=values,
            namespaces=access.pick(namespace).namespaces,
        )

    # twin ids may contain '/': the more specific routes come first
    @app.get("/api/twins/{twin_id:path}/history", tags=["twins"])
    def history(
        request: Request,
        twin_id: str,
        names: str | None = None,
        start: str | None = Query(None, alias="from"),
        end: str | None = Query(None, alias="to"),
        every: str | None = None,
        agg: str = Query(
            "avg",
            description="avg, min, max, last, count, sum, or auto: per name `last` for sparse "
            "and step signals, `avg` with its min/max envelope for dense ones (`aggs`, `min`, "
            "`max` in the answer)",
        ),
    ):
        """Aligned series; `Accept: text/csv` for CSV. A type with a `retention` answers from
        the finest resolution still kept for the range: `resolution` (and the
        X-Livetwin-Resolution header) says which, `raw` or a rollup bucket such as `1m`."""
        wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
        result = platform.history(twin_id, wanted, start=start, end=end, every=every, agg=agg)
        headers = {"X-Livetwin-Resolution": result["resolution"]}
        if "text/csv" in request.headers.get("accept", ""):
            return Response(_csv(result), media_type="text/csv", headers=headers)
        return FastJSON(result, headers=headers)

    @app.get("/api/twins/{twin_id:path}/observations", tags=["twins"])
    def observations(twin_id: str, limit: Int64 = 50, before: str | None = None) -> list[dict]:
        """The twin's journaled observations, newest first, with the derived values they produced
        (page with before=<ts of the last one>)."""
        return platform.observations(twin_id, limit=limit, before=before)

    app.get(  # the older name: "event" now means a message posted to the scheduler
        "/api/twins/{twin_id:path}/events",
        tags=["twins"],
        deprecated=True,
        summary="Observations (deprecated alias)",
        description="The older name of `GET /api/twins/{twin_id}/observations`: the same answer.",
    )(observations)

    @app.get("/api/twins/{twin_id:path}", tags=["twins"])
    async def get_twin(twin_id: str, format: Literal["json", "dtdl", "aas"] = "json") -> dict:
        """One twin's current state: a row read, answered on the event loop (no thread hop);
        `format=dtdl` (Azure Digital Twins' twin JSON) or `aas` (a submodel instance)."""
        if format != "json":
            return export_twin(platform.query, twin_id, format)
        twin = platform.twin(twin_id)
        twin["created"] = format_ts(twin["created"])
        twin["updated"] = format_ts(twin["updated"]) if twin["updated"] is not None else None
        return twin


def _comma_list(value: str | None) -> list[str] | None:
    """'a, b,,c' -> ['a', 'b', 'c']; None (or nothing named) -> None."""
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    return items or None


def _ingest_response(result: dict) -> FastJSON:
    """200, 422 when every row was rejected, 503 with Retry-After when some rows could not be
    taken now (`unavailable`: a cluster shard recovering; the rest of the batch is stored)."""
    if result.get("unavailable"):
        return FastJSON(result, 503, headers={"Retry-After": str(result["retry_after"])})
    status = 422 if result["rejected"] and not result["accepted"] else 200
    return FastJSON(result, status_code=status)


def _csv(result: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    names = list(result["series"])
    writer.writerow(["time", *names])
    columns = [result["series"][n] for n in names]
    for i, ts in enumerate(result["ts"]):
        writer.writerow([format_ts(ts), *("" if c[i] is None else c[i] for c in columns)])
    return out.getvalue()
