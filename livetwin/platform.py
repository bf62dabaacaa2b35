"""The platform: one object that owns the store, the engine, the writer and the event bus.

`Platform(path)` is livetwin in-process (notebooks, tests, the SDK); the REST API and the CLI
are thin layers over it.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from livetwin.engine.engine import Engine
from livetwin.engine.events import EventBus
from livetwin.errors import InvalidInput, NotFound
from livetwin.ingest.extract import extract
from livetwin.ingest.observations import Normalized, Rejection, normalize
from livetwin.journal import snapshot
from livetwin.journal.replay import replay
from livetwin.journal.writer import IngestResult, Writer
from livetwin.spec.extractor import ExtractorSpec
from livetwin.spec.types import TwinTypeSpec, compile_type, parse_type_spec
from livetwin.store.history import aggregate, decode
from livetwin.store.sqlite import SqliteStore
from livetwin.timefmt import format_ts, parse_duration, parse_ts

log = logging.getLogger(__name__)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Settings:
    """Tunable limits and policies; the defaults suit a laptop or a 1 GB Raspberry Pi."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_future_ms: int = 86_400_000
    snapshot_every: int = 1_000_000  # observations between snapshots
    snapshot_interval_s: float = 300.0  # and at most this long between them
    cache_mb: int = 64
    max_history_points: int = 200_000


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
        self.settings = settings or Settings()
        self.clock = clock
        self.store = SqliteStore(self.path, cache_mb=self.settings.cache_mb)
        self.bus = EventBus()
        self.lock = threading.RLock()
        self._define_lock = threading.Lock()
        self._columns: dict[tuple[str, int], tuple[str, ...]] = {}
        self._extractors: dict[str, Any] = {}
        self.engine, self.recovered = self._recover()
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()
        self._snapshot_seq = self.recovered["snapshot_seq"]
        self._snapshot_busy = threading.Lock()
        self.writer = Writer(
            self.store,
            self.engine,
            self.lock,
            self.bus,
            self.clock,
            on_commit=self._after_commit,
            on_failure=self._after_failure,
        )
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------------------

    def _recover(self, *, use_snapshot: bool = True) -> tuple[Engine, dict]:
        """The newest snapshot plus the journal tail after it (or the whole journal)."""
        started = time.perf_counter()
        loaded = snapshot.load_newest(self.snapshot_dir) if use_snapshot else None
        engine, seq = loaded if loaded else (Engine(), 0)
        last, n = replay(engine, self.store.journal(after=seq))
        info = {
            "snapshot_seq": seq,
            "replayed_observations": n,
            "last_seq": max(last, seq),
            "seconds": round(time.perf_counter() - started, 3),
        }
        if n:
            log.info("recovered: snapshot at seq %d + %d observations replayed", seq, n)
        return engine, info

    @property
    def snapshot_dir(self) -> Path:
        return self.path / "snapshots"

    def close(self) -> None:
        """Drain queued ingest, write a final snapshot, close the store."""
        if self._closed:
            return
        self._closed = True
        self.writer.stop()
        with self._snapshot_busy:
            self._write_snapshot()
        self.store.close()

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def snapshot(self) -> Path | None:
        """Write a snapshot now (returns its path, or None when nothing changed)."""
        with self._snapshot_busy:
            return self._write_snapshot()

    def _write_snapshot(self) -> Path | None:
        with self.lock:
            seq = self.writer.next_seq - 1
            if seq <= self._snapshot_seq:
                return None
            meta, arrays = snapshot.capture(self.engine, seq)
        path = snapshot.write(self.snapshot_dir, meta, arrays)
        self._snapshot_seq = seq
        return path

    def _after_commit(self, seq: int, observations: int) -> None:
        self._since_snapshot += observations
        due = self._since_snapshot >= self.settings.snapshot_every or (
            self._since_snapshot
            and time.monotonic() - self._snapshot_at >= self.settings.snapshot_interval_s
        )
        if due and self._snapshot_busy.acquire(blocking=False):
            self._since_snapshot = 0
            self._snapshot_at = time.monotonic()
            with self.lock:
                meta, arrays = snapshot.capture(self.engine, seq)
            threading.Thread(target=self._write_captured, args=(meta, arrays), daemon=True).start()

    def _write_captured(self, meta: dict, arrays: dict) -> None:
        try:
            snapshot.write(self.snapshot_dir, meta, arrays)
            self._snapshot_seq = meta["seq"]
        except OSError:
            log.exception("snapshot failed; the journal still holds everything")
        finally:
            self._snapshot_busy.release()

    def _after_failure(self, exc: BaseException) -> None:
        """A commit failed after the engine applied the group: rebuild from what is durable."""
        with self.lock:
            self.engine, _ = self._recover()
            self.writer.engine = self.engine

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

    def _columns_of(self, name: str, version: int) -> tuple[str, ...]:
        key = (name, version)
        if key not in self._columns:
            for number, spec_json, _ in self.store.type_versions(name):
                spec = TwinTypeSpec.model_validate({**orjson.loads(spec_json), "name": name})
                self._columns[(name, number)] = compile_type(spec, number).columns
        return self._columns[key]

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
        limit = self.settings.max_history_points
        rows = self.store.history(uid, start_ms, end_ms, limit + 1)
        if len(rows) > limit and every is None:
            raise InvalidInput(
                f"more than {limit} points in range",
                field="every",
                fix="narrow from/to or aggregate with every=1m",
            )
        ts, values = decode(rows, names, lambda v: self._columns_of(type_name, v))
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
        rows = self.store.recent(uid, before_ms, limit)
        out = []
        for ts, seq, version, blob in rows:
            columns = self._columns_of(ctype.name, version)
            values = np.frombuffer(blob, dtype="<f8")
            observed = {
                c: float(v)
                for c, v in zip(columns, values, strict=True)
                if not np.isnan(v) and c not in ctype.compiled
            }
            derived = {
                c: _json_number(v)
                for c, v in zip(columns, values, strict=True)
                if c in ctype.compiled
            }
            out.append(
                {
                    "seq": seq,
                    "ts": ts,
                    "time": format_ts(ts),
                    "type_version": version,
                    "values": observed,
                    "derived": derived,
                }
            )
        return out

    def stats(self) -> dict:
        entries, observations = self.store.journal_size()
        return {
            "twins": self.engine.twin_count(),
            "types": len(self.engine.states),
            "journal_entries": entries,
            "journal_observations": observations,
            "last_seq": self.writer.next_seq - 1,
            "snapshot_seq": self._snapshot_seq,
        }

    def rebuild(self, progress=None) -> dict:
        """Rebuild all state from the journal alone (ignoring snapshots), then snapshot it."""
        started = time.perf_counter()
        with self.lock:
            engine = Engine()
            last, n = replay(engine, self.store.journal(after=0), progress=progress)
            self.engine = self.writer.engine = engine
        seconds = time.perf_counter() - started
        self._snapshot_seq = 0
        self.snapshot()
        return {
            "observations": n,
            "last_seq": last,
            "twins": engine.twin_count(),
            "seconds": round(seconds, 3),
            "observations_per_s": round(n / seconds) if seconds else None,
        }


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


def _json_number(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _json_list(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else v for v in values.tolist()]
