"""The calibration check (issue 15): a fleet of twins whose model is a Modelica-style FMU with
dotted names (built by the test FMU builder), true parameters per twin, default settings and no
hand-set noise. The 95 % bands cover the truth for 90-99 % of twin-parameters and the median
error is within 1.5x of the exact posterior's spread.

The exact posterior: the mass-spring-damper is linear, so for each (d, c) on a grid the
likelihood of the whole record is exact from a Kalman filter over the states (initial states
from the type's prior, the true noise); times the filter's prior (log-normal, 30 %)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fmu_support import MSD_STATE_STD as STATE_STD
from fmu_support import calibrate_msd_fleet
from scipy.linalg import expm

pytest.importorskip("fmpy", reason="FMU tests need FMPy: pip install 'livetwin[fmu]'")

N, STEPS, DT_MS, NOISE = 50, 150, 200, 0.005
PRIOR = {"d": 0.8, "c": 4.0}  # the type's values; default prior std 30 %
GRID = 41


def _exact_posterior(force, z, dt, centre, half_width):
    """Per twin, mean and std of (d, c) under the exact posterior on a log grid of
    ``GRID x GRID`` around `centre[N,2]` (+- `half_width[N,2]`, log scale), and the largest
    posterior mass on the grid's edge (small when the grid holds the posterior)."""
    n, steps = force.shape[1], force.shape[0]
    axis = np.linspace(-1.0, 1.0, GRID)
    gd, gc = np.meshgrid(axis, axis, indexing="ij")
    log_d = np.log(centre[:, 0])[:, None] + half_width[:, 0, None] * gd.ravel()[None, :]
    log_c = np.log(centre[:, 1])[:, None] + half_width[:, 1, None] * gc.ravel()[None, :]
    d, c = np.exp(log_d).ravel(), np.exp(log_c).ravel()
    rows = len(d)
    a = np.zeros((rows, 3, 3))
    a[:, 0, 1], a[:, 1, 0], a[:, 1, 1], a[:, 1, 2] = 1.0, -c, -d, 1.0
    e = expm(a * dt)
    trans, gain_f = e[:, :2, :2], e[:, :2, 2]
    x = np.zeros((rows, 2))
    p = np.broadcast_to(np.eye(2) * STATE_STD**2, (rows, 2, 2)).copy()
    loglik = np.zeros(rows)
    f_rows = np.repeat(force, GRID * GRID, axis=1)  # [T, rows]
    z_rows = np.repeat(z, GRID * GRID, axis=1)
    for k in range(steps):
        x = np.einsum("nij,nj->ni", trans, x) + gain_f * f_rows[k][:, None]
        p = trans @ p @ trans.swapaxes(1, 2)
        s = p[:, 0, 0] + NOISE**2
        nu = z_rows[k] - x[:, 0]
        loglik += -0.5 * (np.log(2 * np.pi * s) + nu * nu / s)
        k_gain = p[:, :, 0] / s[:, None]
        x = x + k_gain * nu[:, None]
        p = p - k_gain[:, :, None] * p[:, 0, None, :]
    prior = -0.5 * ((np.log(d) - np.log(PRIOR["d"])) / 0.3) ** 2
    prior += -0.5 * ((np.log(c) - np.log(PRIOR["c"])) / 0.3) ** 2
    logpost = (loglik + prior).reshape(n, GRID, GRID)
    w = np.exp(logpost - logpost.max(axis=(1, 2), keepdims=True))
    w /= w.sum(axis=(1, 2), keepdims=True)
    values = np.stack([d.reshape(n, GRID, GRID), c.reshape(n, GRID, GRID)], axis=-1)
    mean = np.einsum("nij,nijk->nk", w, values)
    std = np.sqrt(np.einsum("nij,nijk->nk", w, (values - mean[:, None, None]) ** 2))
    edge = np.maximum.reduce(
        [w[:, 0].sum(1), w[:, -1].sum(1), w[:, :, 0].sum(1), w[:, :, -1].sum(1)]
    )
    return mean, std, edge.max()


def test_a_dotted_name_fmu_fleet_calibrates_honestly_with_default_settings(msd, tmp_path, clock):
    truth, forces, zs, record, views = calibrate_msd_fleet(
        msd, tmp_path / "d", clock, n=N, steps=STEPS, dt_ms=DT_MS, noise=NOISE, seed=7, prior=PRIOR
    )
    noise = record["noise"]["y"]
    assert noise["source"] == "innovations"
    assert 0.7 * NOISE < noise["std_median"] < 1.4 * NOISE, noise
    got = np.array([[v["parameters"][p]["value"] for p in ("d", "c")] for v in views])
    lower = np.array([[v["parameters"][p]["lower"] for p in ("d", "c")] for v in views])
    upper = np.array([[v["parameters"][p]["upper"] for p in ("d", "c")] for v in views])
    filter_std = np.array([[v["parameters"][p]["std"] for p in ("d", "c")] for v in views])
    mean, std, edge = _exact_posterior(forces, zs, DT_MS / 1000, got, 8 * filter_std / got)
    assert edge < 1e-3, "the grid holds the exact posterior"
    covered = (lower <= truth) & (truth <= upper)
    error = np.abs(got - truth)
    figures = {
        "coverage_95": float(covered.mean()),
        "median_error_over_exact_std": float(np.median(error / std)),
        "median_rel_error": np.median(error / truth, axis=0).round(5).tolist(),
        "filter_std_over_exact_std": float(np.median(filter_std / std)),
        "noise_std_learned": noise["std_median"],
    }
    print(json.dumps(figures))
    # measured: coverage 0.97, error 1.16x and the filter's std 2.9x the exact posterior's (the
    # default random walk of 1e-3 per step keeps the bands open for parameters that move)
    assert 0.90 <= covered.mean() <= 0.99, figures
    assert np.median(error) <= 1.5 * np.median(std), figures
