"""The scenario job: what-if forecasts from twins' calibrated state, beside a baseline.

Two parts. `Forecaster` is the pure one: it forks twins of a core (their current values, their
calibrated filter rows and type version), runs the calibration's filter forward with no
measurements under the scenario's inputs and, beside it, under the inputs as they are now (the
baseline), and evaluates the type's derived values and rules on both forecasts; it never writes
to live state, history or alarms. `Scenarios` is the keeping one: `submit` checks a request
(4xx before any work), stores it and queues a run of the built-in job `scenario`; the run asks
its `Forecasts` (a single node's `Forecaster`, or a cluster's shards, each forecasting its own
twins: `merge_forecasts`) and stores the series and a summary under the scenario id with a
lineage node of the run.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from livetwin.calibrate import StepResult, choose_backend, chunk_pool, make_filter
from livetwin.errors import InvalidInput, LivetwinError, NotFound, Unavailable
from livetwin.jobs.calibration import TypeCalibration, _spec, take_rows
from livetwin.jobs.lineage import model_node
from livetwin.scenario.forecast import Columns, forward, measurement_var
from livetwin.scenario.outcome import Outcome
from livetwin.scenario.request import (
    MAX_MODEL_STEPS,
    MAX_POINTS,
    MAX_STORED_POINTS,
    MAX_TWIN_STEPS,
    MAX_TWINS,
    Recorded,
    ScenarioRequest,
    TwinFilter,
    input_grid,
    offset_ms,
    parse_request,
    recorded_grid,
)
from livetwin.scenario.store import SCHEMA, ScenarioStore
from livetwin.timefmt import format_ts, parse_ts, parse_ts_field

if TYPE_CHECKING:
    from livetwin.ports import Clock, OpenServiceDB
    from livetwin.schedule.functions import RunContext
    from livetwin.spec.types import CompiledType

SCENARIO_FUNCTION = {
    "kind": "builtin",
    "job": "scenario",
    "concurrency": 1,  # forecasts are CPU-bound: one at a time
    "retries": 0,
    "description": "runs a what-if scenario (POST /api/scenarios)",
}
INLINE_SERIES = 10  # GET /api/scenarios/{id} includes the series of up to this many twins

Progress = Callable[[int, int], None]  # (model steps done, model steps in all)
Forecast = tuple[dict, dict[str, np.ndarray]]  # the summary, each twin's [side, point, column]


class Forecasts(Protocol):
    """Where a request's twins are forked and forecast: this core (`Forecaster`) or the shards
    of a cluster (livetwin/cluster/scenarios.py)."""

    def compiled_types(self) -> dict[str, CompiledType]: ...

    def check(self, request: ScenarioRequest) -> None:
        """Every check a run would make (InvalidInput naming the field), forecasting nothing."""

    def forecast(
        self,
        request: ScenarioRequest,
        *,
        job: str,
        progress: Progress | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Forecast:
        """The request's forecast; `job` is the run's id."""


@dataclass(frozen=True)
class ScenarioPorts:
    """What scenarios read and write through (the composition root builds it)."""

    clock: Clock
    forecasts: Forecasts
    open_db: OpenServiceDB
    lineage: Any  # LineageStore
    models: Any  # the registry's store: lookup_ref


@dataclass
class Fork:
    """Twins of one type forked for a forecast: scenario rows first, then the baseline's."""

    ctype: CompiledType
    twins: list[str]
    start: np.ndarray  # int64 (N,): the fork time of each twin (its filter's calibrated end)
    current: dict[str, np.ndarray]  # name -> (N,) current values of the type's inputs
    steps: int  # model steps
    stride: int  # model steps per reported point
    scenario: dict[str, np.ndarray]  # input name -> [steps, N]
    baseline: dict[str, np.ndarray]
    filt: Any  # BatchUKF or BatchEnKF over 2N rows
    state: Any  # FilterState of 2N rows

    @property
    def dt_ms(self) -> int:
        return self.ctype.calibration.dt_ms


class Scenarios:
    """Submit, run and read scenarios (the service behind /api/scenarios and the job), on a
    single node or a cluster front end: its `ports.forecasts` says where they are forecast."""

    def __init__(self, ports: ScenarioPorts):
        self.ports = ports
        self.store = ScenarioStore(ports.open_db("scenarios", SCHEMA))
        self.queue: Callable[[dict], str] | None = None  # args -> run id (set by the scheduler)

    def close(self) -> None:
        self.store.close()

    # ---- requests ------------------------------------------------------------------------

    def submit(self, body: Any) -> dict:
        """Check a request (4xx before any work), store it and queue its run; its record."""
        if self.queue is None:
            raise LivetwinError("scenarios need the scheduler", fix="run the platform's scheduler")
        request = parse_request(body)
        self.ports.forecasts.check(request)  # every check a run would make, now
        scenario_id = "scn_" + secrets.token_hex(8)
        self.store.create(scenario_id, request.name, body, self.ports.clock())
        try:
            run_id = self.queue({"scenario": scenario_id})
        except BaseException:  # e.g. a scheduler on standby: no record without a run
            self.store.delete(scenario_id)
            raise
        self.store.set_run(scenario_id, run_id)
        return self.get(scenario_id)

    def get(self, scenario_id: str, twins: list[str] | None = None) -> dict:
        """A scenario's record; when it succeeded, its summary and series (of `twins`, default
        the first few)."""
        record = self.store.get(scenario_id)
        summary = record.get("summary")
        if record["status"] != "succeeded" or summary is None:
            return record
        known = {t["twin"] for t in summary["twins"]}
        for twin in twins or ():
            if twin not in known:
                raise NotFound(
                    f"twin '{twin}' is not in scenario '{scenario_id}'",
                    field="twin",
                    fix=f"use one of its twins ({len(known)}), listed in summary.twins",
                )
        arrays = self.store.series(scenario_id, twins, INLINE_SERIES)
        starts = {t["twin"]: t["start"] for t in summary["twins"]}
        record["series"] = {twin: _series(summary, a, starts[twin]) for twin, a in arrays.items()}
        return record

    def list(self, limit: int = 50) -> list[dict]:
        return self.store.list(limit)

    def delete(self, scenario_id: str) -> None:
        """Remove a scenario's record and results (a namespace's deletion)."""
        self.store.get(scenario_id)  # NotFound, with the fix
        self.store.delete(scenario_id)

    # ---- running -------------------------------------------------------------------------

    def run(
        self,
        scenario_id: str,
        run_id: str,
        log: Callable[[str], None] = print,
        *,
        progress: Progress | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> dict:
        """Run a stored scenario (the job's body): forecast, store, record its lineage; its
        summary. `progress(done, total)` hears model steps as they finish; `cancelled()` is
        asked after each chunk of them (the run then fails as cancelled and stores nothing)."""
        clock, store = self.ports.clock, self.store
        started = clock()
        record = store.get(scenario_id)
        store.started(scenario_id, started)

        def advanced(done: int, total: int) -> None:
            if not total:
                return  # nothing known yet (a cluster's shards that have not started)
            store.progress(scenario_id, min(1.0, done / total))
            if progress is not None:
                progress(done, total)

        try:
            summary, series = self.ports.forecasts.forecast(
                parse_request(record["request"]), job=run_id, progress=advanced,
                cancelled=cancelled,
            )  # fmt: skip
            log(f"forecast {len(series)} twins of {summary['type']}, {_steps(summary)} steps")
            summary["lineage"] = self._lineage(scenario_id, run_id, summary, started)
        except Exception as exc:
            store.failed(scenario_id, str(exc) or type(exc).__name__, clock())
            raise
        store.succeeded(scenario_id, summary, series, clock())
        log(f"stored {len(series)} twins' series under {scenario_id}")
        alarms = {side: len(found) for side, found in summary["alarms"].items()}
        return {"scenario": scenario_id, "twins": len(series), "alarms": alarms}

    def _lineage(self, scenario_id: str, run_id: str, summary: dict, started: int):
        """The run's lineage node: fed by the model and the calibration run whose filter state
        it forked (a lineage problem fails the scenario: its results must say where from)."""
        lineage, type_name = self.ports.lineage, summary["type"]
        plan = self.ports.forecasts.compiled_types()[type_name].calibration
        model_id, model = model_node(lineage, self.ports.models, plan.model.name, plan.model.fn)
        parents = [model_id]
        calibrated = lineage.latest("run", f"calibrate:{type_name}")
        if calibrated is not None:
            parents.append(calibrated)
        starts = [t["start"] for t in summary["twins"]]
        return lineage.record(
            "run",
            f"scenario:{type_name}",
            id=run_id,
            inputs={
                "job": "scenario",
                "scenario": scenario_id,
                "type": type_name,
                "type_version": summary["type_version"],
                "model": model,
                "twins": len(starts),
                "fork": {"from": format_ts(min(starts)), "to": format_ts(max(starts))},
                "model_steps": _steps(summary),
            },
            outputs={
                "scenario": scenario_id,
                "columns": summary["columns"],
                "alarms": {k: len(v) for k, v in summary["alarms"].items()},
            },
            parents=parents,
            code_hash=model["code_hash"],
            started=started,
            finished=self.ports.clock(),
        )

    # ---- the job -------------------------------------------------------------------------

    def job(self) -> Callable[[RunContext], dict]:
        """The built-in job `scenario`: args {scenario: id}."""

        def scenario(ctx: RunContext) -> dict:
            scenario_id = ctx.args.get("scenario")
            if not isinstance(scenario_id, str):
                raise ValueError("scenario needs args.scenario, the id from POST /api/scenarios")
            return self.run(
                scenario_id,
                ctx.run_id,
                ctx.log,
                progress=ctx.progress,
                cancelled=lambda: ctx.cancelled,
            )

        return scenario


class Forecaster:
    """Forks twins of a core and forecasts them (the pure part of a scenario: it reads the core
    through `reader`, a `Query`, and its calibrated filter state through `calibrations`, the
    core's store, and writes nothing). A single node's `Forecasts`; a shard forecasts its own
    twins of a cluster's scenario with `fork` and `forecast_twins`."""

    def __init__(self, reader: Any, calibrations: Any):
        self.reader = reader  # compiled_type(s), twin_types, twins, type_rows, history_rows
        self.calibrations = calibrations  # calibration_state

    def compiled_types(self) -> dict[str, CompiledType]:
        return self.reader.compiled_types()

    def check(self, request: ScenarioRequest) -> None:
        self.fork(request, *choose_twins(request.twins, self.reader))

    def forecast(
        self,
        request: ScenarioRequest,
        *,
        job: str | None = None,
        progress: Progress | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Forecast:
        type_name, ids = choose_twins(request.twins, self.reader)
        return self.forecast_twins(request, type_name, ids, progress=progress, cancelled=cancelled)

    # ---- forking -------------------------------------------------------------------------

    def fork(
        self, request: ScenarioRequest, type_name: str, ids: list[str], total: int | None = None
    ) -> Fork:
        """Twins `ids` of `type_name` forked as the request asks; InvalidInput naming the field
        otherwise. The limits count `total` twins (the whole scenario's; default `ids`)."""
        reader = self.reader
        ctype = reader.compiled_type(type_name)
        plan = ctype.calibration
        if plan is None:
            raise InvalidInput(
                f"type '{type_name}' has no model, so its twins cannot be run forward",
                field="twins",
                fix="choose twins of a type with model: and calibration: sections",
            )
        dt = plan.dt_ms
        horizon = offset_ms(request.horizon, "horizon")
        every = dt if request.step is None else offset_ms(request.step, "step")
        if every < dt or every % dt:
            raise InvalidInput(
                f"step {every} ms is not a multiple of the model step ({dt} ms)",
                field="step",
                fix=f"use a multiple of {dt} ms, e.g. '{max(1, every // dt) * dt}ms'",
            )
        points = horizon // every
        steps = points * (every // dt)
        n = len(ids) if total is None else total
        limits = [
            (points >= 1, "horizon", f"the horizon is shorter than one step ({every} ms)",
             "make the horizon at least one step"),
            (steps <= MAX_MODEL_STEPS, "horizon", f"{steps} model steps are more than "
             f"{MAX_MODEL_STEPS:,}", "shorten the horizon"),
            (points <= MAX_POINTS, "step", f"{points} points per twin are more than "
             f"{MAX_POINTS:,}", "report a coarser step"),
            (n * steps <= MAX_TWIN_STEPS, "horizon", f"{n} twins x {steps} model steps are more "
             f"than {MAX_TWIN_STEPS:,}", "shorten the horizon or choose fewer twins"),
            (n * points <= MAX_STORED_POINTS, "step", f"{n} twins x {points} points are more "
             f"than {MAX_STORED_POINTS:,}", "report a coarser step or choose fewer twins"),
        ]  # fmt: skip
        for ok, field, message, fix in limits:
            if not ok:
                raise InvalidInput(message, field=field, fix=fix)
        saved = self._calibration(ctype, ids)
        _, _, uids, _, current = reader.type_rows(type_name, lambda c: list(c.inputs), ids)
        rows = [saved.ids.index(t) for t in ids]
        start = saved.last_ts[rows].astype(np.int64) + 1
        scenario, baseline = self._inputs(request, ctype, ids, uids, current, start, steps)
        params = {p: np.tile(current[p], 2) for p in plan.model.params}
        measured = np.tile(np.stack([current[m] for m in plan.measured], axis=-1), (1, 2, 1))
        spec = _spec(ctype, plan, params, measured)
        section = plan.section  # the filter its calibration runs: estimator, backend, precision
        filt = make_filter(
            spec,
            2 * len(ids),
            estimator=section.estimator,
            backend=section.backend,
            precision=section.precision,
        )
        state = take_rows(saved.state, rows + rows)
        return Fork(ctype, ids, start, current, steps, every // dt, scenario, baseline, filt, state)

    def _calibration(self, ctype: CompiledType, ids: list[str]) -> TypeCalibration:
        """The type's stored filter rows, which must hold every twin under the current model."""
        plan = ctype.calibration
        blob = self.calibrations.calibration_state(ctype.name)
        saved = TypeCalibration.from_bytes(blob) if blob is not None else None
        fits = saved is not None and (
            saved.state.model == plan.model.name
            and saved.state.names == tuple(plan.parameters) + tuple(plan.model.states)
            and saved.state.kind == plan.section.estimator
        )
        missing = [t for t in ids if not fits or t not in saved.ids]
        if missing:
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            raise InvalidInput(
                f"never calibrated under the type's current model and settings: {shown}",
                field="twins",
                fix=f"calibrate first: POST /api/types/{ctype.name}/calibrate",
            )
        return saved

    def _inputs(self, request, ctype, ids, uids, current, start, steps):
        """Per input name, its values per model step under the scenario and the baseline."""
        plan = ctype.calibration
        model_inputs = tuple(plan.model.inputs)
        outputs = set(plan.model.outputs)
        others = tuple(
            p for p in ctype.spec.properties if p not in outputs and p not in model_inputs
        )
        allowed = model_inputs + others
        lo, hi = ctype.input_bounds()
        bounds = dict(zip(ctype.inputs, zip(lo, hi, strict=True), strict=True))
        scenario, baseline = {}, {}
        for name in allowed:
            spec, field = request.inputs.get(name), f"inputs.{name}"
            now = current[name]
            if spec is None and name not in model_inputs:
                continue  # a property the scenario leaves alone
            if np.isnan(now).any() and (spec is None or not _absolute(spec)):
                twin = ids[int(np.flatnonzero(np.isnan(now))[0])]
                raise InvalidInput(
                    f"twin '{twin}' has no value of '{name}' yet",
                    field=field,
                    fix=f'give it: "inputs": {{"{name}": {{"kind": "constant", "value": ...}}}}',
                )
            baseline[name] = np.broadcast_to(now, (steps, len(ids)))
            if spec is None:
                scenario[name] = baseline[name]
            elif isinstance(spec, Recorded):
                scenario[name] = self._recorded(spec, ctype, name, ids, uids, start, steps, field)
            else:
                scenario[name] = input_grid(spec, now, steps, plan.dt_ms, field)
            values = scenario[name]
            low, high = bounds[name]
            if not np.isfinite(values).all() or (values < low).any() or (values > high).any():
                raise InvalidInput(
                    f"the scenario's '{name}' leaves the declared range [{low}, {high}]",
                    field=field,
                    fix="keep the values finite and within the property's min and max",
                )
        for name in request.inputs:
            if name not in allowed:
                raise InvalidInput(
                    f"'{name}' is not an input of type '{ctype.name}'"
                    + (" (the model computes it)" if name in outputs else ""),
                    field=f"inputs.{name}",
                    fix=f"use one of: {', '.join(allowed)}",
                )
        return scenario, baseline

    def _recorded(self, spec, ctype, name, ids, uids, start, steps, field) -> np.ndarray:
        begin = parse_ts_field(spec.start, f"{field}.from")
        end = parse_ts_field(spec.end, f"{field}.to")
        if end <= begin:
            raise InvalidInput(
                "the window is empty: 'to' is not after 'from'", field=f"{field}.to",
                fix="give a window [from, to) with to > from",
            )  # fmt: skip
        grid = np.empty((steps, len(ids)))
        for i, uid in enumerate(uids):
            ts, _, values = self.reader.history_rows(int(uid), ctype.name, [name], begin, end)
            have = ~np.isnan(values[0])
            column = recorded_grid(ts[have], values[0][have], begin, steps, ctype.calibration.dt_ms)
            if column is None:
                raise InvalidInput(
                    f"twin '{ids[i]}' has no recorded '{name}' in [{format_ts(begin)}, "
                    f"{format_ts(end)})",
                    field=f"{field}.from",
                    fix=f"choose a window in which '{name}' was recorded (see its history)",
                )
            grid[:, i] = column * spec.scale + spec.offset
        return grid

    # ---- forecasting ---------------------------------------------------------------------

    def forecast_twins(
        self,
        request: ScenarioRequest,
        type_name: str,
        ids: list[str],
        *,
        total: int | None = None,
        progress: Progress | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Forecast:
        """Fork twins `ids` (as `fork`) and forecast them: the summary and their series.
        `progress(done, total)` hears model steps as they finish; `cancelled()` is asked after
        each chunk of them (ScenarioCancelled)."""
        fork = self.fork(request, type_name, ids, total)
        ctype, n = fork.ctype, len(fork.twins)
        plan = ctype.calibration
        model_inputs = list(plan.model.inputs)
        u = np.stack(
            [np.concatenate([fork.scenario[k], fork.baseline[k]], axis=1) for k in model_inputs],
            axis=-1,
        )
        columns = Columns(plan.measured, plan.virtual, plan.parameters)
        meas_var = measurement_var(fork.filt, fork.state)
        seeds = (_with(fork.current, fork.scenario), fork.current)
        sides = [
            (given, Outcome(ctype, fork.twins, fork.start, seed, fork.dt_ms))
            for given, seed in zip((fork.scenario, fork.baseline), seeds, strict=True)
        ]
        inputs = list(fork.scenario)
        labels = _labels(columns.names, ctype.derived_order, inputs)
        points = fork.steps // fork.stride
        out = np.full((2, points, n, len(labels)), np.nan)
        chunk = max(50, -(-fork.steps // 50))
        dt = fork.dt_ms / 1000.0
        section = plan.section
        numpy = choose_backend(plan.model, section.estimator, section.backend) == "numpy"
        workers = section.workers if numpy else 0  # XLA runs its chunks on its own threads
        with chunk_pool(workers) as pool:  # as the type's calibration runs
            fork.filt.executor = pool
            for first, results in forward(fork.filt, fork.state, u, dt, chunk=chunk):
                self._keep(fork, sides, columns, meas_var, inputs, out, first, results)
                if progress is not None:
                    progress(min(fork.steps, first + len(results.output_mean)), fork.steps)
                if cancelled is not None and cancelled():
                    raise ScenarioCancelled("the scenario was cancelled")
        return self._summary(fork, labels, out, sides), {
            twin: out[:, :, i] for i, twin in enumerate(fork.twins)
        }

    @staticmethod
    def _keep(fork, sides, columns, meas_var, inputs, out, first, results) -> None:
        """One chunk of forecast steps: bands, derived values and inputs of the reported ones."""
        n = len(fork.twins)
        k = first + np.arange(len(results.output_mean))
        keep = (k + 1) % fork.stride == 0
        at = (k[keep] + 1) // fork.stride - 1
        bands = columns.bands(results, meas_var)  # [steps, 2N, names, 3]
        for side, (given, outcome) in enumerate(sides):
            rows = slice(side * n, (side + 1) * n)
            chunk_inputs = {name: given[name][k] for name in inputs}
            derived = outcome.feed(first, _rows(results, rows), chunk_inputs)
            values = np.concatenate(
                [bands[:, rows].reshape(len(k), n, -1), _mean_only(derived),
                 _mean_only(np.stack([chunk_inputs[i] for i in inputs], axis=-1))],
                axis=-1,
            )  # fmt: skip
            out[side, at] = values[keep]

    def _summary(self, fork: Fork, labels: list[str], out: np.ndarray, sides) -> dict:
        step_ms = fork.stride * fork.dt_ms
        means = [i for i, label in enumerate(labels) if not label.endswith(("_lower", "_upper"))]
        twins = []
        for i, twin in enumerate(fork.twins):
            diff = out[0, :, i, means] - out[1, :, i, means]  # [names, points]
            changes = {}
            for j, column in enumerate(means):
                row = diff[j]
                if not np.isfinite(row).any() or not np.nanmax(np.abs(row)) > 0:
                    continue
                worst = int(np.nanargmax(np.abs(row)))
                changes[labels[column]] = {
                    "max_abs": float(np.abs(row[worst])),
                    "at": int(fork.start[i] + (worst + 1) * step_ms),
                    "final": _number(row[-1]),
                }
            twins.append(
                {
                    "twin": twin,
                    "start": int(fork.start[i]),
                    "failed": bool(np.isnan(out[:, :, i, means[0]]).any()),
                    "difference": changes,
                }
            )
        scenario_alarms, baseline_alarms = (outcome.alarms for _, outcome in sides)
        key = lambda a: (a["twin"], a["rule"])  # noqa: E731
        only = lambda a, b: [x for x in a if key(x) not in set(map(key, b))]  # noqa: E731
        return {
            "type": fork.ctype.name,
            "type_version": fork.ctype.version,
            "model": fork.ctype.calibration.model.name,
            "estimator": fork.filt.kind,
            "step_ms": step_ms,
            "model_step_ms": fork.dt_ms,
            "points": out.shape[1],
            "columns": labels,
            "twins": twins,
            "alarms": {
                "scenario": scenario_alarms,
                "baseline": baseline_alarms,
                "only_in_scenario": only(scenario_alarms, baseline_alarms),
                "only_in_baseline": only(baseline_alarms, scenario_alarms),
            },
        }


# ---- choosing twins, merging parts ------------------------------------------------------------


def choose_twins(chosen: list[str] | TwinFilter, reader: Any) -> tuple[str, list[str]]:
    """The type and ids of a request's twins: a list (each must exist, all of one type) or a
    filter (paged through `reader.twins`: at least one, at most MAX_TWINS twins). `reader` is
    a core's `Query` or a cluster front end (`twin_types`, `twins`)."""
    if isinstance(chosen, list):
        types = reader.twin_types(list(dict.fromkeys(chosen)))
        for twin, type_name in types.items():
            if type_name is None:
                raise InvalidInput(f"no twin '{twin}'", field="twins", fix="list existing twin ids")
        names = set(types.values())
        if len(names) > 1:
            raise InvalidInput(
                f"the twins are of several types ({', '.join(sorted(names))})",
                field="twins",
                fix="run one scenario per type",
            )
        return names.pop(), list(types)
    ids: list[str] = []
    try:
        while True:
            page = reader.twins(
                type=chosen.type, parent=chosen.parent, where=chosen.where,
                limit=1000, offset=len(ids),
            )  # fmt: skip
            ids += [item["id"] for item in page["items"]]
            if len(ids) >= page["total"] or not page["items"] or len(ids) > MAX_TWINS:
                break
    except Unavailable:
        raise  # a cluster's shard that cannot answer now: not the request's fault
    except LivetwinError as exc:
        raise InvalidInput(exc.message, field=f"twins.{exc.field}", fix=exc.fix) from None
    if not ids:
        raise InvalidInput(
            "the twin filter matches no twin",
            field="twins",
            fix="check type, parent and where (GET /api/twins takes the same filter)",
        )
    if len(ids) > MAX_TWINS:
        raise InvalidInput(
            f"the twin filter matches more than {MAX_TWINS} twins",
            field="twins",
            fix="narrow it with parent or where",
        )
    return chosen.type, ids


def merge_forecasts(parts: list[Forecast], ids: list[str]) -> Forecast:
    """One forecast of twins `ids` from the forecasts of disjoint parts of them (a cluster's
    shards): twins and series in the order of `ids`, each alarm list concatenated in the order
    the alarms were raised (a twin's alarms, and so `only_in_*`, come from its part alone)."""
    order = {twin: i for i, twin in enumerate(ids)}
    summary = dict(parts[0][0])
    summary["twins"] = sorted(
        (t for part, _ in parts for t in part["twins"]), key=lambda t: order[t["twin"]]
    )
    summary["alarms"] = {
        side: sorted(
            (a for part, _ in parts for a in part["alarms"][side]),
            key=lambda a: (parse_ts(a["raised"]), order[a["twin"]]),
        )
        for side in summary["alarms"]
    }
    series = {twin: array for _, part in parts for twin, array in part.items()}
    return summary, {twin: series[twin] for twin in ids}


def _steps(summary: dict) -> int:
    """A forecast's model steps per twin."""
    return summary["points"] * summary["step_ms"] // summary["model_step_ms"]


# ---- helpers ----------------------------------------------------------------------------------


class ScenarioCancelled(Exception):
    """POST /api/runs/{id}/cancel stopped the scenario's run."""


def _absolute(spec) -> bool:
    """Whether an input description gives values without the current one (constant, series,
    recorded, a step or ramp `to` a level, a schedule that starts at 0)."""
    kind = spec.kind
    if kind in ("constant", "series", "recorded"):
        return True
    if kind in ("step", "ramp"):
        return spec.to is not None and offset_ms(spec.at, "at") == 0
    return kind == "schedule" and offset_ms(spec.points[0][0], "points") == 0


def _with(current: dict, scenario: dict) -> dict:
    """Current values, with the scenario's first value of each input it sets."""
    return {**current, **{k: np.asarray(v[0], float) for k, v in scenario.items()}}


def _rows(results: StepResult, rows: slice) -> StepResult:
    """The results of some twins (the second axis) of stacked step results."""
    return replace(
        results,
        **{
            f.name: getattr(results, f.name)[:, rows]
            for f in fields(results)
            if isinstance(getattr(results, f.name), np.ndarray)
        },
    )


def _mean_only(values: np.ndarray) -> np.ndarray:
    """``[steps, N, k]`` -> ``[steps, N, 3k]``: each value with NaN for lower and upper."""
    out = np.full(values.shape[:-1] + (values.shape[-1], 3), np.nan)
    out[..., 0] = values
    return out.reshape(values.shape[:-1] + (-1,))


def _labels(banded: tuple[str, ...], derived: tuple[str, ...], inputs: list[str]) -> list[str]:
    return [f"{n}{s}" for n in (*banded, *derived, *inputs) for s in ("", "_lower", "_upper")]


def _number(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _series(summary: dict, array: np.ndarray, start: int) -> dict:
    """One twin's stored [side, point, column] array as JSON: ts, then per side and name the
    mean, lower and upper (null where none)."""
    labels, step = summary["columns"], summary["step_ms"]
    names = labels[::3]
    out: dict = {"ts": [start + (p + 1) * step for p in range(array.shape[1])]}
    for side, label in enumerate(("scenario", "baseline")):
        block = array[side]
        values = {}
        for j, name in enumerate(names):
            triple = block[:, 3 * j : 3 * j + 3].T
            values[name] = {
                stat: None if np.isnan(col).all() else [_number(v) for v in col]
                for stat, col in zip(("mean", "lower", "upper"), triple, strict=True)
            }
        out[label] = values
    return out
