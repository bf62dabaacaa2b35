"""The history buffer: recent history rows kept in memory and flushed to the store in chunks.

History is a view of the journal (inputs as journaled, derived values as the engine computed
them), so it need not be written in the ingest transaction. Rows gather here and are flushed
as one chunk per twin, which makes a flush cost one store row per twin instead of one per
observation. Rows not yet flushed are rebuilt from the journal after a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Segment:
    """History rows of one applied batch (one type version)."""

    version: int
    uids: np.ndarray  # int64 (M,)
    ts: np.ndarray  # int64 (M,)
    seqs: np.ndarray  # int64 (M,)
    values: np.ndarray  # float64 (M, n_columns)


@dataclass
class Chunk:
    """History rows of one twin under one type version, oldest first, as one store row."""

    uid: int
    version: int
    ts: np.ndarray
    seqs: np.ndarray
    values: np.ndarray


class HistoryBuffer:
    """Segments appended by the single writer thread; read under the platform lock."""

    def __init__(self, flushed_seq: int = 0):
        self.segments: list[Segment] = []
        self.rows = 0
        self.flushed_seq = flushed_seq  # every row with seq <= this is in the store

    def add(self, segment: Segment) -> None:
        self.segments.append(segment)
        self.rows += len(segment.ts)

    def rows_of(self, uid: int) -> list[Segment]:
        """The buffered rows of one twin, per segment."""
        out = []
        for s in self.segments:
            mask = s.uids == uid
            if mask.any():
                out.append(
                    Segment(s.version, s.uids[mask], s.ts[mask], s.seqs[mask], s.values[mask])
                )
        return out

    def chunks(self, segments: list[Segment]) -> list[Chunk]:
        """The rows of `segments` as one chunk per (twin, version), each sorted by (ts, seq)."""
        by_version: dict[int, list[Segment]] = {}
        for s in segments:
            by_version.setdefault(s.version, []).append(s)
        out: list[Chunk] = []
        for version, parts in by_version.items():
            uids = np.concatenate([p.uids for p in parts])
            ts = np.concatenate([p.ts for p in parts])
            seqs = np.concatenate([p.seqs for p in parts])
            values = np.concatenate([p.values for p in parts])
            order = np.lexsort((seqs, ts, uids))
            uids, ts, seqs, values = uids[order], ts[order], seqs[order], values[order]
            starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]])
            ends = np.r_[starts[1:], len(uids)]
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                out.append(Chunk(int(uids[a]), version, ts[a:b], seqs[a:b], values[a:b]))
        return out

    def drop(self, segments: list[Segment], flushed_seq: int) -> None:
        """Forget segments that are now in the store."""
        gone = {id(s) for s in segments}
        self.segments = [s for s in self.segments if id(s) not in gone]
        self.rows = sum(len(s.ts) for s in self.segments)
        self.flushed_seq = flushed_seq


def encode_chunk(c: Chunk) -> tuple:
    """A chunk as a row: (uid, ts_min, ts_max, seq_min, seq_max, version, n, blobs...)."""
    return (
        c.uid,
        int(c.ts[0]),
        int(c.ts[-1]),
        int(c.seqs.min()),
        int(c.seqs.max()),
        c.version,
        len(c.ts),
        np.ascontiguousarray(c.ts, dtype="<i8").tobytes(),
        np.ascontiguousarray(c.seqs, dtype="<i8").tobytes(),
        np.ascontiguousarray(c.values, dtype="<f8").tobytes(),
    )


def decode_chunk(uid: int, version: int, n: int, ts: bytes, seqs: bytes, vals: bytes) -> Chunk:
    return Chunk(
        uid,
        version,
        np.frombuffer(ts, dtype="<i8").astype(np.int64),
        np.frombuffer(seqs, dtype="<i8").astype(np.int64),
        np.frombuffer(vals, dtype="<f8").reshape(n, -1),
    )
