"""Twin standards over HTTP: `POST /api/types/import` (DTDL, AAS JSON or AASX) and the read-only
NGSI-LD view at `/ngsi-ld/v1/entities` (docs/interop.md). Exports are `?format=` of the type
and twin routes (livetwin/api/app.py)."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from livetwin.api.body import parse_body, read_raw_body
from livetwin.api.openapi import request_body
from livetwin.api.params import Int64
from livetwin.interop.importer import declare, is_package, parse_models
from livetwin.interop.ngsi_ld import CORE_CONTEXT, MAX_LIMIT, NgsiLdView

IMPORT_BODY = request_body(
    {
        "application/json": {"schema": {"oneOf": [{"type": "object"}, {"type": "array"}]}},
        "application/ld+json": {"schema": {"oneOf": [{"type": "object"}, {"type": "array"}]}},
        "application/asset-administration-shell-package": {
            "schema": {"type": "string", "format": "binary"}
        },
    }
)
IMPORT_RESULT = {
    "type": "object",
    "required": ["types", "skipped"],
    "properties": {
        "types": {"type": "array", "items": {"type": "object"}},
        "skipped": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
    },
}
LINK = f'<{CORE_CONTEXT}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
ENTITY = {"type": "object", "required": ["id", "type"]}
HEADERS = {
    "Link": {"description": "the JSON-LD context (JSON answers)", "schema": {"type": "string"}},
}


def _answer(entities: list[dict] | dict, json_ld: bool, status: int = 200, **headers) -> Response:
    """NGSI-LD content negotiation: `application/ld+json` carries the @context in the body,
    plain JSON names it in a Link header."""
    if json_ld:
        body = (
            [{**e, "@context": CORE_CONTEXT} for e in entities]
            if isinstance(entities, list)
            else {**entities, "@context": CORE_CONTEXT}
        )
        return Response(orjson.dumps(body), status, headers, "application/ld+json")
    return Response(orjson.dumps(entities), status, {**headers, "Link": LINK}, "application/json")


def _content(schema: dict) -> dict:
    return {"application/json": {"schema": schema}, "application/ld+json": {"schema": schema}}


def interop_routes(app: FastAPI, platform: Any) -> None:
    """Add the import route and the NGSI-LD view to `app`, over a `Platform` or a cluster
    front end (its `query`, `put_type` and `settings`)."""
    limit = platform.settings.max_body_bytes
    view = NgsiLdView(platform.query)

    @app.post(
        "/api/types/import",
        tags=["types"],
        openapi_extra=IMPORT_BODY,
        responses={
            200: {
                "description": "the types declared and what was skipped",
                "content": {"application/json": {"schema": IMPORT_RESULT}},
            }
        },
    )
    async def import_types(
        request: Request,
        format: Literal["dtdl", "aas"] | None = None,
        collections: Literal["flatten", "children"] = "flatten",
        prefix: str = Query("", pattern=r"^[A-Za-z0-9_.-]{0,32}$"),
    ) -> dict:
        """Declare the types a DTDL document (JSON-LD), an AAS environment (JSON) or an AASX
        package describes: all or none; a type imported before from the same model gets a new
        version. `format` is read from the file when left out."""
        raw = await read_raw_body(request, limit)
        content_type = request.headers.get("content-type", "")

        def run() -> dict:
            document = raw if is_package(raw) else parse_body(raw, content_type)
            parsed = parse_models(document, format=format, collections=collections)
            existing = platform.query.compiled_types()
            return declare(parsed, existing, platform.put_type, prefix=prefix)

        return await run_in_threadpool(run)

    @app.get(
        "/ngsi-ld/v1/entities",
        tags=["ngsi-ld"],
        response_class=Response,
        responses={
            200: {
                "description": "entities (NGSI-LD Query Entities)",
                "content": _content({"type": "array", "items": ENTITY}),
                "headers": {
                    **HEADERS,
                    "NGSILD-Results-Count": {
                        "description": "how many entities match (with count=true)",
                        "schema": {"type": "integer"},
                    },
                },
            }
        },
    )
    def query_entities(
        request: Request,
        type: str | None = None,
        q: str | None = None,
        attrs: str | None = None,
        options: Literal["keyValues", "normalized"] | None = None,
        count: bool = False,
        limit: int = Query(20, ge=1, le=MAX_LIMIT),
        offset: Int64 = Query(0, ge=0),
    ):
        """Twins as NGSI-LD entities, filtered by type and an NGSI-LD query (`q`: numeric
        comparisons joined by ';' (and) and '|' (or))."""
        entities, total = view.entities(
            type=type,
            q=q,
            attrs=attrs,
            key_values=options == "keyValues",
            limit=limit,
            offset=offset,
        )
        headers = {"NGSILD-Results-Count": str(total)} if count else {}
        return _answer(entities, _wants_json_ld(request), **headers)

    @app.get(
        "/ngsi-ld/v1/entities/{entity_id:path}",
        tags=["ngsi-ld"],
        response_class=Response,
        responses={
            200: {
                "description": "one entity (NGSI-LD Retrieve Entity)",
                "content": _content(ENTITY),
                "headers": HEADERS,
            }
        },
    )
    def retrieve_entity(
        request: Request,
        entity_id: str,
        attrs: str | None = None,
        options: Literal["keyValues", "normalized"] | None = None,
    ):
        """One twin as an NGSI-LD entity: `urn:ngsi-ld:<type>:<twin id>` (or the twin id)."""
        entity = view.entity(entity_id, attrs=attrs, key_values=options == "keyValues")
        return _answer(entity, _wants_json_ld(request))


def _wants_json_ld(request: Request) -> bool:
    return "application/ld+json" in request.headers.get("accept", "")
