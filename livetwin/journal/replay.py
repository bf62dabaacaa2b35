"""Replay: rebuild engine state from journal entries alone.

Consecutive observation entries of one type are merged into large batches, so replay runs in
big vectorised waves; per-twin order is unchanged, so the state is the same as when live.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import orjson

from livetwin.engine.engine import Engine
from livetwin.ingest.batch import Batch, decode_batch
from livetwin.spec.types import TwinTypeSpec, compile_type
from livetwin.store.base import JournalEntry

CHUNK = 65_536


def replay(
    engine: Engine,
    entries: Iterable[JournalEntry],
    *,
    progress: Callable[[int], None] | None = None,
    chunk: int = CHUNK,
) -> tuple[int, int]:
    """Apply journal entries to `engine`; returns (last seq, observations applied)."""
    pending: list[Batch] = []
    pending_n = 0
    last_seq = 0
    applied = 0

    def flush() -> None:
        nonlocal pending, pending_n, applied
        if pending:
            engine.apply(Batch.concat(pending))
            applied += pending_n
            if progress:
                progress(pending_n)
        pending, pending_n = [], 0

    for entry in entries:
        last_seq = entry.seq
        if entry.kind == "type":
            flush()
            body = orjson.loads(entry.body)
            spec = TwinTypeSpec.model_validate({**body["spec"], "name": entry.type})
            engine.define_type(compile_type(spec, body["version"]))
            continue
        batch = decode_batch(entry.body)
        if pending and (pending[0].type != batch.type or pending_n >= chunk):
            flush()
        pending.append(batch)
        pending_n += len(batch)
    flush()
    return last_seq, applied
