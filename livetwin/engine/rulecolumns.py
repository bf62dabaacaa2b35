"""Rules as columns: the raise and clear times of a type's rules over whole applied batches,
computed with NumPy instead of one Python step per observation (`rules.evaluate`).

The same pending -> raise -> clear state machine as `rules.step`, per twin and rule, but each
twin's observations are walked one alarm cycle at a time for all twins at once: the next
observation where the condition holds (pending), the first one `for` later (raise) or where it
stops holding (raise or drop), the next one that ends the alarm (clear). Only raises and clears
come out (what a back-test compares), without values or messages. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np

from livetwin.engine import rules
from livetwin.engine.engine import Applied
from livetwin.spec.types import CompiledType

NEVER = np.iinfo(np.int64).min  # "not pending"


class Change(NamedTuple):
    """An alarm raised (`at` = since + for) or cleared (`at` = the observation's time)."""

    kind: str  # "raise" | "clear"
    rule: str
    twin: str
    at: int
    since: int = 0


class _PerUid:
    """One rule's state by twin uid: an open alarm, the time a condition began to hold."""

    def __init__(self) -> None:
        self.open = np.zeros(64, dtype=bool)
        self.since = np.full(64, NEVER, dtype=np.int64)

    def room(self, top: int) -> None:
        if top >= len(self.open):
            size = 2 * top + 1
            self.open = np.concatenate([self.open, np.zeros(size - len(self.open), dtype=bool)])
            self.since = np.concatenate(
                [self.since, np.full(size - len(self.since), NEVER, dtype=np.int64)]
            )

    def copy(self) -> _PerUid:
        out = _PerUid()
        out.open, out.since = self.open.copy(), self.since.copy()
        return out


class RuleColumns:
    """Rules of one type (`names`, all of them when None) evaluated batch by batch.

    `evaluate` returns the raises and clears an applied batch causes, in the order the per-row
    engine gives them per rule and twin; `due` fires conditions held long enough by `now`.
    """

    def __init__(self, ctype: CompiledType, names: Iterable[str] | None = None) -> None:
        self.ctype = ctype
        self.names = tuple(ctype.rules if names is None else names)
        self.inputs = rules.RuleState()  # what `rules.observed` carries forward (`last`)
        self.state = {name: _PerUid() for name in self.names}

    def subset(self, ctype: CompiledType, keep: Iterable[str], names: Iterable[str]) -> RuleColumns:
        """Rules `names` of `ctype` evaluated from here on: those in `keep` with this one's
        state (pending conditions, open alarms), the others afresh; the inputs carried along."""
        out = RuleColumns(ctype, names)
        for name in set(keep) & set(self.state) & set(out.state):
            out.state[name] = self.state[name].copy()
        out.inputs = rules.RuleState(last=_copy_last(self.inputs.last))
        return out

    def retarget(self, ctype: CompiledType) -> None:
        """A new version of the type: a rule whose condition changed loses its pending
        conditions (its open alarms stay), a new rule starts afresh (as `rules.retarget`)."""
        for name, rule in ctype.rules.items():
            old = self.ctype.rules.get(name)
            if name not in self.state:
                self.state[name] = _PerUid()
            elif old is None or old.when.source != rule.when.source:
                self.state[name].since[:] = NEVER
        self.names = tuple(ctype.rules)
        self.ctype = ctype

    def evaluate(self, applied: Applied, read: rules.ReadCurrent) -> list[Change]:
        """The raises and clears of the rules over one applied part of the type."""
        todo = [self.ctype.rules[name] for name in self.names]
        seen = rules.observed(self.inputs, self.ctype, applied, read, todo)
        if seen is None:
            return []
        m = len(seen.rows)
        starts = np.flatnonzero(seen.starts)
        ends = np.append(starts[1:], m)
        uids = seen.uids[starts]
        top = int(uids.max())
        out: list[Change] = []
        for rule in todo:
            when = rule.when.evaluate(seen.env, size=m)
            holds = (when != 0) & ~np.isnan(when)
            if rule.clear is not None:
                cleared = rule.clear.evaluate(seen.env, size=m)
                ends_alarm = (cleared != 0) & ~np.isnan(cleared)
            else:
                ends_alarm = when == 0
            st = self.state[rule.name]
            st.room(top)
            found = _walk(
                seen.ts, starts, ends, holds, ends_alarm, st.open[uids], st.since[uids], rule.for_ms
            )
            kinds, groups, at, since, is_open, pending = found
            st.open[uids], st.since[uids] = is_open, pending
            twins = [applied.twins[i] for i in seen.rows[starts[groups]].tolist()]
            for kind, twin, a, s in zip(
                kinds.tolist(), twins, at.tolist(), since.tolist(), strict=True
            ):
                out.append(Change("raise" if kind else "clear", rule.name, twin, a, s))
        return out

    def due(self, now: int, twin_of: Callable[[np.ndarray], list[str]]) -> list[Change]:
        """Fire the conditions that have held `for` long enough by `now` (`twin_of`: the twin
        ids of uids)."""
        out = []
        for name in self.names:
            rule, st = self.ctype.rules[name], self.state[name]
            ready = np.flatnonzero((st.since != NEVER) & (st.since + rule.for_ms <= now))
            for uid, twin in zip(ready.tolist(), twin_of(ready), strict=True):
                since = int(st.since[uid])
                out.append(Change("raise", name, twin, since + rule.for_ms, since))
            st.since[ready] = NEVER
            st.open[ready] = True
        return out


def _copy_last(last: dict[str, rules.LastValues]) -> dict[str, rules.LastValues]:
    copied = {}
    for name, values in last.items():
        new = rules.LastValues()
        new.slot_of_uid = values.slot_of_uid.copy()
        new.columns = {n: c.copy() for n, c in values.columns.items()}
        new.size = values.size
        copied[name] = new
    return copied


def _next(mask: np.ndarray) -> np.ndarray:
    """For each position p (and p = len(mask)), the first position >= p where `mask` holds
    (len(mask) if none)."""
    m = len(mask)
    at = np.where(mask, np.arange(m), m)
    out = np.empty(m + 1, dtype=np.int64)
    out[m] = m
    out[:m] = np.minimum.accumulate(at[::-1])[::-1]
    return out


def _add(changes: list, kind: int, groups, at, since, order: float) -> None:
    """Collect changes of `kind` for twin `groups`; `order` sorts them within a twin."""
    if len(groups):
        n = len(groups)
        changes.append(
            (
                np.full(n, kind, dtype=np.int64),
                groups,
                np.asarray(at, dtype=np.int64),
                np.broadcast_to(np.asarray(since, dtype=np.int64), (n,)),
                np.full(n, order),
            )
        )


def _walk(ts, starts, ends, holds, ends_alarm, is_open, since, for_ms) -> tuple:
    """Run the state machine over each twin's observations `[starts[g], ends[g])` (ts not
    decreasing within a twin) from its state (`is_open`, pending `since`).

    Returns the changes (kind 1 raise / 0 clear, twin group, at, since) in per-twin order, and
    each twin's state after its last observation.
    """
    m = len(ts)
    is_open, since = is_open.copy(), since.copy()
    next_hold, next_gap, next_end = _next(holds), _next(~holds), _next(ends_alarm)
    # ts searchable per twin: key = group * span + (ts - t0), increasing along the batch (no
    # overflow below 2**63 ms * twins, e.g. 100,000 twins in a chunk spanning 2,900 years)
    group = np.repeat(np.arange(len(starts)), ends - starts)
    t0, span = int(ts.min()), int(ts.max() - ts.min()) + 2
    key = group * span + (ts - t0)
    pos = starts.copy()
    changes: list[tuple[np.ndarray, ...]] = []
    cycle = 0
    # only twins whose condition holds somewhere, or that start open or pending, have a cycle
    holding = np.add.reduceat(holds, starts) > 0
    active = np.flatnonzero(holding | is_open | (since != NEVER))
    while len(active):
        # an open alarm: cleared at the next observation that ends it
        g = active[is_open[active]]
        c = next_end[pos[g]]
        done = c >= ends[g]
        hit = g[~done]
        _add(changes, 0, hit, ts[c[~done]], 0, cycle)
        is_open[hit] = False
        pos[hit] = c[~done] + 1
        closed = g[done]  # open to the end of the batch
        # idle: pending from the next observation where the condition holds
        g = active[~is_open[active] & (since[active] == NEVER)]
        g = g[pos[g] < ends[g]]
        s = next_hold[pos[g]]
        idle = s >= ends[g]
        pos[g[~idle]] = s[~idle]
        since[g[~idle]] = ts[s[~idle]]
        quiet = g[idle]
        # pending: raised at the first observation `for` after it began while it still holds,
        # or at the observation where it stops holding if that is late enough, else dropped
        g = active[~is_open[active] & (since[active] != NEVER)]
        g = g[pos[g] < ends[g]]
        due = since[g] + for_ms
        target = np.clip(due - t0, 0, span - 1)
        f = np.maximum(np.searchsorted(key, g * span + target), pos[g])
        gap = next_gap[pos[g]]
        stop = np.minimum(gap, ends[g])
        fire_in = f < stop
        at_gap = ~fire_in & (gap < ends[g])
        late = at_gap & (ts[np.minimum(gap, m - 1)] >= due)
        raised = fire_in | late
        r = g[raised]
        _add(changes, 1, r, due[raised], since[r], cycle + 0.25)
        gap_clear = late & ends_alarm[np.minimum(gap, m - 1)]
        c = g[gap_clear]
        _add(changes, 0, c, ts[gap[gap_clear]], 0, cycle + 0.5)
        is_open[g[fire_in]] = True
        is_open[g[late & ~gap_clear]] = True
        pos[g[fire_in]] = f[fire_in] + 1
        pos[g[at_gap]] = gap[at_gap] + 1
        since[g[raised | at_gap]] = NEVER
        held = g[~raised & ~at_gap]  # pending to the end of the batch
        finished = np.concatenate([closed, quiet, held])
        left = np.ones(len(starts), dtype=bool)
        left[finished] = False
        active = active[left[active] & (pos[active] < ends[active])]
        cycle += 1
    if not changes:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, is_open, since
    kinds, groups, at, began, order = (
        np.concatenate(parts) for parts in zip(*changes, strict=True)
    )
    sort = np.lexsort((order, groups))  # per twin, in the order they happened
    return kinds[sort], groups[sort], at[sort], began[sort], is_open, since
