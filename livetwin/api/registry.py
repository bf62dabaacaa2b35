"""REST routes of the model registry (`/api/models`) and the lineage graph (`/api/lineage`).

Every route takes `?namespace=` (default "default"). No route deletes a model version: DELETE
anywhere under /api/models answers 405 with the fix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from livetwin.api.body import declares_more_than, read_body
from livetwin.api.openapi import json_body, path_parameters, request_body
from livetwin.api.params import Int64
from livetwin.api.tenancy import TARGET_NAMESPACE, TENANT
from livetwin.auth import Access
from livetwin.errors import InvalidInput, LivetwinError
from livetwin.registry.lineage import LineageStore, to_graphml
from livetwin.registry.service import Registry
from livetwin.timefmt import parse_ts_field

MAX_JSON_BODY = 1024 * 1024

VERSION_BODY = json_body(
    {"type": "object", "required": ["kind"]},
    example={
        "kind": "deductive",
        "ref": "livetwin.examples.rollers:roller_line",
        "author": "ana",
        "description": "roller line with bearing drags",
        "training": {"start": "2026-11-01T00:00:00Z", "end": "2026-11-22T00:00:00Z"},
        "metrics": {"rmse_T1": 1.9},
        "hyperparameters": {"dt": 0.1},
        "tags": {"site": "plant-a"},
    },
)
PREDICT_BODY = json_body(
    {"type": "object", "required": ["rows"]}, example={"rows": [{"x": 1.0}, {"x": 2.5}]}
)
ARTIFACT_BODY = request_body(
    {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
)


class NotAllowed(LivetwinError):
    status = 405
    code = "method_not_allowed"


def _version_number(version: str) -> int:
    if not version.isdigit() or len(version) > 18 or int(version) < 1:
        raise InvalidInput(
            f"'{version[:40]}' is not a version number (1 to 18 digits)",
            field="version",
            fix="writes name a version by number (1, 2, ...), not by alias",
        )
    return int(version)


async def _spool(request: Request, directory: Path, limit: int, too_large) -> Path:
    """The request body in a temp file, refused with `too_large()` past `limit` bytes."""
    if declares_more_than(request, limit):
        raise too_large()
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory)
    path, size = Path(tmp), 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large()
                await run_in_threadpool(out.write, chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def registry_routes(app: FastAPI, registry: Registry) -> None:
    """Add the `/api/models` routes of `registry` to `app`; each takes `?namespace=`."""

    @app.get("/api/models", tags=["models"])
    def list_models(
        archived: bool = Query(False, description="count archived versions"),
        namespace: str | None = Query(
            None,
            description="default 'default' (a namespace-scoped token: its namespaces); "
            "'*': every one the credentials reach",
        ),
        access: Access = TENANT,
    ) -> list:
        """Registered models with their latest version, version count and aliases."""
        if namespace == "*" or (namespace is None and not access.fleet):
            return access.filter(registry.models(archived=archived, namespace="*"))
        return registry.models(archived=archived, namespace=access.target(namespace))

    @app.post(
        "/api/models/{name}/versions", tags=["models"], status_code=201, openapi_extra=VERSION_BODY
    )
    async def register_version(
        name: str, request: Request, namespace: str = TARGET_NAMESPACE
    ) -> dict:
        """Register the next version of a model (immutable); declare its artifact files."""
        body = await read_body(request, MAX_JSON_BODY)
        return await run_in_threadpool(registry.register, name, body, namespace=namespace)

    @app.get("/api/models/{name}/versions", tags=["models"])
    def list_versions(
        name: str,
        archived: bool = Query(False, description="include archived versions"),
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
        namespace: str = TARGET_NAMESPACE,
    ) -> list:
        """A model's versions, oldest first (archived ones only with archived=true)."""
        return registry.versions(
            name, archived=archived, limit=limit, offset=offset, namespace=namespace
        )

    @app.get("/api/models/{name}/versions/{version}", tags=["models"])
    def get_version(name: str, version: str, namespace: str = TARGET_NAMESPACE) -> dict:
        """One version by number or alias (archived versions too)."""
        return registry.get(name, version, namespace=namespace)

    @app.put("/api/models/{name}/versions/{version}", tags=["models"])
    def rewrite_version(name: str, version: str, namespace: str = TARGET_NAMESPACE) -> dict:
        """Always refused: versions are immutable (409 with the fix)."""
        registry.rewrite(name, version, namespace=namespace)
        return {}  # not reached

    @app.post("/api/models/{name}/versions/{version}/archive", tags=["models"])
    def archive_version(name: str, version: str, namespace: str = TARGET_NAMESPACE) -> dict:
        """Hide a version from default listings and from default serving (never deletes)."""
        return registry.archive(name, _version_number(version), True, namespace=namespace)

    @app.post("/api/models/{name}/versions/{version}/unarchive", tags=["models"])
    def unarchive_version(name: str, version: str, namespace: str = TARGET_NAMESPACE) -> dict:
        """Show an archived version again."""
        return registry.archive(name, _version_number(version), False, namespace=namespace)

    @app.put(
        "/api/models/{name}/versions/{version}/artifacts/{filename}",
        tags=["models"],
        status_code=201,
        openapi_extra=ARTIFACT_BODY,
    )
    async def upload_artifact(
        name: str, version: str, filename: str, request: Request, namespace: str = TARGET_NAMESPACE
    ) -> dict:
        """Upload a file declared in the version's `artifacts`, once (raw body, size-limited)."""
        number = _version_number(version)
        namespace = await run_in_threadpool(
            registry.check_upload, name, number, filename, namespace=namespace
        )
        path = await _spool(
            request, registry.tmp_dir, registry.max_artifact_bytes, registry.too_large
        )
        try:
            return await run_in_threadpool(
                registry.put_artifact_file, name, number, filename, path, namespace=namespace
            )
        finally:
            path.unlink(missing_ok=True)

    @app.get("/api/models/{name}/versions/{version}/artifacts/{filename}", tags=["models"])
    async def download_artifact(
        name: str, version: str, filename: str, namespace: str = TARGET_NAMESPACE
    ) -> Response:
        """An artifact's bytes (ETag: its sha256)."""
        info, chunks = await run_in_threadpool(
            registry.artifact, name, version, filename, namespace=namespace
        )
        return StreamingResponse(
            iterate_in_threadpool(chunks),
            media_type="application/octet-stream",
            headers={
                "content-length": str(info["size"]),
                "etag": f'"{info["sha256"]}"',
                "content-disposition": f'attachment; filename="{filename}"',
            },
        )

    @app.get("/api/models/{name}/aliases", tags=["models"])
    def list_aliases(name: str, namespace: str = TARGET_NAMESPACE) -> dict:
        """Current aliases and every move of them."""
        return registry.aliases(name, namespace=namespace)

    @app.put("/api/models/{name}/aliases/{alias}", tags=["models"])
    async def set_alias(
        name: str, alias: str, request: Request, namespace: str = TARGET_NAMESPACE
    ) -> dict:
        """Point an alias at a version: `{"version": 3, "author": "ana"}` (history is kept)."""
        body = await read_body(request, MAX_JSON_BODY)
        if not isinstance(body, dict) or set(body) - {"version", "author"}:
            raise InvalidInput(
                "the body must be an object with version (and author)",
                field="body",
                fix='send {"version": 3}',
            )
        author = body.get("author")
        if author is not None and not isinstance(author, str):
            raise InvalidInput("author must be a string", field="author", fix='e.g. "ana"')
        return await run_in_threadpool(
            registry.set_alias, name, alias, body.get("version"), author, namespace=namespace
        )

    @app.post("/api/models/{name}/predict", tags=["models"], openapi_extra=PREDICT_BODY)
    async def predict(
        name: str,
        request: Request,
        version: str | None = Query(
            None, description="number or alias (default: production, else the newest)"
        ),
        namespace: str = TARGET_NAMESPACE,
    ) -> dict:
        """Predictions of a model version for JSON rows."""
        body = await read_body(request, MAX_JSON_BODY)
        return await run_in_threadpool(registry.predict, name, body, version, namespace=namespace)

    # DELETE on every registry path (and on a model itself) answers 405 with the fix
    paths = {"/api/models/{name}"} | {
        route.path for route in app.routes if getattr(route, "path", "").startswith("/api/models")
    }
    for path in sorted(paths):
        app.add_api_route(
            path,
            _refuser,
            methods=["DELETE"],
            tags=["models"],
            summary="Refused: model versions, their artifacts and alias records are kept forever",
            responses={405: {"description": "always: nothing here is deleted"}},
            openapi_extra={"parameters": path_parameters(path)},
        )


def _refuser() -> dict:
    raise NotAllowed(
        "nothing in the model registry can be deleted: versions are kept forever",
        field="method",
        fix="hide a version with POST /api/models/{name}/versions/{version}/archive; "
        "move an alias with PUT /api/models/{name}/aliases/{alias}",
    )


def lineage_routes(app: FastAPI, lineage: LineageStore) -> None:
    """Add the `/api/lineage` routes (walks, value traces, GraphML export) to `app`."""

    def render(graph: dict, fmt: str) -> Any:
        if fmt == "graphml":
            return Response(to_graphml(graph), media_type="application/graphml+xml")
        if fmt != "json":
            raise InvalidInput(
                f"unknown format '{fmt}'", field="format", fix="use json (default) or graphml"
            )
        return graph

    @app.get("/api/lineage/value", tags=["lineage"])
    def trace_value(
        twin: str,
        name: str,
        ts: str = Query(..., description="the value's time: ISO 8601 or epoch ms"),
        depth: Int64 = Query(10),
        format: str = Query("json", description="json | graphml"),
    ) -> Any:
        """The run that published a value, and what that run read (data window, model version)."""
        at = parse_ts_field(ts, "ts")
        return render(lineage.trace_value(twin, name, at, depth), format)

    @app.get("/api/lineage/{node_id:path}", tags=["lineage"])
    def walk(
        node_id: str,
        direction: str = Query("up", description="up: inputs and parents; down: what it fed"),
        depth: Int64 = Query(10),
        format: str = Query("json", description="json | graphml"),
    ) -> Any:
        """A lineage node and the graph around it, as JSON or GraphML."""
        return render(lineage.walk(node_id, direction, depth), format)
