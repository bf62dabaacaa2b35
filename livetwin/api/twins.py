"""Twin and type lifecycle routes: create a twin before its first telemetry, set its text
attributes and parent link, delete twins and types (journaled; docs/twins.md)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from livetwin.api.body import read_body
from livetwin.api.openapi import error_response, json_body
from livetwin.api.tenancy import TENANT, check_type
from livetwin.auth import Access
from livetwin.errors import NotFound
from livetwin.namespaces import namespace_of
from livetwin.spec import parse_model

MAX_BODY = 64 * 1024
ATTRIBUTES = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "description": "text attributes of the twin's type, e.g. {serial: 'A-17', mode: 'auto'}",
}


class TwinChange(BaseModel):
    """PATCH /api/twins/{id}: what to change (each optional)."""

    model_config = ConfigDict(extra="forbid")

    attributes: dict[str, Any] | None = Field(None, description=ATTRIBUTES["description"])
    parent: str | None = Field(None, description="the twin's new parent (a rename of the link)")


class NewTwin(TwinChange):
    """POST /api/twins: a twin created before its first observation."""

    id: str = Field(description="the twin id (its namespace is the part before the first '/')")
    type: str


def twin_routes(app: FastAPI, platform: Any) -> None:
    """Add the lifecycle routes (before the GET catch-all, which they do not shadow)."""

    @app.post(
        "/api/twins",
        tags=["twins"],
        status_code=201,
        responses={404: error_response("no such type, or a namespace the caller does not hold")},
        openapi_extra=json_body(
            NewTwin.model_json_schema(),
            example={"id": "plant-a/pump-7", "type": "pump", "attributes": {"serial": "A-17"}},
        ),
    )
    async def create_twin(request: Request, access: Access = TENANT) -> dict:
        """Create a twin before its first telemetry, with attributes and parent (409 if it
        exists). Journaled: replay and snapshots reproduce it."""
        body = parse_model(NewTwin, await read_body(request, MAX_BODY), what="twin")
        access.check(namespace_of(body.id), f"namespace '{namespace_of(body.id)}'")
        try:
            check_type(platform, body.type, access)
        except NotFound as exc:  # the body's field, not the URL's
            exc.field = "type"
            raise
        return await run_in_threadpool(
            platform.create_twin,
            body.id,
            body.type,
            attributes=body.attributes,
            parent=body.parent,
        )

    @app.patch(
        "/api/twins/{twin_id:path}",
        tags=["twins"],
        openapi_extra=json_body(
            TwinChange.model_json_schema(), example={"attributes": {"mode": "manual"}}
        ),
    )
    async def update_twin(twin_id: str, request: Request) -> dict:
        """Set text attributes and/or the parent link (journaled; an enum value outside its
        values is a 422 naming the attribute)."""
        body = parse_model(TwinChange, await read_body(request, MAX_BODY), what="twin change")
        return await run_in_threadpool(
            platform.update_twin, twin_id, attributes=body.attributes, parent=body.parent
        )

    @app.delete("/api/twins/{twin_id:path}", tags=["twins"])
    async def delete_twin(
        twin_id: str,
        purge: bool = Query(False, description="also delete its stored history"),
    ) -> dict:
        """Delete a twin (a journaled tombstone); its history is kept unless `purge=true`.
        Its children lose their parent link; new telemetry for the id creates it anew."""
        return await run_in_threadpool(platform.delete_twin, twin_id, purge=purge)

    @app.delete("/api/types/{name}", tags=["types"])
    async def delete_type(
        name: str,
        cascade: bool = Query(False, description="also delete the type's twins"),
        purge: bool = Query(False, description="with cascade: also delete their history"),
        access: Access = TENANT,
    ) -> dict:
        """Delete a type: 409 while it has twins unless `cascade=true`. Its versions stay
        readable (`GET /api/types/{name}?version=`); declaring it again starts a new version."""
        check_type(platform, name, access)
        return await run_in_threadpool(platform.delete_type, name, cascade=cascade, purge=purge)
