"""The calibration job: measured history in, calibrated parameters and virtual sensors out.

For the twins of one type it reads the rows measured since each twin's last calibrated step,
aligns them on the model's step `dt` (the last value per step; inputs carried forward), runs
the batched filter, and publishes every step's parameters and virtual sensors with their std
and 95 % band through the ordinary ingest path (journal, engine, history). The filter state of
the type (one row per twin) is stored with a record of the run, so the next run -- or the next
process -- resumes where this one ended. A run has one id (`record["run"]`: the scheduler's
run id when the scheduler started it); a run that published values records the lineage node of
that id (data window, model ref/registered version and code hash, published names;
`record["lineage"]`). A type's `calibration.every` and `continuous` become system schedules of
the scheduler (`calibration_schedules`), which runs the `calibrate` job (`calibrate_job`).

Twins that start at the same step are filtered together as one batch (a cohort); scheduled
runs keep a whole fleet in one cohort. One twin's failure never stops the others: the run
record says which twins failed or were skipped and why.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

import numpy as np

from livetwin.calibrate import CalibrationSpec, FilterState, choose_backend, chunk_pool, make_filter
from livetwin.calibrate.batch import NOISE_MIN_SAMPLES
from livetwin.calibrate.fit import FitCheck
from livetwin.calibrate.noise import noise_in_use
from livetwin.calibrate.state import FAILURE_REASONS
from livetwin.engine.batch import Batch
from livetwin.errors import InvalidInput
from livetwin.ingest.observations import Normalized
from livetwin.jobs.lineage import Cohort, record_calibration
from livetwin.jobs.ports import CalibrationPorts
from livetwin.registry.lineage import new_run_id
from livetwin.spec.calibration import FIT_VALUES, CalibrationPlan
from livetwin.store.history import aggregate
from livetwin.timefmt import format_ts

if TYPE_CHECKING:
    from livetwin.ports import Ingest
    from livetwin.schedule.functions import RunContext

log = logging.getLogger(__name__)

MAX_STEPS = 20_000  # per cohort and run; the rest waits for the next run
DEFAULT_PRIOR_STD = 0.3  # relative, for a parameter without calibration.prior_std
DEFAULT_PARAM_WALK = 1e-3  # random-walk std per step of a (log-)parameter
IDENTIFIABLE_AFTER = 200  # updates after which a band still near its prior is reported
PRIOR_SHARE = 0.8  # "mostly its prior": posterior std above this share of the prior std


@dataclass
class TypeCalibration:
    """The stored calibration of one type: filter rows and the last calibrated step per twin."""

    ids: list[str]
    last_ts: np.ndarray  # int64 (N,): end of the last step consumed, epoch ms
    state: FilterState

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        arrays = {f"f/{k}": v for k, v in self.state.to_arrays().items()}
        np.savez(buffer, ids=np.array(self.ids, dtype=str), last_ts=self.last_ts, **arrays)
        return buffer.getvalue()

    @staticmethod
    def from_bytes(blob: bytes) -> TypeCalibration:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            state = FilterState.from_arrays({k[2:]: npz[k] for k in npz.files if k[:2] == "f/"})
            return TypeCalibration([str(i) for i in npz["ids"]], npz["last_ts"].copy(), state)


def calibrate(
    ports: CalibrationPorts,
    type_name: str,
    twins: list[str] | None = None,
    *,
    run: str | None = None,
) -> dict:
    """Run one calibration of `twins` (default: all twins of the type); returns the run record.
    `run` is the run's id (the scheduler's run id; a new one when None), also its lineage node's.
    """
    started = ports.clock()
    run = run or new_run_id("calibrate")
    ctype, chosen, uids, last_seen, params = ports.reader.type_rows(type_name, _params, twins)
    plan = ctype.calibration
    section = plan.section
    backend = _checked(choose_backend, plan.model, section.estimator, section.backend)
    saved = _load(ports.store, type_name, plan)
    record = {
        "run": run,
        "type": type_name,
        "type_version": ctype.version,
        "model": plan.model.name,
        "estimator": plan.section.estimator,
        "backend": backend,
        "precision": plan.section.precision,
        "compile_s": 0.0,
        "started": format_ts(started),
        "twins": len(chosen),
        "steps": 0,
        "calibrated": 0,
        "failed": {},
        "skipped": {},
        "pending": False,
        "window": None,
        "noise": {},
        "warnings": [],
    }
    data = {}
    for i, twin in enumerate(chosen):
        since = int(saved.last_ts[saved.ids.index(twin)]) + 1 if twin in saved.ids else 0
        uid, until = int(uids[i]), int(last_seen[i])
        aligned = aligned_rows(ports.reader, type_name, plan, uid, since, until)
        problem = too_little(aligned, plan)
        if problem:
            record["skipped"][twin] = problem
        else:
            data[twin] = aligned
    cohorts: dict[tuple[int, bool], list[str]] = {}
    ran: list[Cohort] = []  # for lineage: who was filtered over which window
    for twin, aligned in data.items():
        cohorts.setdefault((int(aligned.buckets[0]), twin in saved.ids), []).append(twin)
    for (first, resumed), members in sorted(cohorts.items()):
        index = [chosen.index(t) for t in members]
        outcome = _run_cohort(
            ports.ingest,
            ctype,
            plan,
            saved,
            members,
            [data[t] for t in members],
            {p: v[index] for p, v in params.items()},
            first,
            resumed,
            backend,
        )
        record["compile_s"] = round(record["compile_s"] + outcome["compile_s"], 3)
        record["steps"] = max(record["steps"], outcome["steps"])
        record["calibrated"] += outcome["calibrated"]
        record["failed"].update(outcome["failed"])
        record["warnings"] += outcome["warnings"]
        record["pending"] |= outcome["pending"]
        ran.append(Cohort(tuple(members), *outcome["span"], resumed))
        window = outcome["window"]
        if record["window"] is None:
            record["window"] = window
        else:
            record["window"] = {
                "from": min(record["window"]["from"], window["from"]),
                "to": max(record["window"]["to"], window["to"]),
            }
    if chosen and saved.ids:
        rows = [saved.ids.index(t) for t in data if t in saved.ids]
        record["noise"] = noise_summary(plan, saved.state, rows)
    record["finished"] = format_ts(ports.clock())
    record["status"] = _status(record)
    record["lineage"] = record_calibration(
        ports.lineage, ports.models, record, ctype, plan, ran, published_names(plan), started,
        ports.clock(),
    )  # fmt: skip
    if record["calibrated"]:
        ports.store.save_calibration(type_name, saved.to_bytes(), record, ports.clock())
    else:
        ports.store.add_calibration_run(type_name, record)
    return record


def calibration_view(query, store, twin_id: str, *, runs: int = 10) -> dict:
    """A twin's calibrated parameters and virtual sensors (value, std, 95 % band, unit and when
    published: the newest values calibration wrote to history), its filter and recent runs."""
    ctype = query.type_of(twin_id)
    plan = ctype.calibration
    if plan is None:
        raise InvalidInput(
            f"twin '{twin_id}' is a '{ctype.name}', which has no model",
            field="type",
            fix="add model: and calibration: sections to the type spec",
        )
    blob = store.calibration_state(ctype.name)
    saved = TypeCalibration.from_bytes(blob) if blob is not None else None
    filter_info = None
    until = None
    if saved is not None and twin_id in saved.ids:
        i = saved.ids.index(twin_id)
        until = int(saved.last_ts[i])
        filter_info = {
            "calibrated_until": format_ts(int(saved.last_ts[i])),
            "failed": bool(saved.state.failed[i]),
            "reason": int(saved.state.reason[i]),
            "model": saved.state.model,
            "estimator": saved.state.kind,
            "noise": noise_summary(plan, saved.state, [i], per_twin=True),
            **fit_summary(plan, saved.state, i),
        }
    stats = query.stats(twin_id, [*plan.parameters, *plan.virtual], until=until)
    declared = ctype.spec.parameters
    units = {p: declared[p].unit for p in plan.parameters} | ctype.spec.model.units
    for name, entry in stats.items():
        entry["unit"] = units.get(name, "")
    return {
        "twin": twin_id,
        "type": ctype.name,
        "model": plan.model.name,
        "parameters": {p: stats[p] for p in plan.parameters},
        "virtual_sensors": {v: stats[v] for v in plan.virtual},
        "filter": filter_info,
        "runs": store.calibration_runs(ctype.name, runs),
    }


@dataclass
class _Aligned:
    buckets: np.ndarray  # int64 (K,) consecutive step indices (ts // dt)
    last_ts: np.ndarray  # int64 (K,) newest measurement time in each step (or the step start)
    inputs: np.ndarray  # (K, u) carried forward
    measured: np.ndarray  # (K, m) NaN where nothing was measured
    rows: int  # steps holding a measurement


def _params(ctype) -> list[str]:
    """The model parameters of a type with a model to calibrate (InvalidInput otherwise)."""
    if ctype.calibration is None:
        raise InvalidInput(
            f"type '{ctype.name}' has no model to calibrate",
            field="model",
            fix="add model: and calibration: sections to the type spec",
        )
    return list(ctype.calibration.model.params)


def aligned_rows(reader, type_name, plan: CalibrationPlan, uid: int, since: int, until: int):
    """One twin's rows since `since`, one row per model step, or None without data."""
    names = list(plan.model.inputs) + list(plan.measured)
    ts, _, values = reader.history_rows(uid, type_name, names, since, until + 1)
    if len(ts) == 0:
        return None
    step_ts, last = aggregate(ts, values, plan.dt_ms, "last")
    _, newest = aggregate(ts, ts[None, :].astype(float), plan.dt_ms, "max")
    buckets = step_ts // plan.dt_ms
    span = np.arange(buckets[0], buckets[-1] + 1)
    at = np.searchsorted(span, buckets)
    grid = np.full((len(names), len(span)), np.nan)
    grid[:, at] = last
    step_last = span * plan.dt_ms
    step_last[at] = newest[0].astype(np.int64)
    u = len(plan.model.inputs)
    inputs = _carry_forward(grid[:u])
    measured = grid[u:]
    return _Aligned(span, step_last, inputs.T, measured.T, int((~np.isnan(measured)).any(0).sum()))


def _carry_forward(x: np.ndarray) -> np.ndarray:
    """Each row's last known value carried forward; leading gaps take the first known value."""
    out = x.copy()
    for row in out:
        known = np.flatnonzero(~np.isnan(row))
        if len(known):
            index = np.maximum.accumulate(np.where(~np.isnan(row), np.arange(len(row)), -1))
            row[:] = row[np.where(index < 0, known[0], index)]
    return out


def too_little(aligned: _Aligned | None, plan: CalibrationPlan) -> str | None:
    if aligned is None:
        return "no new measurements"
    missing = [
        n for n, col in zip(plan.model.inputs, aligned.inputs.T, strict=True) if np.isnan(col).all()
    ]
    if missing:
        return f"no data for input {', '.join(missing)}"
    if aligned.rows < plan.section.min_steps:
        return (
            f"too little data: {aligned.rows} aligned rows, at least "
            f"{plan.section.min_steps} needed (calibration.min_steps)"
        )
    return None


def _run_cohort(
    ingest, ctype, plan, saved, members, aligned, params, first, resumed, backend
) -> dict:
    """Filter twins that start at the same step; publish results; update `saved` in place."""
    n = len(members)
    inputs, measured, step_ts = cohort_arrays(plan, aligned, first, MAX_STEPS)
    steps = len(inputs)
    end = first + steps - 1
    start = take_rows(saved.state, [saved.ids.index(t) for t in members]) if resumed else None
    published = []
    every = plan.section.publish_every
    kept = []  # the steps published: every k-th of the type's step grid, and the last

    def publish(k: int, result, fit: dict) -> None:
        if (first + k + 1) % every == 0 or k == steps - 1:
            published.append(_values(plan, result, fit))
            kept.append(k)

    filt, state = filter_cohort(ctype, plan, params, inputs, measured, backend, start, publish)
    compile_s = getattr(filt, "compile_wait_s", 0.0)  # the compiled backend's, when cached 0
    _publish(ingest, ctype, plan, members, step_ts[kept], published)
    _store(saved, state, members, (end + 1) * plan.dt_ms - 1)
    failed = {
        members[i]: FAILURE_REASONS.get(int(state.reason[i]), "failed")
        for i in np.flatnonzero(state.failed)
    }
    return {
        "steps": steps,
        "warnings": not_identifiable(filt, state, members),
        "calibrated": n - len(failed),
        "failed": failed,
        "pending": any(int(a.buckets[-1]) > end for a in aligned),
        "window": {"from": format_ts(first * plan.dt_ms), "to": format_ts((end + 1) * plan.dt_ms)},
        "span": (first * plan.dt_ms, (end + 1) * plan.dt_ms),
        "compile_s": compile_s,
    }


def cohort_arrays(
    plan: CalibrationPlan, aligned: list[_Aligned], first: int, max_steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Twins' aligned rows on one step grid from step `first` (at most `max_steps` steps):
    inputs ``[K,N,u]`` (carried forward, and back before a twin's first row), measurements
    ``[K,N,m]`` (NaN where none) and each step's newest measurement time ``[K,N]``."""
    n = len(aligned)
    end = min(max(int(a.buckets[-1]) for a in aligned), first + max_steps - 1)
    steps = end - first + 1
    inputs = np.full((steps, n, len(plan.model.inputs)), np.nan)
    measured = np.full((steps, n, len(plan.measured)), np.nan)
    step_ts = np.tile(np.arange(first, end + 1)[:, None] * plan.dt_ms, (1, n))
    for i, a in enumerate(aligned):
        lo = int(a.buckets[0]) - first  # 0 for a cohort that starts together
        k = max(0, min(len(a.buckets), steps - lo))
        rows = slice(lo, lo + k)
        inputs[rows, i], measured[rows, i], step_ts[rows, i] = (
            a.inputs[:k],
            a.measured[:k],
            a.last_ts[:k],
        )
        inputs[:lo, i] = a.inputs[0]
        inputs[lo + k :, i] = a.inputs[max(k - 1, 0)]  # a twin whose data ends early
    return inputs, measured, step_ts


def filter_cohort(
    ctype, plan, params, inputs, measured, backend, state, visit: Callable
) -> tuple[object, FilterState]:
    """Run the type's batched filter over all twins of a cohort at once: steps ``inputs[K,N,u]``
    and ``measured[K,N,m]`` from `state` (None: the prior from `_spec`); `visit(k, result,
    fit)` sees each step's `StepResult` and model-fit verdict. Returns (filter, final state)."""
    spec = _spec(ctype, plan, params, measured)
    section = plan.section
    dt = plan.dt_ms / 1000.0
    with chunk_pool(section.workers if backend == "numpy" else 0) as pool:
        filt = _checked(
            make_filter,
            spec,
            len(measured[0]),
            estimator=section.estimator,
            backend=backend,
            precision=section.precision,
            executor=pool,
        )
        if state is None:
            state = filt.init(type_version=ctype.version)
        check = FitCheck(section.model_fit_window)
        for k in range(len(inputs)):
            state, result = filt.step(state, inputs[k], measured[k], dt)
            visit(k, result, check.update(state, result, result.innovation, result.innovation_var))
    return filt, state


def _checked(fn: Callable, *args, **kwargs):
    """`fn(...)`, its InvalidInput naming the type's field (`calibration.backend`, ...)."""
    try:
        return fn(*args, **kwargs)
    except InvalidInput as exc:
        if exc.field in ("backend", "precision", "estimator"):
            raise InvalidInput(exc.message, field=f"calibration.{exc.field}", fix=exc.fix) from None
        raise


def _spec(ctype, plan: CalibrationPlan, params: dict, measured: np.ndarray) -> CalibrationSpec:
    """The filter's spec for a cohort: priors at the twins' current values, bounds from the type."""
    section = plan.section
    declared = ctype.spec.parameters
    prior, fixed, bounds = {}, {}, {}
    for name in plan.model.params:
        if name in plan.parameters:
            mean = params[name]
            std = section.prior_std.get(name)
            prior[name] = (mean, DEFAULT_PRIOR_STD * np.abs(mean) if std is None else std)
            bounds[name] = (declared[name].min, declared[name].max)
        else:
            fixed[name] = params[name]
    for name in plan.model.states:
        if name in plan.measured:  # start at the first measurement of the window
            column = measured[:, :, plan.measured.index(name)]
            first = column[np.argmax(~np.isnan(column), axis=0), np.arange(column.shape[1])]
            std = section.measurement_noise.get(name, 0.05 * np.nanmax(np.abs(first)) + 1e-9)
            prior[name] = (first, std)
        else:
            prior[name] = section.state_prior[name]
    noise = {p: DEFAULT_PARAM_WALK for p in plan.parameters}
    noise.update(section.process_noise)
    return CalibrationSpec(
        model=plan.model,
        measured=plan.measured,
        prior=prior,
        fixed=fixed,
        bounds={k: v for k, v in bounds.items() if v != (None, None)},
        process_noise=noise,
        meas_noise=section.measurement_noise or None,
    )


def _values(plan: CalibrationPlan, result, fit: dict) -> np.ndarray:
    """One step's published columns (`published_names` order), (N, k)."""
    columns = []
    for p in plan.parameters:
        stats = result.param(p)
        columns += [stats["mean"], stats["std"], stats["lower"], stats["upper"]]
    for v in plan.virtual:
        stats = result.output(v)
        columns += [stats["mean"], stats["std"], stats["lower"], stats["upper"]]
    columns += [fit[name] for name in FIT_VALUES]
    return np.stack(columns, axis=1)


def published_names(plan: CalibrationPlan) -> tuple[str, ...]:
    """The names `_values` fills, in its order."""
    names: list[str] = []
    for p in plan.parameters:
        names += [p, f"{p}_std", f"{p}_lower", f"{p}_upper"]
    for v in plan.virtual:
        names += [v, f"{v}_std", f"{v}_lower", f"{v}_upper"]
    return (*names, *FIT_VALUES)


def _publish(ingest: Ingest, ctype, plan, members, step_ts, published) -> None:
    """Every step of every twin as one observation, through the journal like device data."""
    steps, n = step_ts.shape
    values = np.stack(published)  # (steps, n, k)
    values = np.where(np.isfinite(values), values, np.nan)
    names = published_names(plan)
    twins = [t for _ in range(steps) for t in members]
    batch = Batch(
        ctype.name,
        twins,
        step_ts.reshape(-1).astype(np.int64),
        names,
        np.ascontiguousarray(values.reshape(steps * n, len(names)).T),
    )
    keep = ~np.isnan(batch.values).all(axis=0)  # a twin reset this step has nothing to say
    if not keep.all():
        batch = batch.take(np.flatnonzero(keep))
    normalized = Normalized(batches=[(batch, np.arange(len(batch)))])
    ingest.submit_normalized(normalized).result()


def _store(saved: TypeCalibration, state: FilterState, members: list[str], end_ts: int) -> None:
    """Write a cohort's filter rows and last step into the type's stored calibration."""
    for i, twin in enumerate(members):
        if twin not in saved.ids:
            saved.ids.append(twin)
            saved.last_ts = np.append(saved.last_ts, -1)
            saved.state = _append(saved.state, take_rows(state, [i]))
        row = saved.ids.index(twin)
        saved.last_ts[row] = end_ts
        _put(saved.state, row, take_rows(state, [i]))


def _load(store, type_name: str, plan: CalibrationPlan) -> TypeCalibration:
    """The stored calibration, or an empty one when none fits the current model."""
    blob = store.calibration_state(type_name)
    if blob is not None:
        saved = TypeCalibration.from_bytes(blob)
        expected = tuple(plan.parameters) + tuple(plan.model.states)
        if saved.state.model == plan.model.name and saved.state.names == expected:
            return saved
    empty = FilterState(
        mean=np.zeros((0, len(plan.parameters) + len(plan.model.states))),
        cov=np.zeros((0,) + (len(plan.parameters) + len(plan.model.states),) * 2),
        names=tuple(plan.parameters) + tuple(plan.model.states),
        model=plan.model.name,
        kind=plan.section.estimator,
    )
    return TypeCalibration([], np.zeros(0, dtype=np.int64), empty)


# ---- what a run learned about its noise, identifiability and fit -----------------------------


def noise_summary(plan: CalibrationPlan, state: FilterState, rows: list[int], per_twin=False):
    """The measurement noise the filter uses now, per measured output: configured, or learned
    (`livetwin.calibrate.noise`); over `rows` the median and range of the std, or one twin's."""
    configured = plan.section.measurement_noise
    if configured or state.noise_var is None or not rows:
        source = "configured" if configured else "not estimated yet"
        return {name: {"std": configured.get(name), "source": source} for name in plan.measured}
    var, ready = noise_in_use(take_rows(state, rows), NOISE_MIN_SAMPLES)
    out = {}
    for j, name in enumerate(plan.measured):
        std = np.sqrt(var[:, j][ready[:, j]])
        if not len(std):
            out[name] = {"std": None, "source": "not estimated yet"}
        elif per_twin:
            out[name] = {"std": float(std[0]), "source": "innovations"}
        else:
            out[name] = {
                "std_median": float(np.median(std)),
                "std_min": float(std.min()),
                "std_max": float(std.max()),
                "source": "innovations",
            }
    return out


def not_identifiable(filt, state: FilterState, twins: list[str]) -> list[str]:
    """Warnings for parameters whose band is still mostly their prior after
    `IDENTIFIABLE_AFTER` updates (counted by the model-fit check, since the twin's last reset):
    the data do not tell them apart ("not identifiable")."""
    plan = filt.plan
    p = plan.n_params
    prior_std = np.sqrt(np.diagonal(plan.prior_cov, axis1=1, axis2=2)[:, :p])
    std = np.sqrt(np.diagonal(state.cov, axis1=1, axis2=2)[:, :p])
    many = state.fit_count >= IDENTIFIABLE_AFTER
    stuck = many[:, None] & (std > PRIOR_SHARE * prior_std)
    warnings = []
    for j, name in enumerate(plan.params):
        which = [twins[i] for i in np.flatnonzero(stuck[:, j])]
        if which:
            ratio = float(np.median(std[stuck[:, j], j] / prior_std[stuck[:, j], j]))
            shown = ", ".join(which[:5]) + (f" and {len(which) - 5} more" if len(which) > 5 else "")
            warnings.append(
                f"parameter '{name}' is not identifiable from this data for {shown}: after "
                f"{IDENTIFIABLE_AFTER}+ updates its band is still {ratio:.0%} of its prior "
                "(give inputs that excite it, a tighter prior_std, or fix it)"
            )
    return warnings


def fit_summary(plan: CalibrationPlan, state: FilterState, row: int) -> dict:
    """One twin's model-fit check now: mean NIS over the window and model_fit (1, 0, None)."""
    if state.fit_count is None:
        return {"nis": None, "model_fit": None}
    verdict = FitCheck(plan.section.model_fit_window).verdict(take_rows(state, [row]))
    return {k: _number(v[0]) for k, v in verdict.items()}


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


# ---- filter-state rows ------------------------------------------------------------------------


def _row_fields(state: FilterState) -> list[str]:
    n = state.n_twins
    return [
        f.name
        for f in fields(state)
        if isinstance(getattr(state, f.name), np.ndarray) and len(getattr(state, f.name)) == n
    ]


def take_rows(state: FilterState, rows: list[int]) -> FilterState:
    return replace(state, **{k: getattr(state, k)[rows].copy() for k in _row_fields(state)})


def _append(state: FilterState, more: FilterState) -> FilterState:
    if state.n_twins == 0:
        return more.copy()
    _missing_rows(state, more)
    joined = {k: np.concatenate([getattr(state, k), getattr(more, k)]) for k in _row_fields(more)}
    return replace(state, **joined, steps=max(state.steps, more.steps))


def _put(state: FilterState, row: int, one: FilterState) -> None:
    _missing_rows(state, one)
    for k in _row_fields(one):
        getattr(state, k)[row] = getattr(one, k)[0]
    state.steps = max(state.steps, one.steps)


def _missing_rows(state: FilterState, like: FilterState) -> None:
    """Give stored rows that lack a per-twin array of `like` (saved by an older version, or
    with another model-fit window) a fresh one: zeros, NaN for innovations."""
    for k in _row_fields(like):
        mine, theirs = getattr(state, k), getattr(like, k)
        if mine is None or mine.shape[1:] != theirs.shape[1:]:
            fill = np.nan if k == "fit_e" else 0
            setattr(state, k, np.full((state.n_twins, *theirs.shape[1:]), fill, theirs.dtype))


def _status(record: dict) -> str:
    if record["calibrated"] == 0:
        return "failed" if record["failed"] else "no-data"
    return "partial" if record["failed"] else "succeeded"


# ---- the job and its system schedules ------------------------------------------------------

CALIBRATE_FUNCTION = {
    "kind": "builtin",
    "job": "calibrate",
    "concurrency": 1,  # one at a time, as a run of a type must not overlap its previous one
    "retries": 1,
    "backoff_s": 5.0,
    "description": "calibrates a twin type on calibration.every and calibration.continuous",
}


def calibrate_job(calibrate_type: Callable[..., dict]) -> Callable[[RunContext], dict]:
    """The built-in job `calibrate`: args {type, twins?} (twins "all", or a list; default: a
    condition or state trigger's twins, else all). `calibrate_type(type, twins, run=run_id)`
    is the platform's calibration entry (it serialises runs of one type)."""

    def run(ctx: RunContext) -> dict:
        type_name = ctx.args.get("type") or ctx.trigger.get("type")
        if not isinstance(type_name, str):
            raise ValueError("calibrate needs args.type, the twin type to calibrate")
        twins = ctx.args.get("twins")
        if twins == "all":
            twins = None
        else:
            twins = twins or ctx.trigger.get("twins")
        ctx.log(f"calibrating {type_name} ({len(twins) if twins else 'all'} twins)")
        return calibrate_type(type_name, list(twins) if twins else None, run=ctx.run_id)

    run.__name__ = run.__qualname__ = "calibrate"
    return run


def calibration_schedules(ctype) -> list[dict]:
    """The system schedules a type's calibration section implies: `every` -> an interval
    schedule; `continuous` -> a run when a batch carries new measurements (the calibration's
    own published values are not measurements, so they start nothing)."""
    plan = ctype.calibration
    if plan is None:
        return []
    args = {"type": ctype.name, "twins": "all"}
    found = []
    if plan.section.every:
        found.append(
            {
                "id": f"calibrate.every.{ctype.name}",
                "function": "calibrate",
                "trigger": {"kind": "interval", "every": plan.section.every},
                "args": args,
                "description": f"calibration.every of type {ctype.name}",
            }
        )
    if plan.section.continuous:
        found.append(
            {
                "id": f"calibrate.continuous.{ctype.name}",
                "function": "calibrate",
                "trigger": {
                    "kind": "event",
                    "on": "state",
                    "type": ctype.name,
                    "names": list(plan.measured),
                },
                "args": args,
                "description": f"calibration.continuous of type {ctype.name}",
            }
        )
    return found
