"""The ports the built-in jobs receive from the composition root (never the Platform)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from livetwin.ports import Clock, Ingest


@dataclass(frozen=True)
class CalibrationPorts:
    """What a calibration reads and writes through (the composition root builds it)."""

    clock: Clock
    reader: Any  # livetwin.query.Query: type_rows, history_rows
    ingest: Ingest  # results go in like device data
    store: Any  # the core's store: calibration_state, save_calibration, add_calibration_run
    lineage: Any  # LineageStore
    models: Any  # the registry's store: lookup_ref (the model version behind a ref)


@dataclass(frozen=True)
class BaselinePorts:
    """What the baseline jobs read and write through, under the names they call: reads from
    `query` (a `livetwin.query.Query`), observations into `ingest_port`, model versions in
    `registry` (register, predictor)."""

    clock: Clock
    query: Any
    ingest_port: Ingest
    registry: Any

    def get_type(self, name: str, version: int | None = None) -> dict:
        return self.query.get_type(name, version)

    def list_types(self) -> list[dict]:
        return self.query.list_types()

    def twin(self, twin_id: str) -> dict:
        return self.query.twin(twin_id)

    def twins(self, **filters: Any) -> dict:
        return self.query.twins(**filters)

    def history(self, twin_id: str, names: list[str] | None = None, **window: Any) -> dict:
        return self.query.history(twin_id, names, **window)

    def ingest(self, observations: Any, *, atomic: bool = False) -> Any:
        return self.ingest_port.ingest(observations, atomic=atomic)
