"""The single writer: journals, applies and commits the work of many callers at once.

Callers submit validated work and wait on a future. The writer takes everything queued, checks
it against twin state, applies it to the engine, writes the journal entries and idempotency keys
in ONE transaction (one fsync for the whole group: group commit) and only then resolves the
futures and publishes events. So an acknowledged observation is always durable, and the
engine's order is the journal's order.

The writer also keeps what follows from the journal: it fills the history buffer and captures
snapshots; its `Flusher` stores both on another thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from livetwin.engine.batch import encode_batch
from livetwin.engine.engine import Engine
from livetwin.engine.events import EventBus, Notice, StateChanged, TypeDefined
from livetwin.errors import LivetwinError, Unavailable
from livetwin.ingest.observations import Normalized, Rejection
from livetwin.journal import snapshot
from livetwin.journal.flusher import Flusher
from livetwin.settings import Settings
from livetwin.spec.types import CompiledType
from livetwin.store.base import JournalEntry, Store
from livetwin.store.buffer import HistoryBuffer, Segment
from livetwin.store.keys import scoped_key

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def reindex(self, index: list[int]) -> None:
        """Renumber the rows this result names: position i of the ingested list becomes
        `index[i]` (e.g. the payload element an observation came from)."""
        for r in self.rejected:
            r.index = index[r.index] if r.index < len(index) else r.index

    def to_dict(self) -> dict:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [r.to_dict() for r in sorted(self.rejected, key=lambda r: r.index)],
        }


@dataclass
class _Ingest:
    normalized: Normalized
    atomic: bool
    future: Future = field(default_factory=Future)


@dataclass
class _Define:
    ctype: CompiledType
    spec_json: str
    future: Future = field(default_factory=Future)


@dataclass
class _Change:
    """A lifecycle change (journal kinds "twin", "remove", "drop", see `Engine.change`)."""

    kind: str
    body: dict
    future: Future = field(default_factory=Future)


@dataclass
class _Snapshot:
    force: bool = False
    future: Future = field(default_factory=Future)


_STOP = object()


class Writer:
    """The single writer thread. `lock` guards the engine and history buffer against readers."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        history: HistoryBuffer,
        lock: threading.RLock,
        bus: EventBus,
        clock: Callable[[], int],
        settings: Settings,
        snapshot_dir: Path,
        *,
        snapshot_seq: int = 0,
        on_failure: Callable[[BaseException], None] = lambda exc: None,
        max_group: int = 1024,
    ):
        self.store, self.engine, self.history = store, engine, history
        self.lock, self.bus, self.clock, self.settings = lock, bus, clock, settings
        self.on_failure = on_failure
        self.max_group = max_group
        self.next_seq = store.last_seq() + 1
        self._requested_seq = snapshot_seq  # the newest snapshot asked of the flusher
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()
        self.flusher = Flusher(
            store,
            lock,
            lambda: self.history,
            lambda: self.next_seq - 1,
            snapshot_dir,
            settings.history_flush_s,
            snapshot_seq,
        )
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="livetwin-writer", daemon=True)
        self._thread.start()

    # ---- submitting work -----------------------------------------------------------------

    def ingest(self, normalized: Normalized, atomic: bool) -> Future:
        return self._submit(_Ingest(normalized, atomic))

    def define(self, ctype: CompiledType, spec_json: str) -> Future:
        return self._submit(_Define(ctype, spec_json))

    def change(self, kind: str, body: dict) -> Future:
        """Journal and apply a lifecycle change; the future gives what it did (or the error
        that refused it, with nothing stored)."""
        return self._submit(_Change(kind, body))

    def snapshot(self, *, force: bool = False) -> Future:
        """Flush history and write a snapshot after the work queued so far (path or None)."""
        return self._submit(_Snapshot(force=force))

    def _submit(self, work):
        if self._closed:
            raise Unavailable("livetwin is shutting down", fix="retry against the new process")
        self._queue.put(work)
        return work.future

    @property
    def queue_depth(self) -> int:
        """Work items waiting for the writer thread."""
        return self._queue.qsize()

    @property
    def alive(self) -> bool:
        """Whether the writer takes work (not stopped, thread running)."""
        return not self._closed and self._thread.is_alive()

    def stop(self) -> None:
        """Finish all queued work, flush history, write a final snapshot, stop the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
            self.flusher.stop()

    # ---- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < self.max_group:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            work = [w for w in group if isinstance(w, _Ingest | _Define | _Change)]
            if work:
                self._process(work)
                self._maintain()
            for w in group:
                if isinstance(w, _Snapshot):
                    self._resolve(w.future, lambda w=w: self._snapshot(force=w.force))
            if _STOP in group:
                self._snapshot()
                return

    @staticmethod
    def _resolve(future: Future, action: Callable) -> None:
        try:
            future.set_result(action())
        except Exception as exc:
            future.set_exception(exc)

    def _process(self, group: list) -> None:
        entries: list[JournalEntry] = []
        keys: list[tuple[str, int]] = []
        types: list[tuple[str, int, str, int]] = []
        events: list = []
        results: list = []
        refused: list = []
        now = self.clock()
        seq = self.next_seq
        observations = 0
        try:
            known = self._known_keys(group)
            # Only this thread changes the engine, so it reads it without the lock and takes
            # the lock just while it changes state: readers wait at most one batch.
            for work in group:
                if isinstance(work, _Define):
                    ctype = work.ctype
                    with self.lock:
                        self.engine.define_type(ctype)
                    body = b'{"version":%d,"spec":%s}' % (ctype.version, work.spec_json.encode())
                    entries.append(JournalEntry(seq, now, "type", ctype.name, 0, body))
                    types.append((ctype.name, ctype.version, work.spec_json, now))
                    events.append(TypeDefined(seq, ctype))
                    results.append((work, seq))
                    seq += 1
                    continue
                if isinstance(work, _Change):
                    try:
                        with self.lock:
                            done = self.engine.change(work.kind, work.body, now)
                    except LivetwinError as exc:  # refused: nothing changed, nothing stored
                        refused.append((work, exc))
                        continue
                    body = orjson.dumps(work.body)
                    entries.append(JournalEntry(seq, now, work.kind, done["type"], 0, body))
                    for twin in done.get("removed", ()):  # one per twin: filters see its id
                        data = {"twin": twin, "type": done["type"], "seq": seq}
                        events.append(Notice("removed", f"{seq}.{twin}", data))
                    results.append((work, {**done, "seq": seq}))
                    seq += 1
                    continue
                result = IngestResult(rejected=list(work.normalized.rejected))
                for batch, batch_keys in self._plan(work, known, result):
                    with self.lock:
                        applied = self.engine.apply(batch)
                        for a in applied.all():  # the batch, then parents it updated
                            seqs = np.full(len(a.ts), seq, dtype=np.int64)
                            self.history.add(
                                Segment(a.type, a.version, a.uids, a.ts, seqs, a.values)
                            )
                    batch.uids = applied.uids  # replay finds rows by uid, without lookups
                    body = encode_batch(batch)
                    entries.append(JournalEntry(seq, now, "obs", batch.type, len(batch), body))
                    keys.extend((k, seq) for k in batch_keys)
                    events.extend(StateChanged(seq, a) for a in applied.all())
                    result.accepted += len(batch)
                    observations += len(batch)
                    seq += 1
                results.append((work, result))
            self.store.commit(entries, keys, types)
        except BaseException as exc:  # nothing of this group is acknowledged
            log.exception("applying or committing a group failed; rebuilding from the journal")
            error = Unavailable(
                f"nothing was stored: {exc}", fix="check the disk and the server log, then retry"
            )
            for work in group:
                _answer(work.future, error=error)
            self._resync(exc)
            return
        self.next_seq = seq
        self._since_snapshot += observations
        for work, result in results:
            _answer(work.future, result)
        for work, exc in refused:
            _answer(work.future, error=exc)
        if self.bus.active:
            for event in events:
                self.bus.publish(event)

    def _resync(self, exc: BaseException) -> None:
        """Rebuild from what is durable, waiting (with backoff) while the store is away."""
        delay = 0.5
        while True:
            try:
                self.next_seq = self.store.last_seq() + 1
                self.on_failure(exc)
                return
            except Exception as again:
                log.warning("the store is still unavailable (%s); retrying in %.1f s", again, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _known_keys(self, group: list) -> set[str]:
        """The stored keys (scoped by twin, `store/keys.py`) among the group's."""
        wanted = [
            scoped_key(twin, k)
            for w in group
            if isinstance(w, _Ingest)
            for batch, _ in w.normalized.batches
            if batch.keys
            for twin, k in zip(batch.twins, batch.keys, strict=True)
            if k is not None
        ]
        return self.store.known_keys(wanted) if wanted else set()

    def _plan(self, work: _Ingest, known: set[str], result: IngestResult):
        """Batches to apply (duplicates and state problems removed) with their new keys."""
        planned = []
        failed = False
        new_keys: set[str] = set()
        pending: dict[str, str] = {}  # twins created by earlier batches of this request
        last = len(work.normalized.batches) - 1
        for n, (batch, index) in enumerate(work.normalized.batches):
            keep = np.ones(len(batch), dtype=bool)
            for p in self.engine.check(batch, pending):
                keep[p.position] = False
                result.rejected.append(Rejection(int(index[p.position]), p.field, p.error, p.fix))
                failed = True
            batch_keys: list[str] = []
            if batch.keys:
                for i, key in enumerate(batch.keys):
                    if key is None or not keep[i]:
                        continue
                    key = scoped_key(batch.twins[i], key)
                    if key in known or key in new_keys:
                        keep[i] = False
                        result.duplicates += 1
                    else:
                        new_keys.add(key)
                        batch_keys.append(key)
            if keep.any():
                if n < last:
                    pending.update(
                        (t, batch.type) for t, k in zip(batch.twins, keep, strict=True) if k
                    )
                kept = batch if keep.all() else batch.take(np.flatnonzero(keep))
                planned.append((kept, batch_keys))
        if work.atomic and (failed or result.rejected):
            result.duplicates = 0
            return []
        known |= new_keys  # a repeat later in this group is a duplicate too
        return planned

    # ---- history and snapshots -------------------------------------------------------------

    def _maintain(self) -> None:
        """Ask for a history flush or a snapshot when their policies say so."""
        s = self.settings
        if self.history.rows >= 4 * s.history_flush_rows:
            self.flusher.request().result()  # back-pressure: the flusher is falling behind
        elif self.history.rows >= s.history_flush_rows:
            self.flusher.request()
        if self._since_snapshot >= s.snapshot_every or (
            self._since_snapshot and time.monotonic() - self._snapshot_at >= s.snapshot_interval_s
        ):
            self._snapshot(wait=False)

    def _snapshot(self, *, wait: bool = True, force: bool = False) -> Path | None:
        """Capture engine state now; the flusher flushes history, then writes the file."""
        seq = self.next_seq - 1
        if seq <= self._requested_seq and not force:
            return None
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()
        with self.lock:
            meta, arrays = snapshot.capture(self.engine, seq)
        self._requested_seq = seq
        future = self.flusher.snapshot(meta, arrays)
        future.add_done_callback(self._snapshot_done)
        return future.result() if wait else None

    def _snapshot_done(self, future: Future) -> None:
        if future.exception() is not None:  # try again at the next occasion
            self._requested_seq = self.flusher.snapshot_seq


def _answer(future: Future, result: object = None, *, error: BaseException | None = None) -> None:
    """Hand a caller its batch's outcome; a caller that stopped waiting (cancelled its future:
    a client that went away) is skipped, and the batch stays stored."""
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass
