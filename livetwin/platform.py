"""The platform: one object that owns the store, the engine, the writer and the event bus.

`Platform(path)` is livetwin in-process (notebooks, tests, the SDK); the REST API and the CLI
are thin layers over it.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from livetwin.actions.alarms import AlarmService
from livetwin.actions.commands import CommandService
from livetwin.actions.email import AlarmMailer, SmtpSettings
from livetwin.actions.webhooks import WebhookService
from livetwin.engine.engine import Engine, json_number
from livetwin.engine.events import EventBus
from livetwin.errors import InvalidInput, NotFound, Unavailable
from livetwin.ingest.extract import extract
from livetwin.ingest.mqtt import MqttBridge
from livetwin.ingest.observations import Normalized, Rejection, normalize
from livetwin.jobs.calibration import CalibrationTimer, TypeCalibration
from livetwin.jobs.calibration import calibrate as run_calibration
from livetwin.journal import snapshot
from livetwin.journal.replay import replay
from livetwin.journal.writer import IngestResult, Writer
from livetwin.registry import LineageStore, Registry
from livetwin.schedule import Scheduler
from livetwin.settings import Settings
from livetwin.spec.extractor import ExtractorSpec
from livetwin.spec.types import TwinTypeSpec, compile_type, parse_type_spec
from livetwin.store.buffer import HistoryBuffer
from livetwin.store.history import aggregate, assemble
from livetwin.store.open import open_store
from livetwin.timefmt import format_ts, parse_duration, parse_ts

log = logging.getLogger(__name__)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


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
        self._lock_file = _lock_directory(self.path)
        self.settings = settings or Settings()
        self.clock = clock
        try:
            self.store = open_store(self.path, cache_mb=self.settings.cache_mb)
        except BaseException:
            self._lock_file.close()
            raise
        self.bus = EventBus()
        self.lock = threading.RLock()
        self._define_lock = threading.Lock()
        self._layouts: dict[tuple[str, int], tuple[tuple[str, ...], frozenset[str]]] = {}
        self._extractors: dict[str, ExtractorSpec] = {}
        self._calibration_locks: dict[str, threading.Lock] = {}
        engine, history, self.recovered = self._recover()
        self.writer = Writer(
            self.store,
            engine,
            history,
            self.lock,
            self.bus,
            self.clock,
            self.settings,
            self.snapshot_dir,
            snapshot_seq=self.recovered["snapshot_seq"],
            on_failure=self._after_failure,
        )
        self.webhooks = WebhookService(self).start() if self.settings.webhooks else None
        self.mqtt, self.commands = self._start_mqtt()
        self.alarms = AlarmService(self, tick_s=self.settings.alarm_tick_s).start()
        smtp = SmtpSettings.from_env()
        self.mailer = AlarmMailer(self, smtp).start() if smtp else None
        self.lineage = LineageStore(self.path, clock=self.clock)
        self.registry = Registry(
            self, lineage=self.lineage, max_artifact_bytes=self.settings.max_artifact_bytes
        ).start()
        self.scheduler = Scheduler(self, allow_modules=self.settings.scheduler_modules)
        if self.settings.run_schedules:
            self.scheduler.start()
        self._timer = CalibrationTimer(self) if self.settings.run_schedules else None
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        return self.writer.engine

    @property
    def snapshot_dir(self) -> Path:
        return self.path / "snapshots"

    def _recover(self) -> tuple[Engine, HistoryBuffer, dict]:
        """The newest snapshot plus the journal tail after it; unstored history is rebuilt."""
        started = time.perf_counter()
        loaded = snapshot.load_newest(self.snapshot_dir, self.store.newest_snapshot())
        engine, seq = loaded if loaded else (Engine(), 0)
        history = HistoryBuffer(self.store.history_seq())
        if history.flushed_seq < seq:
            log.warning(
                "history is stored up to seq %d but the snapshot covers %d: the rows between "
                "are missing from history",
                history.flushed_seq,
                seq,
            )
        last, n = replay(engine, self.store.journal(after=seq), history=history)
        info = {
            "snapshot_seq": seq,
            "replayed_observations": n,
            "last_seq": max(last, seq),
            "seconds": round(time.perf_counter() - started, 3),
        }
        if n:
            log.info("recovered: snapshot at seq %d + %d observations replayed", seq, n)
        return engine, history, info

    def _start_mqtt(self) -> tuple[MqttBridge | None, CommandService | None]:
        """MQTT ingest and device commands, when a broker is configured (settings.mqtt_host)."""
        host = self.settings.mqtt_host
        if not host:
            return None, None
        port = self.settings.mqtt_port
        return MqttBridge(self, host, port).start(), CommandService(self, host, port).start()

    def close(self) -> None:
        """Drain queued ingest, flush history, write a final snapshot, close the store."""
        if self._closed:
            return
        self._closed = True
        self.scheduler.stop()  # first: running functions may still ingest
        for service in (self.mqtt, self.commands):  # MQTT: what it submitted is drained below
            if service is not None:
                service.stop()
        if self._timer is not None:
            self._timer.stop()
        self.writer.stop()  # publishes its last batches: the services below still hear them
        for service in (self.alarms, self.mailer, self.webhooks):  # in order: alarms notify
            if service is not None:
                service.stop()
        self.registry.stop()
        self.lineage.close()
        self.store.close()
        self._lock_file.close()

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def snapshot(self) -> Path | None:
        """Flush history and write a snapshot now (its path, or None when nothing changed)."""
        return self.writer.snapshot().result()

    def _after_failure(self, exc: BaseException) -> None:
        """Applying or committing failed after the engine changed: rebuild what is durable."""
        with self.writer.flusher.busy, self.lock:
            engine, history, _ = self._recover()
            self.writer.engine, self.writer.history = engine, history

    # ---- types ---------------------------------------------------------------------------

    def put_type(self, name: str, spec: dict) -> dict:
        """Declare or change a twin type; a change makes a new version, the same spec does not."""
        parsed = parse_type_spec(spec, name)
        spec_json = orjson.dumps(parsed.model_dump(mode="json", exclude={"name"})).decode()
        with self._define_lock:
            versions = self.store.type_versions(name)
            if versions and orjson.loads(versions[-1][1]) == orjson.loads(spec_json):
                return {"name": name, "version": versions[-1][0], "changed": False}
            version = len(versions) + 1
            ctype = compile_type(parsed, version)
            self.writer.define(ctype, spec_json).result()
        return {"name": name, "version": version, "changed": True}

    def get_type(self, name: str, version: int | None = None) -> dict:
        versions = self.store.type_versions(name)
        if not versions:
            raise NotFound(
                f"no twin type '{name}'", field="name", fix=f"declare it with PUT /api/types/{name}"
            )
        chosen = (
            versions[-1]
            if version is None
            else next((v for v in versions if v[0] == version), None)
        )
        if chosen is None:
            raise NotFound(
                f"type '{name}' has no version {version}",
                field="version",
                fix=f"use a version from 1 to {versions[-1][0]}",
            )
        number, spec_json, created = chosen
        return {
            "name": name,
            "version": number,
            "latest": versions[-1][0],
            "created": format_ts(created),
            "spec": orjson.loads(spec_json),
            "columns": list(self._columns_of(name, number)),
            "versions": [v[0] for v in versions],
        }

    def list_types(self) -> list[dict]:
        with self.lock:
            return [
                {
                    "name": name,
                    "version": st.ctype.version,
                    "twins": len(st),
                    "description": st.ctype.spec.description,
                }
                for name, st in sorted(self.engine.states.items())
            ]

    def layout(self, name: str, version: int) -> tuple[tuple[str, ...], frozenset[str]]:
        """The column names of a type version and which of them are derived values."""
        key = (name, version)
        if key not in self._layouts:
            for number, spec_json, _ in self.store.type_versions(name):
                spec = TwinTypeSpec.model_validate({**orjson.loads(spec_json), "name": name})
                ctype = compile_type(spec, number)
                self._layouts[(name, number)] = (ctype.columns, frozenset(ctype.derived_order))
        return self._layouts[key]

    def _columns_of(self, name: str, version: int) -> tuple[str, ...]:
        return self.layout(name, version)[0]

    # ---- ingest --------------------------------------------------------------------------

    def ingest(self, observations: Any, *, atomic: bool = False) -> IngestResult:
        """Validate, journal (durably) and apply observations; returns what was accepted."""
        return self.submit(observations, atomic=atomic).result()

    def submit(self, observations: Any, *, atomic: bool = False) -> Future:
        """Like `ingest`, but returns a future (for async callers such as the API)."""
        normalized = normalize(
            observations,
            self.engine.types,
            now_ms=self.clock(),
            max_future_ms=self.settings.max_future_ms,
        )
        if (atomic and normalized.rejected) or not normalized.batches:
            return _done(IngestResult(rejected=normalized.rejected))
        return self.writer.ingest(normalized, atomic)

    def submit_normalized(self, normalized: Normalized, *, atomic: bool = False) -> Future:
        return self.writer.ingest(normalized, atomic)

    # ---- extractors ----------------------------------------------------------------------

    def put_extractor(self, name: str, spec: Any) -> dict:
        """Declare (or replace) how a device's own JSON maps to observations."""
        parsed = ExtractorSpec.from_data(spec, name=name)
        body = parsed.model_dump(mode="json", exclude_defaults=True)
        self.store.put_extractor(name, orjson.dumps(body).decode(), self.clock())
        self._extractors[name] = parsed
        return body

    def extractor(self, name: str) -> ExtractorSpec:
        if name not in self._extractors:
            stored = self.store.extractors().get(name)
            if stored is None:
                raise NotFound(
                    f"no extractor '{name}'",
                    field="extractor",
                    fix=f"declare it with PUT /api/extractors/{name}",
                )
            self._extractors[name] = ExtractorSpec.from_data(orjson.loads(stored), name=name)
        return self._extractors[name]

    def list_extractors(self) -> list[dict]:
        return [orjson.loads(s) for _, s in sorted(self.store.extractors().items())]

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
        result = extract(self.extractor(extractor), payload, topic_vars=topic_vars)
        failed = {e["index"] for e in result.errors}
        elements = [i for i in range(len(result.observations) + len(failed)) if i not in failed]
        extraction_rejections = [
            Rejection(e["index"], e["field"], e["error"], e["fix"]) for e in result.errors
        ]
        if atomic and extraction_rejections:
            return _done(IngestResult(rejected=extraction_rejections))
        future = self.submit(result.observations, atomic=atomic)
        out: Future = Future()

        def remap(done: Future) -> None:
            if done.exception() is not None:
                out.set_exception(done.exception())
                return
            ingest = done.result()
            for r in ingest.rejected:
                r.index = elements[r.index] if r.index < len(elements) else r.index
            ingest.rejected.extend(extraction_rejections)
            out.set_result(ingest)

        future.add_done_callback(remap)
        return out

    # ---- reads ---------------------------------------------------------------------------

    def twin(self, twin_id: str) -> dict:
        with self.lock:
            return self.engine.twin(twin_id)

    def twins(
        self,
        *,
        type: str | None = None,
        parent: str | None = None,
        where: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict:
        """Twins matching the filters, paged (creation order within a type)."""
        if not 1 <= limit <= 1000:
            raise InvalidInput(
                "limit must be between 1 and 1000", field="limit", fix="page with limit and offset"
            )
        if offset < 0:
            raise InvalidInput("offset must not be negative", field="offset", fix="use 0 or more")
        with self.lock:
            found = self.engine.find(type=type, parent=parent, where=where)
            total = sum(len(rows) for _, rows in found)
            items: list[dict] = []
            skip = offset
            for st, rows in found:
                if skip >= len(rows):
                    skip -= len(rows)
                    continue
                for row in rows[skip : skip + limit - len(items)].tolist():
                    last = int(st.last_ts[row])
                    items.append(
                        {
                            "id": st.ids[row],
                            "type": st.ctype.name,
                            "version": st.ctype.version,
                            "parent": st.parents[row],
                            "updated": format_ts(last) if last >= 0 else None,
                        }
                    )
                skip = 0
                if len(items) >= limit:
                    break
        return {"items": items, "total": total, "offset": offset, "limit": limit}

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
        with self.lock:
            st, row = self.engine.locate(twin_id)
            uid, type_name, columns = int(st.uid[row]), st.ctype.name, st.ctype.columns
        names = list(names) if names else list(columns)
        for name in names:
            if name not in columns:
                raise InvalidInput(
                    f"'{name}' is not a name of type '{type_name}'",
                    field="names",
                    fix=f"use some of: {', '.join(columns)}",
                )
        start_ms = _time_arg(start, "from", 0)
        end_ms = _time_arg(end, "to", self.clock() + self.settings.max_future_ms + 1)
        ts, _, values = self._history_rows(uid, type_name, names, start_ms, end_ms)
        if len(ts) > self.settings.max_history_points and every is None:
            raise InvalidInput(
                f"more than {self.settings.max_history_points} points in range",
                field="every",
                fix="narrow from/to or aggregate with every=1m",
            )
        if every is not None:
            try:
                every_ms = parse_duration(every)
            except ValueError as exc:
                raise InvalidInput(str(exc), field="every", fix="e.g. every=1m") from None
            ts, values = aggregate(ts, values, every_ms, agg)
        return {
            "twin": twin_id,
            "from": format_ts(start_ms),
            "to": format_ts(end_ms),
            "every": every,
            "agg": agg if every else None,
            "ts": ts.tolist(),
            "series": {n: _json_list(values[k]) for k, n in enumerate(names)},
        }

    def events(self, twin_id: str, *, limit: int = 50, before: Any = None) -> list[dict]:
        """The twin's journaled observations, newest first, with the derived values they caused."""
        if not 1 <= limit <= 1000:
            raise InvalidInput(
                "limit must be between 1 and 1000",
                field="limit",
                fix="use a smaller limit and page with before=",
            )
        with self.lock:
            st, row = self.engine.locate(twin_id)
            uid, ctype = int(st.uid[row]), st.ctype
        before_ms = _time_arg(before, "before", 2**62)
        with self.lock:
            flushed = self.writer.history.flushed_seq
            parts: list = self.writer.history.rows_of(uid)
        newest = sorted(t for p in parts for t in p.ts.tolist() if t < before_ms)
        for ts_max, chunk in self.store.recent(uid, before_ms, flushed):
            if len(newest) >= limit and ts_max < newest[-limit]:
                break  # older chunks cannot hold any of the newest `limit` rows
            parts.append(chunk)
            newest = sorted(newest + [t for t in chunk.ts.tolist() if t < before_ms])
        columns = ctype.columns
        ts, seqs, values = assemble(parts, columns, lambda v: self._columns_of(ctype.name, v))
        inputs = [k for k, c in enumerate(columns) if c not in ctype.compiled]
        derived = [k for k, c in enumerate(columns) if c in ctype.compiled]
        out = []
        for i in np.flatnonzero(ts < before_ms)[::-1][:limit].tolist():
            out.append(
                {
                    "seq": int(seqs[i]),
                    "ts": int(ts[i]),
                    "time": format_ts(int(ts[i])),
                    "values": {
                        columns[k]: float(values[k, i])
                        for k in inputs
                        if not np.isnan(values[k, i])
                    },
                    "derived": {columns[k]: json_number(values[k, i]) for k in derived},
                }
            )
        return out

    def _history_rows(self, uid: int, type_name: str, names: list[str], start: int, end: int):
        """Stored chunks plus buffered rows of one twin within [start, end), sorted."""
        with self.lock:
            flushed = self.writer.history.flushed_seq
            parts: list = self.writer.history.rows_of(uid)
        parts += self.store.history(uid, start, end, flushed)
        ts, seqs, values = assemble(parts, names, lambda v: self._columns_of(type_name, v))
        inside = (ts >= start) & (ts < end)
        return ts[inside], seqs[inside], values[:, inside]

    # ---- calibration -----------------------------------------------------------------------

    def calibrate(self, type_name: str, twins: list[str] | None = None) -> dict:
        """Calibrate the twins of a type (all by default) on their new data; the run record."""
        with self._calibration_locks.setdefault(type_name, threading.Lock()):
            return run_calibration(self, type_name, twins)

    def calibration(self, twin_id: str, *, runs: int = 10) -> dict:
        """A twin's calibrated parameters and virtual sensors with bands, and recent runs."""
        with self.lock:
            st, row = self.engine.locate(twin_id)
            plan = st.ctype.calibration
            if plan is None:
                raise InvalidInput(
                    f"twin '{twin_id}' is a '{st.ctype.name}', which has no model",
                    field="type",
                    fix="add model: and calibration: sections to the type spec",
                )

            def stats(name: str) -> dict:
                return {
                    key: json_number(st.data[st.col[name + suffix], row])
                    for key, suffix in (
                        ("value", ""),
                        ("std", "_std"),
                        ("lower", "_lower"),
                        ("upper", "_upper"),
                    )
                }

            parameters = {p: stats(p) for p in plan.parameters}
            virtual = {v: stats(v) for v in plan.virtual}
        blob = self.store.calibration_state(st.ctype.name)
        saved = TypeCalibration.from_bytes(blob) if blob is not None else None
        filter_info = None
        if saved is not None and twin_id in saved.ids:
            i = saved.ids.index(twin_id)
            filter_info = {
                "calibrated_until": format_ts(int(saved.last_ts[i])),
                "failed": bool(saved.state.failed[i]),
                "reason": int(saved.state.reason[i]),
                "model": saved.state.model,
                "estimator": saved.state.kind,
            }
        return {
            "twin": twin_id,
            "type": st.ctype.name,
            "model": plan.model.name,
            "parameters": parameters,
            "virtual_sensors": virtual,
            "filter": filter_info,
            "runs": self.store.calibration_runs(st.ctype.name, runs),
        }

    def stats(self) -> dict:
        entries, observations = self.store.journal_size()
        return {
            "twins": self.engine.twin_count(),
            "types": len(self.engine.states),
            "journal_entries": entries,
            "journal_observations": observations,
            "last_seq": self.writer.next_seq - 1,
            "snapshot_seq": self.writer.flusher.snapshot_seq,
            "history_buffered": self.writer.history.rows,
        }

    def rebuild(self, progress=None) -> dict:
        """Rebuild all twin state from the journal alone (ignoring snapshots), then snapshot it.

        History is not rewritten: it already holds what the journal produced.
        """
        started = time.perf_counter()
        with self.lock:
            engine = Engine()
            last, n = replay(engine, self.store.journal(after=0), progress=progress)
            self.writer.engine = engine
        seconds = time.perf_counter() - started
        self.writer.snapshot(force=True).result()
        return {
            "observations": n,
            "last_seq": last,
            "twins": engine.twin_count(),
            "seconds": round(seconds, 3),
            "observations_per_s": round(n / seconds) if seconds else None,
        }


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


def _done(result) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future


def _time_arg(value: Any, field: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return parse_ts(value)
    except ValueError as exc:
        raise InvalidInput(
            str(exc), field=field, fix="use ISO 8601 (2026-11-22T10:00:00Z) or epoch ms"
        ) from None


def _json_list(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else v for v in values.tolist()]
