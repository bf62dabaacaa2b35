"""The OpenAPI document of the API, told truthfully: livetwin's own error body on the status codes
routes really answer, and the bearer scheme with 401/403 when auth is on. Checked by schemathesis
(tests/api/test_openapi.py)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

ERROR_REF = "#/components/schemas/ErrorBody"
PATH_PARAMETER = re.compile(r"{([^}:]+)(?::[^}]*)?}")
WRITE_METHODS = frozenset({"post", "put", "patch", "delete"})


class ErrorDetail(BaseModel):
    """What went wrong, the field at fault and how to fix it (`LivetwinError.to_dict`)."""

    code: str = Field(examples=["invalid_input"])
    message: str
    field: str | None = None
    fix: str | None = None
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """Every error the API answers: `{"error": {...}}`."""

    error: ErrorDetail


def error_response(description: str) -> dict:
    """An OpenAPI response whose body is livetwin's error body."""
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
    }


def request_body(content: dict[str, dict], *, required: bool = True) -> dict:
    """`openapi_extra` declaring the body a route reads itself (through `read_body`): `content`
    maps each media type to its schema and example."""
    return {"requestBody": {"required": required, "content": content}}


def json_body(schema: dict, *, example: Any = None, required: bool = True) -> dict:
    """`openapi_extra` for a route that reads a JSON body of `schema` (with an `example`)."""
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return request_body({"application/json": media}, required=required)


MQTT_OFF = {409: error_response("MQTT not configured: the server was started without --mqtt")}
TWIN_LIST_RESPONSES = {404: error_response("`type` names no declared twin type")}
AGGREGATE_RESPONSES = {404: error_response("no twin type of that name")}


class FleetAggregate(BaseModel):
    """GET /api/types/{name}/aggregate: aggregates of values over the twins that matched."""

    type: str
    twins: int = Field(description="twins that matched where= and parent=")
    values: dict[str, dict[str, float | None]] = Field(
        description="name -> aggregate -> value (null: no twin had a value; count: how many had)",
        examples=[{"flow": {"sum": 120.5, "avg": 12.05, "count": 10}}],
    )


# what POST /api/ingest answers: the ingest result (also on 422 when every row was rejected)
INGEST_RESULT = {
    "type": "object",
    "required": ["accepted", "duplicates", "rejected"],
    "properties": {
        "accepted": {"type": "integer", "description": "observations stored"},
        "duplicates": {"type": "integer", "description": "idempotency keys seen before"},
        "rejected": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "error"],
                "properties": {
                    "index": {"type": "integer"},
                    "field": {"type": ["string", "null"]},
                    "error": {"type": ["string", "null"]},
                    "fix": {"type": ["string", "null"]},
                },
            },
        },
    },
}
INGEST_RESPONSES = {
    200: {
        "description": "durable; rows listed in `rejected` were not stored",
        "content": {"application/json": {"schema": INGEST_RESULT}},
    },
    422: {
        "description": "every row was rejected (the ingest result), or the body is invalid",
        "content": {
            "application/json": {"schema": {"oneOf": [INGEST_RESULT, {"$ref": ERROR_REF}]}}
        },
    },
}
STREAM_RESPONSES = {
    200: {
        "description": "an endless Server-Sent Events stream (`id`, `event`, `data` lines)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}

# status codes by what an operation does (added where the route did not declare its own)
BODY_ERRORS = {
    400: "malformed JSON or YAML",
    413: "the body exceeds the server's limit",
    422: "invalid input: the error names the field and the fix",
}
PARAMETER_ERRORS = {422: "invalid parameter: the error names the field and the fix"}
RESOURCE_ERRORS = {404: "not found: the error says how to create or find it"}
WRITE_ERRORS = {409: "conflicts with the current state (the error says which)"}
AUTH_ERRORS = {
    401: "no valid bearer credential (WWW-Authenticate: Bearer)",
    403: "the credential's scope or namespace does not allow this",
}


GUARDED_PREFIXES = ("/api", "/ngsi-ld")  # what auth checks, with /metrics


def guarded(path: str) -> bool:
    """Whether auth checks requests to `path` (before its list of public paths)."""
    return path == "/metrics" or any(
        path == p or path.startswith(p + "/") for p in GUARDED_PREFIXES
    )


def path_parameters(path: str) -> list[dict]:
    """OpenAPI path parameters for every `{name}` (or `{name:path}`) of `path`."""
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in PATH_PARAMETER.findall(path)
    ]


def document(app: FastAPI) -> None:
    """Make `app.openapi()` build the truthful document: livetwin's error body on the status
    codes each operation can answer (by its parameters, body, path and method), replacing
    FastAPI's own validation error. Cached; `secure` drops the cache."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _declare_errors(schema, getattr(app.state, "public_paths", None))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def secure(app: FastAPI, public: frozenset[str]) -> None:
    """Declare bearer auth (401/403) on every /api route but `public` (called by install_auth)."""
    app.state.public_paths = public
    app.openapi_schema = None


def _declare_errors(schema: dict, public: frozenset[str] | None) -> None:
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    error_body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_body.pop("$defs"), ErrorBody=error_body)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    if public is not None:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            wanted: dict[int, str] = {}
            if operation.get("parameters") or operation.get("requestBody"):
                wanted.update(PARAMETER_ERRORS)
            if operation.get("requestBody"):
                wanted.update(BODY_ERRORS)
            if PATH_PARAMETER.search(path):
                wanted.update(RESOURCE_ERRORS)
            if method in WRITE_METHODS:
                wanted.update(WRITE_ERRORS)
            if public is not None and guarded(path) and path not in public:
                wanted.update(AUTH_ERRORS)
                operation["security"] = [{"bearer": []}]
            responses = operation.setdefault("responses", {})
            validation = responses.get("422", {})
            if "HTTPValidationError" in str(validation):
                del responses["422"]  # FastAPI's shape: livetwin answers its own
            for status, description in wanted.items():
                responses.setdefault(str(status), error_response(description))
