"""The storage contract every backend implements (SQLite by default; PostgreSQL later).

One `commit` call is one transaction: journal entries and their idempotency keys become durable
together or not at all. History is written separately, in chunks, from the history buffer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from livetwin.store.buffer import Chunk


@dataclass
class JournalEntry:
    seq: int
    at: int  # wall-clock epoch ms when journaled
    kind: str  # "obs" (a Batch) or "type" (a type version)
    type: str
    count: int  # observations in the entry
    body: bytes


class Store(Protocol):
    def last_seq(self) -> int: ...

    def commit(
        self,
        entries: list[JournalEntry],
        keys: list[tuple[str, int]],
        types: list[tuple[str, int, str, int]],
    ) -> None:
        """Write journal entries, idempotency keys and type versions (name, version, spec, at)
        in one durable transaction."""

    def write_history(self, rows: list[tuple], flushed_seq: int) -> None:
        """Store history chunk rows (see `buffer.chunk_rows`) and record, in the same
        transaction, that all history up to `flushed_seq` is stored."""

    def history_seq(self) -> int:
        """The journal seq up to which history is stored (0 when none)."""

    def known_keys(self, keys: list[str]) -> set[str]:
        """Those of `keys` stored already. Keys are opaque here: the writer stores them scoped
        by twin (store/keys.py), and each backend migrates keys stored before in place."""

    def journal(self, after: int = 0) -> Iterator[JournalEntry]:
        """Journal entries with seq > after, in order."""

    def journal_size(self, after: int = 0) -> tuple[int, int]:
        """(entries, observations) after seq `after`."""

    def history(self, uid: int, start: int, end: int, max_seq: int) -> list[Chunk]:
        """Chunks of one twin that may hold rows with start <= ts < end, flushed up to max_seq."""

    def recent(self, uid: int, before: int, max_seq: int) -> Iterator[tuple[int, Chunk]]:
        """(ts_max, chunk) of one twin's chunks with rows older than `before`, newest first."""

    def type_versions(self, name: str) -> list[tuple[int, str, int]]:
        """(version, spec JSON, created ms) of every version of a type, oldest first."""

    def put_extractor(self, name: str, spec: str, at: int) -> None: ...

    def extractors(self) -> dict[str, str]: ...

    def delete_extractor(self, name: str) -> bool: ...

    def put_snapshot(self, seq: int, data: bytes, at: int) -> None:
        """Keep an engine snapshot (an npz) in the store; a store whose data directory holds
        the snapshot files already keeps nothing here."""

    def newest_snapshot(self) -> tuple[int, bytes] | None:
        """(seq, npz bytes) of the newest snapshot kept by `put_snapshot`, or None."""

    def put_config(self, kind: str, name: str, spec: str, at: int) -> None:
        """Store a named piece of configuration (JSON) of some kind, e.g. an MQTT subscription."""

    def delete_config(self, kind: str, name: str) -> bool: ...

    def configs(self, kind: str) -> dict[str, str]:
        """All configuration of one kind: name -> JSON."""

    def save_calibration(self, type_name: str, state: bytes, record: dict, at: int) -> int:
        """Store a type's filter state and record the run that produced it (one transaction);
        returns the run id. `record["started"]` is epoch ms or ISO 8601."""

    def add_calibration_run(self, type_name: str, record: dict) -> int:
        """Record a calibration run that changed no state (it failed or had no data)."""

    def calibration_state(self, type_name: str) -> bytes | None: ...

    def calibration_runs(self, type_name: str, limit: int) -> list[dict]:
        """Recent calibration runs of a type, newest first."""

    # ---- retention (store/rollup.py, journal/compaction.py) --------------------------------

    def touched(self, after_seq: int) -> dict[int, int]:
        """uid -> oldest ts_min of the history chunks stored with rows after seq `after_seq`."""

    def replace_history(self, old: list[tuple[int, int, int]], rows: list[tuple]) -> None:
        """In one transaction, delete the history chunks keyed (uid, ts_min, seq_min) in `old`
        and store `rows` (as `write_history`'s) instead: how chunks are merged."""

    def put_rollups(self, rows: list[tuple]) -> None:
        """Insert or replace rollup rows (uid, bucket ms, period start ms, version, data)."""

    def rollups(self, uid: int, bucket: int, start: int, end: int) -> list[tuple]:
        """(period, version, data) of one twin's rollup rows that overlap [start, end)."""

    def delete_history(self, uids: list[int], before: int) -> int:
        """Delete the history rows of `uids` older than `before` (chunks that straddle it are
        rewritten with their newer rows); the number of chunks deleted or rewritten."""

    def delete_rollups(self, uids: list[int], bucket: int, before: int) -> int:
        """Delete the rollup rows of `uids` and `bucket` whose buckets all end by `before`."""

    def compact_journal(self, upto: int) -> int:
        """Delete journal entries (and their idempotency keys) with seq <= `upto`."""

    def put_base_snapshot(self, seq: int, data: bytes, at: int) -> None:
        """Keep the snapshot a compacted journal starts from (a data directory keeps a file)."""

    def base_snapshot(self) -> tuple[int, bytes] | None: ...

    def close(self) -> None: ...
