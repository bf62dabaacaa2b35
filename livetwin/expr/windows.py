"""Window functions (avg, min, max, sum, count, rate, delta, ewma, time_in): per-twin state kept in
fixed-size arrays and updated for a whole wave of rows with NumPy, never with a loop over rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from livetwin.timefmt import DURATION_UNITS, parse_duration  # noqa: F401 (re-exported)

BUCKETS = 12
"""Time buckets per duration window: memory per twin is fixed, whatever the sampling rate."""


DURATION_FUNCTIONS = ("avg", "min", "max", "sum", "count", "rate", "delta", "time_in")
WINDOW_FUNCTIONS = (*DURATION_FUNCTIONS, "ewma")

# Bucket index / timestamp of a slot that holds nothing, and its opposite; far enough from the
# int64 limits that differences with real values never overflow.
_NEVER = -(2**62)
_LATEST = 2**62


@dataclass(frozen=True)
class WindowSpec:
    """One window-function call of an expression.

    `func` is the function name, `source` the call's text, `names` the names its first argument
    references, `duration_ms` its duration (None for ewma and for delta without a duration) and
    `alpha` the smoothing factor of ewma.
    """

    func: str
    source: str
    names: frozenset[str]
    duration_ms: int | None = None
    alpha: float | None = None
    buckets: int = BUCKETS

    def new_state(self, capacity: int) -> WindowState:
        """Empty state for `capacity` rows (twins)."""
        if self.func == "ewma":
            return EwmaState(self, capacity)
        if self.func == "time_in":
            return TimeInState(self, capacity)
        if self.duration_ms is None:
            return DeltaState(self, capacity)
        return BucketState(self, capacity)

    def state_from_arrays(self, arrays: Mapping[str, np.ndarray]) -> WindowState:
        """State restored from what `WindowState.to_arrays` returned."""
        return WindowState.from_arrays(self, arrays)


class _Field(NamedTuple):
    dtype: type
    fill: object
    per_bucket: bool  # shape (capacity, buckets) rather than (capacity,)


class WindowState:
    """Per-twin state of one window call for all twins of a type; row i belongs to twin i.

    Subclasses declare their arrays in `fields` and implement `update`.
    """

    fields: dict[str, _Field] = {}

    def __init__(self, spec: WindowSpec, capacity: int):
        self.spec = spec
        self.capacity = 0
        self.arrays: dict[str, np.ndarray] = {
            name: self._empty(f, 0) for name, f in self._fields().items()
        }
        self.grow(capacity)

    def _fields(self) -> dict[str, _Field]:
        return self.fields

    def _shape(self, f: _Field, capacity: int) -> tuple[int, ...]:
        return (capacity, self.spec.buckets) if f.per_bucket else (capacity,)

    def _empty(self, f: _Field, capacity: int) -> np.ndarray:
        return np.full(self._shape(f, capacity), f.fill, dtype=f.dtype)

    def grow(self, capacity: int) -> None:
        """Make room for `capacity` rows: existing rows keep their state, new rows are empty."""
        if capacity <= self.capacity:
            return
        for name, f in self._fields().items():
            bigger = self._empty(f, capacity)
            bigger[: self.capacity] = self.arrays[name]
            self.arrays[name] = bigger
        self.capacity = capacity

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Copies of the state arrays, for a snapshot (`np.savez`-able)."""
        return {name: array.copy() for name, array in self.arrays.items()}

    @classmethod
    def from_arrays(cls, spec: WindowSpec, arrays: Mapping[str, np.ndarray]) -> WindowState:
        """State of `spec` restored from `to_arrays`; ValueError if they do not belong to it."""
        state = spec.new_state(0)
        fields = state._fields()
        if set(arrays) != set(fields):
            raise ValueError(f"window {spec.source!r}: expected arrays {sorted(fields)}")
        capacity = len(arrays[next(iter(fields))])
        for name, f in fields.items():
            array = np.asarray(arrays[name], dtype=f.dtype)
            if array.shape != state._shape(f, capacity):
                raise ValueError(f"window {spec.source!r}: array {name!r} has the wrong shape")
            state.arrays[name] = array.copy()
        state.capacity = capacity
        return state

    def update(
        self, rows: np.ndarray, ts: np.ndarray, values: np.ndarray, feed: np.ndarray
    ) -> np.ndarray:
        """Add `values[feed]` as samples of `rows[feed]` at `ts[feed]`, then return the window's
        value for every row at its `ts`. `rows` must be distinct; all arrays have one entry a row.
        """
        raise NotImplementedError


class EwmaState(WindowState):
    """ewma(x, alpha): e = alpha * x + (1 - alpha) * e_previous; the first sample initialises e.

    A sample older than the newest one already taken is ignored. No sample yet: NaN.
    """

    fields = {"value": _Field(np.float64, np.nan, False), "ts": _Field(np.int64, _NEVER, False)}

    def update(self, rows, ts, values, feed):
        value, last_ts = self.arrays["value"], self.arrays["ts"]
        feed = feed & (ts >= last_ts[rows])
        at, x, alpha = rows[feed], values[feed], self.spec.alpha
        old = value[at]
        value[at] = np.where(np.isnan(old), x, alpha * x + (1 - alpha) * old)
        last_ts[at] = ts[feed]
        return value[rows]


class DeltaState(WindowState):
    """delta(x): the newest sample minus the one before it (NaN until there are two).

    A sample older than the newest one already taken is ignored.
    """

    fields = {
        "last": _Field(np.float64, np.nan, False),
        "previous": _Field(np.float64, np.nan, False),
        "ts": _Field(np.int64, _NEVER, False),
    }

    def update(self, rows, ts, values, feed):
        last, previous, last_ts = self.arrays["last"], self.arrays["previous"], self.arrays["ts"]
        feed = feed & (ts >= last_ts[rows])
        at = rows[feed]
        previous[at] = last[at]
        last[at] = values[feed]
        last_ts[at] = ts[feed]
        return last[rows] - previous[rows]


def _bucket_index(spec: WindowSpec, ts: np.ndarray) -> np.ndarray:
    """Index of the bucket holding `ts`: bucket b covers [b * dur / B, (b + 1) * dur / B)."""
    return ts * spec.buckets // spec.duration_ms


def _in_window(spec: WindowSpec, held: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """(M, B) mask of the slots whose bucket is in the window ending at `ts`: (b_now - B, b_now]."""
    age = np.subtract(_bucket_index(spec, ts)[:, None], held)
    return age.view(np.uint64) < spec.buckets  # a negative age is a huge unsigned one


def _masked_sum(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Row sums of the (M, B) `values` where `inside` (a bool mask, or its 0/1 floats)."""
    return np.einsum("ij,ij->i", values, inside.astype(np.float64, copy=False))


def _flat(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A 1-d view of `arrays[name]` (made contiguous first if it is not), written through."""
    if not arrays[name].flags.c_contiguous:
        arrays[name] = np.ascontiguousarray(arrays[name])
    return arrays[name].reshape(-1)


def _rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`array[rows]` (a copy): `take` gathers whole rows faster than fancy indexing."""
    return array.take(rows, axis=0)


class BucketState(WindowState):
    """avg, min, max, sum, count, rate and delta over a duration, kept in B time buckets a twin.

    A duration `dur` is split into B = `BUCKETS` buckets of dur / B (aligned to the epoch). Each
    twin has B slots; bucket b lives in slot b % B and a slot is reset when a newer bucket lands in
    it. At time t the window covers the buckets (b_now - B, b_now], where b_now holds t: it reaches
    back between (B - 1) / B * dur and dur, so precision is one bucket (dur / B).

    A sample whose bucket is older than the one its slot holds is ignored. A window without
    samples gives NaN (count and sum give 0). rate is (last - first) / seconds between the first
    and the last sample in the window, NaN when they share one timestamp (e.g. a single sample);
    delta(x, dur) is last - first, 0 for a single sample. First and last go by timestamp; samples
    with equal timestamps keep the earliest fed as first and the latest fed as last.
    """

    _FIELDS_OF = {
        "avg": ("sum", "count"),
        "sum": ("sum",),
        "count": ("count",),
        "min": ("min",),
        "max": ("max",),
        "rate": ("first_ts", "first", "last_ts", "last"),
        "delta": ("first_ts", "first", "last_ts", "last"),
    }
    _ALL_FIELDS = {
        "bucket": _Field(np.int64, _NEVER, True),
        "sum": _Field(np.float64, 0.0, True),
        "count": _Field(np.float64, 0.0, True),
        "min": _Field(np.float64, np.inf, True),
        "max": _Field(np.float64, -np.inf, True),
        "first_ts": _Field(np.int64, _NEVER, True),
        "first": _Field(np.float64, np.nan, True),
        "last_ts": _Field(np.int64, _NEVER, True),
        "last": _Field(np.float64, np.nan, True),
    }

    def _fields(self):
        names = ("bucket", *self._FIELDS_OF[self.spec.func])
        return {name: self._ALL_FIELDS[name] for name in names}

    def update(self, rows, ts, values, feed):
        self._add(rows[feed], ts[feed], values[feed])
        return self._read(rows, ts)

    def _add(self, rows: np.ndarray, ts: np.ndarray, x: np.ndarray) -> None:
        # (row, slot) as one index into the flattened (capacity * B) arrays: 1-d take and put
        a = {name: _flat(self.arrays, name) for name in self.arrays}
        bucket = _bucket_index(self.spec, ts)
        at = rows * self.spec.buckets + bucket % self.spec.buckets
        held = a["bucket"].take(at)
        keep = held <= bucket  # a sample older than its slot's bucket is ignored
        if not keep.all():
            at, ts, x, bucket, held = at[keep], ts[keep], x[keep], bucket[keep], held[keep]
        fresh = held < bucket  # the slot held an older bucket (or nothing): reset it
        a["bucket"][at] = bucket
        if "sum" in a:
            a["sum"][at] = np.where(fresh, x, a["sum"].take(at) + x)
        if "count" in a:
            a["count"][at] = np.where(fresh, 1.0, a["count"].take(at) + 1.0)
        if "min" in a:
            a["min"][at] = np.where(fresh, x, np.minimum(a["min"].take(at), x))
        if "max" in a:
            a["max"][at] = np.where(fresh, x, np.maximum(a["max"].take(at), x))
        if "first" in a:
            first = fresh | (ts < a["first_ts"].take(at))
            last = fresh | (ts >= a["last_ts"].take(at))
            for name, new, replace in (("first", x, first), ("first_ts", ts, first)):
                a[name][at] = np.where(replace, new, a[name].take(at))
            for name, new, replace in (("last", x, last), ("last_ts", ts, last)):
                a[name][at] = np.where(replace, new, a[name].take(at))

    def _read(self, rows: np.ndarray, ts: np.ndarray) -> np.ndarray:
        a, func = self.arrays, self.spec.func
        inside = _in_window(self.spec, _rows(a["bucket"], rows), ts)
        if func in ("count", "sum"):
            return _masked_sum(_rows(a[func], rows), inside)
        if func == "avg":
            weight = inside.astype(np.float64)
            with np.errstate(invalid="ignore"):
                return _masked_sum(_rows(a["sum"], rows), weight) / _masked_sum(
                    _rows(a["count"], rows), weight
                )
        if func in ("min", "max"):  # samples are finite, so an infinite result means no sample
            if func == "min":
                extreme = np.where(inside, _rows(a["min"], rows), np.inf).min(axis=1)
            else:
                extreme = np.where(inside, _rows(a["max"], rows), -np.inf).max(axis=1)
            return np.where(np.isinf(extreme), np.nan, extreme)
        return self._read_first_last(rows, inside)

    def _read_first_last(self, rows: np.ndarray, inside: np.ndarray) -> np.ndarray:
        a = self.arrays
        first_ts = np.where(inside, _rows(a["first_ts"], rows), _LATEST)
        last_ts = np.where(inside, _rows(a["last_ts"], rows), _NEVER)
        first_slot, last_slot = first_ts.argmin(axis=1), last_ts.argmax(axis=1)
        each = np.arange(len(rows))
        change = np.where(
            inside.any(axis=1), a["last"][rows, last_slot] - a["first"][rows, first_slot], np.nan
        )
        if self.spec.func == "delta":
            return change
        seconds = (last_ts[each, last_slot] - first_ts[each, first_slot]) / 1000.0
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(seconds > 0, change / seconds, np.nan)


class TimeInState(WindowState):
    """time_in(cond, dur): seconds within the window during which cond was true.

    cond holds from one evaluation to the next: an evaluation at t adds t - t_previous when the
    previous cond was true (non-zero). The time is split exactly over the B buckets of
    `BucketState`, so the window covers the true time since the start of bucket b_now - B + 1.
    A non-finite cond, or an evaluation older than the previous one, leaves the state unchanged.
    """

    fields = {
        "bucket": _Field(np.int64, _NEVER, True),
        "true_ms": _Field(np.float64, 0.0, True),
        "previous_ts": _Field(np.int64, _NEVER, False),
        "previous_true": _Field(np.bool_, False, False),
    }

    def update(self, rows, ts, values, feed):
        a = self.arrays
        feed = feed & (ts >= a["previous_ts"][rows])
        at, now = rows[feed], ts[feed]
        was_true = a["previous_true"][at]
        self._add_true_time(at[was_true], a["previous_ts"][at][was_true], now[was_true])
        a["previous_ts"][at] = now
        a["previous_true"][at] = values[feed] != 0
        inside = _in_window(self.spec, _rows(a["bucket"], rows), ts)
        return _masked_sum(_rows(a["true_ms"], rows), inside) / 1000.0

    def _add_true_time(self, rows: np.ndarray, start: np.ndarray, end: np.ndarray) -> None:
        """Add [start, end] to the buckets it overlaps; most intervals lie within one bucket."""
        first, last = _bucket_index(self.spec, start), _bucket_index(self.spec, end)
        one = first == last
        self._add_to_bucket(rows[one], last[one], (end - start)[one].astype(np.float64))
        self._spread(rows[~one], start[~one], end[~one])

    def _add_to_bucket(self, rows: np.ndarray, bucket: np.ndarray, ms: np.ndarray) -> None:
        at = (rows, bucket % self.spec.buckets)
        held, true_ms = self.arrays["bucket"], self.arrays["true_ms"]
        true_ms[at] = np.where(held[at] < bucket, ms, true_ms[at] + ms)
        held[at] = np.maximum(held[at], bucket)

    def _spread(self, rows: np.ndarray, start: np.ndarray, end: np.ndarray) -> None:
        """Add to each slot its bucket's overlap with [start, end], for the B buckets up to the one
        holding `end` (older ones are out of every later window)."""
        spec, a, n = self.spec, self.arrays, self.spec.buckets
        last = _bucket_index(spec, end)
        # The bucket each slot s gets: the newest one up to `last` with bucket % B == s.
        back = (last % n)[:, None] - np.arange(n)
        buckets = last[:, None] - np.where(back < 0, back + n, back)  # (M, B) in slot order
        # Exact integer arithmetic in units of 1/B ms: bucket b spans [b * dur, (b + 1) * dur).
        lo = buckets * spec.duration_ms
        hi = np.minimum(lo + spec.duration_ms, (end * n)[:, None])
        overlap = np.maximum(hi - np.maximum(lo, (start * n)[:, None]), 0) / n
        held, true_ms = a["bucket"][rows], a["true_ms"][rows]
        a["true_ms"][rows] = np.where(held < buckets, overlap, true_ms + overlap)
        a["bucket"][rows] = np.maximum(held, buckets)
