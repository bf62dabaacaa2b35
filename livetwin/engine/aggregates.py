"""Parents' aggregates over their children (`sum(children.flow)`), kept current by the engine.

Each (child type, parent type) pair keeps a child-row -> parent-row index and, built lazily after
links change, the children grouped by parent; a batch marks the parents of the twins it changed
dirty, and their aggregates (and the derived values that use them) are recomputed for those
parents only, as a few gathers and bincount / reduceat calls, then up to their own parents.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from livetwin.engine.state import TypeState
from livetwin.expr import AggregateSpec, Compiled, reduce_groups
from livetwin.expr.aggregates import Partial
from livetwin.spec.aggregates import child_filter, contribution

Updated = tuple[TypeState, np.ndarray, np.ndarray]
"""Parents whose aggregates a batch changed: (their type state, rows, time of the update)."""

_OLDEST = np.iinfo(np.int64).min


class Links:
    """The children of one type under the parents of one type.

    `rows[child row]` is the parent's row (-1: no parent of this type); `specs` are the
    parent's aggregates the child type contributes to, with the child column they read (None
    to count children) and their `where` condition compiled for the child type.
    """

    def __init__(self, child: TypeState, parent: TypeState):
        self.child, self.parent = child, parent
        index = parent.index
        self.rows = np.fromiter(
            (-1 if p is None else index.get(p, -1) for p in child.parents), np.int64, len(child)
        )
        self.specs: list[tuple[AggregateSpec, int | None, Compiled | None]] = []
        for spec in parent.ctype.aggregates:
            if spec.child_type not in (None, child.ctype.name):
                continue
            if contribution(spec, child.ctype) is not None:
                continue
            column = child.col[spec.name] if spec.name else None
            self.specs.append((spec, column, child_filter(spec, child.ctype)))
        self.reads = {s.name for s, _, _ in self.specs if s.name} | {
            n for _, _, f in self.specs if f is not None for n in f.names
        }
        self._grouped: tuple[np.ndarray, np.ndarray] | None = None

    def moved(self, rows: Iterable[int]) -> None:
        """Children (new ones or with a new parent) whose parent row to look up again."""
        n = len(self.child)
        if len(self.rows) < n:
            grown = np.full(max(n, 2 * len(self.rows)), -1, dtype=np.int64)
            grown[: len(self.rows)] = self.rows
            self.rows = grown
        index, parents = self.parent.index, self.child.parents
        for r in rows:
            p = parents[r]
            self.rows[r] = -1 if p is None else index.get(p, -1)
        self._grouped = None

    def children(self, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(child rows, group) of the children of `parents`: group k holds those of parents[k],
        groups ascending."""
        order, offsets = self._group()
        starts = offsets[parents]
        counts = offsets[parents + 1] - starts
        groups = np.repeat(np.arange(len(parents)), counts)
        ends = np.cumsum(counts)
        positions = np.arange(ends[-1] if len(ends) else 0) + np.repeat(
            starts - ends + counts, counts
        )
        return order[positions], groups

    def _group(self) -> tuple[np.ndarray, np.ndarray]:
        n_parents = len(self.parent)
        if self._grouped is None or len(self._grouped[1]) != n_parents + 1:
            p = self.rows[: len(self.child)]
            linked = np.flatnonzero(p >= 0)
            order = linked[np.argsort(p[linked], kind="stable")]
            offsets = np.zeros(n_parents + 1, dtype=np.int64)
            np.cumsum(np.bincount(p[linked], minlength=n_parents), out=offsets[1:])
            self._grouped = (order, offsets)
        return self._grouped

    def partials(self, parents: np.ndarray) -> dict[str, Partial]:
        """This child type's part of each aggregate it contributes to, for `parents`."""
        child_rows, groups = self.children(parents)
        n, data, col = len(parents), self.child.data, self.child.col
        masks: dict[str, np.ndarray] = {}
        out = {}
        for spec, column, where in self.specs:
            if where is None:
                valid = np.ones(len(child_rows), dtype=bool)
            elif spec.where in masks:
                valid = masks[spec.where]
            else:
                env = {name: data[col[name], child_rows] for name in where.names}
                with np.errstate(invalid="ignore"):
                    valid = where.evaluate(env, size=len(child_rows)) > 0.5
                masks[spec.where] = valid
            values = None if column is None else data[column, child_rows]
            out[spec.key] = reduce_groups(spec.func, values, valid, groups, n)
        return out


class Aggregator:
    """Keeps the aggregates of every parent type in `states` current (one per engine)."""

    def __init__(self, states: dict[str, TypeState]):
        self.states = states
        self._links: dict[tuple[str, str], Links] = {}
        self._fresh: dict[str, TypeState] = {}  # parent type -> the state whose values are current
        self._dirty: dict[str, list[np.ndarray]] = {}  # parent type -> rows a child left

    # ---- the type graph ------------------------------------------------------------------

    def parent_types(self, child: str) -> list[TypeState]:
        """Types with aggregates that list `child` among their children."""
        return [
            s for s in self.states.values() if s.ctype.aggregates and child in s.ctype.spec.children
        ]

    def feeds(self, child: str) -> bool:
        """Whether a batch of `child` may change some parent's aggregates."""
        return bool(self.parent_types(child))

    def links(self, child: TypeState, parent: TypeState) -> Links:
        key = (child.ctype.name, parent.ctype.name)
        links = self._links.get(key)
        if links is None or links.child is not child or links.parent is not parent:
            links = self._links[key] = Links(child, parent)
        return links

    # ---- changes -------------------------------------------------------------------------

    def rebuild(self, name: str) -> None:
        """A type version was installed, or twins of the type were removed: rebuild its links
        and refresh the aggregates of it and of the types above it now."""
        self._links = {k: v for k, v in self._links.items() if name not in k}
        stale, todo = set(), [name]
        while todo:
            t = todo.pop()
            if t not in stale:
                stale.add(t)
                todo.extend(p.ctype.name for p in self.parent_types(t))
        for t in stale:
            self._fresh.pop(t, None)
        for t in stale:
            self.ready(self.states[t])

    def unlinking(self, child: TypeState, rows: list[int]) -> None:
        """Children about to get another parent: their old parents become dirty."""
        for parent in self.parent_types(child.ctype.name):
            old = self.links(child, parent).rows[rows]
            self._dirty.setdefault(parent.ctype.name, []).append(old[old >= 0])

    def linked(self, child: TypeState, rows: list[int]) -> None:
        """Children that are new or got another parent (after `child.parents` changed)."""
        for key, links in self._links.items():
            if key[0] == child.ctype.name and links.child is child:
                links.moved(rows)

    def ready(self, st: TypeState) -> None:
        """Make all aggregates of a type current (after a type change or a restored state)."""
        if not st.ctype.aggregates or self._fresh.get(st.ctype.name) is st:
            return
        self._fresh[st.ctype.name] = st
        for child in set(st.ctype.spec.children):
            if child in self.states and child != st.ctype.name:
                self.ready(self.states[child])
        self.refresh(st, np.arange(len(st)))

    def changed(self, st: TypeState, rows: np.ndarray, ts: np.ndarray) -> list[Updated]:
        """Refresh the parents of the twins at `rows` (observations at `ts`), and theirs in turn
        while what they aggregate changed; returns the parents updated, in that order."""
        out: list[Updated] = []
        frontier = [(st, rows, ts, None)]
        for _ in range(len(self.states) + 1):  # a cycle between types cannot loop forever
            next_frontier = []
            for child, child_rows, child_ts, changed_names in frontier:
                for parent in self.parent_types(child.ctype.name):
                    update = self._update(parent, child, child_rows, child_ts, changed_names)
                    if update is not None:
                        out.append(update)
                        next_frontier.append((*update, set(parent.ctype.aggregated)))
            if not next_frontier:
                break
            frontier = next_frontier
        return out

    def _update(self, parent, child, rows, ts, changed_names) -> Updated | None:
        self.ready(parent)
        links = self.links(child, parent)
        if changed_names is not None and not links.reads & changed_names:
            return None
        found = links.rows[rows]
        linked = found >= 0
        parent_rows, parent_ts = found[linked], ts[linked]
        left = self._dirty.pop(parent.ctype.name, [])
        if left:
            moved = np.concatenate(left)
            newest = ts.max() if len(ts) else 0
            parent_rows = np.concatenate([parent_rows, moved])
            parent_ts = np.concatenate([parent_ts, np.full(len(moved), newest, dtype=np.int64)])
        if not len(parent_rows):
            return None
        dirty, inverse = np.unique(parent_rows, return_inverse=True)
        at = np.full(len(dirty), _OLDEST, dtype=np.int64)
        np.maximum.at(at, inverse, parent_ts)
        self.refresh(parent, dirty)
        return parent, dirty, at

    def refresh(self, st: TypeState, rows: np.ndarray) -> None:
        """Recompute the aggregates of the parents at `rows` and the derived values using them."""
        ctype, n = st.ctype, len(rows)
        parts = {spec.key: Partial.empty(n) for spec in ctype.aggregates}
        for child in dict.fromkeys(ctype.spec.children):
            child_state = self.states.get(child)
            if child_state is None:
                continue
            links = self.links(child_state, st)
            if not links.specs:
                continue
            for key, part in links.partials(rows).items():
                parts[key].add(part)
        for spec in ctype.aggregates:
            st.aggregates[spec.key][rows] = parts[spec.key].result(spec.func)
        for _ in st.derive(ctype.aggregated, rows):  # stores each value as it goes
            pass
