"""Synthetic fleets: run a model as the "truth" with known, drifting parameters and noisy sensors.

Used by the tests, the demo and the benchmarks to measure calibration accuracy and band coverage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from livetwin.models.base import Model, resolve_model


@dataclass
class Sample:
    """One step of a synthetic fleet: what the filter sees (inputs, z) and the truth."""

    inputs: np.ndarray  # [N,u]
    z: np.ndarray  # [N,m] measured outputs with noise
    params: np.ndarray  # [N,p] true parameters during this step
    states: np.ndarray  # [N,s] true states at the end of the step
    outputs: np.ndarray  # [N,o] true outputs at the end of the step


@dataclass
class FleetSimulator:
    """N twins of `model` with true `params` that drift (bearing wear) and noisy measurements.

    Each step: parameters take a multiplicative random-walk step
    ``p <- p * exp(trend + drift * N(0,1))`` (per parameter; zero keeps a parameter constant),
    then ``inputs(sim)`` gives the inputs, the states get a disturbance of std `state_noise`
    (unmodelled effects; the filters assume the same: noise at the start of a step), the model
    advances the true state, and the measured outputs get Gaussian noise of std `meas_std`.
    `aux` is free space for the inputs generator (controllers, input levels).
    """

    model: Model | str | Callable
    params: np.ndarray
    states: np.ndarray
    inputs: Callable[[FleetSimulator], np.ndarray]
    meas_std: np.ndarray
    measured: tuple[str, ...]
    dt: float
    drift: np.ndarray | float = 0.0
    trend: np.ndarray | float = 0.0
    state_noise: np.ndarray | float = 0.0
    seed: int = 0
    aux: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = resolve_model(self.model)
        self.params = np.array(self.params, dtype=float)
        self.states = np.array(self.states, dtype=float).reshape(len(self.params), -1)
        self.meas_std = np.broadcast_to(np.asarray(self.meas_std, float), (len(self.measured),))
        self.meas_idx = self.model.index("outputs", self.measured)
        self.rng = np.random.default_rng(self.seed)
        self.k = 0
        self.last: Sample | None = None

    @property
    def n(self) -> int:
        return len(self.params)

    def set_param(self, twins: object, name: str, value: float | np.ndarray) -> None:
        """Change a true parameter from now on (a step change, for example a failing bearing)."""
        self.params[twins, self.model.index("params", name)[0]] = value

    def step(self) -> Sample:
        """Advance the fleet by one step of `dt`."""
        rng = self.rng
        if np.any(self.drift) or np.any(self.trend):
            shape = self.params.shape
            self.params *= np.exp(self.trend + self.drift * rng.standard_normal(shape))
        u = np.asarray(self.inputs(self), dtype=float)
        if np.any(self.state_noise):
            self.states = self.states + self.state_noise * rng.standard_normal(self.states.shape)
        self.states, outputs = self.model.step(self.states, self.params, u, self.dt)
        z = outputs[:, self.meas_idx] + self.meas_std * rng.standard_normal(
            (self.n, len(self.meas_idx))
        )
        self.k += 1
        self.last = Sample(u, z, self.params.copy(), self.states.copy(), outputs)
        return self.last

    def run(self, steps: int) -> Sample:
        """`steps` steps stacked on a leading time axis."""
        out = [self.step() for _ in range(steps)]
        return Sample(
            *(np.stack([getattr(s, f) for s in out]) for f in Sample.__dataclass_fields__)
        )
