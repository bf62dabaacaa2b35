"""Columnar state of all twins of one type: one float64 column per name, one row per twin."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from livetwin.expr import WindowState
from livetwin.spec.types import CompiledType

INITIAL_CAPACITY = 64


class TypeState:
    """The twins of one type as columns.

    `data[j, row]` is column `ctype.columns[j]` of the twin at `row`; NaN means "not yet known".
    `last_ts[row]` is the newest observation applied to that twin (-1 before the first one).
    `value_ts[slot[name], row]` is the time of the value of a stamped column (parameters and
    calibration outputs, `CompiledType.stamped`): those follow their own newest value.
    `aggregates[key][row]` is the value of an aggregate over the twin's children (kept by
    `engine.aggregates`; not in snapshots, it is recomputed from the children).
    `text[name][row]` is the twin's text attribute `name` (a str, None while unset): object
    arrays beside the float columns, never on the numeric hot path.
    """

    def __init__(self, ctype: CompiledType, capacity: int = INITIAL_CAPACITY):
        self.ctype = ctype
        self.col = ctype.column_index()
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.parents: list[str | None] = []
        self.uid = np.zeros(capacity, dtype=np.int64)
        self.row_of_uid = np.full(capacity, -1, dtype=np.int64)  # uid -> row, -1 if not here
        self.last_ts = np.full(capacity, -1, dtype=np.int64)
        self.created_ts = np.zeros(capacity, dtype=np.int64)
        self.data = np.full((len(ctype.columns), capacity), np.nan)
        self.slot = {name: k for k, name in enumerate(ctype.stamped)}
        self.value_ts = np.full((len(self.slot), capacity), -1, dtype=np.int64)
        self.windows: dict[str, list[WindowState]] = {
            name: [w.new_state(capacity) for w in ctype.compiled[name].windows]
            for name in ctype.derived_order
        }
        self._param_defaults = {n: p.value for n, p in ctype.spec.parameters.items()}
        self.aggregates = {a.key: np.full(capacity, a.empty) for a in ctype.aggregates}
        self.text = {name: np.full(capacity, None, dtype=object) for name in ctype.attributes}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def capacity(self) -> int:
        return self.data.shape[1]

    def add(self, twins: list[str], parents: list[str | None], uids: np.ndarray, ts: np.ndarray):
        """Append new twins (distinct, not yet present); parameters start at their initial value."""
        start, n = len(self.ids), len(twins)
        if start + n > self.capacity:
            self._grow(max(INITIAL_CAPACITY, 2 * (start + n)))
        end = start + n
        self.ids.extend(twins)
        self.index.update(zip(twins, range(start, end), strict=True))
        self.parents.extend(parents)
        self.uid[start:end] = uids
        self._map_uids(uids, np.arange(start, end))
        self.created_ts[start:end] = ts
        for name, value in self._param_defaults.items():
            self.data[self.col[name], start:end] = value

    def rows_of(self, uids: np.ndarray) -> np.ndarray:
        """The rows of twins given by uid (-1 for a uid this type does not hold)."""
        inside = uids < len(self.row_of_uid)
        if inside.all():
            return self.row_of_uid[uids]
        return np.where(inside, self.row_of_uid[np.where(inside, uids, 0)], -1)

    def by_uid(self, uids: np.ndarray, names: list[str]) -> tuple[list, dict[str, np.ndarray]]:
        """(twin id or None per uid, {name: current values}, NaN where unknown)."""
        rows = self.rows_of(uids)
        found = rows >= 0
        ids = [self.ids[r] if r >= 0 else None for r in rows.tolist()]
        values = {}
        for name in names:
            values[name] = np.full(len(uids), np.nan)
            if name in self.col:
                values[name][found] = self.data[self.col[name], rows[found]]
        return ids, values

    def _map_uids(self, uids: np.ndarray, rows: np.ndarray) -> None:
        if len(uids) and uids.max() >= len(self.row_of_uid):
            self.row_of_uid = _grown(self.row_of_uid, 2 * int(uids.max()) + 1, -1)
        self.row_of_uid[uids] = rows

    def _grow(self, capacity: int) -> None:
        n = self.capacity
        data = np.full((self.data.shape[0], capacity), np.nan)
        data[:, :n] = self.data
        self.data = data
        value_ts = np.full((len(self.slot), capacity), -1, dtype=np.int64)
        value_ts[:, :n] = self.value_ts
        self.value_ts = value_ts
        self.uid = _grown(self.uid, capacity, 0)
        self.last_ts = _grown(self.last_ts, capacity, -1)
        self.created_ts = _grown(self.created_ts, capacity, 0)
        for a in self.ctype.aggregates:
            self.aggregates[a.key] = _grown(self.aggregates[a.key], capacity, a.empty)
        for name, values in self.text.items():
            self.text[name] = _grown(values, capacity, None)
        for states in self.windows.values():
            for state in states:
                state.grow(capacity)

    def derive(
        self, names: Iterable[str], rows: np.ndarray, windows: Callable | None = None
    ) -> Iterator[tuple[str, int, np.ndarray]]:
        """Evaluate the derived values `names` (in dependency order) for the twins at `rows`,
        storing each in its column; yields (name, column, values) as each is stored.
        `windows(name)` gives the window context of a derived value with window functions."""
        env: dict[str, np.ndarray] = {}
        for name in names:
            compiled = self.ctype.compiled[name]
            for dep in compiled.names:
                if dep not in env:
                    env[dep] = self.data[self.col[dep], rows]
            for spec in compiled.aggregates:
                env[spec.key] = self.aggregates[spec.key][rows]
            ctx = windows(name) if compiled.windows else None
            value = env[name] = compiled.evaluate(env, ctx, size=len(rows))
            j = self.col[name]
            self.data[j, rows] = value
            yield name, j, value

    def column(self, name: str) -> np.ndarray:
        """The live values of one column or text attribute for all twins (a view, length
        len(self))."""
        if name in self.text:
            return self.text[name][: len(self.ids)]
        return self.data[self.col[name], : len(self.ids)]

    def set_text(self, rows: np.ndarray, attributes: dict[str, list[str | None]]) -> None:
        """Set text attributes of the twins at `rows` (None: not given, left as it is); a
        twin given twice keeps the later value."""
        for name, values in attributes.items():
            given = np.array([v is not None for v in values], dtype=bool)
            if given.any():
                column = np.empty(len(values), dtype=object)
                column[:] = values
                self.text[name][rows[given]] = column[given]

    def remove(self, rows: np.ndarray) -> TypeState:
        """The same type without the twins at `rows` (their rows renumbered, nothing else
        changed): built through the snapshot form, so every per-twin array follows."""
        keep = np.ones(len(self), dtype=bool)
        keep[rows] = False
        meta, arrays = export_state(self)
        texts = meta["text"].items()
        meta = {
            "ids": [t for t, k in zip(meta["ids"], keep, strict=True) if k],
            "parents": [p for p, k in zip(meta["parents"], keep, strict=True) if k],
            "text": {n: [v for v, k in zip(vs, keep, strict=True) if k] for n, vs in texts},
        }
        rowwise = ("data", "value_ts")  # (names, rows); the others are (rows, ...)
        kept = {k: (a[:, keep] if k in rowwise else a[keep]) for k, a in arrays.items()}
        return import_state(self.ctype, meta, kept)

    def migrate(self, ctype: CompiledType) -> TypeState:
        """The same twins under a new type version.

        Columns whose name survives keep their values (calibrated parameters included); new
        parameters start at their initial value; a derived value whose expression is unchanged
        keeps its window state, a changed one starts afresh.
        """
        new = TypeState(ctype, self.capacity)
        n = len(self.ids)
        new.ids, new.index, new.parents = self.ids, self.index, self.parents
        new.uid, new.last_ts, new.created_ts = self.uid, self.last_ts, self.created_ts
        new.row_of_uid = self.row_of_uid
        for name, j in new.col.items():
            if name in self.col:
                new.data[j, :n] = self.data[self.col[name], :n]
            elif name in new._param_defaults:
                new.data[j, :n] = new._param_defaults[name]
        for name, k in new.slot.items():
            if name in self.slot:
                new.value_ts[k, :n] = self.value_ts[self.slot[name], :n]
        for name in new.text.keys() & self.text.keys():
            new.text[name][:n] = self.text[name][:n]
        for name in ctype.derived_order:
            old = self.ctype.compiled.get(name)
            if old is not None and old.source == ctype.compiled[name].source:
                new.windows[name] = self.windows[name]
        return new


def _grown(array: np.ndarray, capacity: int, fill: int) -> np.ndarray:
    out = np.full(capacity, fill, dtype=array.dtype)
    out[: len(array)] = array
    return out


def export_state(st: TypeState) -> tuple[dict, dict[str, np.ndarray]]:
    """Meta (JSON-able) and arrays of one type state, trimmed to its twins, for a snapshot."""
    n = len(st)
    arrays = {
        "data": st.data[:, :n].copy(),
        "uid": st.uid[:n].copy(),
        "last_ts": st.last_ts[:n].copy(),
        "created_ts": st.created_ts[:n].copy(),
        "value_ts": st.value_ts[:, :n].copy(),
    }
    for name, states in st.windows.items():
        for k, state in enumerate(states):
            for key, array in state.to_arrays().items():
                arrays[f"w/{name}/{k}/{key}"] = np.array(array[:n], copy=True)
    text = {name: values[:n].tolist() for name, values in st.text.items()}
    meta = {"ids": list(st.ids), "parents": list(st.parents), "text": text}
    return meta, arrays


def import_state(ctype: CompiledType, meta: dict, arrays: dict[str, np.ndarray]) -> TypeState:
    """The inverse of `export_state` (same type version)."""
    n = len(meta["ids"])
    st = TypeState(ctype, max(INITIAL_CAPACITY, n))
    st.ids = list(meta["ids"])
    st.parents = list(meta["parents"])
    st.index = {twin: row for row, twin in enumerate(st.ids)}
    st.data[:, :n] = arrays["data"]
    st.uid[:n] = arrays["uid"]
    st._map_uids(st.uid[:n], np.arange(n))
    st.last_ts[:n] = arrays["last_ts"]
    st.created_ts[:n] = arrays["created_ts"]
    for name, values in meta.get("text", {}).items():  # none in older snapshots
        if name in st.text:
            st.text[name][:n] = values
    if "value_ts" in arrays:
        st.value_ts[:, :n] = arrays["value_ts"]
    else:  # a snapshot from before stamped values: nothing older than its twin's newest applies
        st.value_ts[:, :n] = st.last_ts[:n]
    for name in ctype.derived_order:
        specs = ctype.compiled[name].windows
        restored = []
        for k, spec in enumerate(specs):
            prefix = f"w/{name}/{k}/"
            parts = {key[len(prefix) :]: a for key, a in arrays.items() if key.startswith(prefix)}
            state = spec.state_from_arrays(parts)
            state.grow(st.capacity)
            restored.append(state)
        st.windows[name] = restored
    return st
