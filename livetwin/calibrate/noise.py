"""Noise design: validate process/measurement noise, and estimate measurement noise from data.

When no measurement noise is given, the filters estimate it per twin and measured output from
the filter's own innovations by **covariance matching** (Mehra 1972; Myers and Tapley 1976):
an innovation ``nu = z - h(x)`` has ``E[nu^2] = Pzz + R``, with ``Pzz`` the predicted spread of
the model output, so ``R ~ mean(nu^2 - Pzz)``. The mean runs over an exponential window of
`noise_window` updates, each sample weighted by ``1 / S^2`` (``S = Pzz + R``, the variance of
``nu``): samples taken while the parameters are still uncertain count little. `learn_noise`
does this once, in NumPy, for every backend.

Until `noise_min_samples` innovations have been learned from, the filter uses a bootstrap from
the measurements alone, on second differences so that slow trends and steady ramps do not
count as noise: for white noise of variance r, ``var(z[k+1] - 2 z[k] + z[k-1]) = 6 r``. It
overstates the noise where the signal bends between samples (inputs that change every step),
which only slows the first steps; the innovations then take over.
"""

from __future__ import annotations

import numpy as np

from livetwin.errors import InvalidInput


def rolling_noise_variance(z: np.ndarray, window: int = 50) -> np.ndarray:
    """Measurement-noise variance per series from the last `window` samples of `z[T, ...]`.

    ``mean(d2^2) / 6`` over the window, with d2 the second difference along time; NaN samples
    are skipped. Returns an array of ``z.shape[1:]``. Overestimates the noise where the signal
    itself bends fast compared with the sampling (a fast transient counts as noise).
    """
    z = np.asarray(z, dtype=float)
    if z.ndim < 1 or z.shape[0] < 3:
        raise InvalidInput(
            f"need at least 3 samples to estimate measurement noise, got {z.shape[:1]}",
            field="z",
            fix="pass a longer history, or give meas_noise explicitly",
        )
    if window < 3:
        raise InvalidInput("window must be at least 3", field="window", fix="use window >= 3")
    tail = z[-window:]
    d2 = tail[2:] - 2.0 * tail[1:-1] + tail[:-2]
    ok = np.isfinite(d2)
    count = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(ok, d2 * d2, 0.0).sum(axis=0) / (6.0 * count)
    if np.any(count == 0):
        raise InvalidInput(
            "some series have no three consecutive finite samples to estimate noise from",
            field="z",
            fix="pass more data or give meas_noise explicitly",
        )
    return var


def update_noise_estimate(
    var: np.ndarray, count: np.ndarray, hist: np.ndarray, z: np.ndarray, window: int
) -> None:
    """Streaming form of `rolling_noise_variance` (in place), one new sample `z[N,m]`.

    `hist[N,2,m]` holds the previous two samples; `var` is an exponentially weighted mean of
    ``d2^2 / 6`` whose weight is ``1/count`` at first (an exact mean) and ``1/window`` later.
    """
    d2 = z - 2.0 * hist[:, 1] + hist[:, 0]
    ok = np.isfinite(d2)
    count += ok
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(ok, 1.0 / np.maximum(np.minimum(count, window), 1), 0.0)
    var += w * (np.where(ok, d2 * d2 / 6.0, 0.0) - np.where(ok, var, 0.0))
    hist[:, 0] = hist[:, 1]
    hist[:, 1] = z


NOISE_FLOOR = 1e-4  # the learned variance never falls below this fraction of the bootstrap's
LEARNED = ("noise_sum", "noise_weight")  # exponentially decayed sums of w e and w


def noise_in_use(state, min_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The measurement-noise variance ``[N, m]`` a filter uses now, and where it is ready.

    The innovations' covariance-matching mean with the second-difference bootstrap as its
    prior, worth `min_samples` samples judged at ``S = bootstrap``: at first the bootstrap
    (which errs on the large side: bands too wide, never too narrow), then, as the filter
    converges and the weights ``1/S^2`` grow, the innovations. A component without a bootstrap
    yet is not ready: it does not update the filter.
    """
    boot = state.noise_var
    ready = (state.noise_count >= min_samples) & (boot > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        prior = min_samples / (boot * boot)
        var = (state.noise_sum + prior * boot) / (state.noise_weight + prior)
        var = np.maximum(var, NOISE_FLOOR * boot)
    return np.where(ready, var, np.nan), ready


def learn_noise(
    state, innov: np.ndarray, pzz: np.ndarray, r: np.ndarray, used: np.ndarray, window: int
) -> None:
    """Feed one step's innovations ``innov[N,m]`` (with the model-output variances
    ``pzz[N,m]`` and the noise ``r[N,m]`` they were judged with) into the running estimate of
    `state` where `used` (components that updated the filter): each sample ``e = nu^2 - Pzz``
    weighted ``w = 1 / S^2``, older samples decaying by ``1 - 1/window`` per update."""
    keep = 1.0 - 1.0 / window
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        s = pzz + r
        w = 1.0 / (s * s)
        e = innov * innov - pzz
        terms = (w * e, w)
    used = used & np.isfinite(terms[0]) & np.isfinite(w) & (w > 0)
    for name, term in zip(LEARNED, terms, strict=True):
        old = getattr(state, name)
        setattr(state, name, np.where(used, keep * old + term, old))


def noise_matrix(
    value: np.ndarray | None, n_twins: int, size: int, what: str, strict: bool
) -> np.ndarray:
    """A ``[N, k, k]`` covariance from a per-variable std ``[k]``/``[N,k]`` or a covariance
    ``[k,k]``/``[N,k,k]``; checks it is finite, symmetric and positive (semi-)definite."""
    a = np.asarray(value, dtype=float)
    fix = f"give {what} as {size} standard deviations or a {size}x{size} covariance per twin"
    if a.shape in ((size,), (n_twins, size)):
        if not np.all(np.isfinite(a)) or np.any(a < 0) or (strict and np.any(a == 0)):
            sign = "positive" if strict else "non-negative"
            raise InvalidInput(f"{what} standard deviations must be {sign}", field=what, fix=fix)
        a = np.broadcast_to(a, (n_twins, size))
        out = np.zeros((n_twins, size, size))
        idx = np.arange(size)
        out[:, idx, idx] = a * a
        return out
    if a.shape not in ((size, size), (n_twins, size, size)):
        raise InvalidInput(
            f"{what} has shape {a.shape}; expected {size} values", field=what, fix=fix
        )
    a = np.broadcast_to(a, (n_twins, size, size))
    if not np.all(np.isfinite(a)) or not np.allclose(a, a.swapaxes(1, 2)):
        raise InvalidInput(f"{what} covariance must be finite and symmetric", field=what, fix=fix)
    eig = np.linalg.eigvalsh(np.unique(a, axis=0))
    tol = 1e-12 * max(1.0, float(np.abs(eig).max()))
    if (strict and eig.min() <= tol) or eig.min() < -tol:
        kind = "positive definite" if strict else "positive semi-definite"
        raise InvalidInput(f"{what} covariance must be {kind}", field=what, fix=fix)
    return np.array(a)
