"""Group commit: one writer thread journals, applies and commits the work of many callers at once.

Callers submit validated work and wait on a future. The writer takes everything queued, checks
it against twin state, applies it to the engine, writes journal + history + keys in ONE
transaction (one fsync for the whole group) and only then resolves the futures and publishes
events. So an acknowledged observation is always durable, and the engine's order is the
journal's order.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from livetwin.engine.engine import Engine
from livetwin.engine.events import EventBus, StateChanged, TypeDefined
from livetwin.errors import Unavailable
from livetwin.ingest.batch import encode_batch
from livetwin.ingest.observations import Normalized, Rejection
from livetwin.spec.types import CompiledType
from livetwin.store.base import HistoryRows, JournalEntry, Store

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

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


_STOP = object()


class Writer:
    """The single writer thread. `lock` guards the engine against concurrent readers."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        lock: threading.RLock,
        bus: EventBus,
        clock: Callable[[], int],
        *,
        on_commit: Callable[[int, int], None] = lambda seq, n: None,
        on_failure: Callable[[BaseException], None] = lambda exc: None,
        max_group: int = 1024,
    ):
        self.store, self.engine, self.lock, self.bus, self.clock = store, engine, lock, bus, clock
        self.on_commit, self.on_failure = on_commit, on_failure
        self.max_group = max_group
        self.next_seq = store.last_seq() + 1
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="livetwin-writer", daemon=True)
        self._closed = False
        self._thread.start()

    def ingest(self, normalized: Normalized, atomic: bool) -> Future:
        return self._submit(_Ingest(normalized, atomic))

    def define(self, ctype: CompiledType, spec_json: str) -> Future:
        return self._submit(_Define(ctype, spec_json))

    def _submit(self, work):
        if self._closed:
            raise Unavailable("livetwin is shutting down", fix="retry against the new process")
        self._queue.put(work)
        return work.future

    def stop(self) -> None:
        """Finish all queued work, then stop the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < self.max_group:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in group
            work = [w for w in group if w is not _STOP]
            if work:
                self._process(work)
            if stop:
                return

    def _process(self, group: list) -> None:
        entries: list[JournalEntry] = []
        history: list[HistoryRows] = []
        keys: list[tuple[str, int]] = []
        types: list[tuple[str, int, str, int]] = []
        events: list = []
        results: list = []
        now = self.clock()
        seq = self.next_seq
        observations = 0
        try:
            known = self._known_keys(group)
            with self.lock:
                for work in group:
                    if isinstance(work, _Define):
                        self.engine.define_type(work.ctype)
                        body = b'{"version":%d,"spec":%s}' % (
                            work.ctype.version,
                            work.spec_json.encode(),
                        )
                        entries.append(JournalEntry(seq, now, "type", work.ctype.name, 0, body))
                        types.append((work.ctype.name, work.ctype.version, work.spec_json, now))
                        events.append(TypeDefined(seq, work.ctype))
                        results.append((work, seq))
                        seq += 1
                        continue
                    result = IngestResult(rejected=list(work.normalized.rejected))
                    planned = self._plan(work, known, result)
                    for batch, batch_keys in planned:
                        applied = self.engine.apply(batch)
                        entries.append(
                            JournalEntry(
                                seq, now, "obs", batch.type, len(batch), encode_batch(batch)
                            )
                        )
                        history.append(
                            HistoryRows(
                                seq, applied.version, applied.uids, applied.ts, applied.values
                            )
                        )
                        keys.extend((k, seq) for k in batch_keys)
                        events.append(StateChanged(seq, applied))
                        result.accepted += len(batch)
                        observations += len(batch)
                        seq += 1
                    results.append((work, result))
            self.store.commit(entries, history, keys, types)
        except BaseException as exc:  # storage failed: nothing of this group is acknowledged
            log.exception("commit failed; rebuilding state from the journal")
            error = Unavailable(
                f"storage failed, nothing was stored: {exc}",
                fix="check the disk and retry the request",
            )
            for work in group:
                work.future.set_exception(error)
            self.on_failure(exc)
            self.next_seq = self.store.last_seq() + 1
            return
        self.next_seq = seq
        for work, result in results:
            work.future.set_result(result)
        if self.bus.active:
            for event in events:
                self.bus.publish(event)
        self.on_commit(seq - 1, observations)

    def _known_keys(self, group: list) -> set[str]:
        wanted = [
            k
            for w in group
            if isinstance(w, _Ingest)
            for batch, _ in w.normalized.batches
            if batch.keys
            for k in batch.keys
            if k is not None
        ]
        return self.store.known_keys(wanted) if wanted else set()

    def _plan(self, work: _Ingest, known: set[str], result: IngestResult):
        """Batches to apply (duplicates and state problems removed) with their new keys."""
        planned = []
        failed = False
        new_keys: set[str] = set()
        pending: dict[str, str] = {}  # twins created by earlier batches of this request
        for batch, index in work.normalized.batches:
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
                    if key in known or key in new_keys:
                        keep[i] = False
                        result.duplicates += 1
                    else:
                        new_keys.add(key)
                        batch_keys.append(key)
            if keep.any():
                pending.update((t, batch.type) for t, k in zip(batch.twins, keep, strict=True) if k)
                planned.append(
                    (batch if keep.all() else batch.take(np.flatnonzero(keep)), batch_keys)
                )
        if work.atomic and (failed or result.rejected):
            result.duplicates = 0
            return []
        known |= new_keys  # a repeat later in this group is a duplicate too
        return planned
