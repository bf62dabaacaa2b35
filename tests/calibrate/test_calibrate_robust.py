"""Robustness: one bad twin is reset and flagged alone; missing data; bounds; pool == serial."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.synthetic import run_synthetic, true_calibrated
from livetwin.calibrate import FAILURE_REASONS, BatchEnKF, BatchUKF, CalibrationSpec, chunk_pool
from livetwin.calibrate.linalg import robust_cholesky
from livetwin.calibrate.noise import rolling_noise_variance
from livetwin.calibrate.transforms import Transforms
from livetwin.examples.thermal import ROOM, room, thermal_fleet, thermal_spec
from livetwin.models import model

N = 40
BAD = 7


def _thermal(n: int = N, seed: int = 41, **spec_kw):
    sim = thermal_fleet(n, seed=seed)
    first = sim.step()
    return sim, thermal_spec(first.z[:, 0], **spec_kw)


@pytest.mark.parametrize("cls", [BatchUKF, BatchEnKF])
def test_garbage_measurements_flag_only_that_twin(cls):
    sim, spec = _thermal()
    flt = cls(spec, N)

    def garbage(k, z):
        if k >= 100:
            z[BAD] = np.random.default_rng(k).normal(0, 1e6)
        return z

    run = run_synthetic(flt, sim, 250, mask=garbage)
    assert run.state.failed[BAD] and run.state.reason[BAD] == 4
    assert "outliers" in FAILURE_REASONS[4]
    others = np.arange(N) != BAD
    assert not run.state.failed[others].any()
    rel = np.abs(run.result.param_mean / true_calibrated(flt, run.truth) - 1)[others]
    assert np.median(rel[:, 0]) < 0.03
    assert np.all(np.isfinite(run.result.param_mean))  # the flagged twin restarts cleanly


@model(
    params=("UA", "C"),
    inputs=("t_out", "heat"),
    outputs=("t_in", "heat_loss"),
    states=("t_in",),
    bounds={"UA": (0.0, None), "C": (0.0, None)},
)
def poisoned_room(states, params, inputs, dt):
    """The room model, returning NaN for rows whose outdoor temperature is exactly -99."""
    new, out = room(states, params, inputs, dt)
    bad = inputs[:, 0] == -99.0
    new[bad] = np.nan
    out[bad] = np.nan
    return new, out


@model(
    params=("UA", "C"),
    inputs=("t_out", "heat"),
    outputs=("t_in",),
    states=("t_in",),
    bounds={"UA": (0.0, None), "C": (0.0, None)},
)
def exploding_room(states, params, inputs, dt):
    """Raises for rows whose outdoor temperature is -99, like a model that cannot cope."""
    if np.any(inputs[:, 0] == -99.0):
        raise FloatingPointError("cannot simulate this room")
    new, out = room(states, params, inputs, dt)
    return new, out[:, :1]


@pytest.mark.parametrize("fn", [poisoned_room, exploding_room])
def test_model_failure_for_one_twin_resets_only_that_twin(fn):
    sim, base = _thermal()
    spec = CalibrationSpec(
        model=fn,
        measured=("t_in",),
        prior=base.prior,
        process_noise=base.process_noise,
        meas_noise=base.meas_noise,
    )
    flt = BatchUKF(spec, N)
    state = flt.init()
    for k in range(60):
        s = sim.step()
        u = s.inputs.copy()
        if k == 30:
            u[BAD, 0] = -99.0
        state, res = flt.step(state, u, s.z, sim.dt)
        if k == 30:
            assert res.reset.tolist() == [i == BAD for i in range(N)]
            assert res.reason[BAD] == 1 and np.isnan(res.output_mean[BAD]).all()
            assert np.isfinite(res.output_mean[np.arange(N) != BAD]).all()
    assert state.failed.sum() == 1 and state.failed[BAD]
    assert np.all(np.isfinite(state.mean)) and np.all(np.isfinite(state.cov))


def test_missing_measurements_are_skipped_per_twin():
    sim, spec = _thermal()
    flt = BatchUKF(spec, N)
    rng = np.random.default_rng(5)

    def holes(k, z):
        z[rng.random(N) < 0.3] = np.nan  # 30 % of readings missing
        z[3] = np.nan  # twin 3 never reports
        return z

    seen = []
    run = run_synthetic(flt, sim, 300, mask=holes, on_step=lambda k, r, t: seen.append(r.updated))
    assert not np.array(seen)[:, 3].any() and np.array(seen).mean() > 0.6
    res = run.result
    assert np.isnan(res.nis[3])
    prior_std = np.array([150.0, 1.0e7])
    assert np.all(res.param_std[3] > 0.5 * prior_std)  # twin 3 learnt nothing
    rel = np.abs(res.param_mean / true_calibrated(flt, run.truth) - 1)
    assert np.median(np.delete(rel, 3, axis=0)[:, 0]) < 0.02
    assert not run.state.failed.any()


def test_bounds_are_respected_by_sigma_points_and_reports():
    sim, base = _thermal()
    seen = {"lo": np.inf, "hi": -np.inf}

    @model(params=("UA", "C"), inputs=("t_out", "heat"), outputs=("t_in",), states=("t_in",))
    def watched(states, params, inputs, dt):
        seen["lo"] = min(seen["lo"], params[:, 0].min())
        seen["hi"] = max(seen["hi"], params[:, 0].max())
        new, out = room(states, params, inputs, dt)
        return new, out[:, :1]

    spec = CalibrationSpec(
        model=watched,
        measured=("t_in",),
        prior={"UA": (250.0, 200.0), "C": (1.2e7, 1e7), "t_in": base.prior["t_in"]},
        bounds={"UA": (150.0, 300.0), "C": (0.0, None)},
        process_noise=base.process_noise,
        meas_noise=base.meas_noise,
    )
    run = run_synthetic(BatchUKF(spec, N), sim, 50)
    assert 150.0 < seen["lo"] and seen["hi"] < 300.0
    p = run.result.param("UA")
    for key in ("mean", "median", "lower", "upper"):
        assert np.all((p[key] > 150.0) & (p[key] < 300.0)), key


def test_transform_summaries_match_monte_carlo():
    tf = Transforms.from_bounds(("a", "b", "c"), [(0.0, None), (1.0, 3.0), (None, 5.0)])
    m, s = np.array([0.2, -0.3, 1.0]), np.array([0.3, 0.8, 0.2])
    d = tf.describe(m, s)
    draws = tf.to_param(m + s * np.random.default_rng(0).standard_normal((400_000, 3)))
    assert np.allclose(d["mean"], draws.mean(0), rtol=2e-3)
    assert np.allclose(d["std"], draws.std(0), rtol=1e-2)
    assert np.allclose(d["lower"], np.percentile(draws, 2.5, axis=0), rtol=1e-2)
    assert np.allclose(d["upper"], np.percentile(draws, 97.5, axis=0), rtol=1e-2)
    p = np.array([[0.5, 2.9, -7.0]])
    assert np.allclose(tf.to_param(tf.to_theta(p)), p)


def test_robust_cholesky_fails_per_twin():
    a = np.stack([np.eye(3), -np.eye(3), np.full((3, 3), np.nan), np.diag([1.0, 1.0, 0.0])])
    low, ok = robust_cholesky(a)
    assert ok.tolist() == [True, False, False, True]  # a semi-definite one gets jitter
    assert np.allclose(low[0], np.eye(3))


def test_noise_is_estimated_from_data_when_not_given():
    sim, spec = _thermal(meas_noise=None)
    run = run_synthetic(BatchUKF(spec, N), sim, 300)
    est = np.sqrt(run.state.noise_var[:, 0])
    assert np.all((est > 0.07) & (est < 0.2))  # true 0.1 K, plus unmodelled-gain wiggles
    rel = np.abs(run.result.param_mean / true_calibrated(BatchUKF(spec, N), run.truth) - 1)
    assert np.median(rel[:, 0]) < 0.03
    t = np.linspace(0, 10, 2000)
    z = np.sin(t)[:, None] + np.random.default_rng(1).normal(0, 0.05, (2000, 3))
    assert np.allclose(np.sqrt(rolling_noise_variance(z, window=2000)), 0.05, rtol=0.1)


def test_process_pool_gives_the_same_numbers_as_serial():
    sim, spec = _thermal(n=30)
    samples = [sim.step() for _ in range(5)]
    out = []
    for workers in (0, 2):
        with chunk_pool(workers) as pool:
            flt = BatchUKF(spec, 30, chunk_size=10, executor=pool)
            state = flt.init()
            for s in samples:
                state, res = flt.step(state, s.inputs, s.z, sim.dt)
            out.append((state.mean, state.cov, res.output_mean))
    for a, b in zip(*out, strict=True):
        assert np.array_equal(a, b)


def test_room_name_resolves_in_a_spec():
    sim, spec = _thermal(n=3)
    assert BatchUKF(spec, 3).plan.model.name == ROOM
