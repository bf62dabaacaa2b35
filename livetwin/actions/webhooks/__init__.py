"""Webhooks: signed HTTP POSTs of state changes, creations, alarms and job results, at least once.

`subscriptions` (what a subscriber asked for, signing), `outbox` (the durable outbox and how
deliveries are built), `service` (the bus -> outbox pump and the senders).
"""

from livetwin.actions.webhooks.outbox import STATUSES
from livetwin.actions.webhooks.service import WebhookService
from livetwin.actions.webhooks.subscriptions import (
    KINDS,
    MIN_SECRET,
    Filters,
    Subscription,
    sign,
    validate_subscription,
    verify,
)

__all__ = [
    "KINDS",
    "MIN_SECRET",
    "STATUSES",
    "Filters",
    "Subscription",
    "WebhookService",
    "sign",
    "validate_subscription",
    "verify",
]
