"""Time-series queries over stored history rows: decode, select names, bucket and aggregate.

Rows come as chunks from the store and segments from the history buffer; their values are in the
column layout of the type version that wrote them, so a query spans type versions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from livetwin.errors import InvalidInput
from livetwin.store.buffer import Chunk, Segment

AGGREGATES = ("avg", "min", "max", "last", "count", "sum")
AUTO = "auto"  # per name: `last` for sparse and step signals, `avg` with min/max for dense ones
STEADY_SHARE = 0.8  # a signal constant within this share of its multi-sample buckets is a step


def assemble(
    parts: Sequence[Chunk | Segment],
    names: Sequence[str],
    columns_of: Callable[[int], tuple[str, ...]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Timestamps, seqs and values (len(names), n) of history parts, sorted by (ts, seq).

    Each part is in the column layout of its type version; NaN where a name is absent.
    """
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros((len(names), 0))
    ts = np.concatenate([p.ts for p in parts])
    seqs = np.concatenate([p.seqs for p in parts])
    blocks = []
    for p in parts:
        columns = columns_of(p.version)
        block = np.full((len(names), len(p.ts)), np.nan)
        for k, name in enumerate(names):
            if name in columns:
                block[k] = p.values[:, columns.index(name)]
        blocks.append(block)
    values = np.concatenate(blocks, axis=1)
    order = np.lexsort((seqs, ts))
    return ts[order], seqs[order], values[:, order]


def aggregate(ts: np.ndarray, values: np.ndarray, every: int, agg: str):
    """Values per time bucket of `every` ms; only buckets holding rows are returned."""
    if agg not in AGGREGATES:
        raise InvalidInput(
            f"unknown aggregate '{agg}'",
            field="agg",
            fix=f"use one of {', '.join(AGGREGATES)}, {AUTO}",
        )
    if len(ts) == 0:
        return ts, values
    buckets = ts // every
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
    bucket_ts = buckets[starts] * every
    valid = ~np.isnan(values)
    counts = np.add.reduceat(valid, starts, axis=1).astype(np.float64)
    empty = counts == 0
    if agg == "count":
        return bucket_ts, counts
    if agg in ("avg", "sum"):
        sums = np.add.reduceat(np.where(valid, values, 0.0), starts, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            result = sums if agg == "sum" else sums / counts
    elif agg == "min":
        result = np.minimum.reduceat(np.where(valid, values, np.inf), starts, axis=1)
    elif agg == "max":
        result = np.maximum.reduceat(np.where(valid, values, -np.inf), starts, axis=1)
    else:  # last: the newest non-NaN value of each bucket
        position = np.where(valid, np.arange(values.shape[1]), -1)
        last = np.maximum.reduceat(position, starts, axis=1)
        result = np.take_along_axis(values, np.maximum(last, 0), axis=1)
    if agg != "sum":
        result = np.where(empty, np.nan, result)
    return bucket_ts, result


def auto_aggregate(ts: np.ndarray, values: np.ndarray, every: int):
    """Buckets of `every` ms with an aggregate chosen per name, so nothing drawn is invented:
    a name with at most one sample per bucket, or one that holds its level inside buckets (a
    step signal), gets `last`; a dense one gets `avg` with its `min`/`max` envelope.
    Returns (bucket ts, values (names, buckets), [agg per name], min, max)."""
    bucket_ts, last = aggregate(ts, values, every, "last")
    _, counts = aggregate(ts, values, every, "count")
    _, low = aggregate(ts, values, every, "min")
    _, high = aggregate(ts, values, every, "max")
    _, mean = aggregate(ts, values, every, "avg")
    chosen = []
    for k in range(values.shape[0]):
        multi = counts[k] > 1
        steady = low[k][multi] == high[k][multi]
        chosen.append("last" if not multi.any() or steady.mean() >= STEADY_SHARE else "avg")
    dense = np.array([a == "avg" for a in chosen], dtype=bool)[:, None]
    return bucket_ts, np.where(dense, mean, last), chosen, low, high
