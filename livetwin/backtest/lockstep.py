"""The mechanics of a back-test, pure (no I/O): one type's journal entries replayed into two
engines in lock-step, the recorded type versions (baseline) and a candidate, compared as they go.

Entries are merged into large batches as `journal.replay` does and applied straight to two
`Engine`s, never through a core's writer: nothing is journaled, nothing live is touched.
Entries of the types below it (its children, theirs, ...) are applied to both too, so its
aggregates over children stay current; outputs are compared at its own observations.
Observations before `start - warmup` build the baseline alone; at the first one after it the
candidate starts from a copy of the baseline's state (its changed windows start empty, hence
the warm-up); observations in [start, end) are compared; later ones are left out.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import numpy as np
import orjson

from livetwin.backtest.compare import (
    Alarms,
    Distribution,
    Failures,
    OutputDiff,
    compare_alarms,
)
from livetwin.engine import rules
from livetwin.engine.batch import Batch, decode_batch
from livetwin.engine.engine import LIFECYCLE, Applied, Engine, json_number
from livetwin.engine.state import TypeState, export_state, import_state
from livetwin.errors import LivetwinError
from livetwin.journal.replay import CHUNK, compile_entry
from livetwin.spec.rules import CompiledRule
from livetwin.spec.types import CompiledType
from livetwin.store.base import JournalEntry
from livetwin.timefmt import format_ts

MAX_SERIES_POINTS = 5_000  # per twin and output in a report


class Cancelled(Exception):
    """The back-test was asked to stop."""


@dataclass(frozen=True)
class Window:
    """Compare observations with start <= ts < end; the candidate runs from start - warmup_ms."""

    start: int
    end: int
    warmup_ms: int = 0

    @property
    def lockstep_from(self) -> int:
        return self.start - self.warmup_ms


def changed_names(recorded: CompiledType | None, candidate: CompiledType) -> dict[str, str]:
    """Derived values and rules of the candidate, and the recorded version's, by status:
    "added", "changed", "unchanged" or "removed" (keys "derived.x" and "rules.y")."""
    status: dict[str, str] = {}
    for section in ("derived", "rules"):
        old = getattr(recorded.spec, section) if recorded else {}
        new = getattr(candidate.spec, section)
        for name in {**old, **new}:
            if name not in new:
                status[f"{section}.{name}"] = "removed"
            elif name not in old:
                status[f"{section}.{name}"] = "added"
            else:
                same = old[name].model_dump() == new[name].model_dump()
                status[f"{section}.{name}"] = "unchanged" if same else "changed"
    return status


def _reader(engine: Engine) -> rules.ReadCurrent:
    """How rule evaluation reads the current values of twins it has not seen yet."""

    def read(type_name: str, uids: np.ndarray, names: list[str]):
        st = engine.states.get(type_name)
        return None if st is None else st.by_uid(uids, names)

    return read


class LockStep:
    """A back-test of `candidate` (a version of type `type_name`) over `window`.

    `state` is the type's state at the journal position where `feed` starts (from a snapshot;
    None: no twins yet), `others` the other types' states there (its children feed its
    aggregates), `recorded` the version the candidate is compared with for statuses
    (the current one); `uids` restricts it to those twins; `watch` names twins whose baseline
    and candidate series are kept for the report; `version_of` compiles a recorded type
    version from its journal entry. Call `feed` with the journal entries after
    that position, then `report`.
    """

    def __init__(
        self,
        type_name: str,
        candidate: CompiledType,
        window: Window,
        *,
        state: TypeState | None = None,
        others: dict[str, TypeState] | None = None,
        recorded: CompiledType | None = None,
        uids: np.ndarray | None = None,
        watch: Collection[int] = (),
        version_of: Callable[[JournalEntry], CompiledType] = compile_entry,
        progress: Callable[[int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        chunk: int = CHUNK,
    ) -> None:
        self.type_name, self.candidate, self.window = type_name, candidate, window
        self.version_of, self.chunk = version_of, chunk
        self.progress, self.cancelled = progress, cancelled
        self.uids = None if uids is None else np.unique(np.asarray(uids, dtype=np.int64))
        self.watch = np.unique(np.asarray(list(watch), dtype=np.int64))
        self.base = Engine()
        if state is not None:
            self.base.states[type_name] = state
        self.base.states.update(others or {})
        self.family = self._family()
        self.cand: Engine | None = None
        self._reads = (_reader(self.base), None)
        self.base_rules, self.cand_rules = rules.RuleState(), rules.RuleState()
        self.status = changed_names(recorded or (state.ctype if state else None), candidate)
        self.base_alarms: dict[str, Alarms] = {}
        self.cand_alarms: dict[str, Alarms] = {}
        self.diffs: dict[str, OutputDiff] = {}
        self.checked = [  # candidate expressions new or changed: where do they fail?
            name
            for name in candidate.derived_order
            if self.status.get(f"derived.{name}") in ("added", "changed")
        ]
        self.failures = {n: Failures(n, candidate.compiled[n].source) for n in self.checked}
        self.new = {n: Distribution(n) for n in candidate.derived_order if self._is_new_output(n)}
        self.ignored: dict[str, int] = {}
        self.versions: set[int] = set()
        self.replayed = self.compared = 0
        self.seen = np.zeros(0, dtype=bool)  # by uid: twins compared in the window
        self.series: dict[int, dict] = {}
        self._pending: list[Batch] = []
        self._pending_n = 0

    def _is_new_output(self, name: str) -> bool:
        return self.status.get(f"derived.{name}") == "added"

    # ---- feeding -----------------------------------------------------------------------------

    def _family(self) -> set[str]:
        """The type and the types below it (children, theirs, ...): what its aggregates read."""
        types = {n: s.ctype for n, s in self.base.states.items()}
        found, todo = set(), [self.type_name]
        while todo:
            name = todo.pop()
            if name in found:
                continue
            found.add(name)
            todo.extend(types[name].spec.children if name in types else ())
            if name == self.type_name:
                todo.extend(self.candidate.spec.children)
        return found

    def feed(self, entries: Iterable[JournalEntry]) -> None:
        """Apply journal entries (in journal order): the type's, and those of the types below it
        (their batches keep its parents' aggregates current); others are skipped unread."""
        name, end = self.type_name, self.window.end
        for entry in entries:
            if entry.kind == "type":  # any type: a later one may make it a child
                self._flush()
                self._define(self.version_of(entry))
                continue
            if entry.type not in self.family:
                continue
            if entry.kind in LIFECYCLE:  # attributes, twins created or removed: on both sides
                self._flush()
                self._change(entry)
                continue
            batch = decode_batch(entry.body)
            keep = batch.ts < end
            if self.uids is not None and entry.type == name:
                keep &= np.isin(batch.uids, self.uids, assume_unique=False)
            if not keep.all():
                if not keep.any():
                    continue
                batch = batch.take(np.flatnonzero(keep))
            if self._pending and self._pending[0].type != batch.type:
                self._flush()
            self._pending.append(batch)
            self._pending_n += len(batch)
            if self._pending_n >= self.chunk:
                self._flush()
        self._flush()

    def _change(self, entry: JournalEntry) -> None:
        for engine in (self.base, self.cand):
            if engine is not None and entry.type in engine.states:
                with contextlib.suppress(LivetwinError):  # e.g. a twin this side never had
                    engine.change(entry.kind, orjson.loads(entry.body), entry.at)

    def _define(self, ctype: CompiledType) -> None:
        self.base.define_type(ctype)
        if ctype.name == self.type_name:
            rules.retarget(self.base_rules, ctype)
        elif self.cand is not None:
            self.cand.define_type(ctype)
        self.family = self._family()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self.cancelled is not None and self.cancelled():
            raise Cancelled("the back-test was cancelled")
        batch = Batch.concat(self._pending)
        self._pending, self._pending_n = [], 0
        if self.cand is None:
            after = np.flatnonzero(batch.ts >= self.window.lockstep_from)
            if not len(after):
                self._apply_baseline(batch)
                return
            if after[0] > 0:
                self._apply_baseline(batch.take(np.arange(after[0])))
                batch = batch.take(np.arange(after[0], len(batch)))
            self._start_candidate()
        self._apply_both(batch)

    def _apply_baseline(self, batch: Batch) -> None:
        st = self.base.states.get(self.type_name)
        applied = self.base.apply(batch, record=bool(st is not None and st.ctype.rules))
        self._rules(self.base, self.base_rules, self.base_alarms, applied)
        self._done(len(batch))

    def _start_candidate(self) -> None:
        """The candidate engine: a copy of the baseline's state under the candidate version,
        with the alarm state of the rules the candidate keeps unchanged."""
        self.cand = Engine()
        for name, other in self.base.states.items():  # the children, as the baseline has them
            if name != self.type_name and name in self.family:
                self.cand.states[name] = import_state(other.ctype, *export_state(other))
        st = self.base.states.get(self.type_name)
        if st is None:
            self.cand.define_type(self.candidate)
        else:
            meta, arrays = export_state(st)
            self.cand.states[self.type_name] = import_state(st.ctype, meta, arrays).migrate(
                self.candidate
            )
            kept = {
                name
                for name, rule in self.candidate.rules.items()
                if name in st.ctype.rules and _same_rule(rule, st.ctype.rules[name])
            }
            self.cand_rules = _rules_subset(self.base_rules, self.type_name, kept, self.candidate)
        self._reads = (self._reads[0], _reader(self.cand))

    def _candidate_batch(self, batch: Batch) -> Batch:
        """The batch without the names the candidate does not declare (counted)."""
        inputs = set(self.candidate.inputs)
        if inputs.issuperset(batch.names):
            return batch
        keep = [k for k, n in enumerate(batch.names) if n in inputs]
        for k, n in enumerate(batch.names):
            if n not in inputs:
                self.ignored[n] = self.ignored.get(n, 0) + int((~np.isnan(batch.values[k])).sum())
        return Batch(
            batch.type,
            batch.twins,
            batch.ts,
            tuple(batch.names[k] for k in keep),
            batch.values[keep],
            batch.parents,
            batch.keys,
            batch.uids,
        )

    def _apply_both(self, batch: Batch) -> None:
        mine = batch.type == self.type_name
        applied_b = self.base.apply(batch, record=True)
        applied_c = self.cand.apply(self._candidate_batch(batch) if mine else batch, record=True)
        self._rules(self.base, self.base_rules, self.base_alarms, applied_b)
        self._rules(self.cand, self.cand_rules, self.cand_alarms, applied_c)
        if mine:  # outputs are compared at the type's own observations
            self._compare(applied_b, applied_c)
        self._done(len(batch))

    def _done(self, n: int) -> None:
        self.replayed += n
        if self.progress is not None:
            self.progress(n)

    # ---- comparing ---------------------------------------------------------------------------

    def _rules(self, engine: Engine, state, alarms: dict[str, Alarms], applied: Applied) -> None:
        """The type's rules over its rows of the batch and over the updates of its aggregates."""
        st = engine.states.get(self.type_name)
        if st is None or not st.ctype.rules:
            return
        read = self._reads[0] if engine is self.base else self._reads[1]
        for part in applied.all():
            if part.type == self.type_name:
                for t in rules.evaluate(state, st.ctype, part, read):
                    self._alarm(alarms, t)

    def _alarm(self, alarms: dict[str, Alarms], t: rules.Transition) -> None:
        if t.kind in ("raise", "clear"):
            side = alarms.get(t.rule)
            if side is None:
                side = alarms[t.rule] = Alarms(self.window.start, self.window.end)
            side.add(t.kind, t.twin, t.at, t.since)

    def _compare(self, ab: Applied, ac: Applied) -> None:
        window = ab.fresh & (ab.ts >= self.window.start)
        if not window.any():
            return
        at = np.flatnonzero(window)
        uids, ts = ab.uids[at], ab.ts[at]
        self.compared += len(at)
        self._mark_seen(uids)
        base_type = self.base.states[self.type_name].ctype
        self.versions.add(base_type.version)
        col_b, col_c = base_type.column_index(), self.candidate.column_index()
        for name in self.candidate.derived_order:
            c = ac.values[at, col_c[name]]
            if name in self.new:
                self.new[name].add(c)
            elif name in base_type.compiled:
                diff = self.diffs.get(name)
                if diff is None:
                    diff = self.diffs[name] = OutputDiff(name)
                diff.add(uids, ts, ab.values[at, col_b[name]], c)
            if name in self.failures:
                self.failures[name].add(uids, ts, c, self._explainer(ac, at, name), self.twin_ids)
        if len(self.watch):
            self._record_series(ab, ac, at, col_b, col_c)

    def _mark_seen(self, uids: np.ndarray) -> None:
        top = int(uids.max()) + 1
        if top > len(self.seen):
            grown = np.zeros(2 * top, dtype=bool)
            grown[: len(self.seen)] = self.seen
            self.seen = grown
        self.seen[uids] = True

    def _explainer(self, ac: Applied, at: np.ndarray, name: str):
        """What an example failure shows: the observation's inputs, and the names the
        expression reads that its twin has never been given (a missing value)."""
        st = self.cand.states[self.type_name]
        col = self.candidate.column_index()
        inputs = [n for n in self.candidate.inputs if n in col]
        deps = sorted(self.candidate.compiled[name].names)

        def explain(p: int, uid: int) -> dict:
            row = int(st.rows_of(np.array([uid]))[0])
            observed = {
                n: json_number(ac.values[at[p], col[n]])
                for n in inputs
                if not np.isnan(ac.values[at[p], col[n]])
            }
            missing = [d for d in deps if np.isnan(st.data[col[d], row])]
            return {"inputs": observed, "missing": missing}

        return explain

    def _record_series(self, ab, ac, at, col_b, col_c) -> None:
        uids = ab.uids[at]
        hit = np.isin(uids, self.watch)
        if not hit.any():
            return
        base_type = self.base.states[self.type_name].ctype
        names = [n for n in self.candidate.derived_order]
        for p in np.flatnonzero(hit).tolist():
            row = at[p]
            s = self.series.setdefault(int(uids[p]), {"ts": [], "outputs": {}})
            if len(s["ts"]) >= MAX_SERIES_POINTS:
                continue
            s["ts"].append(int(ab.ts[row]))
            for n in names:
                out = s["outputs"].setdefault(n, {"baseline": [], "candidate": []})
                b = ab.values[row, col_b[n]] if n in base_type.compiled else np.nan
                out["baseline"].append(json_number(b))
                out["candidate"].append(json_number(ac.values[row, col_c[n]]))

    # ---- the report --------------------------------------------------------------------------

    def twin_ids(self, uids: np.ndarray) -> list[str]:
        st = (self.cand or self.base).states.get(self.type_name)
        if st is None:
            return [str(u) for u in uids.tolist()]
        rows = st.rows_of(np.asarray(uids, dtype=np.int64))
        pairs = zip(rows.tolist(), uids.tolist(), strict=True)
        return [st.ids[r] if r >= 0 else str(u) for r, u in pairs]

    def uids_of(self, twins: list[str]) -> np.ndarray:
        """The uids of the named twins this back-test has seen."""
        st = (self.cand or self.base).states.get(self.type_name)
        if st is None:
            return np.zeros(0, dtype=np.int64)
        rows = [st.index[t] for t in twins if t in st.index]
        return st.uid[rows].astype(np.int64)

    def some_twins(self, k: int) -> np.ndarray:
        """The uids of (at most) `k` twins compared in the window."""
        return np.flatnonzero(self.seen)[:k].astype(np.int64)

    def report(self) -> dict:
        """The diff report (JSON-able); fires the conditions still held at the window's end."""
        end = self.window.end - 1
        for t in rules.due(self.base_rules, end):
            self._alarm(self.base_alarms, t)
        for t in rules.due(self.cand_rules, end):
            self._alarm(self.cand_alarms, t)
        outputs = [d.report(self.twin_ids) for d in self.diffs.values()]
        differing = [o for o in outputs if o["differing"]]
        rule_names = [k.split(".", 1)[1] for k in self.status if k.startswith("rules.")]
        rule_reports = [
            compare_alarms(
                name,
                self.status[f"rules.{name}"],
                self.base_alarms.get(name, _empty(self.window))
                if self.status[f"rules.{name}"] != "added"
                else None,
                self.cand_alarms.get(name, _empty(self.window))
                if self.status[f"rules.{name}"] != "removed"
                else None,
            )
            for name in sorted(rule_names)
        ]
        alarms_differ = any(
            r["would_raise"] or r["never_raised"] or r["cleared_differently"] for r in rule_reports
        )
        failures = [r for f in self.failures.values() if (r := f.report())]
        series = {
            twin: {
                "ts": [format_ts(t) for t in s["ts"]],
                "outputs": s["outputs"],
            }
            for twin, s in zip(
                self.twin_ids(np.array(list(self.series), dtype=np.int64)),
                self.series.values(),
                strict=True,
            )
        }
        return {
            "type": self.type_name,
            "window": {
                "from": format_ts(self.window.start),
                "to": format_ts(self.window.end),
                "warmup_ms": self.window.warmup_ms,
            },
            "baseline_versions": sorted(self.versions),
            "changes": {k: v for k, v in sorted(self.status.items()) if v != "unchanged"},
            "observations": {
                "replayed": self.replayed,
                "compared": self.compared,
                "twins": int(self.seen.sum()),
            },
            "identical": not differing and not alarms_differ and not self.new,
            "outputs": differing,
            "unchanged_outputs": [o["name"] for o in outputs if not o["differing"]],
            "new_outputs": [d.report() for d in self.new.values()],
            "removed_outputs": [
                k.split(".", 1)[1]
                for k, v in self.status.items()
                if v == "removed" and k.startswith("derived.")
            ],
            "rules": rule_reports,
            "failures": failures,
            "ignored_inputs": self.ignored,
            "series": series,
        }


def _empty(window: Window) -> Alarms:
    return Alarms(window.start, window.end)


def _same_rule(a: CompiledRule, b: CompiledRule) -> bool:
    same_clear = (a.clear is None and b.clear is None) or (
        a.clear is not None and b.clear is not None and a.clear.source == b.clear.source
    )
    return a.when.source == b.when.source and same_clear and a.for_ms == b.for_ms


def _rules_subset(
    state: rules.RuleState, type_name: str, kept: set[str], ctype: CompiledType
) -> rules.RuleState:
    """A copy of a rule state holding only the rules in `kept`, bound to `ctype`'s rules."""
    out = rules.RuleState()
    out.open[type_name] = {k: v for k, v in state.open.get(type_name, {}).items() if k[1] in kept}
    out.pending[type_name] = {
        k: rules.Pending(ctype.rules[k[1]], p.since, dict(p.values))
        for k, p in state.pending.get(type_name, {}).items()
        if k[1] in kept
    }
    if type_name in state.last:
        out.last[type_name] = copy.deepcopy(state.last[type_name])
    return out
