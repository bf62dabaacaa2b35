"""The history buffer: recent history rows kept in memory and flushed to the store in chunks.

History is a view of the journal (inputs as journaled, derived values as the engine computed
them), so it need not be written in the ingest transaction. Rows gather here and are flushed
as one chunk per twin, which makes a flush cost one store row per twin instead of one per
observation. Rows not yet flushed are rebuilt from the journal after a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat

import numpy as np


@dataclass
class Segment:
    """History rows of one applied batch (one type version)."""

    type: str
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
                    Segment(
                        s.type, s.version, s.uids[mask], s.ts[mask], s.seqs[mask], s.values[mask]
                    )
                )
        return out

    def drop(self, segments: list[Segment], flushed_seq: int) -> None:
        """Forget segments that are now in the store."""
        gone = {id(s) for s in segments}
        self.segments = [s for s in self.segments if id(s) not in gone]
        self.rows = sum(len(s.ts) for s in self.segments)
        self.flushed_seq = flushed_seq


def chunk_rows(segments: list[Segment]) -> list[tuple]:
    """Segments as store rows, one per (twin, version), rows sorted by (ts, seq) inside:
    (uid, ts_min, ts_max, seq_min, seq_max, version, n, ts_blob, seqs_blob, values_blob)."""
    by_layout: dict[tuple[str, int], list[Segment]] = {}
    for s in segments:
        by_layout.setdefault((s.type, s.version), []).append(s)
    out: list[tuple] = []
    for (_, version), parts in by_layout.items():
        uids = np.concatenate([p.uids for p in parts])
        order = np.lexsort(
            (np.concatenate([p.seqs for p in parts]), np.concatenate([p.ts for p in parts]), uids)
        )
        uids = uids[order]
        ts = np.concatenate([p.ts for p in parts]).astype("<i8")[order]
        seqs = np.concatenate([p.seqs for p in parts]).astype("<i8")[order]
        values = np.concatenate([p.values for p in parts]).astype("<f8")[order]
        starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]])
        ends = np.r_[starts[1:], len(uids)]
        ts_bytes, seq_bytes, value_bytes = ts.tobytes(), seqs.tobytes(), values.tobytes()
        width = values.shape[1] * 8
        spans = list(zip(starts.tolist(), ends.tolist(), strict=True))
        out.extend(
            zip(
                uids[starts].tolist(),
                ts[starts].tolist(),
                ts[ends - 1].tolist(),
                np.minimum.reduceat(seqs, starts).tolist(),
                np.maximum.reduceat(seqs, starts).tolist(),
                repeat(version),
                (ends - starts).tolist(),
                [ts_bytes[a * 8 : b * 8] for a, b in spans],
                [seq_bytes[a * 8 : b * 8] for a, b in spans],
                [value_bytes[a * width : b * width] for a, b in spans],
                strict=False,
            )
        )
    return out


def decode_chunk(uid: int, version: int, n: int, ts: bytes, seqs: bytes, vals: bytes) -> Chunk:
    return Chunk(
        uid,
        version,
        np.frombuffer(ts, dtype="<i8").astype(np.int64),
        np.frombuffer(seqs, dtype="<i8").astype(np.int64),
        np.frombuffer(vals, dtype="<f8").reshape(n, -1),
    )


def trimmed(chunk: Chunk, before: int) -> list[tuple]:
    """The store row (as `chunk_rows`) of a chunk's rows with ts >= `before`; [] when none."""
    keep = chunk.ts >= before
    if not keep.any():
        return []
    uids = np.full(int(keep.sum()), chunk.uid, dtype=np.int64)
    part = Segment("", chunk.version, uids, chunk.ts[keep], chunk.seqs[keep], chunk.values[keep])
    return chunk_rows([part])
