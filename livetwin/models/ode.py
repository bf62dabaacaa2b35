"""ODE integrators for models: fixed-step RK4 over many rows at once, its exact LTI shortcut,
and a stiff solver (SciPy `solve_ivp`) for a few twins.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from livetwin.models.xp import namespace, repeat

Deriv = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def rk4(
    f: Deriv,
    x: np.ndarray,
    params: np.ndarray,
    inputs: np.ndarray,
    dt: float,
    substeps: int = 1,
) -> np.ndarray:
    """Classic fixed-step RK4 of ``dx/dt = f(x, params, inputs)`` over `dt` in `substeps` steps.

    All arrays have one row per twin (or sigma point); `f` must be vectorised over rows. Inputs
    are held constant over the step. Returns the new ``x[N,s]``. Runs on the array namespace of
    `x` (`livetwin.models.xp`): on JAX the substeps are one compiled loop.
    """
    h = dt / substeps
    half, sixth = 0.5 * h, h / 6.0
    xp = namespace(x)
    if xp is not np:  # one compiled loop over functional substeps

        def substep(x):
            k1 = f(x, params, inputs)
            k2 = f(x + half * k1, params, inputs)
            k3 = f(x + half * k2, params, inputs)
            k4 = f(x + h * k3, params, inputs)
            return x + sixth * (k1 + 2.0 * (k2 + k3) + k4)

        return repeat(xp, substeps, substep, x)
    # NumPy: the same sums in place, in one flat loop. Fresh large arrays each substep (or
    # temporaries all freed at once by a loop body that returns) cost page faults: 3x slower.
    x = np.array(x, dtype=float)
    for _ in range(substeps):
        k1 = f(x, params, inputs)
        k2 = f(x + half * k1, params, inputs)
        k3 = f(x + half * k2, params, inputs)
        k4 = f(x + h * k3, params, inputs)
        k2 += k3
        k2 *= 2.0
        k1 += k4
        k1 += k2
        k1 *= sixth
        x += k1
    return x


def rk4_linear(
    a: np.ndarray,
    b: np.ndarray,
    x: np.ndarray,
    u: np.ndarray,
    dt: float,
    substeps: int,
) -> np.ndarray:
    """`substeps` RK4 steps of the linear system ``dx/dt = A x + B u`` (u constant), in O(log).

    One RK4 step of a linear time-invariant system is the matrix polynomial
    ``R(hA) = I + hA + (hA)^2/2 + (hA)^3/6 + (hA)^4/24``; K steps are its K-th power. This computes
    that power by repeated squaring on the augmented system ``[x; u]``, so the result equals the
    substep loop of `rk4` up to rounding (tested), at the cost of about log2(K) + 3 small matrix
    products per row. `a` is ``[N,s,s]``, `b` ``[N,s,q]``, `x` ``[N,s]``, `u` ``[N,q]``.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    # Rows whose A and B equal the previous row's share one propagator: the batched UKF lists
    # the sigma points that move only dynamic states (same parameters) next to each other.
    first = np.ones(len(a), dtype=bool)
    first[1:] = ~((a[1:] == a[:-1]).all(axis=(1, 2)) & (b[1:] == b[:-1]).all(axis=(1, 2)))
    owner = np.cumsum(first) - 1  # row -> its distinct system
    a, b = a[first], b[first]
    out = np.empty(np.shape(x), dtype=float)
    for lo in range(0, len(a), _ROWS):  # blocks of distinct systems that stay in cache
        r0, r1 = np.searchsorted(owner, [lo, lo + _ROWS])
        out[r0:r1] = _rk4_linear_block(
            a[lo : lo + _ROWS],
            b[lo : lo + _ROWS],
            x[r0:r1],
            u[r0:r1],
            owner[r0:r1] - lo,
            dt,
            substeps,
        )
    return out


_ROWS = 2048


def _mm(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise matrix product in "rows last" layout: p[i,k,N] @ q[k,j,N] -> [i,j,N]."""
    return np.einsum("ikn,kjn->ijn", p, q)


def _rows_last(m: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(m, 0, -1))


def _rk4_linear_block(a, b, x, u, owner, dt: float, k: int) -> np.ndarray:
    s = a.shape[1]
    h = dt / k
    z = h * _rows_last(a)  # [s,s,N]: rows last, so each product is a few long loops
    eye = np.eye(s)[:, :, None]
    # Step matrix of z = [x; u], z' = [[A, B], [0, 0]] z, in block form [[Phi, Gam], [0, I]]:
    # Phi = R(hA) and Gam = h (I + hA/2 + (hA)^2/6 + (hA)^3/24) B.
    z2 = _mm(z, z)
    tail = _mm(z2, eye / 6.0 + z / 24.0)  # Z^2/6 + Z^3/24
    phi = eye + z + 0.5 * z2 + _mm(z, tail)
    gam = h * _mm(eye + 0.5 * z + tail, _rows_last(b))
    # Apply [[Phi, Gam], [0, I]]^K to [x; u] by binary powering; only the x block changes.
    xv = np.ascontiguousarray(np.asarray(x, dtype=float).T)  # [s,rows]
    uv = np.asarray(u, dtype=float).T  # [q,rows]
    while True:
        if k & 1:
            xv = np.einsum("ikn,kn->in", phi[:, :, owner], xv)
            xv += np.einsum("ikn,kn->in", gam[:, :, owner], uv)
        k >>= 1
        if not k:
            break
        gam = _mm(phi, gam) + gam
        phi = _mm(phi, phi)
    return xv.T


def solve_stiff(
    f: Deriv,
    x: np.ndarray,
    params: np.ndarray,
    inputs: np.ndarray,
    dt: float,
    *,
    method: str = "BDF",
    rtol: float = 1e-6,
    atol: float = 1e-9,
) -> np.ndarray:
    """Integrate each row with SciPy's `solve_ivp` (implicit by default) over `dt`.

    For stiff models and a few twins: rows are solved one by one. A row whose solver fails
    comes back as NaN, which the filters treat as a failure of that twin only.
    """
    from scipy.integrate import solve_ivp

    x = np.asarray(x, dtype=float)
    out = np.full_like(x, np.nan)
    for i in range(x.shape[0]):
        p, u = params[i : i + 1], inputs[i : i + 1]

        def rhs(_t: float, y: np.ndarray, p: np.ndarray = p, u: np.ndarray = u) -> np.ndarray:
            if y.ndim == 1:
                return f(y[None, :], p, u)[0]
            cols = y.shape[1]  # vectorised call: y is [s, k]
            return f(y.T, np.repeat(p, cols, 0), np.repeat(u, cols, 0)).T

        sol = solve_ivp(rhs, (0.0, dt), x[i], method=method, rtol=rtol, atol=atol, vectorized=True)
        if sol.success:
            out[i] = sol.y[:, -1]
    return out
