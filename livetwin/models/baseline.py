"""Seasonal baselines (the TUM IoT course's model): mean, std and quantiles of a quantity per
weekday x hour-of-day in a time zone, fitted from history with NumPy; activity baselines of
visits, visit durations and inactivity built on them, and the "no activity for too long" rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import orjson

from livetwin.errors import InvalidInput
from livetwin.timefmt import format_ts, parse_ts

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
CELLS = 7 * 24
QUANTILES = (0.5, 0.9, 0.99)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
KIND = "seasonal-baseline"
ARTIFACT = "baseline.json"  # the registry artifact holding `to_bytes()`
FORMAT = 1
_MAX_PREDICT = 100_000


# ---- local time, vectorised -------------------------------------------------------------------


def zone(tz: str) -> ZoneInfo:
    """The IANA time zone `tz` (InvalidInput when unknown)."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidInput(
            f"unknown time zone {tz!r}",
            field="tz",
            fix="use an IANA name such as Europe/Berlin or UTC",
        ) from None


def utc_offsets_ms(ts_ms: np.ndarray, tz: str) -> np.ndarray:
    """The UTC offset (ms) of `tz` at each timestamp.

    The zone is asked every 6 hours across the span and each change is located to the second by
    bisection, so the cost grows with the span in days, not with the number of timestamps.
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    info = zone(tz)
    if ts.size == 0:
        return np.zeros(0, dtype=np.int64)
    step = 6 * HOUR_MS
    lo, hi = int(ts.min()), int(ts.max())
    grid = list(range(lo - lo % step, hi + step, step))
    offsets = [_offset_ms(info, t) for t in grid]
    starts, values = [grid[0]], [offsets[0]]
    for i in range(len(grid) - 1):
        if offsets[i + 1] != offsets[i]:
            a, b = grid[i] // 1000, grid[i + 1] // 1000  # offset(a) is old, offset(b) is new
            while b - a > 1:
                mid = (a + b) // 2
                if _offset_ms(info, mid * 1000) == offsets[i]:
                    a = mid
                else:
                    b = mid
            starts.append(b * 1000)
            values.append(offsets[i + 1])
    index = np.searchsorted(np.asarray(starts, dtype=np.int64), ts, side="right") - 1
    return np.asarray(values, dtype=np.int64)[index]


def _offset_ms(info: ZoneInfo, ms: int) -> int:
    delta = datetime.fromtimestamp(ms / 1000, info).utcoffset()
    return int(delta.total_seconds() * 1000) if delta is not None else 0


def week_cells(ts_ms: np.ndarray, tz: str) -> np.ndarray:
    """Cell index `weekday * 24 + hour` (Monday = 0) of each timestamp in local time."""
    ts = np.asarray(ts_ms, dtype=np.int64)
    local = ts + utc_offsets_ms(ts, tz)
    weekday = (local // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday
    return (weekday * 24 + (local // HOUR_MS) % 24).astype(np.int64)


# ---- the seasonal baseline --------------------------------------------------------------------


@dataclass(eq=False)
class SeasonalBaseline:
    """Statistics of one quantity per weekday x hour cell; arrays are shaped (7, 24).

    `quantiles` holds one (7, 24) array per level in `levels`. A cell without samples holds NaN;
    `std` needs two samples.
    """

    tz: str
    unit: str
    start_ms: int
    end_ms: int
    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    levels: tuple[float, ...]
    quantiles: np.ndarray  # (len(levels), 7, 24)

    @property
    def samples(self) -> int:
        return int(self.count.sum())

    def quantile(self, level: float) -> np.ndarray:
        """The (7, 24) array of one fitted quantile level."""
        for i, have in enumerate(self.levels):
            if abs(have - level) < 1e-9:
                return self.quantiles[i]
        raise InvalidInput(
            f"quantile {level} was not fitted",
            field="quantile",
            fix=f"use one of {', '.join(map(str, self.levels))} or refit with it",
        )

    def predict(self, ts_ms: Any) -> dict[str, np.ndarray]:
        """Cell statistics at each timestamp: mean, std, count and p50/p90/p99 (per level)."""
        cell = week_cells(np.atleast_1d(np.asarray(ts_ms, dtype=np.int64)), self.tz)
        out = {
            "mean": self.mean.ravel()[cell],
            "std": self.std.ravel()[cell],
            "count": self.count.ravel()[cell],
        }
        for level, q in zip(self.levels, self.quantiles, strict=True):
            out[_level_name(level)] = q.ravel()[cell]
        return out

    def to_dict(self) -> dict:
        """A JSON-able form (NaN becomes null)."""
        return {
            "tz": self.tz,
            "unit": self.unit,
            "start": self.start_ms,
            "end": self.end_ms,
            "samples": self.samples,
            "levels": list(self.levels),
            "count": self.count.tolist(),
            "mean": _json_grid(self.mean),
            "std": _json_grid(self.std),
            "quantiles": {
                _level_name(lv): _json_grid(q)
                for lv, q in zip(self.levels, self.quantiles, strict=True)
            },
        }

    @classmethod
    def from_dict(cls, body: Mapping) -> SeasonalBaseline:
        try:
            levels = tuple(float(v) for v in body["levels"])
            return cls(
                tz=str(body["tz"]),
                unit=str(body.get("unit", "")),
                start_ms=int(body["start"]),
                end_ms=int(body["end"]),
                count=_grid(body["count"], np.int64),
                mean=_grid(body["mean"]),
                std=_grid(body["std"]),
                levels=levels,
                quantiles=np.stack([_grid(body["quantiles"][_level_name(lv)]) for lv in levels]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(
                f"not a seasonal baseline: {exc!r}"[:200],
                field="artifact",
                fix="load an artifact written by SeasonalBaseline.to_bytes",
            ) from None

    def to_bytes(self) -> bytes:
        return _dump({"model": "seasonal", **self.to_dict()})

    @classmethod
    def from_bytes(cls, blob: bytes) -> SeasonalBaseline:
        model = load_baseline(blob)
        if not isinstance(model, SeasonalBaseline):
            raise InvalidInput(
                "the artifact is an activity baseline", field="artifact", fix="use load_baseline"
            )
        return model


def fit(
    ts_ms: Any,
    values: Any,
    tz: str = "UTC",
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    levels: tuple[float, ...] = QUANTILES,
    unit: str = "",
) -> SeasonalBaseline:
    """Fit per-cell mean, std and quantiles of `values` sampled at `ts_ms` (vectorised).

    Samples outside `[start_ms, end_ms)` and NaN values are left out; the training period
    defaults to the span of the samples.
    """
    ts = np.asarray(ts_ms, dtype=np.int64).ravel()
    x = np.asarray(values, dtype=np.float64).ravel()
    if ts.shape != x.shape:
        raise InvalidInput(
            f"{ts.size} timestamps but {x.size} values",
            field="values",
            fix="pass one value per timestamp",
        )
    if not levels or not all(0 <= q <= 1 for q in levels):
        raise InvalidInput("quantile levels must lie in [0, 1]", field="levels", fix="e.g. 0.99")
    zone(tz)
    start = int(ts.min()) if start_ms is None and ts.size else int(start_ms or 0)
    end = int(ts.max()) + 1 if end_ms is None and ts.size else int(end_ms or 0)
    keep = (ts >= start) & (ts < end) & np.isfinite(x)
    ts, x = ts[keep], x[keep]
    cell = week_cells(ts, tz)
    count = np.bincount(cell, minlength=CELLS)
    total = np.bincount(cell, weights=x, minlength=CELLS)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        squares = np.bincount(cell, weights=(x - mean[cell]) ** 2, minlength=CELLS)
        std = np.sqrt(squares / (count - 1))
    std[count < 2] = np.nan
    quantiles = _cell_quantiles(cell, x, count, levels)
    return SeasonalBaseline(
        tz=tz,
        unit=unit,
        start_ms=start,
        end_ms=end,
        count=count.reshape(7, 24),
        mean=mean.reshape(7, 24),
        std=std.reshape(7, 24),
        levels=tuple(float(q) for q in levels),
        quantiles=quantiles.reshape(len(levels), 7, 24),
    )


def _cell_quantiles(
    cell: np.ndarray, x: np.ndarray, count: np.ndarray, levels: tuple[float, ...]
) -> np.ndarray:
    """Per-cell quantiles with linear interpolation (as `np.quantile`), all cells at once."""
    by_value = np.argsort(x)
    ordered = x[by_value[np.argsort(cell[by_value], kind="stable")]]  # by cell, then value
    first = np.cumsum(count) - count
    top = np.maximum(count - 1, 0)
    has = count > 0
    out = np.full((len(levels), CELLS), np.nan)
    for i, q in enumerate(levels):
        pos = q * top
        below = np.floor(pos).astype(np.int64)
        lo = (first + below)[has]
        hi = (first + np.minimum(below + 1, top))[has]
        out[i, has] = ordered[lo] + (pos - below)[has] * (ordered[hi] - ordered[lo])
    return out


# ---- activity: visits, durations, inactivity --------------------------------------------------


def hourly_counts(event_ts: Any, start_ms: int, end_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Events per whole hour inside `[start_ms, end_ms)`, hours without events included."""
    ts = np.asarray(event_ts, dtype=np.int64)
    first = -(-int(start_ms) // HOUR_MS) * HOUR_MS
    last = int(end_ms) // HOUR_MS * HOUR_MS
    hours = np.arange(first, max(first, last), HOUR_MS, dtype=np.int64)
    inside = ts[(ts >= first) & (ts < last)]
    counts = np.bincount((inside - first) // HOUR_MS, minlength=hours.size)[: hours.size]
    return hours, counts


def visits(ts_ms: Any, motion: Any) -> tuple[np.ndarray, np.ndarray]:
    """Presence intervals of a motion sensor: (start ts, duration ms) of each 0 -> 1 -> 0 run.

    A run still open at the end of the data is left out.
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    on = np.asarray(motion, dtype=np.float64)[order] > 0.5
    before = np.concatenate(([False], on[:-1]))
    rises = np.flatnonzero(on & ~before)
    falls = np.flatnonzero(~on & before)
    k = np.searchsorted(falls, rises)
    closed = k < falls.size
    starts = ts[rises[closed]]
    return starts, ts[falls[k[closed]]] - starts


def inactivity(
    event_ts: Any, start_ms: int, end_ms: int, step_ms: int = 300_000
) -> tuple[np.ndarray, np.ndarray]:
    """Time since the last event (ms), sampled every `step_ms` in `[start_ms, end_ms)`.

    Instants before the first event are left out.
    """
    ts = np.sort(np.asarray(event_ts, dtype=np.int64))
    first = -(-int(start_ms) // step_ms) * step_ms
    grid = np.arange(first, int(end_ms), step_ms, dtype=np.int64)
    last = np.searchsorted(ts, grid, side="right") - 1
    seen = last >= 0
    return grid[seen], grid[seen] - ts[last[seen]]


@dataclass(eq=False)
class ActivityBaseline:
    """A room's (or home's) rhythm: visits per hour, minutes per visit, minutes since activity."""

    visits: SeasonalBaseline
    duration: SeasonalBaseline
    inactivity: SeasonalBaseline

    @property
    def tz(self) -> str:
        return self.visits.tz

    @property
    def start_ms(self) -> int:
        return self.visits.start_ms

    @property
    def end_ms(self) -> int:
        return self.visits.end_ms

    def parts(self) -> dict[str, SeasonalBaseline]:
        return {"visits": self.visits, "duration": self.duration, "inactivity": self.inactivity}

    def to_bytes(self) -> bytes:
        return _dump({"model": "activity", **{k: b.to_dict() for k, b in self.parts().items()}})

    @classmethod
    def from_bytes(cls, blob: bytes) -> ActivityBaseline:
        model = load_baseline(blob)
        if not isinstance(model, ActivityBaseline):
            raise InvalidInput(
                "the artifact is a single seasonal baseline",
                field="artifact",
                fix="use load_baseline",
            )
        return model


def fit_activity(
    ts_ms: Any,
    motion: Any,
    tz: str = "UTC",
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    step_ms: int = 300_000,
) -> ActivityBaseline:
    """Fit visits/hour, minutes/visit and minutes-since-activity baselines from motion reports.

    `motion` is 1 (moving) or 0 (still); every report counts as activity. Visits are counted in
    the hour they start; inactivity is sampled every `step_ms`.
    """
    ts = np.asarray(ts_ms, dtype=np.int64).ravel()
    if ts.size == 0:
        raise InvalidInput("no motion data to fit", field="ts", fix="ingest some history first")
    start = int(ts.min()) if start_ms is None else int(start_ms)
    end = int(ts.max()) + 1 if end_ms is None else int(end_ms)
    if end <= start:
        raise InvalidInput("the training period is empty", field="end", fix="end after start")
    period = {"start_ms": start, "end_ms": end}
    visit_start, visit_ms = visits(ts, motion)
    starts_inside = visit_start[(visit_start >= start) & (visit_start < end)]
    hours, per_hour = hourly_counts(starts_inside, start, end)
    sample_ts, quiet_ms = inactivity(ts, start, end, step_ms)
    return ActivityBaseline(
        visits=fit(hours, per_hour, tz, unit="visits/h", **period),
        duration=fit(visit_start, visit_ms / 60_000, tz, unit="min", **period),
        inactivity=fit(sample_ts, quiet_ms / 60_000, tz, unit="min", **period),
    )


# ---- the emergency rule -----------------------------------------------------------------------


def emergency_check(
    now_ms: int,
    last_activity_ms: Mapping[str, int | None],
    baselines: Mapping[str, ActivityBaseline | SeasonalBaseline],
    *,
    level: float = 0.99,
    factor: float = 1.5,
    min_minutes: float = 30.0,
    neighbours: int = 1,
) -> list[dict]:
    """One verdict per twin: in emergency when it has been inactive for longer than
    `max(factor x p99, min_minutes)` of its inactivity baseline at this weekday x hour.

    A p99 estimated from a few weeks is noisy, so the rule uses the highest p99 of the hours
    within `neighbours` of now (same weekday, wrapping round the week) and a margin `factor`
    (docs/baseline.md gives the false-alarm and detection figures of the defaults on the demo
    fleet). Each verdict carries the
    evidence (inactive and threshold minutes, the cell, its sample count, the training period).
    Twins without a baseline or without any activity are reported with `emergency: false` and
    a `reason`. Emergencies come first.
    """
    if factor <= 0 or min_minutes < 0 or not 0 <= neighbours <= 12:
        raise InvalidInput(
            "factor must be > 0, min_minutes >= 0 and neighbours from 0 to 12",
            field="factor",
            fix="keep the defaults (1.5, 30, 1) unless you have measured better ones",
        )
    verdicts = []
    for twin, last in last_activity_ms.items():
        model = baselines.get(twin)
        verdict: dict[str, Any] = {
            "twin": twin,
            "emergency": False,
            "checked_at": format_ts(now_ms),
        }
        if model is None:
            verdicts.append({**verdict, "reason": "no baseline for this twin"})
            continue
        quiet = model.inactivity if isinstance(model, ActivityBaseline) else model
        cell = int(week_cells(np.array([now_ms]), quiet.tz)[0])
        weekday, hour = divmod(cell, 24)
        near = (cell + np.arange(-neighbours, neighbours + 1)) % CELLS
        grid = quiet.quantile(level).ravel()
        p = float(np.nanmax(grid[near])) if np.isfinite(grid[near]).any() else float("nan")
        samples = int(quiet.count.ravel()[cell])
        verdict.update(
            weekday=WEEKDAYS[weekday],
            hour=hour,
            tz=quiet.tz,
            cell_samples=samples,
            trained_from=format_ts(quiet.start_ms),
            trained_to=format_ts(quiet.end_ms),
        )
        if last is None:
            verdicts.append({**verdict, "reason": "no activity recorded"})
            continue
        inactive_min = max(0, now_ms - int(last)) / 60_000
        verdict.update(last_activity=format_ts(int(last)), inactive_min=round(inactive_min, 1))
        if not np.isfinite(p):
            verdicts.append({**verdict, "reason": "no baseline samples at this weekday and hour"})
            continue
        threshold = max(factor * p, min_minutes)
        verdict.update(
            {
                _level_name(level) + "_min": round(p, 1),
                "threshold_min": round(threshold, 1),
                "emergency": inactive_min > threshold,
            }
        )
        verdicts.append(verdict)
    verdicts.sort(key=lambda v: not v["emergency"])
    return verdicts


# ---- serving and storage ----------------------------------------------------------------------


def load_baseline(blob: bytes | str) -> SeasonalBaseline | ActivityBaseline:
    """A baseline from what `to_bytes` wrote (a registry artifact)."""
    try:
        body = orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"the baseline artifact is not JSON: {exc}", field="artifact", fix="re-register it"
        ) from None
    if not isinstance(body, dict) or body.get("kind") != KIND:
        raise InvalidInput(
            f"the artifact is not a {KIND}", field="artifact", fix="check the model's kind"
        )
    if body.get("format") != FORMAT:
        raise InvalidInput(
            f"unsupported {KIND} format {body.get('format')!r}",
            field="artifact",
            fix="refit the baseline with this version of livetwin",
        )
    if body.get("model") == "activity":
        parts = {
            k: SeasonalBaseline.from_dict(body.get(k) or {})
            for k in ("visits", "duration", "inactivity")
        }
        return ActivityBaseline(**parts)
    return SeasonalBaseline.from_dict(body)


def baseline_metadata(model: SeasonalBaseline | ActivityBaseline, **extra: Any) -> dict:
    """The registry version body of a fitted baseline (`POST /api/models/{name}/versions`):
    an inductive model of flavor "seasonal-baseline" with its training period, time zone and
    sample counts; its artifact is `model.to_bytes()` stored as `baseline.json`."""
    parts = model.parts() if isinstance(model, ActivityBaseline) else {"value": model}
    return {
        "kind": "inductive",
        "flavor": KIND,
        "training": {"start": format_ts(model.start_ms), "end": format_ts(model.end_ms)},
        "hyperparameters": {
            "tz": model.tz,
            "samples": {name: part.samples for name, part in parts.items()},
            "cells_with_data": {name: int((part.count > 0).sum()) for name, part in parts.items()},
        },
        "artifacts": [ARTIFACT],
        **extra,
    }


class BaselinePredictor:
    """Serves a baseline as `predict(inputs) -> outputs` (registry kind "seasonal-baseline").

    inputs: `{"ts": t | [t, ...]}` (ISO 8601 or epoch ms) for the cell statistics, and for an
    activity baseline optionally `{"now": t, "last_activity": t}` for the emergency verdict.
    """

    kind = KIND

    def __init__(self, model: SeasonalBaseline | ActivityBaseline):
        self.model = model

    @classmethod
    def from_bytes(cls, blob: bytes) -> BaselinePredictor:
        return cls(load_baseline(blob))

    def predict(self, inputs: Mapping) -> dict:
        if not isinstance(inputs, Mapping):
            raise InvalidInput("inputs must be an object", field="inputs", fix='{"ts": [...]}')
        out: dict[str, Any] = {}
        if "ts" in inputs:
            ts = _timestamps(inputs["ts"])
            out["ts"] = ts.tolist()
            parts = (
                self.model.parts()
                if isinstance(self.model, ActivityBaseline)
                else {"value": self.model}
            )
            for name, part in parts.items():
                stats = part.predict(ts)
                out[name] = {"unit": part.unit, **{k: _json_list(v) for k, v in stats.items()}}
        if "last_activity" in inputs:
            now = _timestamps(inputs.get("now"), field="now")[0]
            last = _timestamps(inputs["last_activity"], field="last_activity")[0]
            out["emergency"] = emergency_check(int(now), {"twin": int(last)}, {"twin": self.model})[
                0
            ]
            out["emergency"].pop("twin")
        if not out:
            raise InvalidInput(
                "nothing to predict",
                field="ts",
                fix='send {"ts": [...]} and/or {"now": ..., "last_activity": ...}',
            )
        return out


def load_seasonal(version: Mapping, artifacts: Any) -> BaselinePredictor:
    """Registry loader for flavor "seasonal-baseline": `artifacts.read(name)` returns the bytes
    of the version's artifact (`hyperparameters.artifact`, default baseline.json)."""
    filename = (version.get("hyperparameters") or {}).get("artifact", ARTIFACT)
    return BaselinePredictor.from_bytes(artifacts.read(filename))


def _timestamps(value: Any, field: str = "ts") -> np.ndarray:
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > _MAX_PREDICT:
        raise InvalidInput(
            f"{field} must hold 1 to {_MAX_PREDICT} timestamps", field=field, fix="send fewer"
        )
    try:
        return np.array([parse_ts(v) for v in items], dtype=np.int64)
    except ValueError as exc:
        raise InvalidInput(str(exc), field=field, fix="use ISO 8601 or epoch ms") from None


def _level_name(level: float) -> str:
    return "p" + f"{level * 100:g}".replace(".", "_")


def _grid(value: Any, dtype: type = np.float64) -> np.ndarray:
    arr = np.array([[np.nan if v is None else v for v in row] for row in value], dtype=dtype)
    if arr.shape != (7, 24):
        raise ValueError(f"a grid must be 7 x 24, not {arr.shape}")
    return arr


def _json_grid(arr: np.ndarray) -> list:
    return [_json_list(row) for row in arr]


def _json_list(arr: np.ndarray) -> list:
    return [v if v == v else None for v in np.asarray(arr).tolist()]


def _dump(body: dict) -> bytes:
    return orjson.dumps({"kind": KIND, "format": FORMAT, **body})
