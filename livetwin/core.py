"""A twin core: the engine, journal, history buffer and writer for one set of twins.

A core is created for a data directory (SQLite), a PostgreSQL schema, or in memory (a sandbox
fed from another journal's range that writes nowhere live). Cores share nothing: one process can
hold a live core beside back-test sandboxes and what-if forks.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from livetwin.engine.batch import decode_batch
from livetwin.engine.engine import LIFECYCLE, Engine
from livetwin.engine.events import EventBus
from livetwin.errors import InvalidInput, NotFound
from livetwin.ingest.observations import Normalized, check_identifier, normalize
from livetwin.journal import compaction, snapshot
from livetwin.journal.replay import replay
from livetwin.journal.writer import IngestResult, Writer
from livetwin.models.base import ModelRefs
from livetwin.ports import Clock
from livetwin.settings import Settings
from livetwin.spec.aggregates import check_aggregates
from livetwin.spec.types import (
    CompiledType,
    TwinTypeSpec,
    compile_type,
    parse_type_spec,
    stored_spec,
)
from livetwin.store.base import JournalEntry, Store
from livetwin.store.buffer import HistoryBuffer
from livetwin.store.open import open_store
from livetwin.timefmt import wall_clock_ms

log = logging.getLogger(__name__)


class TwinCore:
    """Engine + journal + history + writer over one store. Thread-safe; `close()` it.

    `lock` guards the engine and the history buffer against readers; `bus` hears what became
    durable. Use `TwinCore.open(path)` for a data directory (or the configured PostgreSQL
    database) and `TwinCore.sandbox()` for an in-memory core.
    """

    def __init__(
        self,
        store: Store,
        snapshot_dir: Path,
        *,
        settings: Settings | None = None,
        clock: Clock = wall_clock_ms,
        bus: EventBus | None = None,
    ):
        self.store = store
        self.snapshot_dir = Path(snapshot_dir)
        self.settings = settings or Settings()
        self.clock = clock
        self.bus = bus or EventBus()
        # model refs of new types pass the configured policy; stored ones were checked then
        self.models = ModelRefs.configured(self.settings, self.snapshot_dir.parent)
        self._stored_models = self.models.trusting_modules()
        self.lock = threading.RLock()
        self._define_lock = threading.Lock()
        self._versions: dict[tuple[str, int], CompiledType] = {}
        self._cleanup: list = []
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
        if self.recovered["replayed_observations"] >= self.settings.snapshot_after_replay:
            self.writer.snapshot()  # so a crash loop does not replay more at every start
        self._closed = False

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        settings: Settings | None = None,
        clock: Clock = wall_clock_ms,
        bus: EventBus | None = None,
    ) -> TwinCore:
        """The core of a data directory, on SQLite or on the configured PostgreSQL database."""
        settings = settings or Settings()
        store = open_store(path, database_url=settings.database_url, cache_mb=settings.cache_mb)
        try:
            return cls(store, Path(path) / "snapshots", settings=settings, clock=clock, bus=bus)
        except BaseException:
            store.close()
            raise

    @classmethod
    def sandbox(
        cls,
        *,
        settings: Settings | None = None,
        clock: Clock = wall_clock_ms,
        bus: EventBus | None = None,
    ) -> TwinCore:
        """An in-memory core: nothing it does reaches a live store (files go to a temporary
        directory removed on close)."""
        from livetwin.store.sqlite import SqliteStore

        scratch = tempfile.mkdtemp(prefix="livetwin-sandbox-")
        store = SqliteStore.in_memory()
        core = cls(store, Path(scratch) / "snapshots", settings=settings, clock=clock, bus=bus)
        core._cleanup.append(lambda: shutil.rmtree(scratch, ignore_errors=True))
        return core

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        return self.writer.engine

    @property
    def history(self) -> HistoryBuffer:
        return self.writer.history

    def _recover(self) -> tuple[Engine, HistoryBuffer, dict]:
        """The newest snapshot plus the journal tail after it; unstored history is rebuilt."""
        started = time.perf_counter()
        kept = self.store.newest_snapshot()
        loaded = snapshot.load_newest(self.snapshot_dir, kept, self._stored_models)
        engine, seq = loaded or compaction.base_engine(
            self.snapshot_dir, self.store, self._stored_models
        )
        history = HistoryBuffer(self.store.history_seq())
        if history.flushed_seq < seq:
            log.warning(
                "history is stored up to seq %d but the snapshot covers %d: the rows between "
                "are missing from history",
                history.flushed_seq,
                seq,
            )
        entries = self.store.journal(after=seq)
        last, n = replay(engine, entries, history=history, models=self._stored_models)
        info = {
            "snapshot_seq": seq,
            "replayed_observations": n,
            "last_seq": max(last, seq),
            "seconds": round(time.perf_counter() - started, 3),
        }
        if n:
            log.info("recovered: snapshot at seq %d + %d observations replayed", seq, n)
        return engine, history, info

    def _after_failure(self, exc: BaseException) -> None:
        """Applying or committing failed after the engine changed: rebuild what is durable."""
        with self.writer.flusher.busy, self.lock:
            engine, history, _ = self._recover()
            self.writer.engine, self.writer.history = engine, history

    def stop_writer(self) -> None:
        """Drain queued work, flush history and write a final snapshot (the store stays open)."""
        self.writer.stop()

    def close(self) -> None:
        """Stop the writer (draining it) and close the store."""
        if self._closed:
            return
        self._closed = True
        self.writer.stop()
        self.store.close()
        for cleanup in self._cleanup:
            cleanup()

    def __enter__(self) -> TwinCore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def load_snapshot(self, accept) -> tuple[Engine, int] | None:
        """A fresh copy of the newest snapshot `accept(meta, arrays)` takes (see
        `snapshot.load_newest`), and its seq (None when it takes none): the start of a
        back-test, read without touching live state."""
        kept = self.store.newest_snapshot()
        found = snapshot.load_newest(self.snapshot_dir, kept, self._stored_models, accept)
        base = compaction.newest_base(self.snapshot_dir, self.store)
        if found is None and base is not None:  # the journal was compacted: its start
            found = snapshot.load_bytes(base[1], self._stored_models, accept)
        return found

    def snapshot(self) -> Path | None:
        """Flush history and write a snapshot now (its path, or None when nothing changed)."""
        return self.writer.snapshot().result()

    # ---- types -----------------------------------------------------------------------------

    def put_type(self, name: str, spec: dict) -> dict:
        """Declare or change a twin type; a change makes a new version, the same spec does not."""
        parsed = parse_type_spec(spec, name)
        spec_json = orjson.dumps(stored_spec(parsed)).decode()
        with self._define_lock:
            versions = self.store.type_versions(name)
            live = name in self.engine.states  # not a type deleted since
            if live and versions and orjson.loads(versions[-1][1]) == orjson.loads(spec_json):
                return {"name": name, "version": versions[-1][0], "changed": False}
            version = len(versions) + 1
            ctype = compile_type(parsed, version, resolve_model=self.models)
            with self.lock:
                check_aggregates(ctype, self.engine.types)
            self.writer.define(ctype, spec_json).result()
        return {"name": name, "version": version, "changed": True}

    def type_versions(self, name: str) -> list[tuple[int, str, int]]:
        """(version, spec JSON, created ms) of every version of a type, oldest first."""
        return self.store.type_versions(name)

    def compiled_type(self, name: str) -> CompiledType | None:
        """The current compiled version of a type (None when no twin type has that name)."""
        with self.lock:
            return self.engine.types.get(name)

    def compiled_version(self, name: str, version: int) -> CompiledType:
        """A type version compiled from its stored spec (cached; NotFound when there is none)."""
        key = (name, version)
        if key not in self._versions:
            for number, spec_json, _ in self.store.type_versions(name):
                if (name, number) not in self._versions:
                    spec = TwinTypeSpec.model_validate({**orjson.loads(spec_json), "name": name})
                    ctype = compile_type(spec, number, resolve_model=self._stored_models)
                    self._versions[(name, number)] = ctype
        if key not in self._versions:
            raise NotFound(f"type '{name}' has no version {version}", field="version")
        return self._versions[key]

    def layout(self, name: str, version: int) -> tuple[tuple[str, ...], frozenset[str]]:
        """The column names of a type version and which of them are derived values."""
        ctype = self.compiled_version(name, version)
        return ctype.columns, frozenset(ctype.derived_order)

    # ---- ingest ----------------------------------------------------------------------------

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
        return self.submit_normalized(normalized, atomic=atomic)

    def submit_normalized(self, normalized: Normalized, *, atomic: bool = False) -> Future:
        """Checked observations to the writer (answered at once when nothing is to be stored)."""
        if (atomic and normalized.rejected) or not normalized.batches:
            return done(IngestResult(rejected=normalized.rejected))
        return self.writer.ingest(normalized, atomic)

    def feed(self, entries: Iterable[JournalEntry]) -> dict:
        """Apply journal entries of another core (a range of its journal) here, in order: how a
        sandbox is fed. Types and observations keep their recorded meaning; twins get this
        core's own row ids."""
        types = observations = 0
        for entry in entries:
            if entry.kind == "type":
                self.put_type(entry.type, orjson.loads(entry.body)["spec"])
                types += 1
                continue
            if entry.kind in LIFECYCLE:
                body = orjson.loads(entry.body)
                body.pop("uid", None)  # the source engine's row id means nothing here
                self.writer.change(entry.kind, body).result()
                continue
            batch = decode_batch(entry.body)
            batch.uids = None  # row ids of the source engine mean nothing here
            normalized = Normalized(batches=[(batch, np.arange(len(batch)))])
            observations += self.writer.ingest(normalized, False).result().accepted
        return {"types": types, "observations": observations}

    # ---- twin and type lifecycle -----------------------------------------------------------

    def create_twin(
        self,
        twin: str,
        type_name: str,
        *,
        attributes: dict | None = None,
        parent: str | None = None,
    ) -> dict:
        """Create a twin before its first observation (Conflict when it exists)."""
        body = {"id": check_identifier(twin, "id"), "type": type_name, "create": True}
        return self._change("twin", body, attributes, parent)

    def update_twin(
        self, twin: str, *, attributes: dict | None = None, parent: str | None = None
    ) -> dict:
        """Set a twin's text attributes and/or its parent link (journaled)."""
        return self._change("twin", {"id": twin}, attributes, parent)

    def _change(self, kind: str, body: dict, attributes, parent) -> dict:
        if attributes is not None:
            if not isinstance(attributes, dict):
                raise InvalidInput(
                    "attributes must be an object of name -> string",
                    field="attributes",
                    fix='send "attributes": {"serial": "A-17"}',
                )
            body["attributes"] = attributes
        if parent is not None:
            body["parent"] = check_identifier(parent, "parent")
        return self.writer.change(kind, body).result()

    def delete_twin(self, twin: str, *, purge: bool = False) -> dict:
        """Remove a twin (a journaled tombstone); its history is kept unless `purge`. Its
        children lose their parent link; new telemetry for the id creates it anew."""
        return self.delete_twins([twin], purge=purge)[0]

    def delete_twins(self, twins: list[str], *, purge: bool = False) -> list[dict]:
        """`delete_twin` for several twins: one journal entry per type (what each did)."""
        found: dict[str, tuple[CompiledType, list[str], list[int]]] = {}
        with self.lock:
            for twin in dict.fromkeys(twins):
                st, row = self.engine.locate(twin)
                entry = found.setdefault(st.ctype.name, (st.ctype, [], []))
                entry[1].append(twin)
                entry[2].append(int(st.uid[row]))
        out = []
        for name, (ctype, ids, uids) in found.items():
            done = self.writer.change("remove", {"type": name, "ids": ids}).result()
            out.append(self._purged(done, uids, ctype) if purge else {**done, "purged": False})
        return out

    def delete_type(self, name: str, *, cascade: bool = False, purge: bool = False) -> dict:
        """Remove a type; Conflict while it has twins unless `cascade` removes them too
        (their history kept unless `purge`). Its stored versions stay, for the record."""
        with self.lock:
            ctype = self.engine.ctype(name)
            st = self.engine.states[name]
            uids = st.uid[: len(st)].tolist()
        done = self.writer.change("drop", {"type": name, "cascade": cascade}).result()
        return self._purged(done, uids, ctype) if purge else {**done, "purged": False}

    def _purged(self, done: dict, uids: list[int], ctype: CompiledType) -> dict:
        """Delete the stored history and rollups of removed twins (after flushing)."""
        self.writer.flusher.request().result()
        end = np.iinfo(np.int64).max
        rows = self.store.delete_history(uids, end)
        retention = ctype.spec.retention
        for bucket, _ in retention.levels() if retention else ():
            self.store.delete_rollups(uids, bucket, end // 2)
        return {**done, "purged": True, "history_chunks_deleted": rows}

    # ---- housekeeping ----------------------------------------------------------------------

    def stats(self) -> dict:
        entries, observations = self.store.journal_size()
        return {
            "twins": self.engine.twin_count(),
            "types": len(self.engine.states),
            "journal_entries": entries,
            "journal_observations": observations,
            "last_seq": self.writer.next_seq - 1,
            "snapshot_seq": self.writer.flusher.snapshot_seq,
            "history_buffered": self.history.rows,
        }

    def rebuild(self, progress=None) -> dict:
        """Rebuild all twin state from the journal alone (ignoring snapshots, except the base
        snapshot a compacted journal starts from), then snapshot it.

        History is not rewritten: it already holds what the journal produced.
        """
        started = time.perf_counter()
        with self.lock:
            engine, seq = compaction.base_engine(self.snapshot_dir, self.store, self._stored_models)
            last, n = replay(engine, self.store.journal(after=seq), progress=progress)
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


def done(result) -> Future:
    """A future that is already resolved with `result`."""
    future: Future = Future()
    future.set_result(result)
    return future
