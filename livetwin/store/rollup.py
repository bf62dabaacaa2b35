"""Rollups: per-bucket count, min, max, avg and last of a twin's history, kept longer than raw.

A stored rollup row holds `ROLLUP_PERIOD` consecutive buckets of one twin and bucket size as a
dense grid (stats x columns x buckets, NaN where a bucket is empty), losslessly compressed
(`encode`); columns are those of the type version the row names. The `compact` job
(jobs/retention.py) computes them from raw history; history queries read the finest kept.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import orjson

from livetwin.store.history import aggregate

if TYPE_CHECKING:
    from livetwin.spec.retention import Retention

ROLLUP_PERIOD = 1440  # buckets per stored row: a day of 1m buckets, 60 days of 1h buckets
STATS = ("count", "min", "max", "avg", "last")
STATE_KIND = "rollup-state"  # config kind of each type's progress: {"seq": .., "to": {bucket: ms}}


def progress(store, type_name: str) -> dict[str, int]:
    """How far a type's rollups are computed: {"seq": history seq, "<bucket ms>": end ms of
    the last bucket computed, ...} ({} before the first `compact` run)."""
    found = store.configs(STATE_KIND).get(type_name)
    return orjson.loads(found) if found else {}


def save_progress(store, type_name: str, state: dict[str, int], at: int) -> None:
    store.put_config(STATE_KIND, type_name, orjson.dumps(state).decode(), at)


def bucket_stats(ts: np.ndarray, values: np.ndarray, bucket: int):
    """(bucket starts, stats (len(STATS), names, buckets)) of rows sorted by time; only buckets
    holding rows."""
    starts, count = aggregate(ts, values, bucket, "count")
    stats = np.empty((len(STATS), values.shape[0], len(starts)))
    stats[0] = count
    for k, agg in enumerate(STATS[1:], start=1):
        stats[k] = aggregate(ts, values, bucket, agg)[1]
    return starts, stats


def encode(grid: np.ndarray) -> bytes:
    """A grid as compressed bytes, losslessly: min, max and last are stored XOR the average's
    bits (zero where a bucket holds one row), then bytes are shuffled (byte k of every number
    together) so zlib finds the repeats."""
    bits = np.ascontiguousarray(grid, dtype="<f8").view("<u8").copy()
    bits[1:3] ^= bits[3]
    bits[4] ^= bits[3]
    shuffled = bits.reshape(-1).view(np.uint8).reshape(-1, 8).T
    return zlib.compress(np.ascontiguousarray(shuffled).tobytes(), 6)


def decode(data: bytes) -> np.ndarray:
    raw = np.frombuffer(zlib.decompress(data), dtype=np.uint8)
    bits = (
        np.ascontiguousarray(raw.reshape(8, -1).T)
        .view("<u8")
        .reshape(len(STATS), -1, ROLLUP_PERIOD)
    )
    bits = bits.copy()
    bits[1:3] ^= bits[3]
    bits[4] ^= bits[3]
    return bits.view("<f8")


def empty_grid(columns: int) -> np.ndarray:
    grid = np.full((len(STATS), columns, ROLLUP_PERIOD), np.nan)
    grid[0] = 0.0
    return grid


def relayout(grid: np.ndarray, have: Sequence[str], want: Sequence[str]) -> np.ndarray:
    """A grid in the column layout `have` moved to layout `want` (empty where a name is new)."""
    if tuple(have) == tuple(want):
        return grid
    out = empty_grid(len(want))
    for k, name in enumerate(want):
        if name in have:
            out[:, k] = grid[:, list(have).index(name)]
    return out


def choose(retention: Retention | None, start: int, now: int, every: int | None = None):
    """The resolution a range starting at `start` is read at: None for raw history while raw
    history still reaches back to `start`, else the finest rollup kept that far (the
    longest-kept one when none is). Asked for buckets of `every`, the coarsest kept rollup
    whose bucket divides `every` is read instead: the same answer from fewer rows."""
    if retention is None:
        return None
    raw = retention.raw_ms()
    levels = retention.levels()
    if raw is None or start >= now - raw or not levels:
        return None
    kept = [bucket for bucket, keep in levels if keep is None or start >= now - keep]
    if not kept:
        return levels[-1][0]
    dividing = [bucket for bucket in kept if every is not None and every % bucket == 0]
    return dividing[-1] if dividing else kept[0]


def read(
    rows: list[tuple],
    columns_of: Callable[[int], Sequence[str]],
    names: Sequence[str],
    bucket: int,
    start: int,
    end: int,
):
    """Stored rollup rows (period, version, data) as (bucket starts, stats (STATS, names, n))
    for the non-empty buckets with start <= bucket start < end."""
    starts, blocks = [], []
    for period, version, data in rows:
        grid = relayout(decode(data), columns_of(version), names)
        at = period + bucket * np.arange(ROLLUP_PERIOD, dtype=np.int64)
        keep = (grid[0].sum(axis=0) > 0) & (at >= start) & (at < end)
        starts.append(at[keep])
        blocks.append(grid[:, :, keep])
    if not starts:
        return np.zeros(0, dtype=np.int64), np.zeros((len(STATS), len(names), 0))
    return np.concatenate(starts), np.concatenate(blocks, axis=2)


def combine(bucket_ts: np.ndarray, stats: np.ndarray, every: int, agg: str):
    """Rollup stats re-aggregated to buckets of `every` ms (a multiple of theirs) as one
    aggregate: (bucket starts, values (names, n))."""
    count, low, high, mean, last = stats
    if agg == "count":
        return aggregate(bucket_ts, count, every, "sum")
    if agg in ("min", "max", "last"):
        return aggregate(bucket_ts, {"min": low, "max": high, "last": last}[agg], every, agg)
    starts, sums = aggregate(bucket_ts, np.where(count > 0, mean * count, 0.0), every, "sum")
    if agg == "sum":
        return starts, sums
    _, counts = aggregate(bucket_ts, count, every, "sum")
    with np.errstate(invalid="ignore", divide="ignore"):
        return starts, np.where(counts > 0, sums / counts, np.nan)
