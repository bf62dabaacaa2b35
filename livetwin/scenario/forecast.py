"""The forward run of a fork: the calibration's own filter, predicting with no measurements.

Each step is the filter's time update: process noise enters (``P <- P + Q``), 2n+1 sigma points
(the UKF) or the ensemble members (the EnKF) of the calibrated parameters and model states go
through the model, and their weighted mean and covariance are the forecast. So the forecast's
spread grows from the calibrated covariance by exactly the noise the calibration assumes, and a
forecast over recorded inputs is the filter's own prediction over them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from livetwin.calibrate.batch import BatchFilter
from livetwin.calibrate.noise import noise_in_use
from livetwin.calibrate.results import StepResult
from livetwin.calibrate.state import FilterState
from livetwin.calibrate.transforms import Z95


def forward(
    filt: BatchFilter, state: FilterState, inputs: np.ndarray, dt: float, *, chunk: int = 50
) -> Iterator[tuple[int, StepResult]]:
    """Predict the filter's twins over ``inputs[K, N, u]`` (`BatchFilter.predict`; compiled
    blocks of steps on the jax backend): yields ``(first step, results)`` for chunks of up to
    `chunk` steps (results with a leading step axis). `state` is not changed."""
    for lo in range(0, len(inputs), chunk):
        state, results = filt.predict(state, inputs[lo : lo + chunk], dt)
        yield lo, results


def measurement_var(filt: BatchFilter, state: FilterState) -> np.ndarray:
    """Per twin the variance ``[N, m]`` of each measured output's noise: as configured, else the
    filter's running estimate (0 where it has none yet)."""
    if filt.plan.r is not None:
        return np.diagonal(filt.plan.r, axis1=1, axis2=2).copy()
    if state.noise_var is None:
        return np.zeros((filt.n_twins, len(filt.plan.meas_idx)))
    return np.nan_to_num(noise_in_use(state, filt.noise_min_samples)[0], nan=0.0)


@dataclass(frozen=True)
class Columns:
    """What a forecast reports, per step and twin: (mean, lower, upper) of each name.

    Measured outputs are bands of the *measurement* (model output plus measurement noise), so
    they can be held against later readings; virtual sensors are bands of the noise-free output;
    calibrated parameters are their exact 2.5 %/97.5 % quantiles."""

    measured: tuple[str, ...]
    virtual: tuple[str, ...]
    parameters: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return self.measured + self.virtual + self.parameters

    def bands(self, results: StepResult, meas_var: np.ndarray) -> np.ndarray:
        """``[steps, N, names, 3]``: mean, lower and upper of every name (filled in place: this
        runs on every chunk of a forecast)."""
        outputs, params = list(results.outputs), list(results.params)
        out = np.empty((*results.output_mean.shape[:2], len(self.names), 3))
        for i, name in enumerate(self.measured):
            mean = results.output_mean[..., outputs.index(name)]
            var = results.output_std[..., outputs.index(name)] ** 2 + meas_var[:, i]
            half = Z95 * np.sqrt(var)
            out[..., i, 0] = mean
            np.subtract(mean, half, out=out[..., i, 1])
            np.add(mean, half, out=out[..., i, 2])
        sources = [
            (results.output_mean, results.output_lower, results.output_upper, outputs.index(n))
            for n in self.virtual
        ] + [
            (results.param_mean, results.param_lower, results.param_upper, params.index(n))
            for n in self.parameters
        ]
        for i, (mean, lower, upper, j) in enumerate(sources, start=len(self.measured)):
            for k, values in enumerate((mean, lower, upper)):
                out[..., i, k] = values[..., j]
        return out
