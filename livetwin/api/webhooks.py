"""REST routes for webhook subscriptions, their deliveries and dead letters (`/api/webhooks`)."""

from __future__ import annotations

from fastapi import FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool

from livetwin.actions.webhooks import KINDS, MIN_SECRET, STATUSES, WebhookService
from livetwin.api.body import read_body
from livetwin.api.openapi import json_body
from livetwin.api.tenancy import NAMESPACE_QUERY, TENANT
from livetwin.auth import Access
from livetwin.errors import InvalidInput, NotFound

MAX_BODY = 64 * 1024

SUBSCRIPTION_BODY = json_body(
    {
        "type": "object",
        "required": ["url", "secret"],
        "properties": {
            "url": {"type": "string", "format": "uri"},
            "secret": {"type": "string", "minLength": MIN_SECRET},
            "filters": {
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "twin_prefix": {"type": "string"},
                    "namespace": {
                        "type": "string",
                        "description": "only twins of this namespace (a "
                        "namespace-scoped token's own by default)",
                    },
                    "kinds": {
                        "type": "array",
                        "items": {"type": "string", "enum": list(KINDS)},
                    },
                },
            },
        },
    },
    example={
        "url": "https://example.com/hooks/livetwin",
        "secret": "a-long-random-shared-secret",
        "filters": {
            "type": "pump",
            "twin_prefix": "site-a/",
            "kinds": ["state", "alarm"],
        },
    },
)


def _namespace(sub: dict) -> str | None:
    """A subscription's namespace (None: fleet-wide, seen by fleet-wide credentials only)."""
    return sub["filters"].get("namespace")


def webhook_routes(app: FastAPI, hooks: WebhookService) -> None:
    """Add the `/api/webhooks` routes of `hooks` to `app`; a subscription with
    `filters.namespace` belongs to that namespace, one without to the whole fleet."""

    def visible(access: Access) -> list[dict]:
        subs = hooks.subscriptions()
        return subs if access.fleet else [s for s in subs if access.allows(_namespace(s) or "*")]

    def reachable(sub_id: str, access: Access) -> None:
        """404 for another namespace's subscription, as for an unknown one."""
        if not access.fleet and sub_id not in {s["id"] for s in visible(access)}:
            raise NotFound(
                f"no webhook subscription '{sub_id}'",
                field="id",
                fix="list subscriptions with GET /api/webhooks",
            )

    @app.post("/api/webhooks", tags=["webhooks"], status_code=201, openapi_extra=SUBSCRIPTION_BODY)
    async def create_webhook(request: Request, access: Access = TENANT) -> dict:
        """Subscribe a URL to events committed from now on, signed with `secret` (HMAC-SHA256).
        A namespace-scoped token's subscription gets its namespace (`filters.namespace`)."""
        body = await read_body(request, MAX_BODY)
        if not access.fleet and isinstance(body, dict):
            filters = body.get("filters") or {}
            if not isinstance(filters, dict):
                raise InvalidInput("filters must be an object", field="filters", fix="send {}")
            try:
                namespace = access.target(filters.get("namespace"))
            except InvalidInput as exc:
                exc.field = "filters.namespace"
                raise
            body = {**body, "filters": {**filters, "namespace": namespace}}
        return await run_in_threadpool(hooks.create, body)

    @app.get("/api/webhooks", tags=["webhooks"])
    def list_webhooks(
        access: Access = TENANT, namespace: str | None = NAMESPACE_QUERY
    ) -> list[dict]:
        """Subscriptions (secrets are never shown): those of the caller's namespaces."""
        picked = access.pick(namespace)
        subs = visible(access)
        return subs if picked.fleet else [s for s in subs if picked.allows(_namespace(s) or "*")]

    # the fixed path comes before /api/webhooks/{sub_id}
    @app.get("/api/webhooks/dead", tags=["webhooks"])
    def dead_letters(
        limit: int = Query(100, ge=1, le=10_000), access: Access = TENANT
    ) -> list[dict]:
        """Deliveries that failed `max_attempts` times, newest first."""
        dead = hooks.dead(limit)
        if access.fleet:
            return dead
        mine = {s["id"] for s in visible(access)}
        return [d for d in dead if d["subscription"] in mine]

    @app.get("/api/webhooks/{sub_id}", tags=["webhooks"])
    def get_webhook(sub_id: str, access: Access = TENANT) -> dict:
        """One subscription with its delivery counts and its attempts (total, failed, last)."""
        reachable(sub_id, access)
        return hooks.get(sub_id)

    @app.delete("/api/webhooks/{sub_id}", tags=["webhooks"])
    def delete_webhook(sub_id: str, access: Access = TENANT) -> dict:
        """Remove a subscription and its queued deliveries."""
        reachable(sub_id, access)
        return hooks.delete(sub_id)

    @app.get("/api/webhooks/{sub_id}/deliveries", tags=["webhooks"])
    def deliveries(
        sub_id: str,
        status: str | None = Query(None, description=" | ".join(STATUSES)),
        limit: int = Query(100, ge=1, le=10_000),
        access: Access = TENANT,
    ) -> list[dict]:
        """A subscription's delivery attempts, newest first."""
        reachable(sub_id, access)
        return hooks.deliveries(sub_id, status, limit)

    @app.post("/api/webhooks/{sub_id}/redeliver", tags=["webhooks"])
    def redeliver(
        sub_id: str,
        delivery: str | None = Query(None, description="one dead letter's id; all when absent"),
        access: Access = TENANT,
    ) -> dict:
        """Re-queue the subscription's dead letters (same delivery ids, attempts reset)."""
        reachable(sub_id, access)
        return hooks.redeliver(sub_id, delivery)
