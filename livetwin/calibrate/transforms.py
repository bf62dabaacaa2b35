"""Parameter bounds as transforms: the filters work on an unbounded variable theta = g(param).

* no bounds: theta = param
* lower bound only ``(lo, None)``: theta = log(param - lo)   (e.g. drags, resistances: lo = 0)
* upper bound only ``(None, hi)``: theta = -log(hi - param)
* both ``(lo, hi)``: theta = logit((param - lo) / (hi - lo))

Bounds are therefore respected exactly: every sigma point, ensemble member and reported value
lies strictly inside them. The posterior of theta is Gaussian ``N(m, s^2)`` (per parameter,
marginal); `describe` turns it into parameter units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from livetwin.errors import InvalidInput

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
NONE, LOWER, UPPER, BOTH = 0, 1, 2, 3

# Gauss-Hermite (probabilists') nodes for E[g(theta)] of a logit-transformed parameter.
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(24)
_GH_W = _GH_W / _GH_W.sum()


@dataclass(frozen=True)
class Transforms:
    """Vectorised transforms of p parameters: kinds, lower and upper bounds (arrays of p)."""

    kind: np.ndarray  # int codes NONE/LOWER/UPPER/BOTH
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def from_bounds(cls, names: tuple[str, ...], bounds: list[tuple]) -> Transforms:
        """Validate ``(lo, hi)`` pairs (None or +-inf = open) and pick each transform."""
        kind, lo, hi = [], [], []
        for name, pair in zip(names, bounds, strict=True):
            try:
                a, b = pair
                a = -np.inf if a is None else float(a)
                b = np.inf if b is None else float(b)
            except (TypeError, ValueError):
                raise InvalidInput(
                    f"bounds of {name!r} must be a pair [lower, upper], not {pair!r}",
                    field=f"bounds.{name}",
                    fix="give two numbers; use null for an open side",
                ) from None
            if np.isnan(a) or np.isnan(b) or a >= b:
                raise InvalidInput(
                    f"bounds of {name!r} are inverted or empty: lower {a} >= upper {b}",
                    field=f"bounds.{name}",
                    fix="give lower < upper",
                )
            kind.append((a > -np.inf) + 2 * (b < np.inf))
            lo.append(a)
            hi.append(b)
        return cls(np.array(kind, dtype=np.int8), np.array(lo), np.array(hi))

    def inside(self, values: np.ndarray) -> np.ndarray:
        """True where `values` (``[..., p]``) lie strictly inside the bounds."""
        return (values > self.lo) & (values < self.hi)

    def to_theta(self, p: np.ndarray) -> np.ndarray:
        """Parameter values ``[..., p]`` -> unbounded filter variable."""
        k, lo, hi = self.kind, self.lo, self.hi
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(k == LOWER, np.log(p - lo), p)
            out = np.where(k == UPPER, -np.log(hi - p), out)
            frac = (p - lo) / (hi - lo)
            return np.where(k == BOTH, np.log(frac) - np.log1p(-frac), out)

    def to_param(self, theta: np.ndarray) -> np.ndarray:
        """Filter variable ``[..., p]`` -> parameter values (inside the bounds)."""
        out = np.array(theta, dtype=float)
        k, lo, hi = self.kind, self.lo, self.hi
        with np.errstate(over="ignore", invalid="ignore"):
            for code, fn in ((LOWER, _from_lower), (UPPER, _from_upper), (BOTH, _from_both)):
                cols = np.flatnonzero(k == code)
                if len(cols) == len(k):  # one kind for all: no gather/scatter
                    return fn(out, lo, hi)
                if len(cols):
                    out[..., cols] = fn(out[..., cols], lo[cols], hi[cols])
        return out

    def slope(self, p: np.ndarray) -> np.ndarray:
        """d theta / d param at `p` (to turn a prior std in parameter units into theta units)."""
        k, lo, hi = self.kind, self.lo, self.hi
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(k == LOWER, 1.0 / (p - lo), 1.0)
            out = np.where(k == UPPER, 1.0 / (hi - p), out)
            return np.where(k == BOTH, (hi - lo) / ((p - lo) * (hi - p)), out)

    def describe(self, m: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
        """Parameter-space summary of theta ~ N(m, s^2), per element of ``[..., p]``.

        * ``median`` = g^-1(m); ``lower``/``upper`` = g^-1(m -+ 1.96 s): the exact 2.5 % and 97.5 %
          quantiles (g is monotone), so the band holds 95 % of the posterior mass;
        * ``mean`` and ``std`` = mean and standard deviation of g^-1(theta): closed form for the
          log transform (log-normal), 24-point Gauss-Hermite quadrature for logit, m and s when
          unbounded.
        """
        out = {
            "median": self.to_param(m),
            "lower": self.to_param(m - Z95 * s),
            "upper": self.to_param(m + Z95 * s),
        }
        k = self.kind
        mean, std = np.array(m, dtype=float), np.array(s, dtype=float)
        with np.errstate(over="ignore", invalid="ignore"):
            s2 = s * s
            sign = np.where(k == UPPER, -1.0, 1.0)
            lognormal_mean = np.exp(sign * m + 0.5 * s2)
            lognormal_std = np.sqrt(np.expm1(s2)) * lognormal_mean
            one_sided = (k == LOWER) | (k == UPPER)
            mean = np.where(k == LOWER, self.lo + lognormal_mean, mean)
            mean = np.where(k == UPPER, self.hi - lognormal_mean, mean)
            std = np.where(one_sided, lognormal_std, std)
            if (k == BOTH).any():
                x = _GH_X.reshape((-1,) + (1,) * np.ndim(m))
                w = _GH_W.reshape(x.shape)
                nodes = self.to_param(m + s * x)  # [24, ..., p]
                mu = (w * nodes).sum(0)
                var = (w * (nodes - mu) ** 2).sum(0)
                mean = np.where(k == BOTH, mu, mean)
                std = np.where(k == BOTH, np.sqrt(var), std)
        out["mean"], out["std"] = mean, std
        return out


def _from_lower(theta: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    out = np.exp(theta, out=theta)
    if lo.any():
        out += lo
    return out


def _from_upper(theta: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return hi - np.exp(-theta)


def _from_both(theta: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo + (hi - lo) / (1.0 + np.exp(-theta))
