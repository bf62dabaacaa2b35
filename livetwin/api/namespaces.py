"""`GET /api/namespaces/{namespace}/export` and `DELETE /api/namespaces/{namespace}?confirm=`:
a namespace (a tenant) as a whole, over `livetwin.tenant`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query
from starlette.concurrency import run_in_threadpool

from livetwin.api.openapi import error_response
from livetwin.api.tenancy import TENANT
from livetwin.auth import Access
from livetwin.namespaces import check_namespace


def namespace_routes(app: FastAPI, platform: Any) -> None:
    """Add `GET /api/namespaces/{namespace}/export` and `DELETE /api/namespaces/{namespace}`."""

    @app.delete(
        "/api/namespaces/{namespace}",
        tags=["namespaces"],
        responses={400: error_response("`confirm` does not repeat the namespace's name")},
    )
    async def delete(
        namespace: str,
        confirm: str | None = Query(None, description="the namespace's name again (required)"),
        purge: bool = Query(False, description="also delete the twins' stored history"),
        access: Access = TENANT,
    ) -> dict:
        """Delete what the namespace owns: twins, types, extractors, import mappings, webhooks,
        schedules, functions and scenarios (`admin` on it; 404 for one the credentials do not
        hold). Models are never deleted: their versions are archived. Export it first."""
        check_namespace(namespace)
        access.check(namespace, f"namespace '{namespace}'", "use a namespace your token holds")
        return await run_in_threadpool(
            platform.delete_namespace, namespace, confirm=confirm, purge=purge
        )

    @app.get("/api/namespaces/{namespace}/export", tags=["namespaces"])
    async def export(namespace: str, access: Access = TENANT) -> dict:
        """Everything the namespace owns as JSON (a tenant's backup or hand-over); 404 for a
        namespace the credentials do not hold."""
        check_namespace(namespace)
        access.check(namespace, f"namespace '{namespace}'", "use a namespace your token holds")
        return await run_in_threadpool(platform.export_namespace, namespace)
