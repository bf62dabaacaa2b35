"""The machinery shared by the batched filters: chunks of twins (run here or on the caller's
executor), missing measurements, outlier gating, measurement-noise estimation and per-twin resets.

A filter subclass supplies a module-level chunk function that advances one chunk of twins by a
step; everything here is estimator-neutral.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import ClassVar

import numpy as np

from livetwin.calibrate.linalg import inv_from_cholesky, robust_cholesky
from livetwin.calibrate.noise import LEARNED, learn_noise, noise_in_use, update_noise_estimate
from livetwin.calibrate.results import StepResult, make_result, stack
from livetwin.calibrate.spec import CalibrationSpec, Plan, compile_spec
from livetwin.calibrate.state import FilterState
from livetwin.errors import InvalidInput

BAD_MODEL, BAD_COV, BAD_INNOVATION, BAD_OUTLIERS = 1, 2, 3, 4
NOISE_MIN_SAMPLES = 5  # default: samples of the noise bootstrap before a component updates
_NOISE = ("noise_var", "noise_count", "noise_hist", *LEARNED)


class BatchFilter:
    """Base of `BatchUKF` and `BatchEnKF`: N twins of one model, filtered as arrays.

    * `gate`: tail probability of the chi-square outlier gate on the normalised innovation
      (None: no gate). A gated twin only predicts this step. After `reopen_after` gated steps
      in a row the evidence is of a change, not an outlier (a bearing that fails): the twin's
      covariance is widened by the prior covariance (means kept) so it re-learns quickly. After
      `max_rejects` gated steps in a row it is reset and flagged (garbage data).
    * `chunk_size`: twins per vectorised chunk (cache-sized; 500-2,000 works well).
    * `executor`: where chunks run when there are several (None: in this process, the default).
      The caller owns it: `with chunk_pool(k) as pool: BatchUKF(spec, n, executor=pool)`;
      a pool of processes is worthwhile for many thousand twins.
    * `noise_window`, `noise_min_samples`: the running measurement-noise estimate used when the
      spec gives no `meas_noise` (`livetwin.calibrate.noise`: covariance matching of the
      innovations over an exponential window of `noise_window` updates, after a bootstrap of
      `noise_min_samples` samples); a component is used only after `noise_min_samples` samples.
    """

    kind: ClassVar[str] = ""
    _chunk: ClassVar[Callable]

    def __init__(
        self,
        spec: CalibrationSpec,
        n_twins: int,
        *,
        gate: float | None = 1e-6,
        max_rejects: int = 10,
        reopen_after: int = 3,
        chunk_size: int = 1000,
        executor: Executor | None = None,
        noise_window: int = 100,
        noise_min_samples: int = NOISE_MIN_SAMPLES,
    ):
        self.spec = spec
        self.plan: Plan = compile_spec(spec, n_twins)
        check_int("chunk_size", chunk_size, 1)
        check_int("max_rejects", max_rejects, 1)
        check_int("reopen_after", reopen_after, 1)
        self.reopen_after = reopen_after
        check_int("noise_window", noise_window, 3)
        check_int("noise_min_samples", noise_min_samples, 1)
        if gate is not None and not 0.0 < gate < 1.0:
            raise InvalidInput("gate must be a probability in (0, 1) or None", field="gate")
        self.chunk_size, self.executor, self.max_rejects = chunk_size, executor, max_rejects
        self.noise_window, self.noise_min_samples = noise_window, noise_min_samples
        m = len(self.plan.meas_idx)
        if gate is None:
            self.gate_table = np.full(m + 1, np.inf)
        else:
            from scipy.stats import chi2

            self.gate_table = np.concatenate([[np.inf], chi2.isf(gate, np.arange(1, m + 1))])

    # -- names -----------------------------------------------------------------------------
    @property
    def n_twins(self) -> int:
        return self.plan.n_twins

    @property
    def names(self) -> tuple[str, ...]:
        """Filter variables: calibrated parameters (transformed), then dynamic states."""
        return self.plan.names

    # -- life cycle ------------------------------------------------------------------------
    def init(self, *, t: float = float("nan"), type_version: int = 0) -> FilterState:
        """The prior of every twin as a fresh `FilterState`."""
        plan = self.plan
        state = FilterState(
            mean=plan.prior_mean.copy(),
            cov=plan.prior_cov.copy(),
            names=plan.names,
            model=plan.model.name,
            kind=self.kind,
            t=t,
            type_version=type_version,
        )
        if plan.r is None:
            m = len(plan.meas_idx)
            state.noise_var = np.zeros((self.n_twins, m))
            state.noise_count = np.zeros((self.n_twins, m), dtype=np.int64)
            state.noise_hist = np.full((self.n_twins, 2, m), np.nan)
            _learning_arrays(state)
        self._init_extra(state, np.arange(self.n_twins))
        return state

    # -- stepping --------------------------------------------------------------------------
    def step(
        self,
        state: FilterState,
        inputs: np.ndarray,
        z: np.ndarray,
        dt: float,
        *,
        t: float | None = None,
    ) -> tuple[FilterState, StepResult]:
        """Predict all twins over `dt` with `inputs[N,u]`, then update with `z[N,m]`.

        `z` holds the measured outputs in the order of the spec's `measured`; NaN marks a
        missing value (that component is skipped for that twin; a twin with none only
        predicts). The given `state` is not modified.
        """
        plan = self.plan
        n = self.n_twins
        inputs, z = self._check_step(state, inputs, z, dt)

        new = replace(  # mean, cov and ensemble are replaced below, never written in place
            state,
            failed=state.failed.copy(),
            reason=state.reason.copy(),
            **{k: getattr(state, k).copy() for k in _NOISE if getattr(state, k) is not None},
        )
        r, z = self.noise_before(new, z)
        obs = np.isfinite(z)

        jobs = []
        for lo in range(0, n, self.chunk_size):
            sl = slice(lo, min(n, lo + self.chunk_size))
            arrays = {
                "mean": new.mean[sl],
                "cov": new.cov[sl],
                "u": inputs[sl],
                "z": z[sl],
                "obs": obs[sl],
                "r": r[sl],
                "fixed": plan.fixed[sl],
                "q": self._chunk_q(sl),
                "ensemble": None if new.ensemble is None else new.ensemble[sl],
                "seed": (new.steps, lo),
            }
            jobs.append(arrays)
        ctx = self._context()
        if self.executor is not None and len(jobs) > 1:
            parts = list(
                self.executor.map(
                    _run_chunk,
                    [type(self)._chunk] * len(jobs),
                    [ctx] * len(jobs),
                    [dt] * len(jobs),
                    jobs,
                )
            )
        else:
            parts = [type(self)._chunk(ctx, dt, job) for job in jobs]
        out = {
            k: np.concatenate([p[k] for p in parts]) for k in parts[0] if parts[0][k] is not None
        }

        new.mean, new.cov = out["mean"], out["cov"]
        if "ensemble" in out:
            new.ensemble = out["ensemble"]
        attempted = out["attempted"]
        new.rejects = np.where(attempted, np.where(out["gated"], new.rejects + 1, 0), new.rejects)
        bad = out["bad"].astype(np.int8)
        bad[(bad == 0) & (new.rejects > self.max_rejects)] = BAD_OUTLIERS
        reset = bad != 0
        reopen = ~reset & attempted & out["gated"] & (new.rejects >= self.reopen_after)
        if reopen.any():  # a persistent change, not a one-off outlier: widen and re-learn
            idx = np.flatnonzero(reopen)
            new.cov[idx] += plan.prior_cov[idx]
            self._init_extra(new, idx)
        out_mean, out_var = out["out_mean"], out["out_var"]
        if reset.any():
            idx = np.flatnonzero(reset)
            self._reset(new, state, idx, bad[idx])
            new.failed[idx] = True
            new.reason[idx] = bad[idx]
            new.rejects[idx] = 0
            out_mean[idx] = np.nan
            out_var[idx] = np.nan
        new.steps = state.steps + 1
        new.t = float(t) if t is not None else state.t + dt
        updated = attempted & ~out["gated"] & ~reset
        innov_var = self.noise_after(new, r, out["innov"], out["pzz"], updated)
        var = np.diagonal(new.cov, axis1=1, axis2=2)
        result = make_result(
            plan, new.mean, var, out_mean, out_var, out["nis"], updated, reset, bad, out["innov"],
            innov_var,
        )  # fmt: skip
        return new, result

    def run(
        self, state: FilterState, inputs: np.ndarray, z: np.ndarray, dt: float
    ) -> tuple[FilterState, StepResult]:
        """`step` over ``inputs[T,N,u]`` and ``z[T,N,m]``; results get a leading time axis."""
        results = []
        for k in range(len(z)):
            state, res = self.step(state, inputs[k], z[k], dt)
            results.append(res)
        return state, stack(results)

    def predict(
        self, state: FilterState, inputs: np.ndarray, dt: float
    ) -> tuple[FilterState, StepResult]:
        """The filter's forecast over ``inputs[K,N,u]``: `step` with nothing measured, K times
        (results with a leading step axis). The given `state` is not modified."""
        inputs = self._check_inputs(inputs)
        none = np.full((len(inputs), self.n_twins, len(self.plan.meas_idx)), np.nan)
        return self.run(state, inputs, none, dt)

    def _reset(self, new: FilterState, old: FilterState, idx: np.ndarray, why: np.ndarray) -> None:
        """Restart twins `idx` from their prior covariance (see `FilterState` for the means).

        Parameter means go back to the prior when the model failed and are kept otherwise;
        dynamic-state means are kept (the prior's initial states are stale by now): the
        predicted mean after an outlier reset, the last mean before a failed step.
        """
        plan, p = self.plan, self.plan.n_params
        mean = np.where((why == BAD_OUTLIERS)[:, None], new.mean[idx], old.mean[idx])
        mean[why == BAD_MODEL, :p] = plan.prior_mean[idx[why == BAD_MODEL], :p]
        bad = ~np.isfinite(mean)
        mean[bad] = plan.prior_mean[idx][bad]
        new.mean[idx] = mean
        new.cov[idx] = plan.prior_cov[idx]
        self._init_extra(new, idx)

    # -- measurement noise (one implementation for every backend) ---------------------------
    def noise_before(self, new: FilterState, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The noise covariance ``[N,m,m]`` of this step and `z` with NaN where a component's
        noise is not known yet (configured, else estimated: `noise_in_use`); updates the
        second-difference bootstrap of `new` in place."""
        plan = self.plan
        if plan.r is not None:
            return plan.r, z
        _learning_arrays(new)
        update_noise_estimate(new.noise_var, new.noise_count, new.noise_hist, z, self.noise_window)
        var, ready = noise_in_use(new, self.noise_min_samples)
        m = var.shape[1]
        r = np.zeros((self.n_twins, m, m))
        r[:, np.arange(m), np.arange(m)] = np.where(ready, var, 1.0)
        return r, np.where(ready, z, np.nan)

    def noise_after(
        self, new: FilterState, r: np.ndarray, innov: np.ndarray, pzz: np.ndarray, updated
    ) -> np.ndarray:
        """Learn the noise from this step's innovations (`learn_noise`) of updated twins;
        returns the innovations' variances ``S = Pzz + R`` ``[N,m]``."""
        r_diag = np.diagonal(r, axis1=1, axis2=2)
        if self.plan.r is None:
            used = updated[:, None] & np.isfinite(innov)
            learn_noise(new, innov, pzz, r_diag, used, self.noise_window)
        return pzz + r_diag

    # -- hooks -----------------------------------------------------------------------------
    def _context(self) -> object:
        raise NotImplementedError

    def _init_extra(self, state: FilterState, idx: np.ndarray) -> None:
        """Initialise estimator-specific state of twins `idx` (at start and on reset)."""

    def _chunk_q(self, sl: slice) -> np.ndarray | None:
        """The process noise a chunk needs (the EnKF wants a square root instead)."""
        return None if self.plan.q is None else self.plan.q[sl]

    # -- helpers ---------------------------------------------------------------------------
    def _check_step(
        self, state: FilterState, inputs: object, z: object, dt: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """`inputs` and `z` as checked float arrays; raises InvalidInput before any work."""
        self._check_state(state)
        inputs = _array(inputs, (self.n_twins, len(self.plan.model.inputs)), "inputs")
        z = _array(z, (self.n_twins, len(self.plan.meas_idx)), "z", allow_nan=True)
        if not (np.isfinite(dt) and dt > 0):
            raise InvalidInput(f"dt must be positive, got {dt}", field="dt", fix="pass dt > 0")
        return inputs, z

    def _check_inputs(self, inputs: object) -> np.ndarray:
        """Inputs of a forecast ``[K,N,u]`` (K >= 1) as a float array; raises InvalidInput."""
        shape = (self.n_twins, len(self.plan.model.inputs))
        a = np.asarray(inputs, dtype=float)
        if a.ndim != 3 or not len(a):
            raise InvalidInput(
                f"inputs has shape {a.shape}, expected (steps, {shape[0]}, {shape[1]})",
                field="inputs",
                fix="pass one array of twins x inputs per step, at least one step",
            )
        return np.stack([_array(u, shape, "inputs") for u in a])

    def _check_state(self, state: FilterState) -> None:
        plan = self.plan
        if state.names != plan.names or state.kind != self.kind or state.n_twins != self.n_twins:
            raise InvalidInput(
                f"filter state ({state.kind}, {state.n_twins} twins, variables {state.names}) "
                f"does not match this filter ({self.kind}, {self.n_twins} twins, {plan.names})",
                field="state",
                fix="resume with the same calibration spec and fleet size, or re-initialise",
            )


@contextmanager
def chunk_pool(workers: int) -> Iterator[Executor | None]:
    """A pool of `workers` spawned processes for a filter's chunks, shut down on exit; None
    (chunks run in the caller's process) for 0."""
    check_int("workers", workers, 0)
    if not workers:
        yield None
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown()


def _learning_arrays(state: FilterState) -> None:
    """Zeroed covariance-matching sums where `state` has none (a fresh filter, or a state saved
    before the innovations were learned from)."""
    for name in LEARNED:
        if getattr(state, name) is None:
            setattr(state, name, np.zeros(state.noise_var.shape))


def _run_chunk(fn: Callable, ctx: object, dt: float, arrays: dict) -> dict:
    return fn(ctx, dt, arrays)


def check_int(name: str, value: object, low: int) -> None:
    if not isinstance(value, int | np.integer) or value < low:
        raise InvalidInput(f"{name} must be an integer >= {low}", field=name, fix=f"use {low}+")


def _array(value: object, shape: tuple[int, int], name: str, allow_nan: bool = False) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be numeric", field=name, fix="pass numbers") from None
    if a.shape != shape:
        raise InvalidInput(
            f"{name} has shape {a.shape}, expected {shape} (twins x columns)",
            field=name,
            fix="pass one row per twin and one column per name, in the spec's order",
        )
    if np.isinf(a).any() or (not allow_nan and np.isnan(a).any()):
        what = "infinite values" if allow_nan else "NaN or infinite values"
        raise InvalidInput(f"{name} contains {what}", field=name, fix="mark missing with NaN")
    return a


def propagate(plan_ctx, flat: np.ndarray, u: np.ndarray, fixed: np.ndarray, dt: float, reps: int):
    """Run the model once for all rows of ``flat[M, n]`` (M = twins x reps); returns
    ``[M, n + o]`` = (theta, new states, outputs), NaN rows where the model failed."""
    model, tf, p = plan_ctx.model, plan_ctx.tf, plan_ctx.n_params
    rows = len(flat)
    params = np.empty((rows, len(model.params)))
    params[:, plan_ctx.cal_idx] = tf.to_param(flat[:, :p])
    params[:, plan_ctx.fixed_idx] = np.repeat(fixed, reps, axis=0)
    inputs = np.repeat(u, reps, axis=0)
    states = flat[:, p:]
    with np.errstate(all="ignore"):
        try:
            new_states, outputs = model.step(states, params, inputs, dt)
        except InvalidInput:
            raise
        except Exception as exc:  # isolate the failing twins: evaluate twin by twin
            new_states, outputs = _per_twin_step(model, states, params, inputs, dt, reps, exc)
    s, o = len(model.states), len(model.outputs)
    for arr, width, what in ((new_states, s, "states"), (outputs, o, "outputs")):
        if np.shape(arr) != (rows, width):
            raise InvalidInput(
                f"model {model.name!r} returned {what} of shape {np.shape(arr)}, "
                f"expected {(rows, width)}",
                field="model",
                fix="return one row per input row and one column per declared name",
            )
    return np.concatenate([flat[:, :p], new_states, outputs], axis=1)


def _per_twin_step(model, states, params, inputs, dt, reps, exc):
    rows = len(states)
    new_states = np.full((rows, len(model.states)), np.nan)
    outputs = np.full((rows, len(model.outputs)), np.nan)
    ok = 0
    for lo in range(0, rows, reps):
        sl = slice(lo, lo + reps)
        try:
            new_states[sl], outputs[sl] = model.step(states[sl], params[sl], inputs[sl], dt)
            ok += 1
        except Exception:
            continue
    if not ok:
        raise exc
    return new_states, outputs


def masked_gain(
    cz: np.ndarray,
    pzz: np.ndarray,
    r: np.ndarray,
    innov: np.ndarray,
    obs: np.ndarray,
    gate_table: np.ndarray,
) -> dict[str, np.ndarray]:
    """Kalman gain ``[N,d,m]`` using only the observed components of each twin.

    Unobserved components get a unit diagonal and zero cross-covariance, so the gain is exactly
    that of the observed subset and zero elsewhere. A twin whose normalised innovation exceeds
    the gate (chi-square quantile for its number of observed components) gets a zero gain.
    """
    n, m = obs.shape
    both = obs[:, :, None] & obs[:, None, :]
    s = np.where(both, pzz + r, 0.0)
    idx = np.arange(m)
    s[:, idx, idx] += ~obs
    low, ok = robust_cholesky(s)
    s_inv = inv_from_cholesky(low)
    nu = np.where(obs, innov, 0.0)
    nis = np.einsum("ni,nij,nj->n", nu, s_inv, nu)
    dof = obs.sum(axis=1)
    attempted = dof > 0
    gated = attempted & ~(nis <= gate_table[dof])
    use = attempted & ~gated & ok
    gain = (cz * obs[:, None, :]) @ s_inv
    gain *= use[:, None, None]
    return {
        "gain": gain,
        "nu": nu,
        "innov": np.where(obs, innov, np.nan),
        "pzz": np.diagonal(pzz, axis1=1, axis2=2).copy(),
        "nis": np.where(attempted, nis, np.nan),
        "attempted": attempted,
        "gated": gated & ok,
        "ok": ok,
    }


def fail_code(finite: np.ndarray, cov_ok: np.ndarray, s_ok: np.ndarray) -> np.ndarray:
    """Per-twin failure code (0 = fine) from the checks of a step, first failure wins."""
    return np.select([~finite, ~cov_ok, ~s_ok], [BAD_MODEL, BAD_COV, BAD_INNOVATION], 0).astype(
        np.int8
    )


def plan_context(plan: Plan) -> Plan:
    """The plan without its per-twin arrays: what every chunk needs, cheap to pickle."""
    return replace(plan, fixed=None, prior_mean=None, prior_cov=None, q=None, r=None)
