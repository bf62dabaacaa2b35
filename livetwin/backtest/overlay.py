"""The candidate of a back-test as an overlay on the baseline: only the derived values and rules
it changes (and those that depend on them) are evaluated a second time, over the baseline's
state and waves; everything else is the baseline's, computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from livetwin.expr import EvalContext
from livetwin.spec.rules import CompiledRule
from livetwin.spec.types import CompiledType


@dataclass(frozen=True)
class ChangeSet:
    """What the candidate evaluates itself: `derived` (in its dependency order) and `rules`."""

    derived: tuple[str, ...]
    rules: tuple[str, ...]


def same_rule(a: CompiledRule, b: CompiledRule) -> bool:
    """Whether two rules raise and clear the same alarms on the same values."""
    same_clear = (a.clear is None and b.clear is None) or (
        a.clear is not None and b.clear is not None and a.clear.source == b.clear.source
    )
    return a.when.source == b.when.source and same_clear and a.for_ms == b.for_ms


def change_set(base: CompiledType, cand: CompiledType) -> ChangeSet | None:
    """The outputs of `cand` that differ from `base`'s: derived values added or with another
    expression, those reading them (transitively), and rules added, changed or reading a changed
    value. None when the two cannot share one state: other inputs, parameters' initial values or
    attributes, or children (aggregates are kept per version)."""
    params = {n: p.value for n, p in base.spec.parameters.items()}
    if (
        set(base.inputs) != set(cand.inputs)  # (their order does not matter: read by name)
        or params != {n: p.value for n, p in cand.spec.parameters.items()}
        or set(base.attributes) != set(cand.attributes)
        or base.spec.children
        or cand.spec.children
        or cand.aggregates
    ):
        return None
    changed: list[str] = []
    for name in cand.derived_order:
        old = base.compiled.get(name)
        compiled = cand.compiled[name]
        if old is None or old.source != compiled.source or compiled.names & set(changed):
            changed.append(name)
    rules = tuple(
        name
        for name, rule in cand.rules.items()
        if name not in base.rules
        or not same_rule(rule, base.rules[name])
        or set(rule.names) & set(changed)
    )
    return ChangeSet(tuple(changed), rules)


class Overlay:
    """The candidate's changed derived values for the twins of a baseline `TypeState`, row for
    row: their columns and window states, evaluated after each of the baseline's waves (the
    engine's `on_wave`) from the baseline's values of everything else.

    It starts as the candidate engine would from the baseline's state: a changed value keeps
    the baseline's current value, and a value whose expression is the baseline's (it changes
    only through what it reads) keeps the baseline's window state; other windows start empty.
    """

    def __init__(self, cand: CompiledType, changes: ChangeSet, st) -> None:
        self.cand, self.names = cand, changes.derived
        self.col = {name: k for k, name in enumerate(self.names)}
        self.capacity = st.capacity
        self.data = np.full((len(self.names), self.capacity), np.nan)
        self.windows = {}
        for name, k in self.col.items():
            compiled = cand.compiled[name]
            if name in st.col:
                self.data[k] = st.data[st.col[name]]
            old = st.ctype.compiled.get(name)
            if old is not None and old.source == compiled.source:
                self.windows[name] = [
                    w.spec.state_from_arrays(w.to_arrays()) for w in st.windows[name]
                ]
            else:
                self.windows[name] = compiled.new_states(self.capacity)
        self.out = np.empty((0, len(self.names)))

    def begin(self, m: int) -> None:
        """A batch of `m` observations follows: its values are kept in `out` (NaN where an
        observation evaluated nothing)."""
        self.out = np.full((m, len(self.names)), np.nan)

    def wave(self, st, rows: np.ndarray, ts: np.ndarray, present: dict, sel: np.ndarray) -> None:
        """Evaluate the changed values for one wave, after the baseline's (`present` as the
        engine has it: which names each row's observation set)."""
        if st.capacity > self.capacity:
            self._grow(st.capacity)
        absent = np.zeros(len(rows), dtype=bool)
        present = dict.fromkeys(st.col, absent) | present
        env: dict[str, np.ndarray] = {}
        for name, k in self.col.items():
            compiled = self.cand.compiled[name]
            for dep in compiled.names:
                if dep not in env:
                    env[dep] = st.data[st.col[dep], rows]
            ctx = None
            if compiled.windows:
                ctx = EvalContext(ts=ts, rows=rows, present=present, states=self.windows[name])
            value = env[name] = compiled.evaluate(env, ctx, size=len(rows))
            self.data[k, rows] = value
            self.out[sel, k] = value
            seen = absent
            for dep in compiled.names:
                seen = seen | present.get(dep, absent)
            present[name] = seen

    def value(self, st, name: str, row: int) -> float:
        """The candidate's current value of `name` for the twin at `row`."""
        if name in self.col:
            return float(self.data[self.col[name], row])
        return float(st.data[st.col[name], row])

    def _grow(self, capacity: int) -> None:
        data = np.full((len(self.names), capacity), np.nan)
        data[:, : self.capacity] = self.data
        self.data, self.capacity = data, capacity
        for states in self.windows.values():
            for state in states:
                state.grow(capacity)
