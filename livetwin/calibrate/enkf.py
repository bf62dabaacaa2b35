"""Batched ensemble Kalman filter (stochastic, perturbed observations): same interface as the UKF.

Each twin carries E members of (transformed parameters, states). Each step adds process noise to
every member, runs all ``N*E`` members through one model call per chunk, and updates every
member with the ensemble gain and its own perturbed measurement. Reported statistics are the
ensemble mean and covariance, summarised exactly like the UKF's (see `StepResult`).

When to use which: the UKF (`BatchUKF`) is the default: deterministic, 2n+1 model rows per
twin, accurate for smooth models. The EnKF costs E rows per twin (E = 32..128 independent of
n), so it is cheaper for many variables, copes better with non-smooth models (switches,
saturations, look-up tables) and does not place points at fixed +-sqrt(n) sigma offsets where
a model may break; its estimates carry Monte-Carlo noise of order 1/sqrt(E). Neither handles
multi-modal posteriors; a particle filter would, at far higher cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from livetwin.calibrate.batch import (
    BatchFilter,
    fail_code,
    masked_gain,
    plan_context,
    propagate,
)
from livetwin.calibrate.linalg import robust_cholesky
from livetwin.calibrate.spec import CalibrationSpec, Plan
from livetwin.calibrate.state import FilterState
from livetwin.errors import InvalidInput


@dataclass(frozen=True)
class _Ctx:
    plan: Plan
    members: int
    inflation: float
    seed: int
    gate_table: np.ndarray


def enkf_chunk(ctx: _Ctx, dt: float, a: dict) -> dict:
    """One EnKF step for one chunk of twins (pure function of arrays; runs in any process)."""
    plan, e = ctx.plan, ctx.members
    ens = a["ensemble"]
    n_tw, _, n = ens.shape
    rng = np.random.default_rng([ctx.seed, *a["seed"]])
    if a["q"] is not None:  # here: a square root of Q per twin
        ens = ens + rng.standard_normal((n_tw, e, n)) @ a["q"].swapaxes(1, 2)
    y = propagate(plan, ens.reshape(n_tw * e, n), a["u"], a["fixed"], dt, e).reshape(n_tw, e, -1)
    finite = np.isfinite(y).all(axis=(1, 2))
    if not finite.all():
        y[~finite] = 0.0
    mu = y.mean(axis=1)
    dev = y - mu[:, None, :]
    if ctx.inflation != 1.0:
        dev *= ctx.inflation
        y = mu[:, None, :] + dev
    zi = n + plan.meas_idx
    cz = dev.swapaxes(1, 2) @ dev[:, :, zi] / (e - 1)  # [N, n+o, m]
    g = masked_gain(cz, cz[:, zi], a["r"], a["z"] - mu[:, zi], a["obs"], ctx.gate_table)
    low_r, r_ok = robust_cholesky(a["r"])
    eps = rng.standard_normal((n_tw, e, len(zi))) @ low_r.swapaxes(1, 2)
    obs = a["obs"][:, None, :]
    innov = np.where(obs, a["z"][:, None, :] + eps - y[:, :, zi], 0.0)
    y = y + innov @ g["gain"].swapaxes(1, 2)
    mean = y.mean(axis=1)
    dev = y - mean[:, None, :]
    cov = dev[:, :, :n].swapaxes(1, 2) @ dev[:, :, :n] / (e - 1)
    diag = np.diagonal(cov, axis1=1, axis2=2)
    cov_ok = np.isfinite(cov).all(axis=(1, 2)) & (diag > 0).all(axis=1)
    return {
        "mean": mean[:, :n],
        "cov": cov,
        "ensemble": y[:, :, :n],
        "out_mean": mean[:, n:],
        "out_var": (dev[:, :, n:] ** 2).sum(axis=1) / (e - 1),
        "nis": g["nis"],
        "innov": g["innov"],
        "pzz": g["pzz"],
        "attempted": g["attempted"],
        "gated": g["gated"],
        "bad": fail_code(finite, cov_ok, g["ok"] & r_ok),
    }


class BatchEnKF(BatchFilter):
    """Batched EnKF with `members` per twin (see the module docstring and `BatchFilter`).

    `inflation` multiplies the forecast anomalies (1.0 = none; 1.01-1.05 counters the spread
    loss of small ensembles). `seed` makes runs reproducible: the noise of a step depends only
    on (seed, step count, first twin of the chunk), so a restored state continues exactly
    when the chunk size is the same.
    """

    kind = "enkf"
    _chunk = staticmethod(enkf_chunk)

    def __init__(
        self,
        spec: CalibrationSpec,
        n_twins: int,
        *,
        members: int = 64,
        inflation: float = 1.0,
        seed: int = 0,
        **options,
    ):
        super().__init__(spec, n_twins, **options)
        if not isinstance(members, int) or members < 4:
            raise InvalidInput("members must be an integer >= 4", field="members", fix="use 32-128")
        if not inflation >= 1.0:
            raise InvalidInput("inflation must be >= 1", field="inflation", fix="use 1.0-1.1")
        self.members, self.inflation, self.seed = members, float(inflation), int(seed)
        self._q_sqrt = None if self.plan.q is None else _psd_sqrt(self.plan.q)

    def _context(self) -> _Ctx:
        return _Ctx(
            plan_context(self.plan), self.members, self.inflation, self.seed, self.gate_table
        )

    def _chunk_q(self, sl: slice) -> np.ndarray | None:
        return None if self._q_sqrt is None else self._q_sqrt[sl]

    def _init_extra(self, state: FilterState, idx: np.ndarray) -> None:
        """Draw the members of twins `idx` from N(mean, cov) of `state`."""
        if state.ensemble is None:
            state.ensemble = np.empty((self.n_twins, self.members, self.plan.n))
        rng = np.random.default_rng([self.seed, state.steps, 2**31 - 1])
        low, _ = robust_cholesky(state.cov[idx])
        draws = rng.standard_normal((len(idx), self.members, self.plan.n)) @ low.swapaxes(1, 2)
        ens = state.mean[idx, None, :] + draws
        state.ensemble[idx] = ens
        state.mean[idx] = ens.mean(axis=1)
        dev = ens - state.mean[idx, None, :]
        state.cov[idx] = dev.swapaxes(1, 2) @ dev / (self.members - 1)


def _psd_sqrt(q: np.ndarray) -> np.ndarray:
    """A square root ``S`` with ``S S^T = Q`` per twin, for semi-definite Q."""
    w, v = np.linalg.eigh(q)
    return v * np.sqrt(np.maximum(w, 0.0))[:, None, :]
