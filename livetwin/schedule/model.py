"""The scheduler's in-memory records (schedules, runs, queued operations) and small helpers
shared by its parts: event validation, JSON encoding, the handler that copies logs into runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import orjson

from livetwin.errors import InvalidInput
from livetwin.expr import Compiled
from livetwin.namespaces import check_namespace
from livetwin.schedule.functions import RunContext
from livetwin.schedule.triggers import Trigger, check_name
from livetwin.timefmt import format_ts

RUN_STATES = ("queued", "running", "succeeded", "failed")
SYSTEM = "system"  # the namespace of schedules the platform derives (a type's calibration)
MAX_EVENT_BYTES = 64 * 1024
MAX_TRIGGER_TWINS = 1_000
MAX_BACKOFF_S = 300.0
DISPATCH_BATCH = 64
STOP = object()  # put on the operation queue: the writer thread ends
Key = tuple[str, str]  # (namespace, function name)


@dataclass
class Schedule:
    id: str
    namespace: str
    function: str
    trigger: Trigger
    missed: str
    args: dict
    description: str
    enabled: bool
    next_at: int | None
    last_fired: int | None
    fired: int
    last_error: str | None
    created: int
    true_twins: set[str] = field(default_factory=set)  # condition: twins now true
    pending_run: str | None = None  # event triggers: a queued run new events merge into
    compiled: tuple[int, Compiled] | None = None  # condition: (type version, expression)

    @property
    def key(self) -> Key:
        return self.namespace, self.function

    @property
    def system(self) -> bool:
        """Derived by the platform (e.g. from a type's `calibration.every`): kept in step with
        its source, and never started while a run of it is still queued or running."""
        return self.namespace == SYSTEM

    def public(self) -> dict:
        return {
            "id": self.id,
            "namespace": self.namespace,
            "function": self.function,
            "trigger": self.trigger.spec,
            "missed": self.missed,
            "args": self.args,
            "description": self.description,
            "enabled": self.enabled,
            "next": format_ts(self.next_at) if self.next_at is not None else None,
            "last_fired": format_ts(self.last_fired) if self.last_fired is not None else None,
            "fired": self.fired,
            "last_error": self.last_error,
            "created": format_ts(self.created),
        }


@dataclass
class RunItem:
    """A run that is queued, running or waiting to retry (in memory, mirrored in `runs`)."""

    id: str
    key: Key
    schedule_id: str | None
    trigger: dict
    args: dict
    events: list[dict]
    attempts: int = 0
    logs: list[str] = field(default_factory=list)
    started: int | None = None  # set by the pool thread; written with the outcome
    progress: dict = field(default_factory=dict)  # what the running attempt reported
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Op:
    """An operation for the writer thread; `future` is None for internal bookkeeping."""

    fn: Callable
    args: tuple
    future: Future | None


class RunLogHandler(logging.Handler):
    """Copies log records emitted on a pool thread during a run into that run's log."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self._local = threading.local()

    def attach(self, ctx: RunContext) -> None:
        self._local.ctx = ctx

    def detach(self) -> None:
        self._local.ctx = None

    def emit(self, record: logging.LogRecord) -> None:
        ctx = getattr(self._local, "ctx", None)
        if ctx is not None and not record.name.startswith("livetwin.schedule"):
            try:
                ctx.log(f"{record.levelname} {record.name}: {record.getMessage()}")
            except Exception:
                pass


def check_event(raw: Any, where: str) -> tuple[str, str, str | None, bytes, str | None]:
    """A posted event as (namespace, name, key, data JSON, idempotency key); InvalidInput
    naming the field."""
    if not isinstance(raw, dict):
        raise InvalidInput(
            "an event must be a JSON object",
            field=f"body{where}",
            fix='send {"name": "data-ready", "data": {...}, "key": "pump-1"}',
        )
    unknown = sorted(set(raw) - {"name", "data", "key", "namespace", "idempotency_key"})
    if unknown:
        raise InvalidInput(
            f"unknown field(s): {', '.join(unknown)}",
            field=f"{unknown[0]}{where}",
            fix="use only name, data, key, namespace and idempotency_key",
        )
    name = check_name(raw.get("name"), f"name{where}")
    namespace = check_namespace(raw.get("namespace"), f"namespace{where}")
    key = _optional_text(
        raw.get("key"),
        f"key{where}",
        "use a correlation id such as a twin id, or leave key out for a global join",
    )
    idempotency_key = _optional_text(
        raw.get("idempotency_key"),
        f"idempotency_key{where}",
        "send one unique id per event (the same on a retry), or leave it out",
    )
    try:
        data = orjson.dumps(raw.get("data"))
    except TypeError as exc:
        raise InvalidInput(
            f"data is not JSON: {exc}", field=f"data{where}", fix="send JSON data"
        ) from None
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidInput(
            f"data is larger than {MAX_EVENT_BYTES} bytes",
            field=f"data{where}",
            fix="send a reference (a URL or a twin id) instead of the payload",
        )
    return namespace, name, key, data, idempotency_key


def _optional_text(value: Any, field: str, fix: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not 1 <= len(value) <= 200):
        raise InvalidInput(
            f"{field.split('[')[0]} must be a string of 1-200 characters", field=field, fix=fix
        )
    return value


def event_dict(eid: int, name: str, key: str | None, data: bytes, ts: int) -> dict:
    return {"id": eid, "name": name, "key": key, "data": orjson.loads(data), "ts": ts}


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
