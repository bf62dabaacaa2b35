"""The mechanics of a back-test, pure (no I/O): one type's journal entries replayed under the
recorded type versions (baseline) and a candidate in lock-step, compared as they go.

Entries are merged into large batches as `journal.replay` does and applied straight to an
`Engine`, never through a core's writer: nothing is journaled, nothing live is touched.
Observations before `start - warmup` build the baseline alone; at the first one after it the
candidate starts from the baseline's state (its changed windows start empty, hence the
warm-up); observations in [start, end) are compared; later ones are left out.

The candidate is an overlay (`overlay.Overlay`) where it can be: one engine, and only what the
candidate changes evaluated a second time, in the baseline's waves. Otherwise (other inputs,
children, the type redefined or twins removed in the window: `NeedsEngines`) it is a second
engine fed the same batches; entries of the types below it (its children, theirs, ...) are
applied to both, so its aggregates over children stay current.
"""

from __future__ import annotations

import contextlib
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
from livetwin.backtest.overlay import Overlay, change_set, same_rule
from livetwin.engine import rules
from livetwin.engine.batch import Batch, batch_uids, decode_batch
from livetwin.engine.engine import LIFECYCLE, Applied, Engine, json_number
from livetwin.engine.rulecolumns import Change, RuleColumns
from livetwin.engine.state import TypeState, export_state, import_state
from livetwin.errors import LivetwinError
from livetwin.journal.replay import CHUNK, compile_entry
from livetwin.spec.types import CompiledType
from livetwin.store.base import JournalEntry
from livetwin.timefmt import format_ts

MAX_SERIES_POINTS = 5_000  # per twin and output in a report
FEW = 1_000  # a twin filter this small skips batches without its twins before decoding them


class Cancelled(Exception):
    """The back-test was asked to stop."""


class NeedsEngines(Exception):
    """The overlay cannot follow the journal (the type redefined, twins removed): run the
    back-test again with `overlay=False`."""


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
    version from its journal entry; `overlay=False` runs the candidate as a second engine
    always. Call `feed` with the journal entries after that position, then `report`.
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
        overlay: bool = True,
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
        self.use_overlay = overlay
        self.overlay: Overlay | None = None
        self._reads = (_reader(self.base), None)
        self.base_rules = RuleColumns(state.ctype) if state is not None else None
        self.cand_rules: RuleColumns | None = None
        self.shared_rules: set[str] = set()  # the candidate's alarms are the baseline's
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
            if self.uids is not None and entry.type == name and len(self.uids) <= FEW:
                uids = batch_uids(entry.body)  # a few twins: skip the others' batches unread
                if uids is not None and not np.isin(uids, self.uids).any():
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
        if self.overlay is not None and entry.kind != "twin" and entry.type == self.type_name:
            raise NeedsEngines(f"twins of '{self.type_name}' are removed in the window")
        for engine in (self.base, self.cand):
            if engine is not None and entry.type in engine.states:
                with contextlib.suppress(LivetwinError):  # e.g. a twin this side never had
                    engine.change(entry.kind, orjson.loads(entry.body), entry.at)

    def _define(self, ctype: CompiledType) -> None:
        if self.overlay is not None and ctype.name == self.type_name:
            raise NeedsEngines(f"'{self.type_name}' is redefined in the window")
        self.base.define_type(ctype)
        if ctype.name == self.type_name:
            if self.base_rules is None:
                self.base_rules = RuleColumns(ctype)
            else:
                self.base_rules.retarget(ctype)
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
        if self.cand is None and self.overlay is None:  # the candidate has not started yet
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
        self._rules(self.base_rules, self._reads[0], self.base_alarms, applied)
        self._done(len(batch))

    def _start_candidate(self) -> None:
        """The candidate: an overlay on the baseline where it can be, else a second engine."""
        st = self.base.states.get(self.type_name)
        changes = None
        if self.use_overlay and st is not None:
            changes = change_set(st.ctype, self.candidate)
        if changes is None:
            self._start_engine()
            return
        self.overlay = Overlay(self.candidate, changes, st)
        self.shared_rules = set(self.candidate.rules) - set(changes.rules)
        base_rules = self.base_rules or RuleColumns(st.ctype)
        self.cand_rules = base_rules.subset(self.candidate, (), changes.rules)

    def _start_engine(self) -> None:
        """The candidate engine: a copy of the baseline's state under the candidate version,
        with the alarm state of the rules the candidate keeps unchanged."""
        self.cand = Engine()
        for name, other in self.base.states.items():  # the children, as the baseline has them
            if name != self.type_name and name in self.family:
                self.cand.states[name] = import_state(other.ctype, *export_state(other))
        st = self.base.states.get(self.type_name)
        if st is None:
            self.cand.define_type(self.candidate)
            self.cand_rules = RuleColumns(self.candidate)
        else:
            meta, arrays = export_state(st)
            self.cand.states[self.type_name] = import_state(st.ctype, meta, arrays).migrate(
                self.candidate
            )
            kept = {
                name
                for name, rule in self.candidate.rules.items()
                if name in st.ctype.rules and same_rule(rule, st.ctype.rules[name])
            }
            base_rules = self.base_rules or RuleColumns(st.ctype)
            self.cand_rules = base_rules.subset(self.candidate, kept, self.candidate.rules)
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
        if self.overlay is not None:
            self.overlay.begin(len(batch))
            applied_b = self.base.apply(batch, record=True, on_wave=self.overlay.wave)
            applied_c = self._overlaid(applied_b)
            read_c = self._reads[0]  # inputs are shared
        else:
            applied_b = self.base.apply(batch, record=True)
            batch_c = self._candidate_batch(batch) if mine else batch
            applied_c = self.cand.apply(batch_c, record=True)
            read_c = self._reads[1]
        self._rules(self.base_rules, self._reads[0], self.base_alarms, applied_b)
        self._rules(self.cand_rules, read_c, self.cand_alarms, applied_c)
        if mine:  # outputs are compared at the type's own observations
            self._compare(applied_b, applied_c)
        self._done(len(batch))

    def _overlaid(self, ab: Applied) -> Applied:
        """The candidate's view of a batch the baseline applied with the overlay: its changed
        values from the overlay, the others (inputs included) the baseline's."""
        col_b, overlay = self.base.states[self.type_name].col, self.overlay
        values = np.empty((len(ab.ts), len(self.candidate.columns)))
        for j, name in enumerate(self.candidate.columns):
            k = overlay.col.get(name)
            values[:, j] = ab.values[:, col_b[name]] if k is None else overlay.out[:, k]
        text = ab.text
        if set(self.candidate.rule_text) - set(text):
            st = self.base.states[self.type_name]
            rows = st.rows_of(ab.uids)
            text = {name: st.text[name][rows] for name in self.candidate.rule_text}
        c = self.candidate
        return Applied(c.name, c.version, ab.twins, ab.uids, ab.ts, values, ab.fresh, [], [], text)

    def _done(self, n: int) -> None:
        self.replayed += n
        if self.progress is not None:
            self.progress(n)

    # ---- comparing ---------------------------------------------------------------------------

    def _rules(self, side: RuleColumns | None, read, alarms: dict[str, Alarms], applied) -> None:
        """A side's rules over the type's rows of the batch and the updates of its aggregates."""
        if side is None or not side.names:
            return
        for part in applied.all():
            if part.type == self.type_name:
                for t in side.evaluate(part, read):
                    self._alarm(alarms, t)

    def _alarm(self, alarms: dict[str, Alarms], t: Change) -> None:
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
        overlaid = self.overlay.col if self.overlay is not None else None
        for name in self.candidate.derived_order:
            c = ac.values[at, col_c[name]]
            if name in self.new:
                self.new[name].add(c)
            elif name in base_type.compiled:
                diff = self.diffs.get(name)
                if diff is None:
                    diff = self.diffs[name] = OutputDiff(name)
                if overlaid is not None and name not in overlaid:
                    diff.same(len(at))  # computed once: equal by construction
                else:
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
        st = (self.cand or self.base).states[self.type_name]
        col = self.candidate.column_index()

        def current(dep: str, row: int) -> float:
            if self.overlay is not None:
                return self.overlay.value(st, dep, row)
            return float(st.data[col[dep], row])

        inputs = [n for n in self.candidate.inputs if n in col]
        deps = sorted(self.candidate.compiled[name].names)

        def explain(p: int, uid: int) -> dict:
            row = int(st.rows_of(np.array([uid]))[0])
            observed = {
                n: json_number(ac.values[at[p], col[n]])
                for n in inputs
                if not np.isnan(ac.values[at[p], col[n]])
            }
            missing = [d for d in deps if np.isnan(current(d, row))]
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

    def report(self, samples: bool = False) -> dict:
        """The diff report (JSON-able); fires the conditions still held at the window's end.
        `samples`: new outputs keep their value samples (for merging shards' reports)."""
        end = self.window.end - 1
        for side, alarms in (
            (self.base_rules, self.base_alarms),
            (self.cand_rules, self.cand_alarms),
        ):
            for t in side.due(end, self.twin_ids) if side is not None else ():
                self._alarm(alarms, t)
        for name in self.shared_rules:  # the overlay's unchanged rules: the baseline's alarms
            if name in self.base_alarms:
                self.cand_alarms[name] = self.base_alarms[name]
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
            "candidate_run": "overlay" if self.overlay is not None else "second engine",
            "changes": {k: v for k, v in sorted(self.status.items()) if v != "unchanged"},
            "observations": {
                "replayed": self.replayed,
                "compared": self.compared,
                "twins": int(self.seen.sum()),
            },
            "identical": not differing and not alarms_differ and not self.new,
            "outputs": differing,
            "unchanged_outputs": [o["name"] for o in outputs if not o["differing"]],
            "new_outputs": [d.report(samples) for d in self.new.values()],
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
