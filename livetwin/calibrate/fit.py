"""Does the model still explain the data? Per twin, the filter's normalised innovations over a
sliding window, held against their chi-square bounds and tested for whiteness.

A consistent filter's normalised innovation squared (NIS, ``nu' S^-1 nu``) summed over a window
is chi-square with as many degrees of freedom as components measured, and its innovations are
white. A new failure mode, a sensor fault or a wrong model shows as a window sum above the
upper bound, or as innovations that follow each other (lag-1 autocorrelation of the normalised
innovations above its bound); bands that only widen do not hide it. A sum *below* the lower
bound means the noise is overstated (bands too wide), not a wrong model, and is not flagged.

`model_fit` is 1 while the twin's model fits, 0 when it does not, NaN until a full window of
updates has been seen. The window lives in the `FilterState` (``fit_*`` arrays), so it carries
over from one calibration run to the next. Pure NumPy, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2, norm

from livetwin.errors import InvalidInput

FIT_FIELDS = ("fit_nis", "fit_dof", "fit_e", "fit_count")


@dataclass(frozen=True)
class FitCheck:
    """The test: `window` updates per twin, false-alarm probability `alpha` per test and step."""

    window: int = 30
    alpha: float = 1e-3

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 5:
            raise InvalidInput(
                "the model-fit window must be an integer >= 5",
                field="calibration.model_fit_window",
                fix="use 20-100 filter steps",
            )
        if not 0.0 < self.alpha < 0.5:
            raise InvalidInput(
                "the model-fit false-alarm probability must lie in (0, 0.5)",
                field="calibration.model_fit_alpha",
                fix="use 1e-4 .. 1e-2",
            )

    def init(self, state, n_measured: int) -> None:
        """Give `state` empty windows where it has none or another shape (a fresh state, one
        saved by an older version, a changed window)."""
        n, w = state.n_twins, self.window
        if state.fit_nis is None or state.fit_e.shape[1:] != (w, n_measured):
            state.fit_nis = np.zeros((n, w))
            state.fit_dof = np.zeros((n, w))
            state.fit_e = np.full((n, w, n_measured), np.nan)
            state.fit_count = np.zeros(n, dtype=np.int64)

    def update(self, state, result, innov: np.ndarray, var: np.ndarray) -> dict[str, np.ndarray]:
        """Add one step (`result.nis`, innovations ``innov[N,m]`` and their variances
        ``var[N,m]``, NaN where not measured) for twins that updated; returns per twin ``nis``
        (the window's mean NIS per measured component, 1 when consistent) and ``model_fit``."""
        self.init(state, innov.shape[1])
        for name in FIT_FIELDS:  # the caller's earlier states keep their windows
            setattr(state, name, getattr(state, name).copy())
        upd = np.asarray(result.updated, dtype=bool)
        dof = np.isfinite(innov).sum(axis=1)
        slot = state.fit_count % self.window
        rows = np.flatnonzero(upd)
        state.fit_nis[rows, slot[rows]] = result.nis[rows]
        state.fit_dof[rows, slot[rows]] = dof[rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            state.fit_e[rows, slot[rows]] = innov[rows] / np.sqrt(var[rows])
        state.fit_count += upd
        reset = np.asarray(result.reset, dtype=bool)
        if reset.any():  # a restarted twin starts a new window
            state.fit_count[reset] = 0
            state.fit_nis[reset] = 0.0
            state.fit_dof[reset] = 0.0
            state.fit_e[reset] = np.nan
        return self.verdict(state)

    def verdict(self, state) -> dict[str, np.ndarray]:
        """``nis`` and ``model_fit`` of every twin from its current window."""
        total_dof = state.fit_dof.sum(axis=1)
        full = (state.fit_count >= self.window) & (total_dof > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            nis = state.fit_nis.sum(axis=1) / total_dof
            high = state.fit_nis.sum(axis=1) > chi2.isf(self.alpha, np.maximum(total_dof, 1))
            corr = _lag1(state.fit_e, state.fit_count % self.window)
            pairs = np.maximum(self.window - 1, 1)
            coloured = corr > norm.isf(self.alpha) / np.sqrt(pairs)
        fits = np.where(full, np.where(high | coloured, 0.0, 1.0), np.nan)
        return {"nis": np.where(total_dof > 0, nis, np.nan), "model_fit": fits}


def _lag1(e: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation per twin of the window ``e[N,W,m]`` (ring buffers that start at
    `start`), pooled over components; NaN samples are left out."""
    n, w, _ = e.shape
    order = (start[:, None] + np.arange(w)[None, :]) % w
    seq = np.take_along_axis(e, order[:, :, None], axis=1)  # oldest first
    a, b = seq[:, 1:], seq[:, :-1]
    both = np.isfinite(a) & np.isfinite(b)
    num = np.where(both, a * b, 0.0).sum(axis=(1, 2))
    den = np.where(np.isfinite(seq), seq * seq, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den
