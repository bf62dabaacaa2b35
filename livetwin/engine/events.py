"""The in-process event bus: the writer publishes what became durable; later parts subscribe.

Subscribers run on the writer thread right after a commit, so they must be quick: hand work
off to a queue (SSE, webhooks and triggers do).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass

from livetwin.engine.engine import Applied
from livetwin.spec.types import CompiledType

log = logging.getLogger(__name__)


@dataclass
class StateChanged:
    """One applied batch of one type (durable at sequence number `seq`)."""

    seq: int
    applied: Applied

    kind = "state"


@dataclass
class TypeDefined:
    seq: int
    ctype: CompiledType

    kind = "type"


@dataclass
class Notice:
    """A service's announcement for SSE and webhooks: an alarm changed, a run finished.

    `id` is unique and stable (a redelivery carries the same one); `data` is JSON-able.
    """

    kind: str  # "alarm" | "run" (a finished run; "job" is its older name)
    id: str
    data: dict


OLDER_NAMES = {"job": "run"}  # notice kinds renamed: subscribers of the older name still get them


def notice_name(kind: str, wanted: Collection[str]) -> str | None:
    """The name a subscriber that asked for the kinds `wanted` receives a notice of `kind` under,
    or None when it did not ask for it. A renamed kind goes out under its current name, or under
    its older name to a subscriber that asked only for that one."""
    current = OLDER_NAMES.get(kind, kind)
    if current in wanted:
        return current
    return next((old for old, new in OLDER_NAMES.items() if new == current and old in wanted), None)


Event = StateChanged | TypeDefined | Notice


class EventBus:
    """Fan-out of events to subscriber callbacks; a failing subscriber is logged, not fatal."""

    def __init__(self) -> None:
        self._subscribers: dict[int, Callable[[Event], None]] = {}
        self._next = 0
        self._lock = threading.Lock()

    def subscribe(self, callback: Callable[[Event], None]) -> int:
        with self._lock:
            self._next += 1
            self._subscribers = {**self._subscribers, self._next: callback}
            return self._next

    def unsubscribe(self, token: int) -> None:
        with self._lock:
            self._subscribers = {k: v for k, v in self._subscribers.items() if k != token}

    def publish(self, event: Event) -> None:
        for callback in self._subscribers.values():
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber %r failed", callback)

    @property
    def active(self) -> bool:
        return bool(self._subscribers)
