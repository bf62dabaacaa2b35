"""JSON observations -> validated columnar batches, one per twin type, with per-row rejections.

Everything that can be checked without twin state is checked here, in the caller's thread:
shape, type, names, numbers, ranges and timestamps. Nothing malformed reaches the journal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from livetwin.ingest.batch import Batch
from livetwin.spec.types import CompiledType
from livetwin.timefmt import parse_ts

ALLOWED_FIELDS = frozenset({"twin", "type", "ts", "values", "key", "parent"})
MAX_ID_LENGTH = 200


@dataclass
class Rejection:
    index: int
    field: str | None
    error: str
    fix: str

    def to_dict(self) -> dict:
        return {"index": self.index, "field": self.field, "error": self.error, "fix": self.fix}


@dataclass
class Normalized:
    """Validated batches (with the request index of each of their rows) and the rejected rows."""

    batches: list[tuple[Batch, np.ndarray]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return sum(len(b) for b, _ in self.batches)


class _Reject(Exception):
    def __init__(self, field: str | None, error: str, fix: str):
        self.field, self.error, self.fix = field, error, fix


@dataclass
class _TypeRows:
    ctype: CompiledType
    slots: dict[str, int]
    twins: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    rows: list[list[float]] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    parents: list[str | None] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)


def normalize(
    observations: object,
    types: Mapping[str, CompiledType],
    *,
    now_ms: int,
    max_future_ms: int = 86_400_000,
) -> Normalized:
    """Validate a JSON array of observations into per-type batches; bad rows become rejections."""
    result = Normalized()
    if not isinstance(observations, list):
        result.rejected.append(
            Rejection(
                0,
                "body",
                "the body must be a JSON array of observations",
                'send [{"twin": "pump-1", "type": "pump", "values": {"flow": 1.2}}]',
            )
        )
        return result
    per_type: dict[str, _TypeRows] = {}
    latest_ok = now_ms + max_future_ms
    for i, obs in enumerate(observations):
        try:
            _read_one(obs, types, per_type, now_ms, latest_ok, i)
        except _Reject as r:
            result.rejected.append(Rejection(i, r.field, r.error, r.fix))
    for rows in per_type.values():
        _finish_type(rows, result)
    result.rejected.sort(key=lambda r: r.index)
    return result


def _read_one(obs, types, per_type, now_ms, latest_ok, i) -> None:
    if not isinstance(obs, dict):
        raise _Reject(
            None,
            "an observation must be a JSON object",
            'send {"twin": ..., "type": ..., "ts": ..., "values": {...}}',
        )
    if not ALLOWED_FIELDS.issuperset(obs):
        extra = sorted(set(obs) - ALLOWED_FIELDS)[0]
        raise _Reject(
            extra, f"unknown field '{extra}'", f"use only {', '.join(sorted(ALLOWED_FIELDS))}"
        )
    twin = _identifier(obs.get("twin"), "twin", required=True)
    type_name = obs.get("type")
    rows = per_type.get(type_name) if isinstance(type_name, str) else None
    if rows is None:
        ctype = types.get(type_name) if isinstance(type_name, str) else None
        if ctype is None:
            known = ", ".join(sorted(types)[:10]) or "none yet"
            raise _Reject(
                "type",
                f"unknown twin type {type_name!r} (known: {known})",
                f"declare it first with PUT /api/types/{type_name}",
            )
        rows = _TypeRows(ctype, {n: k for k, n in enumerate(ctype.inputs)})
        per_type[type_name] = rows
    raw_ts = obs.get("ts")
    if raw_ts is None:
        ts = now_ms
    else:
        try:
            ts = parse_ts(raw_ts)
        except ValueError as exc:
            raise _Reject(
                "ts", str(exc), "send ISO 8601 (2026-11-22T10:00:00Z) or epoch ms"
            ) from None
        if ts > latest_ok:
            raise _Reject(
                "ts",
                "timestamp is more than a day in the future",
                "check the device clock; send UTC times",
            )
    values = obs.get("values")
    if not isinstance(values, dict) or not values:
        raise _Reject(
            "values",
            "values must be a non-empty object of name -> number",
            'send "values": {"flow": 1.2}',
        )
    row = [math.nan] * len(rows.slots)
    slots = rows.slots
    for name, v in values.items():
        slot = slots.get(name)
        if slot is None:
            known = ", ".join(rows.ctype.inputs)
            raise _Reject(
                f"values.{name}",
                f"unknown property '{name}' of type '{rows.ctype.name}' (known: {known})",
                "add it to the type spec or fix the name",
            )
        if type(v) is float or type(v) is int:
            v = float(v)
        elif isinstance(v, bool):
            v = 1.0 if v else 0.0
        elif isinstance(v, int | float):
            v = float(v)
        else:
            raise _Reject(
                f"values.{name}",
                f"non-numeric value {str(v)[:40]!r}",
                "send a JSON number (true/false count as 1/0)",
            )
        if not math.isfinite(v):
            raise _Reject(
                f"values.{name}",
                "NaN and infinity are not valid values",
                "leave the value out when it is unknown",
            )
        row[slot] = v
    parent = _identifier(obs.get("parent"), "parent", required=False)
    key = obs.get("key")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_ID_LENGTH):
        raise _Reject(
            "key",
            "an idempotency key must be a string of 1-200 characters",
            "send a unique string per observation, or leave key out",
        )
    rows.twins.append(twin)
    rows.ts.append(ts)
    rows.rows.append(row)
    rows.index.append(i)
    rows.parents.append(parent)
    rows.keys.append(key)


def _identifier(value: object, name: str, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        raise _Reject(
            name,
            f"{name} must be a string of 1-{MAX_ID_LENGTH} characters",
            f'send "{name}": "pump-1"',
        )
    return value


def _finish_type(rows: _TypeRows, result: Normalized) -> None:
    """Range checks (vectorised), then one Batch holding only the names actually present."""
    ctype = rows.ctype
    values = np.array(rows.rows, dtype=np.float64).T.reshape(len(rows.slots), len(rows.twins))
    lo, hi = _bounds(ctype)
    with np.errstate(invalid="ignore"):
        bad = (values < lo[:, None]) | (values > hi[:, None])
    index = np.array(rows.index, dtype=np.int64)
    keep = np.ones(len(rows.twins), dtype=bool)
    if bad.any():
        for slot, obs in zip(*np.nonzero(bad), strict=True):
            if not keep[obs]:
                continue
            keep[obs] = False
            name = ctype.inputs[slot]
            result.rejected.append(
                Rejection(
                    int(index[obs]),
                    f"values.{name}",
                    f"{values[slot, obs]} is outside the valid range "
                    f"[{lo[slot]}, {hi[slot]}] of '{name}'",
                    "check the sensor or widen the range in the type spec",
                )
            )
    if not keep.any():
        return
    present = ~np.isnan(values[:, keep]).all(axis=1)
    names = tuple(n for n, p in zip(ctype.inputs, present, strict=True) if p)
    batch = Batch(
        ctype.name,
        rows.twins,
        np.array(rows.ts, dtype=np.int64),
        ctype.inputs,
        values,
        rows.parents if any(p is not None for p in rows.parents) else None,
        rows.keys if any(k is not None for k in rows.keys) else None,
    )
    if not keep.all():
        batch = batch.take(np.flatnonzero(keep))
        index = index[keep]
    batch.values = batch.values[present]
    batch.names = names
    result.batches.append((batch, index))


def _bounds(ctype: CompiledType) -> tuple[np.ndarray, np.ndarray]:
    specs = [*ctype.spec.properties.values(), *ctype.spec.parameters.values()]
    lo = np.array([-np.inf if s.min is None else s.min for s in specs])
    hi = np.array([np.inf if s.max is None else s.max for s in specs])
    return lo, hi
