"""`GET /api/namespaces/{namespace}/export`: everything a namespace (a tenant) owns, as one JSON
document: types, twins with their state, alarms, extractors, import mappings, webhooks,
functions, schedules, recent runs, models with their versions and scenarios."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from livetwin.api.tenancy import TENANT
from livetwin.auth import Access
from livetwin.namespaces import check_namespace, namespace_of

PAGE = 1000


def export_namespace(platform: Any, namespace: str) -> dict:
    """The namespace's objects (reads only; nothing is changed)."""
    only = frozenset({namespace})
    types = [t for t in platform.list_types() if t["namespace"] == namespace]
    twins: list[dict] = []
    while True:
        page = platform.twins(limit=PAGE, offset=len(twins), namespaces=only)
        twins.extend(platform.twin(t["id"]) for t in page["items"])
        if len(twins) >= page["total"] or not page["items"]:
            break
    alarms: list[dict] = []
    while True:
        page = platform.alarms.list(limit=PAGE, offset=len(alarms), namespaces=only)
        alarms.extend(page["items"])
        if len(alarms) >= page["total"] or not page["items"]:
            break
    out: dict[str, Any] = {
        "namespace": namespace,
        "types": [platform.get_type(t["name"]) for t in types],
        "twins": twins,
        "alarms": alarms,
        "extractors": Access(only).filter(platform.list_extractors()),
        "mappings": Access(only).filter(platform.list_mappings()),
    }
    hooks = platform.webhooks
    if hooks is not None:
        subs = hooks.subscriptions()
        out["webhooks"] = [s for s in subs if s["filters"].get("namespace") == namespace]
    scheduler = platform.scheduler
    out["functions"] = scheduler.functions(namespace)
    out["schedules"] = scheduler.schedules(namespace)
    out["runs"] = scheduler.runs(namespace=namespace, limit=PAGE)
    registry = platform.registry
    out["models"] = [
        {**m, "versions": registry.versions(m["name"], archived=True, namespace=namespace)}
        for m in registry.models(archived=True, namespace=namespace)
    ]
    out["scenarios"] = [
        s
        for s in platform.scenarios.list(PAGE)
        if isinstance(s["request"].get("twins"), list)
        and s["request"]["twins"]
        and all(namespace_of(t) == namespace for t in s["request"]["twins"])
    ]
    return out


def namespace_routes(app: FastAPI, platform: Any) -> None:
    """Add `GET /api/namespaces/{namespace}/export`."""

    @app.get("/api/namespaces/{namespace}/export", tags=["namespaces"])
    async def export(namespace: str, access: Access = TENANT) -> dict:
        """Everything the namespace owns as JSON (a tenant's backup or hand-over); 404 for a
        namespace the credentials do not hold."""
        check_namespace(namespace)
        access.check(namespace, f"namespace '{namespace}'", "use a namespace your token holds")
        return await run_in_threadpool(export_namespace, platform, namespace)
