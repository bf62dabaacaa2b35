"""Journal compaction: entries older than `journal_retention` and covered by the newest snapshot
are deleted, after a *base snapshot* at the cut is written, so recovery, `rebuild` and
back-tests still start from the oldest kept point (the base) and replay what follows it.
"""

from __future__ import annotations

import time
from pathlib import Path

from livetwin.engine.engine import Engine
from livetwin.journal import snapshot
from livetwin.journal.replay import replay

BASE_PREFIX = "base-"  # base-<seq>.npz in the snapshot folder; only the newest is kept


def base_path(directory: Path, seq: int) -> Path:
    return directory / f"{BASE_PREFIX}{seq:012d}.npz"


def newest_base(directory: Path, store) -> tuple[int, bytes] | None:
    """(seq, npz bytes) of the newest base snapshot (a file, or the store's), or None."""
    found = sorted(directory.glob(f"{BASE_PREFIX}*.npz"))
    kept = store.base_snapshot()
    if found:
        seq = int(found[-1].stem[len(BASE_PREFIX) :])
        if kept is None or kept[0] <= seq:
            return seq, found[-1].read_bytes()
    return kept


def base_engine(directory: Path, store, models) -> tuple[Engine, int]:
    """A fresh engine at the start of the kept journal: the base snapshot, or empty at seq 0."""
    base = newest_base(directory, store)
    if base is None:
        return Engine(), 0
    return snapshot.load_bytes(base[1], models)


def compact(core, retention_ms: int, now: int | None = None) -> dict:
    """Cut the journal of `core` (a TwinCore) behind its newest snapshot, at the newest entry
    older than `retention_ms`; returns {upto, deleted, base_seq} (upto 0: nothing to cut)."""
    now = core.clock() if now is None else now
    newest = core.writer.flusher.snapshot_seq
    cutoff = now - retention_ms
    upto = 0
    for entry in core.store.journal(after=0):
        if entry.at >= cutoff or entry.seq > newest:
            break
        upto = entry.seq
    if upto == 0:
        return {"upto": 0, "deleted": 0, "base_seq": None}
    engine, seq = base_engine(core.snapshot_dir, core.store, core._stored_models)
    if upto <= seq:
        return {"upto": 0, "deleted": 0, "base_seq": seq}
    replay(engine, _until(core.store.journal(after=seq), upto), models=core._stored_models)
    data = snapshot.encode(*snapshot.capture(engine, upto))
    snapshot.write_atomic(base_path(core.snapshot_dir, upto), data)
    core.store.put_base_snapshot(upto, data, int(time.time() * 1000))
    for old in sorted(core.snapshot_dir.glob(f"{BASE_PREFIX}*.npz"))[:-1]:
        old.unlink(missing_ok=True)
    deleted = core.store.compact_journal(upto)
    return {"upto": upto, "deleted": deleted, "base_seq": upto}


def _until(entries, upto: int):
    for entry in entries:
        if entry.seq > upto:
            return
        yield entry
