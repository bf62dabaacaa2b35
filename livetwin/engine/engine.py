"""The engine: applies observation batches to columnar per-type state, in waves. Pure: no I/O.

Wave k of a batch holds the k-th observation of every twin in it, so each wave is one vectorised
step and per-twin order is exactly the batch (journal) order. An observation older than its
twin's newest applied one is kept in history and changes only the twin's stamped values
(parameters and calibration outputs) that nothing newer has set; it evaluates nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from livetwin.engine.aggregates import Aggregator
from livetwin.engine.batch import Batch
from livetwin.engine.state import TypeState
from livetwin.errors import Conflict, InvalidInput, NotFound
from livetwin.expr import EvalContext, compile_expression
from livetwin.spec.types import CompiledType

LIFECYCLE = ("twin", "remove", "drop")
"""Journal kinds of lifecycle changes (`Engine.change`), beside "obs" and "type"."""


@dataclass
class Applied:
    """What one batch did, for history, the event bus and the caller."""

    type: str
    version: int
    twins: list[str]
    uids: np.ndarray  # int64 (M,)
    ts: np.ndarray  # int64 (M,)
    values: np.ndarray | None  # float64 (M, n_columns): observed inputs (NaN = absent) and
    # derived values after each observation; None when apply(record=False)
    fresh: np.ndarray  # bool (M,): False for a late observation that did not change state
    created: list[str]
    parents: list[Applied] = field(default_factory=list)
    """Parents whose aggregates over children the batch changed, in the order updated: one
    row per parent, inputs absent (NaN) and the derived values as they now are."""
    text: dict[str, np.ndarray] = field(default_factory=dict)
    """The text attributes the type's rules read, per observation, as they are after the
    batch (object arrays, None where unset)."""

    def all(self) -> list[Applied]:
        """This batch's rows and then its parents' updates."""
        return [self, *self.parents]


@dataclass
class RowProblem:
    position: int  # index into the batch
    field: str
    error: str
    fix: str


class Engine:
    """All twins of all types. Not thread-safe: the platform serialises writers."""

    def __init__(self) -> None:
        self.states: dict[str, TypeState] = {}
        self.type_of: dict[str, str] = {}
        self.next_uid = 1
        self.aggregates = Aggregator(self.states)

    # ---- types -------------------------------------------------------------------------------

    def define_type(self, ctype: CompiledType) -> None:
        """Install a type version; existing twins of the type migrate to it."""
        old = self.states.get(ctype.name)
        self.states[ctype.name] = TypeState(ctype) if old is None else old.migrate(ctype)
        self.aggregates.rebuild(ctype.name)

    def ctype(self, name: str) -> CompiledType:
        state = self.states.get(name)
        if state is None:
            raise NotFound(
                f"no twin type '{name}'", field="type", fix=f"declare it with PUT /api/types/{name}"
            )
        return state.ctype

    @property
    def types(self) -> dict[str, CompiledType]:
        return {name: s.ctype for name, s in self.states.items()}

    # ---- writes ------------------------------------------------------------------------------

    def check(self, batch: Batch, pending: dict[str, str] | None = None) -> list[RowProblem]:
        """Problems that depend on twin state: a twin of another type, an unknown parent.

        `pending` maps twins that earlier batches of the same request create to their type.
        """
        problems: list[RowProblem] = []
        known, pending = self.type_of, pending or {}

        def type_of(twin: str) -> str | None:
            return known.get(twin) or pending.get(twin)

        wrong: list[int] = []
        seen_types = set(map(known.get, batch.twins))
        if pending:
            seen_types |= set(map(pending.get, batch.twins))
        if not seen_types <= {None, batch.type}:  # rare: find the rows at fault
            wrong = [i for i, t in enumerate(batch.twins) if type_of(t) not in (None, batch.type)]
        for i in wrong:
            twin = batch.twins[i]
            problems.append(
                RowProblem(
                    i,
                    "type",
                    f"twin '{twin}' is a '{type_of(twin)}', not a '{batch.type}'",
                    "send the twin's own type, or use another twin id",
                )
            )
        if batch.parents is not None:
            seen = set()
            for i, (twin, parent) in enumerate(zip(batch.twins, batch.parents, strict=True)):
                seen.add(twin)
                if parent is None:
                    continue
                problem = self._parent_problem(twin, parent, batch.type, seen, type_of)
                if problem:
                    problems.append(RowProblem(i, "parent", *problem))
        return problems

    def _parent_problem(self, twin, parent, type_name, seen, type_of):
        if parent == twin:
            return f"twin '{twin}' cannot be its own parent", "name another twin as parent"
        parent_type = type_of(parent) or (type_name if parent in seen else None)
        if parent_type is None:
            return (
                f"parent twin '{parent}' does not exist",
                "create the parent first (send it an observation), then its children",
            )
        allowed = self.states[parent_type].ctype.spec.children
        if type_name not in allowed:
            return (
                f"a '{parent_type}' twin cannot have '{type_name}' children "
                f"(allowed: {', '.join(allowed) or 'none'})",
                f"add '{type_name}' to children of type '{parent_type}'",
            )
        return None

    def apply(
        self, batch: Batch, *, record: bool = True, on_wave: Callable | None = None
    ) -> Applied:
        """Apply a checked batch. Creates twins on their first observation. `record=False`
        skips the per-observation history rows (replay when history is already stored).
        `on_wave(state, rows, ts, present, positions)` runs after each wave's derived values
        (a back-test's candidate overlay evaluates its own there)."""
        st = self.states[batch.type]
        self.aggregates.ready(st)
        rows, created = self._rows(st, batch)
        if batch.attrs:
            st.set_text(rows, batch.attrs)
        m = len(batch)
        col_of_input = np.array([st.col[n] for n in batch.names], dtype=np.int64)
        stamped = [(k, st.col[n], st.slot[n]) for k, n in enumerate(batch.names) if n in st.slot]
        out = np.full((m, len(st.ctype.columns)), np.nan) if record else None
        if record:
            out[:, col_of_input] = batch.values.T
        fresh = np.ones(m, dtype=bool)
        for sel in _waves(rows):
            r = rows[sel]
            t = batch.ts[sel]
            late = t < st.last_ts[r]
            if late.any():
                fresh[sel[late]] = False
                if stamped:
                    _set_stamped(st, stamped, batch.values, sel[late], r[late], t[late])
                sel, r, t = sel[~late], r[~late], t[~late]
            values = batch.values[:, sel]
            given = ~np.isnan(values)
            present = dict(zip(batch.names, given, strict=True))
            if given.all():  # the common case: every observation sets every name
                st.data[col_of_input[:, None], r] = values
            else:
                for k, j in enumerate(col_of_input.tolist()):
                    seen = given[k]
                    st.data[j, r[seen]] = values[k, seen]
            for k, _, slot in stamped:
                seen = present[batch.names[k]]
                st.value_ts[slot, r[seen]] = t[seen]
            st.last_ts[r] = t
            self._evaluate(st, r, t, present, sel, out)
            if on_wave is not None:
                on_wave(st, r, t, present, sel)
        updated = self.aggregates.changed(st, rows, batch.ts)
        return Applied(
            st.ctype.name,
            st.ctype.version,
            batch.twins,
            st.uid[rows],
            batch.ts,
            out,
            fresh,
            created,
            [_parent_update(*u, record) for u in updated],
            {name: st.text[name][rows] for name in st.ctype.rule_text},
        )

    def _rows(self, st: TypeState, batch: Batch) -> tuple[np.ndarray, list[str]]:
        """The state row of each observation; twins seen for the first time are created.

        A journaled batch carries the twins' uids, so replay finds rows with one array gather
        instead of a dictionary lookup per observation.
        """
        if batch.uids is not None:
            rows = st.rows_of(batch.uids)
        else:
            rows = np.fromiter(map(st.index.get, batch.twins, repeat(-1)), np.int64, len(batch))
        missing = np.flatnonzero(rows < 0)
        created: list[str] = []
        if len(missing):
            if batch.uids is not None:  # the first observation of each new uid, in batch order
                _, first = np.unique(batch.uids[missing], return_index=True)
                positions = missing[np.sort(first)].tolist()
                created = [batch.twins[i] for i in positions]
            else:
                seen = {}  # new twin -> position of its first observation
                for i in missing.tolist():
                    seen.setdefault(batch.twins[i], i)
                created, positions = list(seen), list(seen.values())
            parents = (
                [batch.parents[i] for i in positions] if batch.parents else [None] * len(created)
            )
            if batch.uids is not None:
                uids = batch.uids[positions]
            else:
                uids = np.arange(self.next_uid, self.next_uid + len(created), dtype=np.int64)
            start = len(st)
            st.add(created, parents, uids, batch.ts[positions])
            self.aggregates.linked(st, range(start, len(st)))
            self.next_uid = max(self.next_uid, int(uids.max()) + 1)
            self.type_of.update(dict.fromkeys(created, st.ctype.name))
            if batch.uids is not None:
                rows[missing] = st.rows_of(batch.uids[missing])
            else:
                rows[missing] = [st.index[batch.twins[i]] for i in missing.tolist()]
        if batch.parents is not None:
            moved = {}
            for i, parent in enumerate(batch.parents):
                if parent is not None and st.parents[rows[i]] != parent:
                    moved[int(rows[i])] = parent
            if moved:
                self.aggregates.unlinking(st, list(moved))
                for row, parent in moved.items():
                    st.parents[row] = parent
                self.aggregates.linked(st, list(moved))
        return rows, created

    def _evaluate(self, st, r, t, present, sel, out) -> None:
        """Evaluate the derived values for rows r (one wave) in dependency order."""
        ctype = st.ctype
        if not ctype.derived_order:
            return
        absent = np.zeros(len(r), dtype=bool)
        for name in st.col:
            present.setdefault(name, absent)

        def window(name: str) -> EvalContext:
            return EvalContext(ts=t, rows=r, present=present, states=st.windows[name])

        for name, j, value in st.derive(ctype.derived_order, r, window):
            present[name] = _any_present(present, ctype.compiled[name].names, absent)
            if out is not None:
                out[sel, j] = value

    # ---- lifecycle (journal kinds "twin", "remove", "drop") ----------------------------------

    def change(self, kind: str, body: dict, ts: int) -> dict:
        """Apply one lifecycle entry (checked first: nothing changes when it is refused);
        returns what it did. `body` is the journaled form; `ts` its time."""
        if kind == "twin":
            return self._put_twin(body, ts)
        if kind == "remove":
            return self._remove(body["type"], body["ids"])
        if kind == "drop":
            return self._drop(body["type"], body.get("cascade", False))
        raise ValueError(f"not a lifecycle journal kind: {kind!r}")

    def _put_twin(self, body: dict, ts: int) -> dict:
        """Create a twin before its first observation (`create`), or set its attributes and
        parent link; each attribute is checked against the type."""
        twin, create = body["id"], body.get("create", False)
        if create:
            if twin in self.type_of:
                raise Conflict(
                    f"twin '{twin}' already exists",
                    field="id",
                    fix=f"change it with PATCH /api/twins/{twin}, or choose another id",
                )
            st = self.states[self.ctype(body["type"]).name]
        else:
            st, _ = self.locate(twin)
        attributes = body.get("attributes") or {}
        for name, value in attributes.items():
            check_attribute(st.ctype, name, value)
        parent = body.get("parent")
        if parent is not None:
            problem = self._parent_problem(twin, parent, st.ctype.name, set(), self.type_of.get)
            if problem:
                raise InvalidInput(problem[0], field="parent", fix=problem[1])
        if create:
            uid = body.get("uid") or self.next_uid
            st.add([twin], [parent], np.array([uid], dtype=np.int64), np.array([ts]))
            self.next_uid = max(self.next_uid, uid + 1)
            self.type_of[twin] = st.ctype.name
            self.aggregates.linked(st, [len(st) - 1])
            body["uid"] = uid  # journaled: replay gives the twin the same uid
        row = st.index[twin]
        if parent is not None and st.parents[row] != parent:
            self.aggregates.unlinking(st, [row])
            st.parents[row] = parent
            self.aggregates.linked(st, [row])
            self.aggregates.rebuild(st.ctype.name)
        if attributes:
            rows = np.array([row])
            st.set_text(rows, {n: [v] for n, v in attributes.items()})
        return {"id": twin, "type": st.ctype.name, "created": create}

    def _remove(self, type_name: str, ids: list[str]) -> dict:
        """Remove twins of one type; their children lose their parent link."""
        st = self.states[self.ctype(type_name).name]
        missing = [t for t in ids if st.index.get(t) is None]
        if missing:
            raise NotFound(f"no twin '{missing[0]}' of type '{type_name}'", field="id")
        self.states[type_name] = st.remove(np.array([st.index[t] for t in ids], dtype=np.int64))
        for twin in ids:
            del self.type_of[twin]
        self._orphan(set(ids))
        self.aggregates.rebuild(type_name)
        return {"type": type_name, "removed": list(ids)}

    def _drop(self, type_name: str, cascade: bool) -> dict:
        """Remove a type, and with `cascade` all its twins."""
        st = self.states[self.ctype(type_name).name]
        removed = list(st.ids)
        if removed and not cascade:
            raise Conflict(
                f"type '{type_name}' still has {len(removed)} twins",
                field="type",
                fix=f"delete them first, or DELETE /api/types/{type_name}?cascade=true",
            )
        del self.states[type_name]
        for twin in removed:
            del self.type_of[twin]
        self._orphan(set(removed))
        for name in self.states:
            self.aggregates.rebuild(name)
        return {"type": type_name, "removed": removed}

    def _orphan(self, gone: set[str]) -> None:
        """Children of removed twins lose their parent link."""
        for st in self.states.values():
            rows = [r for r, p in enumerate(st.parents) if p in gone]
            if rows:
                self.aggregates.unlinking(st, rows)
                for r in rows:
                    st.parents[r] = None
                self.aggregates.linked(st, rows)

    # ---- reads -------------------------------------------------------------------------------

    def locate(self, twin: str) -> tuple[TypeState, int]:
        type_name = self.type_of.get(twin)
        if type_name is None:
            raise NotFound(
                f"no twin '{twin}'",
                field="id",
                fix="twins are created by their first observation: POST /api/ingest",
            )
        st = self.states[type_name]
        return st, st.index[twin]

    def twin(self, twin: str) -> dict:
        """Everything known about one twin (a row read, never a scan)."""
        st, row = self.locate(twin)
        spec = st.ctype.spec

        def values(names: Iterable[str]) -> dict:
            return {n: json_number(st.data[st.col[n], row]) for n in names}

        return {
            "id": twin,
            "type": st.ctype.name,
            "version": st.ctype.version,
            "parent": st.parents[row],
            "created": int(st.created_ts[row]),
            "updated": int(st.last_ts[row]) if st.last_ts[row] >= 0 else None,
            "properties": values(st.ctype.properties),
            "parameters": values(spec.parameters),
            "derived": values(st.ctype.derived_order),
            "attributes": {name: column[row] for name, column in st.text.items()},
        }

    def find(
        self, *, type: str | None = None, parent: str | None = None, where: str | None = None
    ) -> list[tuple[TypeState, np.ndarray]]:
        """Rows matching the filters, per type state, in creation order."""
        if where is not None and type is None:
            raise InvalidInput(
                "where= needs type=, because names belong to a twin type",
                field="where",
                fix="add &type=<type name> to the query",
            )
        states = [self.states[self.ctype(type).name]] if type else list(self.states.values())
        found = []
        for st in states:
            n = len(st)
            mask = np.ones(n, dtype=bool)
            if parent is not None:
                mask &= np.fromiter((p == parent for p in st.parents), bool, n)
            if where is not None:
                compiled = compile_expression(
                    where, st.col, allow_windows=False, field="where", text_names=st.text
                )
                env = {name: st.column(name) for name in compiled.names}
                with np.errstate(invalid="ignore"):
                    mask &= compiled.evaluate(env, size=n) > 0.5
            found.append((st, np.flatnonzero(mask)))
        return found

    def twin_count(self) -> int:
        return len(self.type_of)


def _any_present(present: dict, names: Iterable[str], absent: np.ndarray) -> np.ndarray:
    result = absent
    for name in names:
        p = present.get(name)
        if p is not None:
            result = result | p
    return result


def _waves(rows: np.ndarray) -> list[np.ndarray]:
    """Positions of the batch split into waves: wave k holds each twin's k-th observation."""
    m = len(rows)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.empty(m, dtype=bool)
    starts[:1] = True
    np.not_equal(sorted_rows[1:], sorted_rows[:-1], out=starts[1:])
    if starts.all():
        return [np.arange(m)]
    positions = np.arange(m)
    group_start = np.maximum.accumulate(np.where(starts, positions, 0))
    rank = np.empty(m, dtype=np.int64)
    rank[order] = positions - group_start
    by_rank = np.argsort(rank, kind="stable")
    counts = np.bincount(rank)
    return np.split(by_rank, np.cumsum(counts)[:-1])


def _parent_update(st: TypeState, rows: np.ndarray, ts: np.ndarray, record: bool) -> Applied:
    """What refreshing parents' aggregates did, as an Applied of the parents' type."""
    values = None
    if record:
        values = st.data[:, rows].T.copy()
        values[:, : len(st.ctype.columns) - len(st.ctype.derived_order)] = np.nan
    twins = [st.ids[r] for r in rows.tolist()]
    fresh = np.ones(len(rows), dtype=bool)
    return Applied(st.ctype.name, st.ctype.version, twins, st.uid[rows], ts, values, fresh, [])


def check_attribute(ctype: CompiledType, name: str, value: object) -> str:
    """`value` checked as text attribute `name` of `ctype` (InvalidInput naming the fix)."""
    attribute = ctype.attributes.get(name)
    if attribute is None:
        known = ", ".join(ctype.attributes) or "none"
        raise InvalidInput(
            f"type '{ctype.name}' has no attribute '{name}' (known: {known})",
            field=f"attributes.{name}",
            fix="declare it under attributes: in the type spec, or fix the name",
        )
    try:
        return attribute.check(name, value)
    except ValueError as exc:
        raise InvalidInput(str(exc), field=f"attributes.{name}", fix=attribute.fix()) from None


def json_number(x: float) -> float | None:
    """A float for JSON: NaN and infinities (unknown) become None."""
    return float(x) if math.isfinite(x) else None


def _set_stamped(st: TypeState, stamped, values, sel, r, t) -> None:
    """Late observations: set each stamped value that is newer than the one held."""
    for k, j, slot in stamped:
        v = values[k, sel]
        newer = ~np.isnan(v) & (t >= st.value_ts[slot, r])
        st.data[j, r[newer]] = v[newer]
        st.value_ts[slot, r[newer]] = t[newer]
