"""Reads of twin state, types, history and journaled observations from a twin core.

This is the one reader of engine columns outside `engine/`: services and the API ask it
(through the `TwinReader` port) instead of reaching into the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from livetwin.core import TwinCore
from livetwin.engine.engine import json_number
from livetwin.errors import InvalidInput, NotFound
from livetwin.expr import AGGREGATE_FUNCTIONS, Compiled, reduce_groups
from livetwin.namespaces import DEFAULT as DEFAULT_NAMESPACE
from livetwin.namespaces import namespace_of
from livetwin.spec.types import CompiledType
from livetwin.store import rollup
from livetwin.store.history import AGGREGATES, AUTO, aggregate, assemble, auto_aggregate
from livetwin.timefmt import format_duration, format_ts, parse_duration, parse_ts_field

if TYPE_CHECKING:
    from livetwin.store.base import JournalEntry


STALE_SAMPLE = 5  # twins whose reporting gaps set a type's observed stale_after
STALE_FACTOR = 3  # stale after this many times the usual (95th percentile) gap
MIN_STALE_MS = 60_000
PUBLISHED_LOOKBACK_MS = 3_600_000  # how far before the end of its last step a calibration looks
STALE_CACHE_MS = 60_000


class Query:
    """Read-only views over one core. Thread-safe (takes the core's lock while it reads)."""

    def __init__(self, core: TwinCore):
        self.core = core
        self.settings = core.settings
        self._observed: dict[str, tuple[int, tuple[int | None, str | None]]] = {}

    # ---- types -----------------------------------------------------------------------------

    def get_type(self, name: str, version: int | None = None) -> dict:
        versions = self.core.type_versions(name)
        if versions and version is None and self.core.compiled_type(name) is None:
            raise NotFound(
                f"twin type '{name}' was deleted (its versions stay readable with ?version=)",
                field="name",
                fix=f"declare it again with PUT /api/types/{name}",
            )
        if not versions:
            raise NotFound(
                f"no twin type '{name}'", field="name", fix=f"declare it with PUT /api/types/{name}"
            )
        chosen = (
            versions[-1]
            if version is None
            else next((v for v in versions if v[0] == version), None)
        )
        if chosen is None:
            raise NotFound(
                f"type '{name}' has no version {version}",
                field="version",
                fix=f"use a version from 1 to {versions[-1][0]}",
            )
        number, spec_json, created = chosen
        return {
            "name": name,
            "version": number,
            "latest": versions[-1][0],
            "created": format_ts(created),
            "spec": orjson.loads(spec_json),
            "columns": list(self.layout(name, number)[0]),
            "versions": [v[0] for v in versions],
        }

    def list_types(self) -> list[dict]:
        with self.core.lock:
            return [
                {
                    "name": name,
                    "namespace": st.ctype.spec.namespace or DEFAULT_NAMESPACE,
                    "version": st.ctype.version,
                    "twins": len(st),
                    "description": st.ctype.spec.description,
                    "key_values": list(st.ctype.key_values()),
                }
                for name, st in sorted(self.core.engine.states.items())
            ]

    def stale_after(self, type_name: str) -> tuple[int | None, str | None]:
        """(ms, 'type') from the type's `stale_after`; else (ms, 'observed'): three times the
        95th percentile of recent reporting gaps of its most recently updated twins (at least a
        minute; cached for a minute); (None, None) before there are enough observations."""
        with self.core.lock:
            st = self.core.engine.states[type_name]
            declared = st.ctype.spec.stale_after
            if declared is not None:
                return parse_duration(declared), "type"
            newest = np.argsort(st.last_ts[: len(st)])[-STALE_SAMPLE:]
            sample = [(int(st.uid[r]), int(st.last_ts[r])) for r in newest if st.last_ts[r] >= 0]
        now = self.core.clock()
        cached = self._observed.get(type_name)
        if cached is not None and now - cached[0] < STALE_CACHE_MS:
            return cached[1]
        gaps = [self._recent_gaps(uid, type_name, last) for uid, last in sample]
        pooled = np.concatenate(gaps) if gaps else np.zeros(0)
        found: tuple[int | None, str | None] = (None, None)
        if len(pooled) >= 3:
            ms = max(MIN_STALE_MS, STALE_FACTOR * float(np.percentile(pooled, 95)))
            found = (int(round(ms)), "observed")
        self._observed[type_name] = (now, found)
        return found

    def _recent_gaps(self, uid: int, type_name: str, last: int) -> np.ndarray:
        """Gaps (ms) between a twin's recent observation times, widening the look back until it
        holds about 20 of them (at most 8 weeks)."""
        window = 15 * 60_000
        while True:
            ts, _, _ = self.history_rows(uid, type_name, [], last - window, last + 1)
            if len(ts) > 20 or window >= 8 * 7 * 86_400_000:
                return np.diff(np.unique(ts)).astype(np.float64)
            window *= 8

    def compiled_type(self, name: str) -> CompiledType | None:
        return self.core.compiled_type(name)

    def compiled_types(self) -> dict[str, CompiledType]:
        """The current compiled version of every declared type, by name."""
        with self.core.lock:
            return dict(self.core.engine.types)

    def compiled_version(self, name: str, version: int) -> CompiledType:
        """A type version compiled from its stored spec (NotFound when there is none)."""
        return self.core.compiled_version(name, version)

    def layout(self, name: str, version: int) -> tuple[tuple[str, ...], frozenset[str]]:
        return self.core.layout(name, version)

    def type_of(self, twin_id: str) -> CompiledType:
        """The compiled type of a twin (NotFound when there is no such twin)."""
        with self.core.lock:
            st, _ = self.core.engine.locate(twin_id)
            return st.ctype

    def twin_types(self, twin_ids: list[str]) -> dict[str, str | None]:
        """The type name of each twin, in the order given (None: no such twin)."""
        with self.core.lock:
            return {twin: self.core.engine.type_of.get(twin) for twin in twin_ids}

    # ---- twins -----------------------------------------------------------------------------

    def twin(self, twin_id: str) -> dict:
        with self.core.lock:
            return self.core.engine.twin(twin_id)

    def twin_count(self) -> int:
        with self.core.lock:
            return self.core.engine.twin_count()

    def twins(
        self,
        *,
        type: str | None = None,
        parent: str | None = None,
        where: str | None = None,
        limit: int = 100,
        offset: int = 0,
        values: bool = False,
        namespaces: frozenset[str] | None = None,
    ) -> dict:
        """Twins matching the filters, paged (creation order within a type); with `values`, each
        with the current values of its type's key values; `namespaces`: only twins in these."""
        if not 1 <= limit <= 1000:
            raise InvalidInput(
                "limit must be between 1 and 1000", field="limit", fix="page with limit and offset"
            )
        if offset < 0:
            raise InvalidInput("offset must not be negative", field="offset", fix="use 0 or more")
        with self.core.lock:
            found = self.core.engine.find(type=type, parent=parent, where=where)
            if namespaces is not None:
                found = [(st, _in_namespaces(st.ids, rows, namespaces)) for st, rows in found]
            total = sum(len(rows) for _, rows in found)
            items: list[dict] = []
            skip = offset
            for st, rows in found:
                if skip >= len(rows):
                    skip -= len(rows)
                    continue
                for row in rows[skip : skip + limit - len(items)].tolist():
                    last = int(st.last_ts[row])
                    items.append(
                        {
                            "id": st.ids[row],
                            "type": st.ctype.name,
                            "version": st.ctype.version,
                            "parent": st.parents[row],
                            "updated": format_ts(last) if last >= 0 else None,
                        }
                    )
                    if st.text:
                        items[-1]["attributes"] = {n: c[row] for n, c in st.text.items()}
                    if values:
                        items[-1]["values"] = {
                            n: json_number(st.data[st.col[n], row]) for n in st.ctype.key_values()
                        }
                skip = 0
                if len(items) >= limit:
                    break
        return {"items": items, "total": total, "offset": offset, "limit": limit}

    def aggregate(
        self,
        type_name: str,
        names: list[str] | None = None,
        aggs: list[str] | None = None,
        *,
        where: str | None = None,
        parent: str | None = None,
    ) -> dict:
        """Fleet totals: each aggregate (sum, avg, min, max, count) of each named value over the
        twins of a type that match `where` and `parent`; missing values are left out (count
        says how many contributed) and an aggregate of none is None (count 0)."""
        aggs = list(aggs or AGGREGATE_FUNCTIONS)
        for agg in aggs:
            if agg not in AGGREGATE_FUNCTIONS:
                raise InvalidInput(
                    f"unknown aggregate '{agg}'",
                    field="agg",
                    fix=f"use some of: {', '.join(AGGREGATE_FUNCTIONS)}",
                )
        with self.core.lock:
            [(st, rows)] = self.core.engine.find(type=type_name, parent=parent, where=where)
            names = list(names or st.ctype.columns)
            for name in names:
                if name not in st.col:
                    raise InvalidInput(
                        f"'{name}' is not a name of type '{type_name}'",
                        field="names",
                        fix=f"use some of: {', '.join(st.ctype.columns)}",
                    )
            values = {name: st.data[st.col[name], rows] for name in names}
        one_group = np.zeros(len(rows), dtype=np.int64)
        everyone = np.ones(len(rows), dtype=bool)
        result = {}
        for name, column in values.items():
            result[name] = {
                agg: json_number(reduce_groups(agg, column, everyone, one_group, 1).result(agg)[0])
                for agg in aggs
            }
        return {"type": type_name, "twins": len(rows), "values": result}

    def selection(
        self, type_name: str, *, ids: list[str] | None = None, parent=None, where=None
    ) -> dict[str, np.ndarray]:
        """The twins of a type matching all filters given (ids, parent, a `where` expression
        over current values): arrays `uid`, `created` and `updated` (first and newest
        observation time, -1 before any). NotFound for an unknown type."""
        with self.core.lock:
            [(st, rows)] = self.core.engine.find(type=type_name, parent=parent, where=where)
            if ids is not None:
                wanted = np.fromiter((st.index.get(t, -1) for t in ids), np.int64, len(ids))
                rows = np.intersect1d(rows, wanted[wanted >= 0])
            return {
                "uid": st.uid[rows].copy(),
                "created": st.created_ts[rows].copy(),
                "updated": st.last_ts[rows].copy(),
            }

    def type_rows(
        self,
        type_name: str,
        names_of: Callable[[CompiledType], list[str]],
        twins: list[str] | None = None,
    ):
        """One consistent read of a type's twins (all, or `twins` in that order):
        (compiled type, twin ids, uids, last observation times, {name: current values}) for the
        names `names_of(compiled type)` picks (it may raise). NotFound for an unknown type or
        twin; InvalidInput for a twin of another type."""
        with self.core.lock:
            st = self.core.engine.states.get(type_name)
            if st is None:
                self.core.engine.ctype(type_name)  # raises NotFound with the fix
            names = names_of(st.ctype)
            ids = list(st.ids) if twins is None else list(twins)
            for twin in ids:
                if twin not in st.index:
                    self.core.engine.locate(twin)  # NotFound, or a twin of another type:
                    raise InvalidInput(
                        f"twin '{twin}' is not a '{type_name}'", field="twin", fix="check the id"
                    )
            rows = np.array([st.index[t] for t in ids], dtype=np.int64)
            values = {n: st.data[st.col[n], rows].copy() for n in names}
            return st.ctype, ids, st.uid[rows].copy(), st.last_ts[rows].copy(), values

    def truth(
        self,
        type_name: str,
        compile_for: Callable[[CompiledType], Compiled],
        twins: list[str] | None = None,
    ) -> tuple[list[str], np.ndarray] | None:
        """Whether a condition holds now for a type's twins (all, or those of `twins` that are of
        the type): (twin ids, bool array), or None when there is no such type. `compile_for`
        compiles the expression for the type's current version (callers cache it)."""
        with self.core.lock:
            st = self.core.engine.states.get(type_name)
            if st is None:
                return None
            compiled = compile_for(st.ctype)
            ids = list(st.ids) if twins is None else [t for t in twins if t in st.index]
            rows = np.fromiter((st.index[t] for t in ids), np.int64, len(ids))
            env = {n: st.data[st.col[n], rows] for n in compiled.names}
            with np.errstate(invalid="ignore"):
                return ids, compiled.evaluate(env, size=len(rows)) > 0.5

    def current_by_uid(self, type_name: str, uids: np.ndarray, names: list[str]):
        """Current values of columns `names` of a type's twins given by engine row id (the
        `uids` of an applied batch): (twin id or None per uid, {name: array}, NaN where unknown);
        None when no twin type has that name."""
        with self.core.lock:
            st = self.core.engine.states.get(type_name)
            return None if st is None else st.by_uid(uids, names)

    def stats(self, twin_id: str, names: list[str], *, until: int | None = None) -> dict[str, dict]:
        """value, std, lower and upper of calibrated names (parameters, virtual sensors), with
        `ts`, when they were published. With `until` (the end of the last calibrated step), the
        newest rows in history up to it: calibration publishes step times that newer telemetry
        may already have passed, so those rows never reach the current state."""
        suffixes = (("value", ""), ("std", "_std"), ("lower", "_lower"), ("upper", "_upper"))
        with self.core.lock:
            st, row = self.core.engine.locate(twin_id)
            uid, type_name = int(st.uid[row]), st.ctype.name
            out = {
                name: {key: json_number(st.data[st.col[name + sfx], row]) for key, sfx in suffixes}
                | {"ts": None}
                for name in names
            }
        if until is None:
            return out
        columns = [name + sfx for name in names for _, sfx in suffixes]
        ts, _, values = self.history_rows(
            uid, type_name, columns, until - PUBLISHED_LOOKBACK_MS, until + 1
        )
        for i, name in enumerate(names):
            block = values[4 * i : 4 * i + 4]
            rows = np.flatnonzero(~np.isnan(block[0]))
            if len(rows):
                last = rows[-1]
                out[name] = {
                    key: json_number(block[k, last]) for k, (key, _) in enumerate(suffixes)
                }
                out[name]["ts"] = format_ts(int(ts[last]))
        return out

    # ---- history ---------------------------------------------------------------------------

    def history(
        self,
        twin_id: str,
        names: list[str] | None = None,
        *,
        start: Any = None,
        end: Any = None,
        every: str | None = None,
        agg: str = "avg",
    ) -> dict:
        """Aligned series of a twin's properties, parameters and derived values."""
        with self.core.lock:
            st, row = self.core.engine.locate(twin_id)
            uid, type_name, columns = int(st.uid[row]), st.ctype.name, st.ctype.columns
            retention = st.ctype.spec.retention
        names = list(names) if names else list(columns)
        for name in names:
            if name not in columns:
                raise InvalidInput(
                    f"'{name}' is not a name of type '{type_name}'",
                    field="names",
                    fix=f"use some of: {', '.join(columns)}",
                )
        raw = retention.raw_ms() if retention is not None else None
        oldest = 0 if raw is None else self.core.clock() - raw  # no `from`: what raw keeps
        start_ms = time_arg(start, "from", oldest)
        end_ms = time_arg(end, "to", self.core.clock() + self.settings.max_future_ms + 1)
        every_ms = None
        if every is not None:
            try:
                every_ms = parse_duration(every)
            except ValueError as exc:
                raise InvalidInput(str(exc), field="every", fix="e.g. every=1m") from None
        bucket = rollup.choose(retention, start_ms, self.core.clock(), every_ms)
        if bucket is None:
            ts, values, envelope = self._raw_series(
                uid, type_name, names, start_ms, end_ms, every_ms, agg
            )
        else:
            every_ms = -(-max(every_ms or bucket, bucket) // bucket) * bucket  # a multiple
            every = format_duration(every_ms)
            ts, values, envelope = self._rollup_series(
                uid, type_name, names, start_ms, end_ms, bucket, every_ms, agg
            )
            if len(ts) > self.settings.max_history_points:
                raise InvalidInput(
                    f"more than {self.settings.max_history_points} buckets of {every} in range",
                    field="every",
                    fix="narrow from/to or use a coarser every, e.g. every=1h",
                )
        result = {
            "twin": twin_id,
            "from": format_ts(start_ms),
            "to": format_ts(end_ms),
            "every": every,
            "agg": agg if every else None,
            "resolution": "raw" if bucket is None else format_duration(bucket),
            "ts": ts.tolist(),
            "series": {n: _json_list(values[k]) for k, n in enumerate(names)},
        }
        if envelope is not None:  # agg=auto: what each series is, and the envelope of means
            chosen, low, high = envelope
            result["aggs"] = dict(zip(names, chosen, strict=True))
            result["min"] = {
                n: _json_list(low[k]) for k, n in enumerate(names) if chosen[k] == "avg"
            }
            result["max"] = {
                n: _json_list(high[k]) for k, n in enumerate(names) if chosen[k] == "avg"
            }
        return result

    def _raw_series(self, uid, type_name, names, start_ms, end_ms, every_ms, agg):
        """Raw history rows, aggregated to buckets of `every_ms` when given."""
        ts, _, values = self.history_rows(uid, type_name, names, start_ms, end_ms)
        if len(ts) > self.settings.max_history_points and every_ms is None:
            raise InvalidInput(
                f"more than {self.settings.max_history_points} points in range",
                field="every",
                fix="narrow from/to or aggregate with every=1m",
            )
        if every_ms is None:
            return ts, values, None
        if agg == AUTO:
            ts, values, chosen, low, high = auto_aggregate(ts, values, every_ms)
            return ts, values, (chosen, low, high)
        ts, values = aggregate(ts, values, every_ms, agg)
        return ts, values, None

    def _rollup_series(self, uid, type_name, names, start_ms, end_ms, bucket, every_ms, agg):
        """Rollup buckets (stored ones before the type's rollup progress, computed from raw
        history after it) re-aggregated to `every_ms`; `auto` is `avg` with min/max."""
        if agg not in AGGREGATES and agg != AUTO:
            raise InvalidInput(
                f"unknown aggregate '{agg}'",
                field="agg",
                fix=f"use one of {', '.join(AGGREGATES)}, {AUTO}",
            )
        done = rollup.progress(self.core.store, type_name).get(str(bucket), start_ms)
        split = min(max(done, start_ms), end_ms)
        rows = self.core.store.rollups(uid, bucket, start_ms, split)
        columns_of = lambda v: self.layout(type_name, v)[0]  # noqa: E731
        stored_ts, stored = rollup.read(rows, columns_of, names, bucket, start_ms, split)
        ts, _, values = self.history_rows(uid, type_name, names, split, end_ms)
        fresh_ts, fresh = rollup.bucket_stats(ts, values, bucket)
        bucket_ts = np.concatenate([stored_ts, fresh_ts])
        stats = np.concatenate([stored, fresh], axis=2)
        if agg != AUTO:
            return *rollup.combine(bucket_ts, stats, every_ms, agg), None
        starts, mean = rollup.combine(bucket_ts, stats, every_ms, "avg")
        low = rollup.combine(bucket_ts, stats, every_ms, "min")[1]
        high = rollup.combine(bucket_ts, stats, every_ms, "max")[1]
        return starts, mean, (["avg"] * len(names), low, high)

    def history_rows(self, uid: int, type_name: str, names: list[str], start: int, end: int):
        """Stored chunks plus buffered rows of one twin within [start, end), sorted."""
        with self.core.lock:
            flushed = self.core.history.flushed_seq
            parts: list = self.core.history.rows_of(uid)
        parts += self.core.store.history(uid, start, end, flushed)
        ts, seqs, values = assemble(parts, names, lambda v: self.layout(type_name, v)[0])
        inside = (ts >= start) & (ts < end)
        return ts[inside], seqs[inside], values[:, inside]

    def observations(self, twin_id: str, *, limit: int = 50, before: Any = None) -> list[dict]:
        """The twin's journaled observations, newest first, with the derived values they caused."""
        if not 1 <= limit <= 1000:
            raise InvalidInput(
                "limit must be between 1 and 1000",
                field="limit",
                fix="use a smaller limit and page with before=",
            )
        with self.core.lock:
            st, row = self.core.engine.locate(twin_id)
            uid, ctype = int(st.uid[row]), st.ctype
        before_ms = time_arg(before, "before", 2**62)
        with self.core.lock:
            flushed = self.core.history.flushed_seq
            parts: list = self.core.history.rows_of(uid)
        newest = sorted(t for p in parts for t in p.ts.tolist() if t < before_ms)
        for ts_max, chunk in self.core.store.recent(uid, before_ms, flushed):
            if len(newest) >= limit and ts_max < newest[-limit]:
                break  # older chunks cannot hold any of the newest `limit` rows
            parts.append(chunk)
            newest = sorted(newest + [t for t in chunk.ts.tolist() if t < before_ms])
        columns = ctype.columns
        ts, seqs, values = assemble(parts, columns, lambda v: self.layout(ctype.name, v)[0])
        inputs = [k for k, c in enumerate(columns) if c not in ctype.compiled]
        derived = [k for k, c in enumerate(columns) if c in ctype.compiled]
        out = []
        for i in np.flatnonzero(ts < before_ms)[::-1][:limit].tolist():
            out.append(
                {
                    "seq": int(seqs[i]),
                    "ts": int(ts[i]),
                    "time": format_ts(int(ts[i])),
                    "values": {
                        columns[k]: float(values[k, i])
                        for k in inputs
                        if not np.isnan(values[k, i])
                    },
                    "derived": {columns[k]: json_number(values[k, i]) for k in derived},
                }
            )
        return out

    # ---- the journal (for services that catch up from it) ----------------------------------

    def last_seq(self) -> int:
        """The seq of the newest journal entry (0 when the journal is empty)."""
        return self.core.store.last_seq()

    def newest_uid(self) -> int:
        """The internal uid of the newest twin (0 before the first)."""
        with self.core.lock:
            return self.core.engine.next_uid - 1

    def journal(self, after: int) -> Iterator[JournalEntry]:
        """Journal entries with a seq above `after`, oldest first."""
        return self.core.store.journal(after=after)


def history_frame(history: dict):
    """A `history` answer as a pandas DataFrame, one column per name, indexed by UTC time."""
    try:
        import pandas as pd
    except ImportError:
        raise InvalidInput(
            "history as a DataFrame needs pandas", field="frame", fix="pip install pandas"
        ) from None
    index = pd.to_datetime(history["ts"], unit="ms", utc=True)
    return pd.DataFrame(history["series"], index=index, dtype="float64").rename_axis("ts")


def time_arg(value: Any, field: str, default: int) -> int:
    """A time query argument (ISO 8601 or epoch ms) as epoch ms; `default` when absent."""
    if value is None or value == "":
        return default
    return parse_ts_field(value, field)


def _json_list(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else v for v in values.tolist()]


def _in_namespaces(ids: list[str], rows: np.ndarray, namespaces: frozenset[str]) -> np.ndarray:
    """The rows whose twin id lies in one of `namespaces`."""
    keep = [namespace_of(ids[r]) in namespaces for r in rows.tolist()]
    return rows[np.array(keep, dtype=bool)] if len(rows) else rows
