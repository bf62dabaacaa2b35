"""Score a filter on a synthetic fleet whose truth is known: band coverage, RMSE, step timing.

Shared by the calibration benchmark and the accuracy tests (`from benchmarks.synthetic import`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from livetwin.calibrate.batch import BatchFilter
from livetwin.calibrate.results import StepResult
from livetwin.calibrate.state import FilterState
from livetwin.models.simulate import FleetSimulator, Sample


@dataclass
class Run:
    """The end of a synthetic run: last state, result and truth, and per-step scores."""

    state: FilterState
    result: StepResult
    truth: Sample
    filter_seconds: float
    steps: int
    coverage: list[float] = field(default_factory=list)  # per step, over all params and twins


def coverage(result: StepResult, true_params: np.ndarray) -> float:
    """Fraction of (twin, parameter) pairs whose true value lies in the reported 95 % band."""
    inside = (result.param_lower <= true_params) & (true_params <= result.param_upper)
    return float(inside.mean())


def true_calibrated(flt: BatchFilter, truth: Sample) -> np.ndarray:
    """The true values of the filter's calibrated parameters ``[N, p]``."""
    return truth.params[:, flt.plan.cal_idx]


def rmse(result: StepResult, truth: Sample, names: tuple[str, ...]) -> float:
    """Root-mean-square error of the named outputs (e.g. virtual sensors) over all twins."""
    idx = [result.outputs.index(n) for n in names]
    err = result.output_mean[:, idx] - truth.outputs[:, idx]
    return float(np.sqrt(np.nanmean(err * err)))


def run_synthetic(
    flt: BatchFilter,
    sim: FleetSimulator,
    steps: int,
    *,
    state: FilterState | None = None,
    on_step: Callable[[int, StepResult, Sample], None] | None = None,
    mask: Callable[[int, np.ndarray], np.ndarray] | None = None,
) -> Run:
    """Filter `steps` steps of `sim`; `mask(k, z)` may blank or corrupt measurements first."""
    state = flt.init() if state is None else state
    spent = 0.0
    scores = []
    res = truth = None
    for k in range(steps):
        truth = sim.step()
        z = truth.z if mask is None else mask(k, truth.z.copy())
        t0 = time.perf_counter()
        state, res = flt.step(state, truth.inputs, z, sim.dt)
        spent += time.perf_counter() - t0
        scores.append(coverage(res, true_calibrated(flt, truth)))
        if on_step is not None:
            on_step(k, res, truth)
    return Run(state, res, truth, spent, steps, scores)


def model_change(
    n: int, steps: int, switched: int, *, gain: float = 1500.0, seed: int = 5, window: int = 30
) -> dict:
    """Rooms (`livetwin.examples.thermal`, noise learned) of which the first `switched` get
    `gain` W of heat the model is not told about from half-way on; the model-fit check
    (`livetwin.calibrate.fit`) runs beside the filter. Returns the figures: steps from the
    change to each switched room's first flag (``delays``, -1 when never), the share of their
    steps flagged after it and at the end, and the other rooms' false alarms per twin-day
    (times a room's ``model_fit`` turns 0)."""
    from livetwin.calibrate import BatchUKF
    from livetwin.calibrate.fit import FitCheck
    from livetwin.examples.thermal import DT, thermal_fleet, thermal_spec

    sim = thermal_fleet(n, seed=seed)
    changed = np.arange(n) < switched
    extra = np.zeros(n)
    weather = sim.inputs

    def plant_inputs(s: FleetSimulator) -> np.ndarray:
        u = weather(s).copy()
        u[:, 1] += extra  # the plant gets heat the model is not told about
        return u

    sim.inputs = plant_inputs
    first = sim.step()
    flt = BatchUKF(thermal_spec(first.z[:, 0], meas_noise=None), n)
    state, check = flt.init(), FitCheck(window=window)
    flags = np.zeros((steps, n), dtype=bool)
    half = steps // 2
    for k in range(steps):
        if k == half:
            extra[changed] = gain
        truth = sim.step()
        told = truth.inputs.copy()
        told[:, 1] -= extra
        state, res = flt.step(state, told, truth.z, DT)
        flags[k] = check.update(state, res, res.innovation, res.innovation_var)["model_fit"] == 0
    after = flags[half:, changed]
    delays = np.where(after.any(axis=0), after.argmax(axis=0), -1)
    quiet = flags[:, ~changed]
    episodes = int(quiet[0].sum() + (quiet[1:] & ~quiet[:-1]).sum())
    twin_days = (~changed).sum() * steps * DT / 86400
    return {
        "delays": delays,
        "flagged_after_change": float(after.mean()),
        "flagged_at_end": float(after[-1].mean()),
        "false_alarms_per_twin_day": episodes / twin_days,
        "step_s": DT,
    }
