"""What a namespace (a tenant) owns, as a whole: its export (a backup or hand-over as one JSON
document) and its deletion. `Platform.export_namespace` / `delete_namespace` call these; the API
(`/api/namespaces/{namespace}`), the `Client` and `livetwin namespaces` expose them."""

from __future__ import annotations

from typing import Any

from livetwin.auth import Access
from livetwin.errors import LivetwinError
from livetwin.namespaces import check_namespace, namespace_of

PAGE = 1000


def export_namespace(platform: Any, namespace: str) -> dict:
    """The namespace's objects (reads only; nothing is changed)."""
    namespace = check_namespace(namespace)
    only = frozenset({namespace})
    types = [t for t in platform.list_types() if t["namespace"] == namespace]
    twins = [platform.twin(twin_id) for twin_id in _twin_ids(platform, namespace)]
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
        "mappings": Access(only).filter(platform.mappings.list()),
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
    out["scenarios"] = _scenarios(platform, namespace)
    return out


def _scenarios(platform: Any, namespace: str) -> list[dict]:
    """The scenarios of the namespace: those whose twins (a list) all lie in it."""
    return [
        s
        for s in platform.scenarios.list(PAGE)
        if isinstance(s["request"].get("twins"), list)
        and s["request"]["twins"]
        and all(namespace_of(t) == namespace for t in s["request"]["twins"])
    ]


def _twin_ids(platform: Any, namespace: str) -> list[str]:
    only = frozenset({namespace})
    ids: list[str] = []
    while True:
        page = platform.twins(limit=PAGE, offset=len(ids), namespaces=only)
        ids.extend(t["id"] for t in page["items"])
        if len(ids) >= page["total"] or not page["items"]:
            return ids


def delete_namespace(
    platform: Any, namespace: str, *, confirm: str | None, purge: bool = False
) -> dict:
    """Remove what a namespace owns (`confirm` repeats its name): schedules, functions,
    webhooks, scenarios, import mappings, extractors, twins (journaled; history kept unless
    `purge`) and its types (a type that twins of other namespaces still use is kept, and
    listed). Models and their lineage are never deleted: every version is archived. Alarms and
    runs stay as records."""
    check_confirmed(namespace, confirm)
    scheduler = platform.scheduler
    deleted: dict[str, list] = {}
    deleted["schedules"] = [s["id"] for s in scheduler.schedules(namespace)]
    for schedule_id in deleted["schedules"]:  # first: they use the functions
        scheduler.delete_schedule(schedule_id)
    deleted["functions"] = [f["name"] for f in scheduler.functions(namespace)]
    for name in deleted["functions"]:
        scheduler.delete_function(name, namespace)
    deleted["webhooks"] = []
    if platform.webhooks is not None:
        for sub in platform.webhooks.subscriptions():
            if sub["filters"].get("namespace") == namespace:
                platform.webhooks.delete(sub["id"])
                deleted["webhooks"].append(sub["id"])
    deleted["scenarios"] = [s["id"] for s in _scenarios(platform, namespace)]
    for scenario_id in deleted["scenarios"]:
        platform.scenarios.delete(scenario_id)
    only = Access(frozenset({namespace}))
    deleted["mappings"] = [m["name"] for m in only.filter(platform.mappings.list())]
    for name in deleted["mappings"]:
        platform.mappings.delete(name)
    deleted["extractors"] = [e["name"] for e in only.filter(platform.list_extractors())]
    for name in deleted["extractors"]:
        platform.delete_extractor(name)
    twins = _twin_ids(platform, namespace)
    platform.delete_twins(twins, purge=purge)
    deleted["twins"] = twins
    deleted["types"], kept = [], []
    for t in platform.list_types():
        if t["namespace"] != namespace:
            continue
        if t["twins"]:
            kept.append(t["name"])
        else:
            platform.delete_type(t["name"])
            deleted["types"].append(t["name"])
    archived = []
    registry = platform.registry
    for model in registry.models(namespace=namespace):
        for version in registry.versions(model["name"], limit=1000, namespace=namespace):
            registry.archive(model["name"], version["version"], namespace=namespace)
            archived.append({"model": model["name"], "version": version["version"]})
    return {
        "namespace": namespace,
        "deleted": deleted,
        "kept_types": kept,
        "archived_models": archived,
        "purged": purge,
    }


def check_confirmed(namespace: str, confirm: str | None) -> None:
    """Deleting a namespace needs its name repeated (`confirm`): an error with the fix if not."""
    check_namespace(namespace)
    if confirm != namespace:
        raise LivetwinError(
            f"deleting namespace '{namespace}' needs confirm={namespace}",
            field="confirm",
            fix=f"repeat its name: DELETE /api/namespaces/{namespace}?confirm={namespace} "
            f"(export it first: GET /api/namespaces/{namespace}/export)",
        )
