"""A thermal 1R1C room model (calibrate heat-loss coefficient UA and heat capacity C) and a
synthetic fleet of rooms with known truth.

C dT/dt = UA (T_out - T) + heat. Over a step with constant inputs this has the exact solution
T(t+dt) = T_eq + (T - T_eq) exp(-dt UA / C) with T_eq = T_out + heat / UA, used here.
Measured: indoor temperature. Virtual sensor: heat loss through the envelope UA (T - T_out) [W].
"""

from __future__ import annotations

import numpy as np

from livetwin.calibrate.spec import CalibrationSpec
from livetwin.models.base import model
from livetwin.models.simulate import FleetSimulator
from livetwin.models.xp import namespace

ROOM = "livetwin.examples.thermal:room"
DT = 900.0  # s: one sample every 15 minutes
STATE_NOISE = 0.02  # K per step: unmodelled gains (sun, people), in truth and filter alike


@model(
    params=("UA", "C"),
    inputs=("t_out", "heat"),
    outputs=("t_in", "heat_loss"),
    states=("t_in",),
    bounds={"UA": (0.0, None), "C": (0.0, None)},
    array_api=True,
)
def room(
    states: np.ndarray, params: np.ndarray, inputs: np.ndarray, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    """1R1C room: UA [W/K], C [J/K]; inputs outdoor temperature [degC] and heating [W]."""
    xp = namespace(states, params)
    ua, c = params[:, 0], params[:, 1]
    t_out, heat = inputs[:, 0], inputs[:, 1]
    t_eq = t_out + heat / ua
    t_in = t_eq + (states[:, 0] - t_eq) * xp.exp(-dt * ua / c)
    return t_in[:, None], xp.stack([t_in, ua * (t_in - t_out)], axis=1)


def thermal_fleet(
    n: int, seed: int = 0, *, noise: float = 0.1, drift: float = 0.0
) -> FleetSimulator:
    """N rooms with UA in 100-400 W/K and C in 5e6-3e7 J/K, a daily outdoor cycle and a
    noisy proportional thermostat (setpoint changes make UA and C separable)."""
    rng = np.random.default_rng(seed)
    ua = rng.uniform(100.0, 400.0, n)
    cap = np.exp(rng.uniform(np.log(5e6), np.log(3e7), n))
    sim = FleetSimulator(
        model=room,
        params=np.stack([ua, cap], axis=1),
        states=rng.uniform(15.0, 22.0, (n, 1)),
        inputs=_weather_and_heating,
        meas_std=np.array([noise]),
        measured=("t_in",),
        dt=DT,
        drift=np.array([drift, 0.0]),
        state_noise=STATE_NOISE,
        seed=seed + 1,
    )
    sim.aux["phase"] = rng.uniform(0, 2 * np.pi, n)
    sim.aux["setpoint"] = np.full(n, 20.0)
    return sim


def _weather_and_heating(sim: FleetSimulator) -> np.ndarray:
    hours = sim.k * sim.dt / 3600.0
    t_out = 5.0 + 6.0 * np.sin(2 * np.pi * hours / 24.0 + sim.aux["phase"])
    t_out = t_out + sim.rng.normal(0.0, 0.5, sim.n)
    sp = sim.aux["setpoint"]
    change = sim.rng.random(sim.n) < 0.03
    sp[change] = sim.rng.uniform(16.0, 23.0, int(change.sum()))
    t_now = sim.states[:, 0]
    ua_nominal = 250.0
    heat = np.clip(ua_nominal * (sp - t_out) + 2000.0 * (sp - t_now), 0.0, 15000.0)
    heat = heat * sim.rng.uniform(0.7, 1.3, sim.n)
    return np.stack([t_out, heat], axis=1)


def thermal_spec(
    t_in0: np.ndarray | float,
    *,
    meas_noise: float | None = 0.1,
    param_walk: float = 0.0,
) -> CalibrationSpec:
    """A calibration of `room`: wide priors on UA and C, the first reading as initial state."""
    return CalibrationSpec(
        model=ROOM,
        measured=("t_in",),
        prior={"UA": (250.0, 150.0), "C": (1.2e7, 1.0e7), "t_in": (t_in0, 1.0)},
        process_noise={"UA": param_walk, "C": param_walk, "t_in": STATE_NOISE},
        meas_noise=None if meas_noise is None else {"t_in": meas_noise},
    )
