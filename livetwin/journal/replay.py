"""Replay: rebuild engine state (and unflushed history) from journal entries alone.

Consecutive observation entries of one type are merged into large batches, so replay runs in
big vectorised waves; per-twin order is unchanged, so the state is the same as when live.
(Where history is rebuilt, entries whose type feeds parents' aggregates are applied one by one,
so the parents' history rows are those written live.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import orjson

from livetwin.engine.batch import Batch, decode_batch
from livetwin.engine.engine import LIFECYCLE, Engine
from livetwin.models.base import resolve_model
from livetwin.spec.types import CompiledType, TwinTypeSpec, compile_type
from livetwin.store.base import JournalEntry
from livetwin.store.buffer import HistoryBuffer, Segment

CHUNK = 65_536


def replay(
    engine: Engine,
    entries: Iterable[JournalEntry],
    *,
    history: HistoryBuffer | None = None,
    progress: Callable[[int], None] | None = None,
    chunk: int = CHUNK,
    models: Callable = resolve_model,
) -> tuple[int, int]:
    """Apply journal entries to `engine`; returns (last seq, observations applied). Types'
    model references are resolved with `models` (a core passes its `ModelRefs`).

    With `history`, the rows of entries after `history.flushed_seq` (history not yet stored)
    are added to it, as they were when live.
    """
    pending: list[tuple[int, Batch]] = []
    pending_n = 0
    last_seq = 0
    applied_n = 0
    stored_upto = history.flushed_seq if history is not None else None

    def flush() -> None:
        nonlocal pending, pending_n, applied_n
        if not pending:
            return
        rebuild_history = stored_upto is not None and pending[0][0] > stored_upto
        applied = engine.apply(Batch.concat([b for _, b in pending]), record=rebuild_history)
        if rebuild_history:
            seqs = np.concatenate([np.full(len(b), s, dtype=np.int64) for s, b in pending])
            history.add(
                Segment(
                    applied.type, applied.version, applied.uids, applied.ts, seqs, applied.values
                )
            )
            for a in applied.parents:  # one entry (not merged): its parents' updates
                seq = np.full(len(a.ts), pending[0][0], dtype=np.int64)
                history.add(Segment(a.type, a.version, a.uids, a.ts, seq, a.values))
        applied_n += pending_n
        if progress:
            progress(pending_n)
        pending, pending_n = [], 0

    for entry in entries:
        last_seq = entry.seq
        if entry.kind == "type":
            flush()
            engine.define_type(compile_entry(entry, models))
            continue
        if entry.kind in LIFECYCLE:
            flush()
            engine.change(entry.kind, orjson.loads(entry.body), entry.at)
            continue
        batch = decode_batch(entry.body)
        crosses = stored_upto is not None and pending and pending[-1][0] <= stored_upto < entry.seq
        # history rebuilt for a batch that updates parents gets their rows once per entry, as live
        alone = (
            pending
            and stored_upto is not None
            and entry.seq > stored_upto
            and engine.aggregates.feeds(batch.type)
        )
        if pending and (pending[0][1].type != batch.type or pending_n >= chunk or crosses or alone):
            flush()
        pending.append((entry.seq, batch))
        pending_n += len(batch)
    flush()
    return last_seq, applied_n


def compile_entry(entry: JournalEntry, models: Callable = resolve_model) -> CompiledType:
    """The type version a journal entry of kind "type" declares, compiled."""
    body = orjson.loads(entry.body)
    spec = TwinTypeSpec.model_validate({**body["spec"], "name": entry.type})
    return compile_type(spec, body["version"], resolve_model=models)
