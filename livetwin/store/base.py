"""The storage contract every backend implements (SQLite by default; PostgreSQL later).

One `commit` call is one transaction: journal entries, their history rows and idempotency keys
become durable together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class JournalEntry:
    seq: int
    at: int  # wall-clock epoch ms when journaled
    kind: str  # "obs" (a Batch) or "type" (a type version)
    type: str
    count: int  # observations in the entry
    body: bytes


@dataclass
class HistoryRows:
    """History of one applied batch: one row per observation, values in the version's layout."""

    seq: int
    version: int
    uids: np.ndarray  # int64 (M,)
    ts: np.ndarray  # int64 (M,)
    values: np.ndarray  # float64 (M, n_columns)


class Store(Protocol):
    def last_seq(self) -> int: ...

    def commit(
        self,
        entries: list[JournalEntry],
        history: list[HistoryRows],
        keys: list[tuple[str, int]],
        types: list[tuple[str, int, str, int]],
    ) -> None:
        """Write everything in one durable transaction. `types`: (name, version, spec, at)."""

    def known_keys(self, keys: list[str]) -> set[str]: ...

    def journal(self, after: int = 0) -> Iterator[JournalEntry]:
        """Journal entries with seq > after, in order."""

    def journal_size(self, after: int = 0) -> tuple[int, int]:
        """(entries, observations) after seq `after`."""

    def history(self, uid: int, start: int, end: int, limit: int) -> list[tuple]:
        """Rows (ts, seq, version, values_blob) of one twin with start <= ts < end, oldest first."""

    def recent(self, uid: int, before: int, limit: int) -> list[tuple]:
        """Rows (ts, seq, version, values_blob) with ts < before, newest first."""

    def type_versions(self, name: str) -> list[tuple[int, str, int]]:
        """(version, spec JSON, created ms) of every version of a type, oldest first."""

    def put_extractor(self, name: str, spec: str, at: int) -> None: ...

    def extractors(self) -> dict[str, str]: ...

    def close(self) -> None: ...
