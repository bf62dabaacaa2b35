"""The compiled forecast's speed settings stay honest: on roller lines whose truth is known, a
forecast from the calibrated state over the inputs that really followed covers the later
measured speeds in its 95 % band for 90-99 % of points in float32 as in float64, and the two
precisions' bands agree closely."""

from __future__ import annotations

import numpy as np
import pytest

from livetwin.calibrate import make_filter
from livetwin.examples.rollers import DT, roller_fleet, roller_spec
from livetwin.scenario.forecast import Columns, forward, measurement_var

pytest.importorskip("jax")

N_LINES, WARM, AHEAD = 24, 300, 300


def forecast_bands(precision: str) -> tuple[np.ndarray, np.ndarray]:
    """Bands ``[steps, N, 4, 3]`` of the measured speeds, and the speeds measured later."""
    sim = roller_fleet(N_LINES, seed=3, wear=0.0, drift=2e-3)
    warm = sim.run(WARM)
    filt = make_filter(roller_spec(warm.z[0]), N_LINES, backend="jax", precision=precision)
    state, _ = filt.run(filt.init(), warm.inputs, warm.z, DT)
    later = sim.run(AHEAD)
    columns = Columns(filt.plan.model.outputs[:4], (), ())
    meas_var = measurement_var(filt, state)
    bands = [columns.bands(res, meas_var) for _, res in forward(filt, state, later.inputs, DT)]
    return np.concatenate(bands), later.z


def test_float32_bands_are_as_honest_as_float64():
    found = {p: forecast_bands(p) for p in ("float64", "float32")}
    for precision, (bands, z) in found.items():
        inside = (bands[..., 1] <= z) & (z <= bands[..., 2])
        assert 0.90 <= inside.mean() <= 0.99, (precision, inside.mean())
    (b64, _), (b32, _) = found["float64"], found["float32"]
    half64, half32 = b64[..., 2] - b64[..., 1], b32[..., 2] - b32[..., 1]
    np.testing.assert_allclose(b32[..., 0], b64[..., 0], rtol=1e-5)  # means
    np.testing.assert_allclose(half32, half64, rtol=1e-2)  # band widths
