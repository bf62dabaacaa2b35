"""The `compact` job: applies a type's `retention` (rollups computed from raw history, raw
history and rollups past their retention deleted) and, with the `journal_retention` setting,
compacts the journal. Types with a retention get a system schedule running it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from livetwin.errors import InvalidInput, NotFound
from livetwin.journal import compaction
from livetwin.store import rollup
from livetwin.store.buffer import Segment, chunk_rows
from livetwin.timefmt import format_duration, parse_duration

if TYPE_CHECKING:
    from livetwin.core import TwinCore
    from livetwin.query import Query
    from livetwin.schedule.functions import RunContext

COMPACT = "compact"
COMPACT_EVERY = "10m"
COMPACT_FUNCTION = {
    "kind": "builtin",
    "job": COMPACT,
    "concurrency": 1,
    "retries": 1,
    "backoff_s": 30.0,
    "description": "applies twin types' retention (rollups, deletes) and journal_retention",
}
ROWS_PER_WRITE = 64  # rollup rows written in one transaction
DAY = 86_400_000
MERGE_AFTER_MS = 3_600_000  # a day's raw chunks are merged once it ended this long ago


def compact_type(reader: Query, type_name: str, now: int) -> dict:
    """Merge raw history chunks per twin and day, bring a type's rollups up to the last
    complete bucket before `now` and delete what its retention no longer keeps. Buckets that
    late rows changed are recomputed from raw history while raw history still holds them."""
    store = reader.core.store
    ctype = reader.compiled_type(type_name)
    if ctype is None:
        raise NotFound(f"no twin type '{type_name}'", field="type", fix="check the type name")
    retention = ctype.spec.retention
    if retention is None:
        return {"type": type_name, "retention": None}
    with reader.core.lock:
        seq = reader.core.history.flushed_seq  # rows flushed later are `touched` next time
    uids = reader.selection(type_name)["uid"].tolist()
    state = rollup.progress(store, type_name)
    touched = store.touched(state.get("seq", 0))
    raw = retention.raw_ms()
    columns = ctype.columns
    out: dict[str, Any] = {"type": type_name, "rollups": {}, "merged_chunks": 0}
    for bucket, keep in retention.levels():
        # buckets whose raw rows were deleted by an earlier run are never recomputed
        floors = [f for f in (state.get("raw"), None if keep is None else now - keep) if f]
        floor = -(-max(floors) // bucket) * bucket if floors else None
        done = state.get(str(bucket))
        upto = now // bucket * bucket
        rows: list[tuple] = []
        written = 0
        for uid in uids:
            lo = _since(done, touched.get(uid))
            if lo is None:
                continue
            lo = lo // bucket * bucket if floor is None else max(lo // bucket * bucket, floor)
            if lo < upto:
                rows += _recompute(reader, type_name, columns, ctype.version, uid, bucket, lo, upto)
            if len(rows) >= ROWS_PER_WRITE:
                store.put_rollups(rows)
                written, rows = written + len(rows), []
        if rows:
            store.put_rollups(rows)
            written += len(rows)
        state[str(bucket)] = upto
        deleted = store.delete_rollups(uids, bucket, now - keep) if keep is not None else 0
        out["rollups"][format_duration(bucket)] = {"rows_written": written, "deleted": deleted}
    out["raw_deleted"] = 0
    if raw is not None:
        out["raw_deleted"] = store.delete_history(uids, now - raw)
        state["raw"] = now - raw
    # the raw history kept, of complete days: one chunk per twin and day (ingest stores one
    # per flush)
    day_end = (now - MERGE_AFTER_MS) // DAY * DAY
    for uid in uids:
        lo = _since(state.get("merged"), touched.get(uid))
        if lo is not None and raw is not None:
            lo = max(lo, now - raw)
        if lo is not None and lo < day_end:
            out["merged_chunks"] += _merge_days(store, uid, lo // DAY * DAY, day_end, seq)
    state["merged"] = day_end
    state["seq"] = seq
    rollup.save_progress(store, type_name, state, now)
    return out


def _since(done: int | None, changed: int | None) -> int | None:
    """Where a twin's work starts: where the previous run stopped, or earlier where rows
    flushed since then lie (None: nothing to do, the twin has no history)."""
    if done is None or changed is None:
        return done if changed is None else changed
    return min(done, changed)


def _merge_days(store, uid: int, lo: int, hi: int, max_seq: int) -> int:
    """Merge each day's raw history chunks of one twin in [lo, hi) (days lo..hi) into one;
    the number of chunks merged away."""
    days: dict[int, list] = {}
    for chunk in store.history(uid, lo, hi, max_seq):
        first, last = int(chunk.ts[0]), int(chunk.ts[-1])
        if first >= lo and last < hi and first // DAY == last // DAY:
            days.setdefault(first // DAY, []).append(chunk)
    old, rows = [], []
    for group in days.values():
        if len(group) > 1:
            old += [(uid, int(c.ts[0]), int(c.seqs.min())) for c in group]
            rows += chunk_rows(
                [
                    Segment("", c.version, np.full(len(c.ts), uid), c.ts, c.seqs, c.values)
                    for c in group
                ]
            )
    if old:
        store.replace_history(old, rows)
    return len(old) - len(rows)


def _recompute(reader, type_name, columns, version, uid, bucket, lo, hi) -> list[tuple]:
    """Rollup rows of one twin with the buckets in [lo, hi) recomputed from raw history."""
    span = bucket * rollup.ROLLUP_PERIOD
    ts, _, values = reader.history_rows(uid, type_name, list(columns), lo, hi)
    starts, stats = rollup.bucket_stats(ts, values, bucket)
    stored = {p: (v, d) for p, v, d in reader.core.store.rollups(uid, bucket, lo, hi)}
    rows = []
    for period in range(lo // span * span, hi, span):
        if period in stored:
            version_was, data = stored[period]
            have = reader.layout(type_name, version_was)[0]
            grid = rollup.relayout(rollup.decode(data), have, columns).copy()
        else:
            grid = rollup.empty_grid(len(columns))
        a, b = max(lo, period), min(hi, period + span)
        grid[:, :, (a - period) // bucket : (b - period) // bucket] = np.nan
        grid[0, :, (a - period) // bucket : (b - period) // bucket] = 0.0
        inside = (starts >= a) & (starts < b)
        grid[:, :, (starts[inside] - period) // bucket] = stats[:, :, inside]
        if period in stored or inside.any():
            rows.append((uid, bucket, period, version, rollup.encode(grid)))
    return rows


def journal_retention_ms(keep: str | None) -> int | None:
    """The `journal_retention` setting in ms (None: keep the whole journal); a clear error."""
    if keep is None:
        return None
    try:
        return parse_duration(keep)
    except ValueError as exc:
        raise InvalidInput(
            str(exc), field="journal_retention", fix="e.g. LIVETWIN_JOURNAL_RETENTION=90d"
        ) from None


def compact_journal(core: TwinCore, now: int) -> dict:
    """Journal compaction per the `journal_retention` setting (nothing when it is unset)."""
    keep = journal_retention_ms(core.settings.journal_retention)
    if keep is None:
        return {"journal_retention": None}
    return compaction.compact(core, keep, now)


def compact_job(
    apply_retention: Callable[[str, int], dict],
    journal: Callable[[int], dict],
    clock: Callable[[], int],
) -> Callable[[RunContext], dict]:
    """The built-in job `compact`: args {type} applies one type's retention
    (`apply_retention(type, now)`), {journal: true} compacts the journal (`journal(now)`). A
    single node passes its core's (`compact_type`, `compact_journal`), a cluster front end its
    shards' (each compacts its own)."""

    def run(ctx: RunContext) -> dict:
        now = clock()
        if ctx.args.get("journal"):
            result = journal(now)
            ctx.log(f"journal: {result}")
            return result
        type_name = ctx.args.get("type")
        if not isinstance(type_name, str):
            raise ValueError("compact needs args.type (a twin type) or args.journal: true")
        result = apply_retention(type_name, now)
        ctx.log(f"{type_name}: {result}")
        return result

    run.__name__ = run.__qualname__ = COMPACT
    return run


def retention_schedules(journal_retention: str | None) -> Callable[[Any], list[dict]]:
    """The system schedules of a type: a `compact` run every COMPACT_EVERY when it declares a
    retention, and one journal compaction when `journal_retention` is set (checked now)."""
    journal_retention_ms(journal_retention)

    def source(ctype) -> list[dict]:
        found = []
        if ctype.spec.retention is not None:
            found.append(
                {
                    "id": f"{COMPACT}.{ctype.name}",
                    "function": COMPACT,
                    "trigger": {"kind": "interval", "every": COMPACT_EVERY},
                    "args": {"type": ctype.name},
                    "description": f"retention of type {ctype.name}",
                }
            )
        if journal_retention is not None:
            found.append(
                {
                    "id": f"{COMPACT}.journal",
                    "function": COMPACT,
                    "trigger": {"kind": "interval", "every": COMPACT_EVERY},
                    "args": {"journal": True},
                    "description": f"journal compaction (journal_retention {journal_retention})",
                }
            )
        return found

    return source
