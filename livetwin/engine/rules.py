"""Rule evaluation: from one applied batch and what the rules remember (`RuleState`) to the alarm
transitions it causes (a condition starts or stops pending, an alarm is raised or cleared).

Each observation is checked in per-twin order with its values as they were right after it
(sample-and-hold for inputs it did not set); `for` is measured in observation time, and `due`
fires conditions that held `for` long enough on the clock without new data. Pure: no I/O; the
caller persists the transitions (the alarm service, or a test replaying a journal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from livetwin.engine.engine import Applied, json_number
from livetwin.spec.rules import CompiledRule
from livetwin.spec.types import CompiledType
from livetwin.timefmt import format_ts

Key = tuple[str, str]  # (twin, rule)
Values = dict[str, float | None]
ReadCurrent = Callable[[str, np.ndarray, list[str]], tuple[list, dict[str, np.ndarray]] | None]
"""(type, uids, names) -> (twin id or None per uid, {name: current values}), None without the
type: how evaluation learns the state of twins it has not seen yet (`Query.current_by_uid`)."""

CLEARED = "clear condition met"
ENDED = "condition no longer holds"
DELETED = "the twin was deleted"


@dataclass
class Pending:
    """A condition that holds but not yet `for` long enough."""

    rule: CompiledRule
    since: int
    values: Values


@dataclass(frozen=True)
class Transition:
    """One change the rules ask of the alarm lifecycle, in the order they happened.

    `pending`: a condition began to hold at `at` (remember it); `dropped`: it stopped before
    `for`, or its rule changed; `raise`: it held `for` long enough (`at` = `since` + `for`);
    `clear`: the condition of the open alarm `alarm` ended at `at` (`note` says how; `alarm` is
    None when it was raised earlier in the same transitions).
    """

    kind: Literal["pending", "dropped", "raise", "clear"]
    type: str
    twin: str
    rule: str
    at: int
    since: int = 0
    severity: str = ""
    message: str = ""
    values: Values = field(default_factory=dict)
    note: str = ""
    alarm: int | None = None


class AlarmStories:
    """Alarms told from transitions alone (a back-test, a scenario, a replay check): what raised
    each one, when, and when it cleared; `stories` in the order they were raised."""

    def __init__(self) -> None:
        self.stories: list[dict] = []
        self._open: dict[tuple[str, str], dict] = {}

    def add(self, t: Transition) -> None:
        if t.kind == "raise":
            story = {
                "twin": t.twin,
                "rule": t.rule,
                "severity": t.severity,
                "message": t.message,
                "values": t.values,
                "since": format_ts(t.since),
                "raised": format_ts(t.at),
                "cleared": None,
            }
            self._open[(t.twin, t.rule)] = story
            self.stories.append(story)
        elif t.kind == "clear" and (t.twin, t.rule) in self._open:
            self._open.pop((t.twin, t.rule))["cleared"] = format_ts(t.at)


@dataclass
class RuleState:
    """What rule evaluation remembers between batches, per type name.

    `open` holds the (twin, rule) keys with an open alarm (the value is the alarm's id where the
    lifecycle knows it; evaluation adds raised keys with None and removes cleared ones);
    `pending` the conditions waiting for `for`; `last` the newest input values per twin.
    """

    open: dict[str, dict[Key, int | None]] = field(default_factory=dict)
    pending: dict[str, dict[Key, Pending]] = field(default_factory=dict)
    last: dict[str, LastValues] = field(default_factory=dict)


class LastValues:
    """The newest known value of some input columns of one type's twins, by twin uid.

    Observations carry only what they set (NaN = absent); a rule over several inputs needs the
    others' latest values, exactly as they were before each observation.
    """

    def __init__(self) -> None:
        self.slot_of_uid = np.full(64, -1, dtype=np.int64)
        self.columns: dict[str, np.ndarray] = {}
        self.size = 0

    def slots(self, uids: np.ndarray, seed) -> np.ndarray:
        """Slots of `uids`; unseen ones are added with `seed(names, new_uids)` as values."""
        if uids.max() >= len(self.slot_of_uid):
            grown = np.full(2 * int(uids.max()) + 1, -1, dtype=np.int64)
            grown[: len(self.slot_of_uid)] = self.slot_of_uid
            self.slot_of_uid = grown
        slots = self.slot_of_uid[uids]
        if (slots < 0).any():
            new = np.unique(uids[slots < 0])
            first = self.size
            self.size += len(new)
            self.slot_of_uid[new] = np.arange(first, self.size)
            seeded = seed(list(self.columns), new)
            for name, column in list(self.columns.items()):
                column = self._room(column)
                column[first : self.size] = seeded[name]
                self.columns[name] = column
            slots = self.slot_of_uid[uids]
        return slots

    def column(self, name: str, seed) -> np.ndarray:
        """The stored column `name` (added and seeded for the known twins on first use)."""
        if name not in self.columns:
            column = np.full(max(64, self.size), np.nan)
            if self.size:
                uids = np.flatnonzero(self.slot_of_uid >= 0)
                column[self.slot_of_uid[uids]] = seed([name], uids)[name]
            self.columns[name] = column
        return self.columns[name]

    def _room(self, column: np.ndarray) -> np.ndarray:
        if self.size <= len(column):
            return column
        grown = np.full(2 * self.size, np.nan)
        grown[: len(column)] = column
        return grown


# ---- one applied batch ---------------------------------------------------------------------------


def evaluate(
    state: RuleState, ctype: CompiledType, applied: Applied, read: ReadCurrent
) -> list[Transition]:
    """Run the type's rules over the batch, observation by observation, in per-twin order;
    `state` is updated and the transitions are returned in order."""
    out: list[Transition] = []
    if not ctype.rules or applied.values is None:
        return out
    fresh = np.flatnonzero(applied.fresh)  # a late observation did not change state
    if len(fresh) == 0:
        return out
    uids, ts = applied.uids[fresh], applied.ts[fresh]
    order = np.argsort(uids, kind="stable")
    uids, ts, rows = uids[order], ts[order], fresh[order]
    twins = [applied.twins[i] for i in rows.tolist()]
    m = len(rows)
    starts = np.ones(m, dtype=bool)
    np.not_equal(uids[1:], uids[:-1], out=starts[1:])
    group_start = np.maximum.accumulate(np.where(starts, np.arange(m), 0))
    seed = _seeder(ctype, applied, read)
    env = _environment(state, ctype, applied, rows, uids, starts, group_start, seed)
    for rule in ctype.rules.values():
        _run_rule(state, ctype.name, rule, env, twins, ts, starts, out)
    return out


def _environment(state, ctype, applied, rows, uids, starts, group_start, seed) -> dict:
    """The values of the names the rules read, as they were right after each observation.

    Derived values are recorded after each observation; inputs an observation did not set
    are carried forward from the twin's previous observation (or the latest known value).
    """
    index = ctype.column_index()
    inputs = set(ctype.inputs)
    names = sorted({n for rule in ctype.rules.values() for n in rule.names})
    last = state.last.setdefault(ctype.name, LastValues())
    for name in names:
        if name in inputs:
            last.column(name, seed)
    slots = last.slots(uids, seed)
    ends = np.ones(len(rows), dtype=bool)
    ends[:-1] = starts[1:]
    positions = np.arange(len(rows))
    env = {}
    for name in names:
        if name in applied.text:  # a text attribute: as it is after the batch
            env[name] = applied.text[name][rows]
            continue
        values = applied.values[rows, index[name]]
        if name in inputs:
            known = np.maximum.accumulate(np.where(np.isnan(values), -1, positions))
            inside = known >= group_start
            values = np.where(inside, values[np.maximum(known, 0)], last.columns[name][slots])
            last.columns[name][slots[ends]] = values[ends]
        env[name] = values
    return env


def _seeder(ctype: CompiledType, applied: Applied, read: ReadCurrent):
    """Values of twins seen for the first time: defaults if new, else their current state."""
    created = set(applied.created)
    defaults = {n: p.value for n, p in ctype.spec.parameters.items()}

    def seed(names: list[str], uids: np.ndarray) -> dict[str, np.ndarray]:
        found = read(ctype.name, uids, names)
        if found is None:
            return {name: np.full(len(uids), np.nan) for name in names}
        ids, current = found
        is_new = np.fromiter((i is None or i in created for i in ids), bool, len(uids))
        return {name: np.where(is_new, defaults.get(name, np.nan), current[name]) for name in names}

    return seed


def _run_rule(state, type_name, rule: CompiledRule, env, twins, ts, starts, out) -> None:
    size = len(twins)
    when = rule.when.evaluate(env, size=size)
    holds = (when != 0) & ~np.isnan(when)
    if rule.clear is not None:
        cleared = rule.clear.evaluate(env, size=size)
        ends_alarm = (cleared != 0) & ~np.isnan(cleared)
    else:
        ends_alarm = when == 0
    pending = state.pending.get(type_name, {})
    opened = state.open.get(type_name, {})
    watched = {t for (t, r) in (*pending, *opened) if r == rule.name}
    interesting = holds.copy()
    if watched:
        interesting |= np.fromiter((t in watched for t in twins), bool, size)
    if not interesting.any():
        return
    group = np.cumsum(starts) - 1
    bounds = np.append(np.flatnonzero(starts), size)
    for g in np.unique(group[interesting]).tolist():
        for p in range(bounds[g], bounds[g + 1]):
            values = {n: _json_value(env[n][p]) for n in rule.names} if holds[p] else None
            out.extend(
                step(state, type_name, rule, twins[p], int(ts[p]), values, bool(ends_alarm[p]))
            )


def _json_value(value):
    """A rule value for JSON: a text attribute as it is, a number as `json_number`."""
    return value if value is None or isinstance(value, str) else json_number(value)


def step(
    state: RuleState,
    type_name: str,
    rule: CompiledRule,
    twin: str,
    ts: int,
    values: Values | None,
    ends_alarm: bool,
) -> list[Transition]:
    """One observation of one twin for one rule (`values` when its condition holds, else None):
    the pending -> raise -> clear state machine."""
    key = (twin, rule.name)
    opened = state.open.setdefault(type_name, {})
    if key in opened:
        if ends_alarm:
            return [_clear(state, type_name, key, ts, CLEARED if rule.clear else ENDED)]
        return []
    pending = state.pending.setdefault(type_name, {}).get(key)
    out: list[Transition] = []
    if values is not None:
        if pending is None:
            pending = state.pending[type_name][key] = Pending(rule, ts, values)
            out.append(Transition("pending", type_name, twin, rule.name, ts, ts, values=values))
        else:
            pending.values = values
        if ts >= pending.since + rule.for_ms:
            out.append(_fire(state, type_name, twin, pending))
    elif pending is not None:
        if ts >= pending.since + rule.for_ms:  # it held until this observation
            out.append(_fire(state, type_name, twin, pending))
            if ends_alarm:
                out.append(_clear(state, type_name, key, ts, ENDED))
        else:
            out.append(_drop(state, type_name, key, ts))
    return out


# ---- the clock and type changes ------------------------------------------------------------------


def due(state: RuleState, now: int) -> list[Transition]:
    """Fire conditions that have held `for` long enough with no new observation."""
    out = []
    for type_name, pending in list(state.pending.items()):
        for (twin, _), p in list(pending.items()):
            if now >= p.since + p.rule.for_ms:
                out.append(_fire(state, type_name, twin, p))
    return out


def retarget(state: RuleState, ctype: CompiledType, at: int = 0) -> list[Transition]:
    """A new type version: pending conditions follow their rule, or go if it was removed or its
    condition changed."""
    out = []
    for key, p in list(state.pending.get(ctype.name, {}).items()):
        rule = ctype.rules.get(key[1])
        if rule is None or rule.when.source != p.rule.when.source:
            out.append(_drop(state, ctype.name, key, at))
        else:
            p.rule = rule
    return out


def forget(state: RuleState, type_name: str, twin: str, at: int) -> list[Transition]:
    """A twin deleted at `at`: its open alarms clear and its pending conditions go."""
    keys = [key for key in state.open.get(type_name, {}) if key[0] == twin]
    out = [_clear(state, type_name, key, at, DELETED) for key in keys]
    pending = [key for key in state.pending.get(type_name, {}) if key[0] == twin]
    return out + [_drop(state, type_name, key, at) for key in pending]


def _fire(state: RuleState, type_name: str, twin: str, pending: Pending) -> Transition:
    """Raise the alarm of a condition that held `for` long enough (at since + for)."""
    rule = pending.rule
    state.pending.get(type_name, {}).pop((twin, rule.name), None)
    state.open.setdefault(type_name, {}).setdefault((twin, rule.name), None)
    context = {"twin": twin, "type": type_name, "rule": rule.name, "severity": rule.severity}
    return Transition(
        "raise",
        type_name,
        twin,
        rule.name,
        pending.since + rule.for_ms,
        pending.since,
        rule.severity,
        rule.format_message(pending.values, **context),
        pending.values,
    )


def _clear(state: RuleState, type_name: str, key: Key, at: int, note: str) -> Transition:
    alarm = state.open.get(type_name, {}).pop(key, None)
    return Transition("clear", type_name, key[0], key[1], at, note=note, alarm=alarm)


def _drop(state: RuleState, type_name: str, key: Key, at: int) -> Transition:
    state.pending.get(type_name, {}).pop(key, None)
    return Transition("dropped", type_name, key[0], key[1], at)
