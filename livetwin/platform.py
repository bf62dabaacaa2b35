"""The composition root: builds a twin core and the services, and wires each to the ports it needs.

`Platform(path)` is livetwin in-process (notebooks, tests, the SDK); the REST API and the CLI
are thin layers over it. Its public methods delegate to the core, the query module and the
services; no service holds the platform.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from livetwin import tenant
from livetwin.actions.alarms import AlarmService
from livetwin.actions.commands import CommandService
from livetwin.actions.email import AlarmMailer, SmtpSettings
from livetwin.actions.webhooks import WebhookService
from livetwin.auth.devices import DeviceStore
from livetwin.backtest.archive import BacktestArchive
from livetwin.backtest.service import BacktestService
from livetwin.core import TwinCore
from livetwin.engine.events import EventBus
from livetwin.errors import Unavailable
from livetwin.ingest.extractors import Extractors, submit_extracted
from livetwin.ingest.files.mapping import ImportMapping, ImportMappings
from livetwin.ingest.mqtt import MqttBridge
from livetwin.ingest.observations import Normalized
from livetwin.ingest.opcua import OpcuaConnectors
from livetwin.jobs.backtest_calibration import backtest_calibration
from livetwin.jobs.builtins import register_builtins
from livetwin.jobs.calibration import calibrate as run_calibration
from livetwin.jobs.calibration import calibration_view
from livetwin.jobs.ports import CalibrationPorts
from livetwin.jobs.retention import compact_journal, compact_type, journal_retention_ms
from livetwin.jobs.scenario import Forecaster, ScenarioPorts, Scenarios
from livetwin.journal.writer import IngestResult
from livetwin.namespaces import DEFAULT as DEFAULT_NAMESPACE
from livetwin.outbound import OutboundPolicy
from livetwin.query import Query, history_frame
from livetwin.registry import LineageStore, Registry
from livetwin.registry.artifacts import artifact_store, bucket_client
from livetwin.schedule import Scheduler
from livetwin.settings import Settings
from livetwin.spec.extractor import ExtractorSpec
from livetwin.store.servicedb import ServiceDB, open_service_db
from livetwin.timefmt import wall_clock_ms

__all__ = ["Platform", "Settings", "wall_clock_ms"]

log = logging.getLogger(__name__)


class Platform:
    """livetwin in-process. Thread-safe; close() it (or use `with`) to snapshot and stop."""

    def __init__(
        self,
        path: str | Path = "livetwin-data",
        *,
        settings: Settings | None = None,
        clock=wall_clock_ms,
    ):
        self.path = Path(path)
        self.settings = Settings.from_env(settings)  # fields left None: from the environment
        journal_retention_ms(self.settings.journal_retention)  # a bad value fails before start
        self._lock_file = _lock_directory(self.path)
        self.outbound = OutboundPolicy(self.settings.outbound_allow or ())
        self.clock = clock
        try:
            self.core = TwinCore.open(self.path, settings=self.settings, clock=clock)
        except BaseException:
            self._lock_file.close()
            raise
        self.query = Query(self.core)
        self.recovered = self.core.recovered
        self.extractors = Extractors(self.core.store, self.clock)
        self.mappings = ImportMappings(self.core.store, self.clock)  # file import mappings
        self._calibration_locks: dict[str, threading.Lock] = {}
        self.webhooks = (
            WebhookService(
                clock=self.clock,
                bus=self.bus,
                reader=self.query,
                open_db=self.open_db,
                outbound=self.outbound,
                database_url=self.settings.database_url,
            ).start()
            if self.settings.webhooks
            else None
        )
        self.devices = DeviceStore(self.open_db, clock=self.clock)  # opened on first use
        self.mqtt, self.commands = self._start_mqtt()
        self.opcua = OpcuaConnectors(
            ingest=self.core,
            configs=self.core.store,
            clock=self.clock,
            outbound=self.outbound,
            pki_dir=self.path / "opcua",
        ).start()
        self.alarms = AlarmService(
            clock=self.clock,
            bus=self.bus,
            reader=self.query,
            open_db=self.open_db,
            tick_s=self.settings.alarm_tick_s,
        ).start()
        smtp = SmtpSettings.from_env(self.settings.smtp)
        self.mailer = AlarmMailer(smtp, bus=self.bus).start() if smtp else None
        self.lineage = LineageStore(self.open_db, clock=self.clock)
        self.registry = Registry(
            clock=self.clock,
            open_db=self.open_db,
            lineage=self.lineage,
            artifacts=artifact_store(self.path, self.settings.artifacts, self.outbound),
            tmp_dir=self.path / "tmp",
            max_artifact_bytes=self.settings.max_artifact_bytes,
            model_refs=self.core.models,  # a version's ref passes the configured model policy
        ).start()
        self._calibration = CalibrationPorts(
            clock=self.clock,
            reader=self.query,
            ingest=self.core,
            store=self.core.store,
            lineage=self.lineage,
            models=self.registry.store,
        )
        self.backtests = BacktestService(
            reader=self.query,
            core=self.core,
            archive=BacktestArchive(self.open_db, self.lineage, self.clock),
            clock=self.clock,
            calibration=backtest_calibration,
        )
        self.scenarios = Scenarios(
            ScenarioPorts(
                clock=self.clock,
                forecasts=Forecaster(self.query, self.core.store),
                open_db=self.open_db,
                lineage=self.lineage,
                models=self.registry.store,
            )
        )
        self.scheduler = self.new_scheduler()
        if self.settings.run_schedules:
            self.scheduler.start()
        self._closed = False

    def new_scheduler(self, **options) -> Scheduler:
        """A scheduler on this platform's ports with the built-in jobs registered, not started
        (`options`: Scheduler's tuning arguments). Only one may own the data directory."""
        scheduler = Scheduler(
            clock=self.clock,
            bus=self.bus,
            reader=self.query,
            open_db=self.open_db,
            lineage=self.lineage,
            functions_platform=self,  # ctx.platform of Python functions
            database_url=self.settings.database_url,
            outbound=self.outbound,
            **{"allow_modules": self.settings.scheduler_modules, **options},
        )
        register_builtins(
            scheduler,
            calibrate=self.calibrate,
            clock=self.clock,
            query=self.query,
            ingest=self.core,
            registry=self.registry,
            import_file=self.import_file,
            s3_client=partial(bucket_client, self.settings.artifacts, self.outbound),
            compact=(partial(compact_type, self.query), partial(compact_journal, self.core)),
            journal_retention=self.settings.journal_retention,
            backtests=self.backtests,
            scenarios=self.scenarios,
        )
        return scheduler

    def open_db(
        self,
        name: str,
        schema: str,
        *,
        sqlite_migrate=None,
        sqlite_file: str | None = None,
        sqlite_synchronous: str = "FULL",
    ) -> ServiceDB:
        """A service's own database, on the deployment's storage (the `OpenServiceDB` port)."""
        return open_service_db(
            self.path,
            name,
            schema,
            database_url=self.settings.database_url,
            sqlite_migrate=sqlite_migrate,
            sqlite_file=sqlite_file,
            sqlite_synchronous=sqlite_synchronous,
        )

    @property
    def bus(self) -> EventBus:
        """The core's event bus (what became durable, and what services announce)."""
        return self.core.bus

    # ---- lifecycle -----------------------------------------------------------------------

    def _start_mqtt(self) -> tuple[MqttBridge | None, CommandService | None]:
        """MQTT ingest and device commands, when a broker is configured (settings.mqtt)."""
        connection = self.settings.mqtt
        if connection is None:
            return None, None
        bridge = MqttBridge(
            connection,
            ingest=self.core,
            extractor=self.extractor,
            configs=self.core.store,
            clock=self.clock,
            device_twins=self.devices.owner,
        )
        commands = CommandService(
            connection, clock=self.clock, bus=self.bus, reader=self.query, open_db=self.open_db
        )
        return bridge.start(), commands.start()

    def close(self) -> None:
        """Drain queued ingest, flush history, write a final snapshot, close the store."""
        if self._closed:
            return
        self._closed = True
        self.scheduler.stop()  # first: running functions may still ingest
        for service in (self.mqtt, self.commands, self.opcua):  # drained below
            if service is not None:
                service.stop()
        self.core.stop_writer()  # publishes its last batches: the services below still hear them
        for service in (self.alarms, self.mailer, self.webhooks):  # in order: alarms notify
            if service is not None:
                service.stop()
        self.registry.stop()
        self.backtests.close()
        self.scenarios.close()
        self.lineage.close()
        self.devices.stop()
        self.core.close()
        self._lock_file.close()

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def snapshot(self) -> Path | None:
        """Flush history and write a snapshot now (its path, or None when nothing changed)."""
        return self.core.snapshot()

    # ---- types ---------------------------------------------------------------------------

    def put_type(self, name: str, spec: dict) -> dict:
        """Declare or change a twin type; a change makes a new version, the same spec does not."""
        return self.core.put_type(name, spec)

    def get_type(self, name: str, version: int | None = None) -> dict:
        return self.query.get_type(name, version)

    def list_types(self) -> list[dict]:
        return self.query.list_types()

    def stale_after(self, type_name: str) -> tuple[int | None, str | None]:
        """When a twin of the type counts as stale (ms) and where that comes from ('type' or
        'observed'); (None, None) before there are enough observations."""
        return self.query.stale_after(type_name)

    def layout(self, name: str, version: int) -> tuple[tuple[str, ...], frozenset[str]]:
        """The column names of a type version and which of them are derived values."""
        return self.core.layout(name, version)

    def delete_type(self, name: str, *, cascade: bool = False, purge: bool = False) -> dict:
        """Delete a type (Conflict while it has twins unless `cascade`; `purge`: their history
        too)."""
        return self.core.delete_type(name, cascade=cascade, purge=purge)

    # ---- twin lifecycle ------------------------------------------------------------------

    def create_twin(
        self,
        twin_id: str,
        type_name: str,
        *,
        attributes: dict | None = None,
        parent: str | None = None,
    ) -> dict:
        """Create a twin before its first observation (Conflict when it exists)."""
        return self.core.create_twin(twin_id, type_name, attributes=attributes, parent=parent)

    def update_twin(
        self, twin_id: str, *, attributes: dict | None = None, parent: str | None = None
    ) -> dict:
        """Set a twin's text attributes and/or its parent link (journaled)."""
        return self.core.update_twin(twin_id, attributes=attributes, parent=parent)

    def delete_twin(self, twin_id: str, *, purge: bool = False) -> dict:
        """Delete a twin (a journaled tombstone); `purge` deletes its stored history too."""
        return self.core.delete_twin(twin_id, purge=purge)

    def delete_twins(self, twin_ids: list[str], *, purge: bool = False) -> list[dict]:
        """`delete_twin` for several twins (one journal entry per type)."""
        return self.core.delete_twins(twin_ids, purge=purge)

    # ---- ingest --------------------------------------------------------------------------

    def ingest(self, observations: Any, *, atomic: bool = False) -> IngestResult:
        """Validate, journal (durably) and apply observations; returns what was accepted."""
        return self.core.ingest(observations, atomic=atomic)

    def submit(self, observations: Any, *, atomic: bool = False) -> Future:
        """Like `ingest`, but returns a future (for async callers such as the API)."""
        return self.core.submit(observations, atomic=atomic)

    def submit_normalized(self, normalized: Normalized, *, atomic: bool = False) -> Future:
        return self.core.submit_normalized(normalized, atomic=atomic)

    # ---- extractors ----------------------------------------------------------------------

    def put_extractor(self, name: str, spec: Any) -> dict:
        """Declare (or replace) how a device's own JSON maps to observations."""
        return self.extractors.put(name, spec)

    def extractor(self, name: str) -> ExtractorSpec:
        return self.extractors.get(name)

    def extractor_namespace(self, name: str) -> str:
        """The namespace that owns an extractor (NotFound for an unknown one)."""
        return self.extractors.namespace(name)

    def delete_extractor(self, name: str) -> dict:
        return self.extractors.delete(name)

    def list_extractors(self) -> list[dict]:
        return self.extractors.list()

    def submit_extracted(
        self,
        extractor: str,
        payload: Any,
        *,
        atomic: bool = False,
        topic_vars: dict[str, str] | None = None,
    ) -> Future:
        """Map a device payload with the named extractor, then ingest it like `submit`.

        Rejections from extraction keep their element index; ingest rejections are mapped back
        to the element that produced the observation.
        """
        spec = self.extractors.get(extractor)
        return submit_extracted(spec, payload, self.submit, atomic=atomic, topic_vars=topic_vars)

    # ---- files ---------------------------------------------------------------------------

    def put_mapping(self, name: str, spec: Any) -> dict:
        """Declare (or replace) how a file's columns map to observations (docs/import.md)."""
        return self.mappings.put(name, spec)

    def get_mapping(self, name: str) -> dict:
        return self.mappings.get(name)

    def list_mappings(self) -> list[dict]:
        return self.mappings.list()

    def delete_mapping(self, name: str) -> dict:
        return self.mappings.delete(name)

    def import_file(
        self,
        path: str | Path,
        mapping: str | dict | ImportMapping,
        *,
        filename: str | None = None,
        progress: Callable[[float, int], None] | None = None,
    ) -> dict:
        """Import a CSV, JSON lines, Excel or Parquet file through ingest under a mapping (its
        stored name, or the mapping itself); the report: accepted, duplicates, rejected rows."""
        return _files().importer.import_file(
            path,
            self.mappings.resolve(mapping),
            ingest=self.core,
            types=self.query.compiled_types,
            clock=self.clock,
            max_future_ms=self.settings.max_future_ms,
            filename=filename,
            progress=progress,
        )

    def export(
        self,
        type_name: str,
        out: Any,
        *,
        start: Any = None,
        end: Any = None,
        names: list[str] | None = None,
    ) -> dict:
        """Write a type's history within [start, end) as Parquet to `out` (a path or a binary
        file); what was written."""
        export = _files().export.export_parquet
        return export(self.query, type_name, out, start=start, end=end, names=names)

    # ---- reads ---------------------------------------------------------------------------

    def twin(self, twin_id: str) -> dict:
        return self.query.twin(twin_id)

    def twins(
        self,
        *,
        type: str | None = None,
        parent: str | None = None,
        where: str | None = None,
        limit: int = 100,
        offset: int = 0,
        values: bool = False,
        namespaces: frozenset[str] | None = None,
    ) -> dict:
        """Twins matching the filters, paged (creation order within a type); `values` adds each
        twin's key values; `namespaces`: only twins in these (None: all)."""
        return self.query.twins(
            type=type,
            parent=parent,
            where=where,
            limit=limit,
            offset=offset,
            values=values,
            namespaces=namespaces,
        )

    def aggregate(
        self,
        type_name: str,
        names: list[str] | None = None,
        aggs: list[str] | None = None,
        *,
        where: str | None = None,
        parent: str | None = None,
    ) -> dict:
        """Fleet totals of a type: `aggs` (sum, avg, min, max, count) of `names` over its twins
        matching `where` and `parent`."""
        return self.query.aggregate(type_name, names, aggs, where=where, parent=parent)

    def type_namespace(self, name: str) -> str:
        """The namespace that owns a type (NotFound for an unknown type)."""
        return self.get_type(name)["spec"].get("namespace") or DEFAULT_NAMESPACE

    def history(
        self,
        twin_id: str,
        names: list[str] | None = None,
        *,
        start: Any = None,
        end: Any = None,
        every: str | None = None,
        agg: str = "avg",
    ) -> dict:
        """Aligned series of a twin's properties, parameters and derived values."""
        return self.query.history(twin_id, names, start=start, end=end, every=every, agg=agg)

    def history_frame(self, twin_id: str, names: list[str] | None = None, **options) -> Any:
        """`history` as a pandas DataFrame indexed by UTC time (needs pandas)."""
        return history_frame(self.history(twin_id, names, **options))

    def observations(self, twin_id: str, *, limit: int = 50, before: Any = None) -> list[dict]:
        """The twin's journaled observations, newest first, with the derived values they caused."""
        return self.query.observations(twin_id, limit=limit, before=before)

    events = observations  # the older name of the same read

    # ---- calibration -----------------------------------------------------------------------

    def calibrate(
        self, type_name: str, twins: list[str] | None = None, *, run: str | None = None
    ) -> dict:
        """Calibrate the twins of a type (all by default) on their new data; the run record
        (`run`: the id of this execution, e.g. the scheduler's run id; new when None)."""
        with self._calibration_locks.setdefault(type_name, threading.Lock()):
            return run_calibration(self._calibration, type_name, twins, run=run)

    def calibration(self, twin_id: str, *, runs: int = 10) -> dict:
        """A twin's calibrated parameters and virtual sensors with bands, and recent runs."""
        return calibration_view(self.query, self.core.store, twin_id, runs=runs)

    def calibration_runs(self, type_name: str, limit: int = 20) -> list[dict]:
        """Recent calibration run records of a type, newest first."""
        return self.core.store.calibration_runs(type_name, limit)

    def stats(self) -> dict:
        return self.core.stats()

    def export_namespace(self, namespace: str) -> dict:
        """Everything a namespace owns as one JSON-able document (`livetwin.tenant`)."""
        return tenant.export_namespace(self, namespace)

    def delete_namespace(
        self, namespace: str, *, confirm: str | None = None, purge: bool = False
    ) -> dict:
        """Remove what a namespace owns (`confirm` repeats its name; models are archived)."""
        return tenant.delete_namespace(self, namespace, confirm=confirm, purge=purge)

    def rebuild(self, progress=None) -> dict:
        """Rebuild all twin state from the journal alone (ignoring snapshots), then snapshot it.

        History is not rewritten: it already holds what the journal produced.
        """
        return self.core.rebuild(progress)


def _files():
    """The file import and export modules (pyarrow: the `files` extra)."""
    try:
        from livetwin.ingest.files import export, importer
    except ImportError as exc:
        raise Unavailable(
            f"file import and export need pyarrow ({exc})",
            field="file",
            fix="pip install 'livetwin[files]'",
        ) from None
    return SimpleNamespace(importer=importer, export=export)


def _lock_directory(path: Path):
    """Hold an exclusive lock on the data directory (released by close or by process death)."""
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / "lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise Unavailable(
            f"the data directory {path} is in use by another livetwin platform",
            field="data",
            fix="stop the other process or choose another --data directory",
        ) from None
    return handle
