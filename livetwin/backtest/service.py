"""Back-tests of a live core: a request checked against the live data before any work (4xx
errors naming the field), the lock-step replay over the core's journal from the newest snapshot
before the window, reports kept in the service's own database with a lineage node each.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from livetwin.backtest.archive import BacktestArchive
from livetwin.backtest.candidate import compile_candidate
from livetwin.backtest.lockstep import LockStep, NeedsEngines, Window
from livetwin.errors import InvalidInput, LivetwinError, NotFound
from livetwin.spec.types import CompiledType
from livetwin.timefmt import format_ts, parse_duration, parse_ts_field

FIELDS = ("type", "candidate", "from", "to", "warmup", "twins", "plot")
FILTERS = ("ids", "parent", "where")
PLOTTED = 5  # the worst twins whose series the report keeps
MAX_PLOT = 20  # twins a request may ask series for
MAX_WARMUP_MS = 366 * 86_400_000


class EmptySelection(InvalidInput):
    """The request selects no twin that reported in the window (on a cluster shard: nothing
    for this shard to replay; an error only when every shard says so)."""


@dataclass(frozen=True)
class Plan:
    """A checked back-test request."""

    type: str
    recorded: CompiledType  # the current version (what "changed" is relative to)
    candidate: CompiledType
    window: Window
    uids: np.ndarray | None  # the twin filter's twins (None: all)
    plot: np.ndarray  # uids whose series the report keeps besides the worst
    args: dict  # the request, normalised (what the job runs from)


class BacktestService:
    """Checks, runs and keeps back-tests. Ports: `reader` (a `Query`), `core` (the live core:
    `load_snapshot`, `compiled_version`, `models`, `store.journal_size`), `archive` (where
    reports are kept; None on a cluster shard, whose front end keeps the merged one) and
    `clock`. Nothing here writes to the core."""

    def __init__(
        self,
        *,
        reader: Any,
        core: Any,
        archive: BacktestArchive | None,
        clock: Callable,
        calibration: Callable[..., dict | None],
    ):
        """`calibration` back-tests a candidate's calibration settings (the batched filter
        under both sides: `livetwin.jobs.backtest_calibration.backtest_calibration`)."""
        self.reader, self.core, self.archive, self.clock = reader, core, archive, clock
        self.calibration = calibration

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()

    def report(self, backtest_id: str) -> dict | None:
        """A kept report, or None."""
        return self.archive.report(backtest_id)

    # ---- checking a request ------------------------------------------------------------------

    def plan(self, body: Any) -> Plan:
        """The request checked against the live data, before any work: InvalidInput or
        NotFound naming the field and the fix."""
        if not isinstance(body, dict):
            raise InvalidInput(
                "a back-test must be a JSON object", field="body", fix=f"send {', '.join(FIELDS)}"
            )
        unknown = sorted(set(body) - set(FIELDS))
        if unknown:
            raise InvalidInput(
                f"unknown field '{unknown[0]}'", field=unknown[0], fix=f"use {', '.join(FIELDS)}"
            )
        type_name = body.get("type")
        if not isinstance(type_name, str) or not type_name:
            raise InvalidInput("type is required", field="type", fix='e.g. "type": "pump"')
        recorded = self.reader.compiled_type(type_name)
        if recorded is None:
            raise NotFound(
                f"no twin type '{type_name}'",
                field="type",
                fix="back-test a declared type (GET /api/types lists them)",
            )
        for key in ("candidate", "from", "to"):
            if body.get(key) is None:
                raise InvalidInput(f"{key} is required", field=key, fix=_FIXES[key])
        candidate = compile_candidate(type_name, recorded.spec, body["candidate"], self.core.models)
        start, end = parse_ts_field(body["from"], "from"), parse_ts_field(body["to"], "to")
        if start >= end:
            raise InvalidInput("from must be before to", field="to", fix="swap from and to")
        window = Window(start, end, self._warmup(body.get("warmup"), candidate, recorded))
        twins = body.get("twins")
        selected = self._select(type_name, twins)
        if not len(selected["uid"]):
            raise EmptySelection(
                f"the twin filter matches no '{type_name}' twin",
                field="twins",
                fix="check the ids, parent or where expression (GET /api/twins?type=... lists)",
            )
        self._check_window(type_name, selected, window)
        plot = self._plot(type_name, body.get("plot"))
        args = {
            "type": type_name,
            "candidate": {"spec": candidate.spec.model_dump(mode="json", exclude={"name"})},
            "from": format_ts(start),
            "to": format_ts(end),
            "warmup": window.warmup_ms,
            **({"twins": twins} if twins is not None else {}),
            **({"plot": body["plot"]} if body.get("plot") else {}),
        }
        uids = None if twins is None else selected["uid"]
        return Plan(type_name, recorded, candidate, window, uids, plot, args)

    def _warmup(self, value: Any, candidate: CompiledType, recorded: CompiledType) -> int:
        """The warm-up asked for, else the longest window of the candidate's new or changed
        derived values (so they start the window warm)."""
        if value is None:
            longest = [
                w.duration_ms or 0
                for name, c in candidate.compiled.items()
                if recorded.compiled.get(name) is None or recorded.compiled[name].source != c.source
                for w in c.windows
            ]
            return max(longest, default=0)
        try:
            ms = value if isinstance(value, int) and not isinstance(value, bool) else None
            ms = parse_duration(value) if isinstance(value, str) else ms
        except ValueError as exc:
            raise InvalidInput(str(exc), field="warmup", fix='e.g. "warmup": "1h"') from None
        if ms is None or not 0 <= ms <= MAX_WARMUP_MS:
            raise InvalidInput(
                "warmup must be a duration from 0 to 366d",
                field="warmup",
                fix='e.g. "1h" or epoch milliseconds such as 3600000',
            )
        return ms

    def _select(self, type_name: str, twins: Any) -> dict[str, np.ndarray]:
        if twins is None:
            return self.reader.selection(type_name)
        if not isinstance(twins, dict) or set(twins) - set(FILTERS):
            raise InvalidInput(
                "twins must be an object with ids, parent and/or where",
                field="twins",
                fix='e.g. {"ids": ["pump-1"]} or {"where": "flow > 10"}',
            )
        ids = twins.get("ids")
        if ids is not None and (
            not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
        ):
            raise InvalidInput(
                "twins.ids must be a list of twin ids", field="twins.ids", fix='["pump-1"]'
            )
        for key in ("parent", "where"):
            if twins.get(key) is not None and not isinstance(twins[key], str):
                raise InvalidInput(
                    f"twins.{key} must be a string", field=f"twins.{key}", fix=_FIXES[key]
                )
        try:
            return self.reader.selection(
                type_name, ids=ids, parent=twins.get("parent"), where=twins.get("where")
            )
        except LivetwinError as exc:
            exc.field = f"twins.{exc.field}" if exc.field else "twins"
            raise

    def _check_window(self, type_name: str, selected: dict, window: Window) -> None:
        """Refuse a window in which the twins never reported, or older than the journal keeps."""
        created, updated = selected["created"], selected["updated"]
        reporting = (created < window.end) & (updated >= window.start)
        if not reporting.any():
            known = updated >= 0
            span = (
                f" (they reported from {format_ts(int(created[known].min()))} to "
                f"{format_ts(int(updated[known].max()))})"
                if known.any()
                else ""
            )
            raise EmptySelection(
                f"no journaled observations of '{type_name}' between {format_ts(window.start)} "
                f"and {format_ts(window.end)}{span}",
                field="from",
                fix="choose a window in which the twins reported",
            )
        first = next(iter(self.reader.journal(0)), None)
        if first is not None and first.seq > 1 and self._start(type_name, window) is None:
            raise InvalidInput(
                f"the window starts before the retained journal of '{type_name}' (its oldest "
                f"entry is seq {first.seq}, and no snapshot precedes the window)",
                field="from",
                fix="choose a later from",
            )

    def _plot(self, type_name: str, ids: Any) -> np.ndarray:
        if ids is None:
            return np.zeros(0, dtype=np.int64)
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InvalidInput("plot must be a list of twin ids", field="plot", fix='["pump-1"]')
        if len(ids) > MAX_PLOT:
            raise InvalidInput(
                f"plot lists {len(ids)} twins", field="plot", fix=f"ask for at most {MAX_PLOT}"
            )
        found = self.reader.selection(type_name, ids=ids)["uid"]
        if len(found) < len(set(ids)):
            raise InvalidInput(
                f"plot names twins that are not '{type_name}' twins",
                field="plot",
                fix="list ids of the type's twins",
            )
        return found

    # ---- running -----------------------------------------------------------------------------

    def _start(self, type_name: str, window: Window) -> tuple[Any, int] | None:
        """The newest snapshot in which the type's twins all precede the lock-step (engine,
        seq), or None."""

        def before(meta: dict, arrays: Any) -> bool:
            names = [t["name"] for t in meta["types"]]
            if type_name not in names:
                return True
            last = arrays[f"t{names.index(type_name)}/last_ts"]  # read alone: cheap
            return not len(last) or int(last.max()) < window.lockstep_from

        return self.core.load_snapshot(before)

    def run(
        self,
        plan: Plan,
        run_id: str,
        *,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        log: Callable[[str], None] = lambda _: None,
    ) -> dict:
        """Run the back-test, keep its report under `run_id` with a lineage node; a summary."""
        started = self.clock()
        report = self.replay(plan, progress=progress, cancelled=cancelled, log=log)
        return self.archive.keep(run_id, plan.args, report, started)

    def replay(
        self,
        plan: Plan,
        *,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        log: Callable[[str], None] = lambda _: None,
        mergeable: bool = False,
    ) -> dict:
        """The back-test's report (kept nowhere): the lock-step replay from the newest snapshot
        before the window, the calibration settings' back-test, the worst twins' series.
        `mergeable` keeps what merging shards' reports needs (`livetwin.backtest.merge`)."""
        started, cpu = time.perf_counter(), time.thread_time()
        loaded = self._start(plan.type, plan.window)
        engine, seq = loaded if loaded else (None, 0)
        total = self.core.store.journal_size(after=seq)[1]
        log(
            f"start: {'snapshot at seq ' + str(seq) if seq else 'the journal start'}, "
            f"{total:,} journaled observations to read"
        )
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total)

        main = self._lockstep(plan, engine, plan.uids, plan.plot, step, cancelled)
        try:
            main.feed(self.reader.journal(seq))
        except NeedsEngines as why:
            log(f"{why}: replaying again with the candidate as a second engine")
            done, loaded = 0, self._start(plan.type, plan.window)
            engine = loaded[0] if loaded else None
            main = self._lockstep(plan, engine, plan.uids, plan.plot, step, cancelled, False)
            main.feed(self.reader.journal(seq))
        report = main.report(samples=mergeable)
        seconds = time.perf_counter() - started
        report["seconds"] = round(seconds, 3)
        report["observations_per_s"] = round(main.replayed / seconds) if seconds else None
        report["cpu_seconds"] = round(time.thread_time() - cpu, 3)
        report["after_seq"] = seq
        report["calibration"] = self.calibration(
            self.reader,
            self.core.store,
            plan.recorded,
            plan.candidate,
            plan.window,
            plan.uids,
            cancelled=cancelled,
            log=log,
        )
        if report["calibration"] and _calibration_differs(report["calibration"]):
            report["identical"] = False
        watch = self._worst(report, main, plan.plot)
        if len(watch) > len(plan.plot):  # a second, narrow pass for the worst twins' series
            log(f"series of {len(watch)} twins")
            loaded = self._start(plan.type, plan.window)
            engine = loaded[0] if loaded else None
            narrow = self._lockstep(plan, engine, watch, watch, None, cancelled, main.use_overlay)
            narrow.feed(self.reader.journal(seq))
            report["series"] = narrow.report()["series"]
        log(
            f"replayed {main.replayed:,} observations in {seconds:.2f} s; "
            f"{len(report['outputs'])} outputs differ"
        )
        return report

    def _lockstep(self, plan, engine, uids, watch, step, cancelled, overlay=True) -> LockStep:
        state = engine.states.get(plan.type) if engine is not None else None
        others = {n: s for n, s in engine.states.items() if n != plan.type} if engine else None
        return LockStep(
            plan.type,
            plan.candidate,
            plan.window,
            state=state,
            others=others,
            recorded=plan.recorded,
            uids=uids,
            watch=watch.tolist(),
            version_of=self._recorded_version,
            progress=step,
            cancelled=cancelled,
            overlay=overlay,
        )

    def _recorded_version(self, entry) -> CompiledType:
        """The type version a journal entry declares (compiled once, cached by the core)."""
        return self.core.compiled_version(entry.type, orjson.loads(entry.body)["version"])

    @staticmethod
    def _worst(report: dict, main: LockStep, plot: np.ndarray) -> np.ndarray:
        """Twins whose series the report keeps: those asked for, and the worst few."""
        names = [w["twin"] for o in report["outputs"] for w in o["worst_twins"][:2]]
        names += [e["twin"] for f in report["failures"] for e in f["examples"][:1]]
        wanted = list(dict.fromkeys(names))[:PLOTTED]
        uids = main.uids_of(wanted)
        if report["new_outputs"] and len(uids) < PLOTTED:
            uids = np.concatenate([uids, main.some_twins(PLOTTED - len(uids))])
        return np.unique(np.concatenate([plot, uids]).astype(np.int64))


def _calibration_differs(section: dict) -> bool:
    """Whether the candidate's settings calibrated or predicted anything differently."""
    return any(p.get("twins_affected", 1) for p in section.get("parameters", [])) or any(
        o["better"] != "equal" for o in section.get("outputs", [])
    )


_FIXES = {
    "candidate": 'e.g. "candidate": {"patch": {"derived": {"x": "avg(flow, \'15m\')"}}}',
    "from": 'e.g. "from": "2026-11-22T00:00:00Z"',
    "to": 'e.g. "to": "2026-11-23T00:00:00Z"',
    "parent": 'e.g. "parent": "station-1"',
    "where": 'e.g. "where": "flow > 10"',
}
