"""Measurement noise learned from the filter's innovations (covariance matching): right where
the second-difference bootstrap is several times too large (inputs that change every step), and
the parameters it gives are as good as with the true noise set by hand."""

from __future__ import annotations

import numpy as np
from scipy.linalg import expm

from livetwin.calibrate import BatchUKF, CalibrationSpec
from livetwin.calibrate.noise import noise_in_use
from livetwin.models import model

NOISE = 0.005
DT = 0.2


@model(
    params=("d", "c"),
    inputs=("F",),
    outputs=("y",),
    states=("s", "v"),
    bounds={"d": (0.0, None), "c": (0.0, None)},
)
def msd(states, params, inputs, dt):
    """A unit mass on a spring (c) and damper (d) pushed by F, exact over a step (F constant)."""
    d, c = params[:, 0], params[:, 1]
    a = np.zeros((len(d), 3, 3))
    a[:, 0, 1], a[:, 1, 0], a[:, 1, 1], a[:, 1, 2] = 1.0, -c, -d, 1.0
    x = np.concatenate([states, inputs[:, :1]], axis=1)
    new = np.einsum("nij,nj->ni", expm(a * dt), x)[:, :2]
    return new, new[:, :1]


def _run(meas_noise, n=40, steps=200, seed=11):
    rng = np.random.default_rng(seed)
    truth = np.c_[rng.uniform(0.5, 1.1, n), rng.uniform(3.0, 5.0, n)]
    spec = CalibrationSpec(
        model=msd,
        measured=("y",),
        prior={"d": (0.8, 0.24), "c": (4.0, 1.2), "s": (0.0, 0.5), "v": (0.0, 0.5)},
        process_noise={"d": 1e-4, "c": 1e-4},
        meas_noise=meas_noise,
    )
    flt = BatchUKF(spec, n)
    state, x = flt.init(), np.zeros((n, 2))
    for _ in range(steps):
        force = rng.uniform(-2, 2, (n, 1))  # a new input every step
        x, y = msd(x, truth, force, DT)
        state, res = flt.step(state, force, y + NOISE * rng.standard_normal((n, 1)), DT)
    return flt, state, res, truth


def test_noise_is_learned_from_the_innovations_where_second_differences_overstate_it():
    flt, state, res, truth = _run(None)
    boot = np.sqrt(state.noise_var[:, 0])
    assert np.median(boot) > 2.5 * NOISE  # the bootstrap alone: inputs bend the signal
    var, ready = noise_in_use(state, flt.noise_min_samples)
    used = np.sqrt(var[:, 0])
    assert ready.all()
    ratio = used / NOISE  # measured: median 1.02, 5-95 % 0.85-1.25 after 200 steps
    assert abs(np.median(ratio) - 1) < 0.1, np.median(ratio)
    low, high = np.quantile(ratio, [0.05, 0.95])
    assert 0.75 < low and high < 1.35 and np.all((ratio > 0.4) & (ratio < 2.0)), ratio
    inside = (res.param_lower <= truth) & (truth <= res.param_upper)
    assert 0.85 <= inside.mean() <= 1.0, inside.mean()
    # as accurate as a filter told the true noise
    _, _, known, _ = _run({"y": NOISE})
    err = np.median(np.abs(res.param_mean / truth - 1), axis=0)
    err_known = np.median(np.abs(known.param_mean / truth - 1), axis=0)
    assert np.all(err < 1.5 * err_known), (err, err_known)
    assert np.all(err < 0.01), err
