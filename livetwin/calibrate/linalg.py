"""Batched linear algebra that fails per twin, never per fleet."""

from __future__ import annotations

import numpy as np

JITTERS = (1e-12, 1e-9, 1e-6, 1e-3)  # relative to the mean diagonal


def robust_cholesky(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower Cholesky factors of symmetrised ``a[N,k,k]`` and ``ok[N]``.

    NumPy's batched Cholesky raises if any matrix fails; then each twin is retried alone with
    growing jitter on its diagonal. A twin that is non-finite or still fails gets an identity
    factor and ``ok = False``: the caller resets that twin, the others are untouched.
    """
    a = 0.5 * (a + a.swapaxes(-1, -2))
    ok = np.isfinite(a).all(axis=(-2, -1))
    eye = np.eye(a.shape[-1])
    if not ok.all():
        a[~ok] = eye
    try:
        return np.linalg.cholesky(a), ok
    except np.linalg.LinAlgError:
        pass
    out = np.empty_like(a)
    for i in range(len(a)):
        out[i], good = _cholesky_one(a[i], eye)
        ok[i] &= good
    return out, ok


def _cholesky_one(a: np.ndarray, eye: np.ndarray) -> tuple[np.ndarray, bool]:
    scale = float(np.mean(np.abs(np.diag(a)))) or 1.0
    for jitter in (0.0, *JITTERS):
        try:
            return np.linalg.cholesky(a + (jitter * scale) * eye), True
        except np.linalg.LinAlgError:
            continue
    return eye.copy(), False


def inv_from_cholesky(low: np.ndarray) -> np.ndarray:
    """``(L L^T)^-1`` from lower factors ``L[N,k,k]``."""
    li = np.linalg.inv(low)
    return li.swapaxes(-1, -2) @ li
