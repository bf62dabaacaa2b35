"""Batched Unscented Kalman Filter: N twins, all sigma points through one model call per chunk.

Filter variables per twin: the calibrated parameters (transformed to be unbounded, modelled as
random walks) followed by the model's dynamic states. Each step:

1. process noise enters at the start of the step: ``P <- P + Q`` (so one model call gives
   consistent state *and* output statistics);
2. Merwe scaled sigma points ``[N, 2n+1, n]`` from a per-twin Cholesky factor;
3. all ``N*(2n+1)`` rows go through the model at once -> new states and outputs;
4. weighted means/covariances of (parameters, states, outputs), then a Kalman update that uses
   only the measured components present for each twin (NaN = missing). Virtual sensors are
   updated through their cross-covariance with the measurements, so their reported std is the
   posterior std.

Use the UKF by default: it is deterministic, needs 2n+1 model rows per twin and is accurate
for smooth, mildly nonlinear models. Use `BatchEnKF` when n is large (tens of variables), when
the model is non-smooth (saturations, switches) or when sigma points spread far enough to reach
regions where the model breaks.
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
from livetwin.errors import InvalidInput


@dataclass(frozen=True)
class SigmaWeights:
    """Merwe scaled sigma-point weights for n variables (computed once)."""

    scale: float  # sqrt(n + lambda)
    wm: np.ndarray  # [2n+1]
    wc: np.ndarray  # [2n+1]

    @classmethod
    def merwe(cls, n: int, alpha: float, beta: float, kappa: float) -> SigmaWeights:
        lam = alpha * alpha * (n + kappa) - n
        if not n + lam > 0:
            raise InvalidInput(
                f"sigma-point spread n + lambda = {n + lam} must be positive",
                field="alpha",
                fix="increase alpha or kappa",
            )
        wm = np.full(2 * n + 1, 0.5 / (n + lam))
        wc = wm.copy()
        wm[0] = lam / (n + lam)
        wc[0] = wm[0] + (1.0 - alpha * alpha + beta)
        return cls(float(np.sqrt(n + lam)), wm, wc)


@dataclass(frozen=True)
class _Ctx:
    plan: Plan
    weights: SigmaWeights
    gate_table: np.ndarray


def ukf_chunk(ctx: _Ctx, dt: float, a: dict) -> dict:
    """One UKF step for one chunk of twins (pure function of arrays; runs in any process)."""
    plan, w = ctx.plan, ctx.weights
    mean, cov = a["mean"], a["cov"]
    n_tw, n = mean.shape
    k = 2 * n + 1
    prior = cov if a["q"] is None else cov + a["q"]
    low, cov_ok = robust_cholesky(prior)
    spread = w.scale * low.swapaxes(1, 2)  # rows = scaled Cholesky columns
    # Order: centre, +-state columns, +-parameter columns. The factor is lower triangular with
    # parameters first, so state columns leave the parameters exactly at the mean: a model may
    # reuse parameter-only work for those consecutive rows (see `rk4_linear`).
    p, s = plan.n_params, n - plan.n_params
    sig = np.empty((n_tw, k, n))
    sig[:, 0] = mean
    sig[:, 1 : 1 + s] = mean[:, None, :] + spread[:, p:]
    sig[:, 1 + s : 1 + 2 * s] = mean[:, None, :] - spread[:, p:]
    sig[:, 1 + 2 * s : 1 + 2 * s + p] = mean[:, None, :] + spread[:, :p]
    sig[:, 1 + 2 * s + p :] = mean[:, None, :] - spread[:, :p]
    flat = propagate(plan, sig.reshape(n_tw * k, n), a["u"], a["fixed"], dt, k)
    y = flat.reshape(n_tw, k, -1)
    finite = np.isfinite(y).all(axis=(1, 2))
    if not (finite & cov_ok).all():
        y[~(finite & cov_ok)] = 0.0
    # Means centred on the first sigma point (no cancellation when weights are large).
    mu = y[:, 0] + w.wm[1:] @ (y[:, 1:] - y[:, :1])
    dev = y - mu[:, None, :]
    wdev = dev * w.wc[:, None]
    zi = n + plan.meas_idx
    # Only the blocks the update needs: P_xx, cross-covariances with the measured outputs and
    # the output variances (not the full (n+o)^2 covariance).
    cz = wdev.swapaxes(1, 2) @ dev[:, :, zi]  # [N, n+o, m]
    g = masked_gain(cz, cz[:, zi], a["r"], a["z"] - mu[:, zi], a["obs"], ctx.gate_table)
    gain = g["gain"]
    mu = mu + (gain @ g["nu"][:, :, None])[:, :, 0]
    post = wdev[:, :, :n].swapaxes(1, 2) @ dev[:, :, :n]
    post -= gain[:, :n] @ cz[:, :n].swapaxes(1, 2)
    post = 0.5 * (post + post.swapaxes(1, 2))
    out_var = np.einsum("nkd,nkd->nd", wdev[:, :, n:], dev[:, :, n:])
    out_var -= np.einsum("nij,nij->ni", gain[:, n:], cz[:, n:])
    diag = np.diagonal(post, axis1=1, axis2=2)
    post_ok = np.isfinite(post).all(axis=(1, 2)) & (diag > 0).all(axis=1)
    return {
        "mean": mu[:, :n],
        "cov": post,
        "out_mean": mu[:, n:],
        "out_var": out_var,
        "nis": g["nis"],
        "innov": g["innov"],
        "pzz": g["pzz"],
        "attempted": g["attempted"],
        "gated": g["gated"],
        "bad": fail_code(finite, cov_ok & post_ok, g["ok"]),
    }


class BatchUKF(BatchFilter):
    """Batched UKF over N twins (see the module docstring and `BatchFilter` for options).

    Defaults ``alpha=1, beta=2, kappa=0`` make every weight but the centre's mean weight
    positive (``lambda = 0``): covariances are sums of outer products with positive weights,
    and sigma points sit at ``+-sqrt(n)`` standard deviations.
    """

    kind = "ukf"
    _chunk = staticmethod(ukf_chunk)

    def __init__(
        self,
        spec: CalibrationSpec,
        n_twins: int,
        *,
        alpha: float = 1.0,
        beta: float = 2.0,
        kappa: float = 0.0,
        **options,
    ):
        super().__init__(spec, n_twins, **options)
        if not alpha > 0:
            raise InvalidInput("alpha must be positive", field="alpha", fix="use 1e-3 .. 1")
        self.weights = SigmaWeights.merwe(self.plan.n, alpha, beta, kappa)

    def _context(self) -> _Ctx:
        return _Ctx(plan_context(self.plan), self.weights, self.gate_table)
