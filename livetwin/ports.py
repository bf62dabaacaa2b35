"""The narrow interfaces the composition root (`Platform`) hands to services.

A service receives only the ports it needs (a clock, a twin reader, an ingest port, the bus, an
opener for its own database), never the `Platform`: so one process can hold several twin cores
(a live one, a back-test sandbox, a what-if fork) and wire services to any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import sqlite3

    from livetwin.engine.events import Event
    from livetwin.ingest.observations import Normalized
    from livetwin.journal.writer import IngestResult
    from livetwin.spec.types import CompiledType
    from livetwin.store.servicedb import ServiceDB

Clock = Callable[[], int]
"""Epoch milliseconds now (tests pass a fake one)."""


DEVICE_TOPIC_ROOT = "devices"
"""Device `<id>` publishes under `devices/<id>/...`: the MQTT bridge checks what arrives there,
the Mosquitto ACL export confines each device to its own (docs/devices.md)."""


class DeviceTwins(Protocol):
    """The twins one device may write (`livetwin.auth.devices.TwinPattern`)."""

    text: str

    def allows(self, field: str, twin: str) -> bool: ...


class Bus(Protocol):
    """What became durable (state, types) and what services announce (alarms, runs)."""

    def subscribe(self, callback: Callable[[Event], None]) -> int: ...

    def unsubscribe(self, token: int) -> None: ...

    def publish(self, event: Event) -> None: ...


class Ingest(Protocol):
    """The one way in: observations are validated, journaled durably, then applied."""

    def submit(self, observations: Any, *, atomic: bool = False) -> Future: ...

    def submit_normalized(self, normalized: Normalized, *, atomic: bool = False) -> Future: ...

    def ingest(self, observations: Any, *, atomic: bool = False) -> IngestResult: ...


class TwinReader(Protocol):
    """Reads of twin state, types and history (`livetwin.query.Query` is the implementation)."""

    def twin(self, twin_id: str) -> dict: ...

    def twins(
        self,
        *,
        type: str | None = None,
        parent: str | None = None,
        where: str | None = None,
        limit: int = 100,
        offset: int = 0,
        values: bool = False,
    ) -> dict: ...

    def history(
        self,
        twin_id: str,
        names: list[str] | None = None,
        *,
        start: Any = None,
        end: Any = None,
        every: str | None = None,
        agg: str = "avg",
    ) -> dict: ...

    def compiled_type(self, name: str) -> CompiledType | None: ...

    def compiled_version(self, name: str, version: int) -> CompiledType: ...

    def layout(self, name: str, version: int) -> tuple[tuple[str, ...], frozenset[str]]: ...


class OpenServiceDB(Protocol):
    """Opens a service's own database (`<data>/<name>.db`, or schema `<schema>_<name>` on
    PostgreSQL): the deployment's storage choice is made once, by the composition root."""

    def __call__(
        self,
        name: str,
        schema: str,
        *,
        sqlite_migrate: Callable[[sqlite3.Connection], None] | None = None,
        sqlite_file: str | None = None,
        sqlite_synchronous: str = "FULL",
    ) -> ServiceDB: ...
