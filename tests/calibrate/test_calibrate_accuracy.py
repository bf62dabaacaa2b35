"""Accuracy on synthetic fleets with known truth: band coverage, virtual-sensor RMSE, tracking.

Coverage bounds are two-sided: bands that are too narrow fail as surely as bands too wide.
Fixed seeds; no timing assertions.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.synthetic import coverage, rmse, run_synthetic, true_calibrated
from livetwin.calibrate import BatchEnKF, BatchUKF, CalibrationSpec
from livetwin.examples.rollers import TENSIONS, roller_fleet, roller_spec
from livetwin.examples.thermal import thermal_fleet, thermal_spec
from livetwin.models.chain import PARAMS, STATES, TRUE_PARAMS, chain_fleet

COVERAGE = (0.85, 0.995)


def _roller_filter(n: int, seed: int):
    sim = roller_fleet(n, seed=seed)
    first = sim.step()
    return BatchUKF(roller_spec(first.z), n), sim


@pytest.fixture(scope="module")
def roller_run():
    """200 roller lines with wearing bearings, 400 steps (40 s of line time)."""
    flt, sim = _roller_filter(200, seed=11)
    return flt, run_synthetic(flt, sim, 400)


def test_roller_drag_bands_cover_the_truth_95_percent(roller_run):
    flt, run = roller_run
    late = np.mean(run.coverage[-50:])  # the last 5 s: 200 twins x 4 drags x 50 steps
    final = coverage(run.result, true_calibrated(flt, run.truth))
    assert COVERAGE[0] <= late <= COVERAGE[1], late
    assert COVERAGE[0] <= final <= COVERAGE[1], final
    rel = np.abs(run.result.param_mean / true_calibrated(flt, run.truth) - 1)
    assert np.median(rel) < 0.04  # drags known to a few percent from speeds alone
    assert not run.state.failed.any()


def test_roller_tension_virtual_sensor_rmse_and_bands(roller_run):
    _, run = roller_run
    err = rmse(run.result, run.truth, TENSIONS)
    assert err < 1.0  # N, on tensions of 80-170 N (measured: about 0.36 N)
    j = [run.result.outputs.index(t) for t in TENSIONS]
    lo, hi = run.result.output_lower[:, j], run.result.output_upper[:, j]
    truth = run.truth.outputs[:, j]
    inside = np.mean((lo <= truth) & (truth <= hi))
    assert COVERAGE[0] <= inside <= COVERAGE[1], inside


def test_roller_follows_a_step_change_in_one_drag():
    """A bearing whose drag jumps by half is followed within 50 steps (5 s)."""
    flt, sim = _roller_filter(40, seed=12)
    run = run_synthetic(flt, sim, 300)
    sim.set_param(slice(None), "b2", sim.params[:, 1] * 1.5)
    errors = []

    def record(k, res, truth):
        errors.append(np.abs(res.param("b2")["mean"] / truth.params[:, 1] - 1))

    after = run_synthetic(flt, sim, 80, state=run.state, on_step=record)
    errors = np.array(errors)
    assert np.median(errors[0]) > 0.25  # the change is real ...
    assert np.median(errors[50]) < 0.05  # ... and followed within 50 steps
    assert np.percentile(errors[50:], 90) < 0.15
    assert not after.state.failed.any()  # a change is re-learnt, not treated as garbage


def test_thermal_fleet_converges_within_bands():
    sim = thermal_fleet(150, seed=21)
    first = sim.step()
    flt = BatchUKF(thermal_spec(first.z[:, 0]), 150)
    run = run_synthetic(flt, sim, 400)  # about four days of 15-minute samples
    truth = true_calibrated(flt, run.truth)
    rel = np.abs(run.result.param_mean / truth - 1)
    assert np.median(rel[:, 0]) < 0.01 and np.median(rel[:, 1]) < 0.03
    assert COVERAGE[0] <= np.mean(run.coverage[-50:]) <= COVERAGE[1]
    loss = rmse(run.result, run.truth, ("heat_loss",))
    assert loss < 30.0  # W, on heat losses of 1-8 kW


def test_thermal_enkf_converges():
    sim = thermal_fleet(60, seed=22)
    first = sim.step()
    flt = BatchEnKF(thermal_spec(first.z[:, 0]), 60, members=64, inflation=1.005, seed=1)
    run = run_synthetic(flt, sim, 300)
    rel = np.abs(run.result.param_mean / true_calibrated(flt, run.truth) - 1)
    assert np.median(rel[:, 0]) < 0.02 and np.median(rel[:, 1]) < 0.05
    assert 0.75 <= np.mean(run.coverage[-50:]) <= 1.0  # EnKF bands: looser, see its docstring


def test_chain_nine_parameters_are_identified():
    n = 30
    sim = chain_fleet(n, seed=31)
    prior = {p: (v, 0.4 * v) for p, v in zip(PARAMS, TRUE_PARAMS, strict=True)}
    prior.update({s: (0.0, 0.05) for s in STATES})
    spec = CalibrationSpec(
        model="livetwin.models.chain:chain3",
        measured=("x1", "x2", "x3"),
        prior=prior,
        process_noise={p: 1e-4 for p in PARAMS},
        meas_noise={x: 1e-3 for x in ("x1", "x2", "x3")},
    )
    flt = BatchUKF(spec, n)
    run = run_synthetic(flt, sim, 250)
    rel = np.abs(run.result.param_mean / true_calibrated(flt, run.truth) - 1)
    assert np.median(rel) < 0.01
    assert COVERAGE[0] <= np.mean(run.coverage[-50:]) <= 1.0  # constant truth, drifting prior
