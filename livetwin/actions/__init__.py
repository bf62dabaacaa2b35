"""Actions: what the platform does outward on state changes (webhooks; later mail, commands)."""

from livetwin.actions.webhooks import WebhookService

__all__ = ["WebhookService"]
