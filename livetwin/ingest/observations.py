"""JSON observations -> validated columnar batches, one per twin type, with per-row rejections.

Everything that can be checked without twin state is checked here, in the caller's thread:
shape, type, names, numbers, ranges and timestamps. Nothing malformed reaches the journal.

The common case is vectorised: rows of one type that carry the same value names are checked
and converted to one float array at once; only a group that fails the fast check is walked row
by row to say exactly which row and field are wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from livetwin.engine.batch import Batch
from livetwin.errors import MAX_EXCERPT, InvalidInput, bounded, excerpt
from livetwin.spec.types import CompiledType
from livetwin.timefmt import SMALLEST_MS, parse_ts

ALLOWED_FIELDS = frozenset({"twin", "type", "ts", "values", "key", "parent"})
MAX_ID_LENGTH = 200
TS_FIX = "send ISO 8601 (2026-11-22T10:00:00Z) or epoch milliseconds"
_NUMBER_TYPES = frozenset({float, int, bool})
_FAR_FUTURE = 2**62


@dataclass
class Rejection:
    index: int
    field: str | None
    error: str
    fix: str

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "field": bounded(self.field, MAX_EXCERPT),
            "error": bounded(self.error),
            "fix": bounded(self.fix),
        }


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
    """The envelope-checked rows of one type, before their values are checked."""

    ctype: CompiledType
    twins: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    values: list[dict] = field(default_factory=list)
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
    for i, obs in enumerate(observations):
        try:
            _read_envelope(i, obs, types, per_type, now_ms)
        except _Reject as r:
            result.rejected.append(Rejection(i, r.field, r.error, r.fix))
    for rows in per_type.values():
        _finish_type(rows, result, now_ms + max_future_ms)
    result.rejected.sort(key=lambda r: r.index)
    return result


def _read_envelope(i: int, obs: object, types, per_type: dict, now_ms: int) -> None:
    """Check everything but the values of one observation and file it under its type."""
    if type(obs) is not dict:
        raise _Reject(
            None,
            "an observation must be a JSON object",
            'send {"twin": ..., "type": ..., "ts": ..., "values": {...}}',
        )
    if not obs.keys() <= ALLOWED_FIELDS:
        extra = sorted(set(obs) - ALLOWED_FIELDS)[0]
        raise _Reject(
            extra,
            f"unknown field {excerpt(extra)}",
            f"use only {', '.join(sorted(ALLOWED_FIELDS))}",
        )
    twin = _identifier(obs.get("twin"), "twin", required=True)
    type_name = obs.get("type")
    rows = per_type.get(type_name) if type(type_name) is str else None
    if rows is None:
        ctype = types.get(type_name) if type(type_name) is str else None
        if ctype is None:
            known = ", ".join(sorted(types)[:10]) or "none yet"
            raise _Reject(
                "type",
                f"unknown twin type {excerpt(type_name)} (known: {known})",
                "declare it first with PUT /api/types/"
                + (bounded(type_name, MAX_EXCERPT) if type(type_name) is str else "<name>"),
            )
        rows = per_type[type_name] = _TypeRows(ctype)
    ts = obs.get("ts")
    if ts is None:
        ts = now_ms
    elif type(ts) is not int or not 0 <= ts < _FAR_FUTURE:  # ints are checked in _finish_type
        try:
            ts = parse_ts(ts)
        except ValueError as exc:
            raise _Reject("ts", str(exc), TS_FIX) from None
        ts = min(ts, _FAR_FUTURE)  # rejected as "in the future" with the others
    values = obs.get("values")
    if type(values) is not dict or not values:
        raise _Reject(
            "values",
            "values must be a non-empty object of name -> number",
            'send "values": {"flow": 1.2}',
        )
    parent = _identifier(obs.get("parent"), "parent", required=False)
    key = obs.get("key")
    if key is not None and (type(key) is not str or not 0 < len(key) <= MAX_ID_LENGTH):
        raise _Reject(
            "key",
            f"an idempotency key must be a string of 1-{MAX_ID_LENGTH} characters",
            "send a unique string per observation, or leave key out",
        )
    rows.twins.append(twin)
    rows.ts.append(ts)
    rows.values.append(values)
    rows.index.append(i)
    rows.parents.append(parent)
    rows.keys.append(key)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1: ids cannot hold them


def check_identifier(value: object, field: str) -> str:
    """A twin id (or parent) by ingest's rule; InvalidInput naming the fix otherwise."""
    try:
        return _identifier(value, field, required=True)
    except _Reject as r:
        raise InvalidInput(r.error, field=field, fix=r.fix) from None


def _identifier(value: object, name: str, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if type(value) is not str or not 0 < len(value) <= MAX_ID_LENGTH:
        raise _Reject(
            name,
            f"{name} must be a string of 1-{MAX_ID_LENGTH} characters",
            f'send "{name}": "pump-1"',
        )
    if not value.isprintable() and _CONTROL.search(value):  # isprintable: the fast common case
        raise _Reject(
            name,
            f"{name} {excerpt(value, 60)} contains a control character (a line break, tab, ...)",
            f'send {name} as printable text, e.g. "pump-1"; strip line breaks and tabs',
        )
    return value


def normalize_columns(
    ctype: CompiledType,
    twins: list[str],
    ts: np.ndarray,
    values: np.ndarray,
    index: np.ndarray,
    *,
    parents: list[str | None] | None = None,
    keys: list[str | None] | None = None,
    now_ms: int,
    max_future_ms: int = 86_400_000,
) -> Normalized:
    """Rows of one type given as columns (file import): `values[k, i]` is input `k` of row
    i (NaN: absent), `index` each row's number for rejections. Checked like `normalize`: ids,
    timestamps, ranges, and a row must carry a value."""
    result = Normalized()
    problems: dict[int, _Reject] = {}
    for ids, name in ((twins, "twin"), (parents, "parent")):
        bad = _bad_identifiers(ids, name)
        if bad:
            for pos, value in enumerate(ids):
                if value in bad:
                    problems.setdefault(pos, bad[value])
    for pos in np.flatnonzero(np.isnan(values).all(axis=0)).tolist():
        problems.setdefault(
            pos, _Reject("values", "the row has no value", "fill at least one value column")
        )
    _emit_batch(
        ctype, twins, ts, values, index, parents, keys, problems, result, now_ms + max_future_ms
    )
    return result


def _bad_identifiers(ids: list[str | None] | None, name: str) -> dict[str, _Reject]:
    """The distinct ids of a column that `_identifier` refuses, with the reason."""
    bad = {}
    for value in set(ids or ()):
        try:
            _identifier(value, name, required=name == "twin")
        except _Reject as r:
            bad[value] = r
    return bad


def _finish_type(rows: _TypeRows, result: Normalized, latest_ok: int) -> None:
    """Check values and timestamps of one type's rows (vectorised) and emit one Batch."""
    ctype = rows.ctype
    values = np.full((len(ctype.inputs), len(rows.twins)), np.nan)
    problems: dict[int, _Reject] = {}  # position -> first problem
    attrs = _split_attributes(ctype, rows.values, problems) if ctype.attributes else None
    _fill_values(ctype, rows.values, values, problems)
    ts = np.array(rows.ts, dtype=np.int64)
    index = np.array(rows.index, dtype=np.int64)
    _emit_batch(
        ctype,
        rows.twins,
        ts,
        values,
        index,
        rows.parents,
        rows.keys,
        problems,
        result,
        latest_ok,
        attrs,
    )


def _split_attributes(ctype: CompiledType, dicts: list[dict], problems: dict) -> dict | None:
    """Take the text attributes out of each row's values (checked: an enum value outside its
    values rejects the row); {name: value or None per row}, or None when no row sets one."""
    declared = ctype.attributes
    found: dict[str, list[str | None]] = {}
    for pos, values in enumerate(dicts):
        named = values.keys() & declared.keys()
        if not named:
            continue
        dicts[pos] = {k: v for k, v in values.items() if k not in named}
        for name in named:
            try:
                value = declared[name].check(name, values[name])
            except ValueError as exc:
                problem = _Reject(f"values.{name}", str(exc), declared[name].fix())
                problems.setdefault(pos, problem)
                continue
            found.setdefault(name, [None] * len(dicts))[pos] = value
    return found or None


def _emit_batch(
    ctype: CompiledType,
    twins: list[str],
    ts: np.ndarray,
    values: np.ndarray,
    index: np.ndarray,
    parents: list[str | None] | None,
    keys: list[str | None] | None,
    problems: dict[int, _Reject],
    result: Normalized,
    latest_ok: int,
    attrs: dict[str, list[str | None]] | None = None,
) -> None:
    """Check timestamps and ranges, then add the rows without problems to `result` as one Batch
    and the others as rejections."""
    n = len(twins)
    for pos in np.flatnonzero((ts < SMALLEST_MS) | (ts > latest_ok)).tolist():
        if ts[pos] > latest_ok:
            problem = _Reject(
                "ts", "timestamp is more than a day in the future", "check the clock; send UTC"
            )
        else:
            try:
                parse_ts(int(ts[pos]))
            except ValueError as exc:
                problem = _Reject("ts", str(exc), TS_FIX)
        problems.setdefault(pos, problem)
    _check_ranges(ctype, values, problems)
    keep = np.ones(n, dtype=bool)
    for pos, p in problems.items():
        keep[pos] = False
        result.rejected.append(Rejection(int(index[pos]), p.field, p.error, p.fix))
    if not keep.any():
        return
    present = ~np.isnan(values[:, keep]).all(axis=1)
    batch = Batch(
        ctype.name,
        twins,
        ts,
        tuple(name for name, p in zip(ctype.inputs, present, strict=True) if p),
        values,
        parents if parents is not None and any(p is not None for p in parents) else None,
        keys if keys is not None and any(k is not None for k in keys) else None,
        attrs=attrs,
    )
    if not keep.all():
        batch = batch.take(np.flatnonzero(keep))
        index = index[keep]
    batch.values = batch.values[present]
    result.batches.append((batch, index))


def _fill_values(ctype: CompiledType, dicts: list[dict], out: np.ndarray, problems: dict) -> None:
    """Write each row's values into `out` (inputs x rows); bad rows go to `problems`."""
    slots = {name: k for k, name in enumerate(ctype.inputs)}
    groups: dict[tuple, list[int]] = {}
    for pos, v in enumerate(dicts):
        groups.setdefault(tuple(v), []).append(pos)
    for names, positions in groups.items():
        rows = [slots.get(name) for name in names]
        if None not in rows:
            flat = list(chain.from_iterable(dicts[p].values() for p in positions))
            if set(map(type, flat)) <= _NUMBER_TYPES:
                try:
                    block = np.array(flat, dtype=np.float64).reshape(len(positions), len(names))
                except OverflowError:
                    block = None
                if block is not None and np.isfinite(block).all():
                    out[np.ix_(rows, positions)] = block.T
                    continue
        for pos in positions:  # the slow, precise path: which row, which field
            try:
                for name, v in dicts[pos].items():
                    out[_slot(ctype, slots, name), pos] = _number(name, v)
            except _Reject as r:
                problems.setdefault(pos, r)


def _slot(ctype: CompiledType, slots: dict[str, int], name: str) -> int:
    slot = slots.get(name)
    if slot is None:
        raise _Reject(
            f"values.{name}",
            f"unknown property {excerpt(name)} of type '{ctype.name}' "
            f"(known: {', '.join(ctype.inputs)})",
            "add it to the type spec or fix the name",
        )
    return slot


def _number(name: str, v: object) -> float:
    if type(v) not in _NUMBER_TYPES:
        raise _Reject(
            f"values.{name}",
            f"non-numeric value {excerpt(v, 40)}",
            "send a JSON number (true/false count as 1/0)",
        )
    try:
        x = float(v)
    except OverflowError:
        x = math.inf
    if not math.isfinite(x):
        raise _Reject(
            f"values.{name}",
            "NaN and infinity are not valid values",
            "leave the value out when it is unknown",
        )
    return x


def _check_ranges(ctype: CompiledType, values: np.ndarray, problems: dict) -> None:
    """Values outside a property's or parameter's [min, max] reject their row."""
    lo, hi = (np.array(b, dtype=np.float64) for b in ctype.input_bounds())
    with np.errstate(invalid="ignore"):
        bad = (values < lo[:, None]) | (values > hi[:, None])
    if not bad.any():
        return
    for slot, pos in zip(*np.nonzero(bad), strict=True):
        name = ctype.inputs[slot]
        problems.setdefault(
            int(pos),
            _Reject(
                f"values.{name}",
                f"{values[slot, pos]} is outside the valid range [{lo[slot]}, {hi[slot]}] "
                f"of '{name}'",
                "check the sensor or widen the range in the type spec",
            ),
        )
