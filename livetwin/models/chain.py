"""A 3-body spring-mass-damper chain: 9 parameters, 200-substep RK4 transition (benchmark model).

wall -k1,c1- m1 -k2,c2- m2 -k3,c3- m3 <- force. States: positions x1..x3 [m], velocities v1..v3
[m/s]. Measured: x1..x3. Virtual sensors: spring forces f1..f3 [N] (f_i = k_i * stretch_i).
`chain3` evaluates the RK4 map exactly by matrix powers (`rk4_linear`; NumPy only); `chain3_loop`
runs the same 200 substeps one by one with `rk4`, written against the array namespace (NumPy or
JAX, `livetwin.models.xp`). Both give the same numbers up to rounding.
"""

from __future__ import annotations

import numpy as np

from livetwin.models.base import model
from livetwin.models.ode import rk4, rk4_linear
from livetwin.models.simulate import FleetSimulator
from livetwin.models.xp import namespace, transposed

SUBSTEPS = 200
PARAMS = ("k1", "k2", "k3", "c1", "c2", "c3", "m1", "m2", "m3")
STATES = ("x1", "x2", "x3", "v1", "v2", "v3")
OUTPUTS = ("x1", "x2", "x3", "f1", "f2", "f3")
_SPEC = dict(
    params=PARAMS,
    inputs=("force",),
    outputs=OUTPUTS,
    states=STATES,
    bounds={p: (0.0, None) for p in PARAMS},
)


def _rates(p: np.ndarray, u: np.ndarray):
    """The right-hand side for parameter rows `p` and inputs `u`, on states laid out as
    ``[6, M]`` (one contiguous row per state); per-row constants are computed once here.
    Written row by row: both NumPy and the JAX compiler run it fastest that way."""
    xp = namespace(p, u)
    k1, k2, k3, c1, c2, c3, m1, m2, m3 = transposed(p)
    a1, a2, a3 = 1.0 / m1, 1.0 / m2, 1.0 / m3
    force = u[:, 0]  # pulls on the last mass

    def f(x: np.ndarray, _p: object = None, _u: object = None) -> np.ndarray:
        x1, x2, x3, v1, v2, v3 = x
        f1 = k1 * x1 + c1 * v1  # in each spring-damper: wall-m1, m1-m2, m2-m3
        f2 = k2 * (x2 - x1) + c2 * (v2 - v1)
        f3 = k3 * (x3 - x2) + c3 * (v3 - v2)
        return xp.stack([v1, v2, v3, (f2 - f1) * a1, (f3 - f2) * a2, (force - f3) * a3])

    return f


def _system(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A[N,6,6] and B[N,6,1] of the chain for parameter rows `p`."""
    k, c, m = p[:, 0:3], p[:, 3:6], p[:, 6:9]
    n = p.shape[0]
    a = np.zeros((n, 6, 6))
    a[:, 0, 3] = a[:, 1, 4] = a[:, 2, 5] = 1.0
    # Stiffness and damping matrices of the chain, scaled by 1/m per row.
    for block, coef in ((0, k), (3, c)):
        a[:, 3, block] = -(coef[:, 0] + coef[:, 1]) / m[:, 0]
        a[:, 3, block + 1] = coef[:, 1] / m[:, 0]
        a[:, 4, block] = coef[:, 1] / m[:, 1]
        a[:, 4, block + 1] = -(coef[:, 1] + coef[:, 2]) / m[:, 1]
        a[:, 4, block + 2] = coef[:, 2] / m[:, 1]
        a[:, 5, block + 1] = coef[:, 2] / m[:, 2]
        a[:, 5, block + 2] = -coef[:, 2] / m[:, 2]
    b = np.zeros((n, 6, 1))
    b[:, 5, 0] = 1.0 / m[:, 2]
    return a, b


def _outputs(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    xp = namespace(x, p)
    pos = x[:, 0:3]
    stretch = pos - xp.concatenate([xp.zeros_like(pos[:, :1]), pos[:, :-1]], axis=1)
    return xp.concatenate([pos, p[:, 0:3] * stretch], axis=1)


@model(**_SPEC)
def chain3(
    states: np.ndarray, params: np.ndarray, inputs: np.ndarray, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    """3-mass chain, 200-substep RK4 evaluated as an exact matrix power."""
    a, b = _system(params)
    new = rk4_linear(a, b, states, inputs, dt, SUBSTEPS)
    return new, _outputs(new, params)


@model(**_SPEC, array_api=True)
def chain3_loop(
    states: np.ndarray, params: np.ndarray, inputs: np.ndarray, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    """3-mass chain, 200 explicit RK4 substeps (the generic path; NumPy or JAX)."""
    new = rk4(_rates(params, inputs), transposed(states), None, None, dt, SUBSTEPS).T
    return new, _outputs(new, params)


TRUE_PARAMS = np.array([40.0, 30.0, 20.0, 0.8, 0.6, 0.4, 1.0, 0.8, 0.6])


def chain_fleet(
    n: int, seed: int = 0, *, noise: float = 1e-3, dt: float = 0.05, drift: float = 0.0
) -> FleetSimulator:
    """A synthetic fleet of chains with random true parameters (within +-30 % of nominal).

    The force input is a random telegraph signal (+-2 N) plus noise, so that all 9 parameters
    are identifiable. See `livetwin.models.simulate.FleetSimulator`.
    """
    rng = np.random.default_rng(seed)
    return FleetSimulator(
        model=chain3,
        params=TRUE_PARAMS * np.exp(rng.uniform(-0.3, 0.3, (n, 9))),
        states=np.zeros((n, 6)),
        inputs=_telegraph_force,
        meas_std=np.full(3, noise),
        measured=("x1", "x2", "x3"),
        dt=dt,
        drift=drift,
        seed=seed + 1,
    )


def _telegraph_force(sim: FleetSimulator) -> np.ndarray:
    level = sim.aux.setdefault("level", np.full((sim.n, 1), 2.0))
    flip = sim.rng.random(level.shape) < 0.1
    level[flip] = -level[flip]
    return level + sim.rng.normal(0.0, 0.5, level.shape)
