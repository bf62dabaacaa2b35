"""A roller line (web handling): calibrate bearing drags from roller speeds; tensions and slip
are virtual sensors. Plus a synthetic fleet whose bearings wear.

R rollers of radius r, inertia J_i and viscous bearing drag b_i [N m s]; the web runs from roller
1 (the unwind, held back by a brake torque) over idlers to roller R (driven by a motor); span i
joins roller i and i+1 (length L, stiffness E*A) and carries tension T_i:

    J_i dw_i/dt = r (T_i - T_{i-1}) - b_i w_i + torque_i     (T_0 = T_R = 0)
    dT_i/dt = (E A / L) r (w_{i+1} - w_i) + r (w_i T_{i-1} - w_{i+1} T_i) / L

with torque_1 = -brake, torque_R = +motor. The second tension term carries tension with the web
(transport). Measured: w_1..w_R [rad/s]. Virtual sensors: T_1..T_{R-1} [N] and
slip_i = (w_{i+1} - w_i) / w_i, the relative surface-speed difference of adjacent rollers
(downstream minus upstream, over upstream; positive = the web is being stretched).
Integrated with RK4, `SUBSTEPS` substeps per step (h = 5 ms for dt = 0.1 s, far inside RK4's
stability limit for the ~10 Hz web-roller mode).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from livetwin.calibrate.spec import CalibrationSpec
from livetwin.models.base import model
from livetwin.models.ode import rk4
from livetwin.models.simulate import FleetSimulator
from livetwin.models.xp import namespace, transposed

N_ROLLERS = 4
SUBSTEPS = 20
DT = 0.1  # s
ROLLER_LINE = "livetwin.examples.rollers:roller_line"

_R = N_ROLLERS
DRAGS = tuple(f"b{i + 1}" for i in range(_R))
SPEEDS = tuple(f"w{i + 1}" for i in range(_R))
TENSIONS = tuple(f"T{i + 1}" for i in range(_R - 1))
SLIPS = tuple(f"slip{i + 1}" for i in range(_R - 1))
INERTIAS = tuple(f"J{i + 1}" for i in range(_R))
GEOMETRY = {"r": 0.1, "EA": 2.0e4, "L": 2.0, **{j: 0.1 for j in INERTIAS}}
GEOMETRY_UNITS = {"r": "m", "EA": "N", "L": "m", **{j: "kg m2" for j in INERTIAS}}
# Per-step disturbances of speeds [rad/s] and tensions [N] (unmodelled torque ripple, web
# flutter): the synthetic truth has them and the filter assumes the same.
STATE_NOISE = {**{w: 1e-3 for w in SPEEDS}, **{t: 0.05 for t in TENSIONS}}


def _rates(p: np.ndarray, u: np.ndarray) -> Callable:
    """The right-hand side for parameter rows `p` and inputs `u`, on states laid out as
    ``[2R-1, M]`` (one contiguous row per state: fast column-wise arithmetic). Written against
    the array namespace of `p` (NumPy or JAX): functional updates only."""
    xp = namespace(p, u)
    b, inertia = transposed(p[:, :_R]), transposed(p[:, _R : 2 * _R])
    r, ea, length = p[:, 2 * _R], p[:, -2], p[:, -1]
    r_j, b_j = r / inertia, b / inertia
    idle = xp.zeros_like(b_j[1:-1])
    torque_j = xp.concatenate([-u[None, :, 0] / inertia[:1], idle, u[None, :, 1] / inertia[-1:]])
    stretch = ea * r / length  # dT/dt per unit angular-speed difference
    transport = r / length  # dT/dt per unit (w * T)

    def f(x: np.ndarray, _p: object = None, _u: object = None) -> np.ndarray:
        # T_0 = T_R = 0 around T_1 .. T_{R-1}. Each difference is spelled out rather than taken
        # from one zero-padded array used three times: compiled, a substep is then 5 fused
        # loops instead of 9 (the same numbers to the bit).
        w, t = x[:_R], x[_R:]
        pulls = xp.concatenate([t[:1], t[1:] - t[:-1], -t[-1:]])  # T_i - T_{i-1}
        upstream = xp.concatenate([xp.zeros_like(t[:1]), t[:-1]])  # T_{i-1} of span i
        dw = r_j * pulls - b_j * w + torque_j
        dtension = stretch * (w[1:] - w[:-1]) + transport * (w[:-1] * upstream - w[1:] * t)
        return xp.concatenate([dw, dtension])

    return f


@model(
    params=DRAGS + INERTIAS + ("r", "EA", "L"),
    inputs=("brake_torque", "motor_torque"),
    outputs=SPEEDS + TENSIONS + SLIPS,
    states=SPEEDS + TENSIONS,
    bounds={name: (0.0, None) for name in DRAGS + INERTIAS + ("r", "EA", "L")},
    array_api=True,
)
def roller_line(
    states: np.ndarray, params: np.ndarray, inputs: np.ndarray, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    """Roller line with bearing drags b1..b4 (see the module docstring)."""
    xp = namespace(states, params)
    x = rk4(_rates(params, inputs), transposed(states), None, None, dt, SUBSTEPS)
    w = x[:_R]
    slip = (w[1:] - w[:-1]) / xp.maximum(w[:-1], 1e-6)
    return x.T, xp.concatenate([x, slip]).T


def steady_state(b: np.ndarray, brake: np.ndarray, speed: float) -> np.ndarray:
    """States ``[N, 2R-1]`` running at `speed` with the tensions the drags require."""
    r, ea = GEOMETRY["r"], GEOMETRY["EA"]
    t = (brake[:, None] + np.cumsum(b[:, :-1], axis=1) * speed) / r
    w = np.empty_like(b)
    w[:, 0] = speed
    t_up = np.concatenate([np.zeros((len(b), 1)), t], axis=1)
    for i in range(1, _R):  # steady transport: w_{i+1} (EA - T_i) = w_i (EA - T_{i-1})
        w[:, i] = w[:, i - 1] * (ea - t_up[:, i - 1]) / (ea - t_up[:, i])
    return np.concatenate([w, t], axis=1)


def roller_fleet(
    n: int,
    seed: int = 0,
    *,
    noise: float = 0.01,
    drift: float = 1e-3,
    wear: float = 2e-4,
    speed: float = 50.0,
) -> FleetSimulator:
    """N roller lines with true drags in 0.01-0.04 N m s that wear: per step each drag grows by
    `wear` (relative) plus a random walk of `drift`. Speeds are measured with noise `noise`
    [rad/s]. A speed controller drives the motor, with setpoint changes and torque noise."""
    rng = np.random.default_rng(seed)
    b = rng.uniform(0.01, 0.04, (n, _R))
    brake = rng.uniform(8.0, 12.0, n)
    params = np.concatenate([b, np.tile(_geometry(), (n, 1))], axis=1)
    drifts = np.zeros(params.shape[1])
    trends = np.zeros(params.shape[1])
    drifts[:_R], trends[:_R] = drift, wear
    sim = FleetSimulator(
        model=roller_line,
        params=params,
        states=steady_state(b, brake, speed),
        inputs=_speed_controller,
        meas_std=np.full(_R, noise),
        measured=SPEEDS,
        dt=DT,
        drift=drifts,
        trend=trends,
        state_noise=np.array(list(STATE_NOISE.values())),
        seed=seed + 1,
    )
    sim.aux.update(brake=brake, setpoint=np.full(n, speed), target=np.full(n, speed), speed=speed)
    return sim


def _geometry() -> np.ndarray:
    return np.array([GEOMETRY[k] for k in INERTIAS + ("r", "EA", "L")])


def _speed_controller(sim: FleetSimulator) -> np.ndarray:
    """Brake fixed per line; motor = feed-forward + P control of the last roller's speed towards
    a setpoint that ramps (at most 0.5 rad/s per step) to new targets now and then."""
    aux, rng = sim.aux, sim.rng
    target, sp = aux["target"], aux["setpoint"]
    change = rng.random(sim.n) < 0.02
    target[change] = aux["speed"] * rng.uniform(0.8, 1.2, int(change.sum()))
    sp += np.clip(target - sp, -0.5, 0.5)
    w_meas = sim.states[:, _R - 1] if sim.last is None else sim.last.z[:, _R - 1]
    motor = aux["brake"] + 0.1 * sp + 0.5 * (sp - w_meas) + rng.normal(0.0, 0.2, sim.n)
    return np.stack([aux["brake"], motor], axis=1)


def roller_spec(
    first_speeds: np.ndarray,
    *,
    meas_noise: float | None = 0.01,
    drag_walk: float = 2e-3,
    prior_drag: tuple[float, float] = (0.025, 0.015),
) -> CalibrationSpec:
    """Calibrate the drags b1..b4 with the geometry fixed; speeds start at the first reading,
    tensions at a wide guess. `drag_walk` is the per-step random walk of log(b)."""
    prior = {name: prior_drag for name in DRAGS}
    prior.update({w: (first_speeds[:, i], 0.05) for i, w in enumerate(SPEEDS)})
    prior.update({t: (110.0 + 10.0 * i, 40.0) for i, t in enumerate(TENSIONS)})
    noise = {**{name: drag_walk for name in DRAGS}, **STATE_NOISE}
    return CalibrationSpec(
        model=ROLLER_LINE,
        measured=SPEEDS,
        prior=prior,
        fixed=GEOMETRY,
        process_noise=noise,
        meas_noise=None if meas_noise is None else {w: meas_noise for w in SPEEDS},
    )


# ---- the twin type and a live feed, for the demo and the tests ---------------------------------

ROLLER_TYPE = {
    "description": "A web-handling roller line; its bearing drags wear and are calibrated",
    "properties": {
        **{w: {"unit": "rad/s"} for w in SPEEDS},
        "brake_torque": {"unit": "N m"},
        "motor_torque": {"unit": "N m"},
    },
    "parameters": {
        **{b: {"value": 0.025, "min": 0, "unit": "N m s", "calibrate": True} for b in DRAGS},
        **{
            name: {"value": value, "unit": GEOMETRY_UNITS[name]} for name, value in GEOMETRY.items()
        },
    },
    "derived": {"line_speed": {"expr": "w4 * r", "unit": "m/s"}},
    "model": {"ref": ROLLER_LINE, "dt": "100ms", "units": {t: "N" for t in TENSIONS}},
    "key_values": ["line_speed", "motor_torque", "b2", "T1"],
    "calibration": {
        "prior_std": {b: 0.015 for b in DRAGS},
        "process_noise": {**{b: 2e-3 for b in DRAGS}, **STATE_NOISE},
        "measurement_noise": {w: 0.01 for w in SPEEDS},
        "state_prior": {t: [110.0 + 10.0 * i, 40.0] for i, t in enumerate(TENSIONS)},
    },
}


def observations(sample, ids: list[str], ts_ms: int) -> list[dict]:
    """One simulated step of a fleet as ingest observations (inputs and measured speeds)."""
    rows = np.concatenate([sample.inputs, sample.z], axis=1).round(6).tolist()
    names = ("brake_torque", "motor_torque") + SPEEDS
    return [
        {
            "twin": twin,
            "type": "roller_line",
            "ts": ts_ms,
            "values": dict(zip(names, row, strict=True)),
        }
        for twin, row in zip(ids, rows, strict=True)
    ]
