"""REST routes for webhook subscriptions, their deliveries and dead letters (`/api/webhooks`)."""

from __future__ import annotations

from fastapi import FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool

from livetwin.actions.webhooks import KINDS, MIN_SECRET, STATUSES, WebhookService
from livetwin.api.body import read_body

MAX_BODY = 64 * 1024

SUBSCRIPTION_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
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
                                "kinds": {
                                    "type": "array",
                                    "items": {"type": "string", "enum": list(KINDS)},
                                },
                            },
                        },
                    },
                },
                "example": {
                    "url": "https://example.com/hooks/livetwin",
                    "secret": "a-long-random-shared-secret",
                    "filters": {
                        "type": "pump",
                        "twin_prefix": "site-a/",
                        "kinds": ["state", "alarm"],
                    },
                },
            }
        },
    }
}


def webhook_routes(app: FastAPI, hooks: WebhookService) -> None:
    """Add the `/api/webhooks` routes of `hooks` to `app`."""

    @app.post("/api/webhooks", tags=["webhooks"], status_code=201, openapi_extra=SUBSCRIPTION_BODY)
    async def create_webhook(request: Request) -> dict:
        """Subscribe a URL to events committed from now on, signed with `secret` (HMAC-SHA256)."""
        body = await read_body(request, MAX_BODY)
        return await run_in_threadpool(hooks.create, body)

    @app.get("/api/webhooks", tags=["webhooks"])
    def list_webhooks() -> list[dict]:
        """All subscriptions (secrets are never shown)."""
        return hooks.subscriptions()

    # the fixed path comes before /api/webhooks/{sub_id}
    @app.get("/api/webhooks/dead", tags=["webhooks"])
    def dead_letters(limit: int = Query(100, ge=1, le=10_000)) -> list[dict]:
        """Deliveries that failed `max_attempts` times, newest first."""
        return hooks.dead(limit)

    @app.get("/api/webhooks/{sub_id}", tags=["webhooks"])
    def get_webhook(sub_id: str) -> dict:
        """One subscription with its delivery counts and its attempts (total, failed, last)."""
        return hooks.get(sub_id)

    @app.delete("/api/webhooks/{sub_id}", tags=["webhooks"])
    def delete_webhook(sub_id: str) -> dict:
        """Remove a subscription and its queued deliveries."""
        return hooks.delete(sub_id)

    @app.get("/api/webhooks/{sub_id}/deliveries", tags=["webhooks"])
    def deliveries(
        sub_id: str,
        status: str | None = Query(None, description=" | ".join(STATUSES)),
        limit: int = Query(100, ge=1, le=10_000),
    ) -> list[dict]:
        """A subscription's delivery attempts, newest first."""
        return hooks.deliveries(sub_id, status, limit)

    @app.post("/api/webhooks/{sub_id}/redeliver", tags=["webhooks"])
    def redeliver(
        sub_id: str,
        delivery: str | None = Query(None, description="one dead letter's id; all when absent"),
    ) -> dict:
        """Re-queue the subscription's dead letters (same delivery ids, attempts reset)."""
        return hooks.redeliver(sub_id, delivery)
