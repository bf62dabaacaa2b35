"""The persisted state of a batched filter: plain arrays, so it can be saved with `np.savez`.

Variables are the transformed parameters (see `transforms`) followed by the model's dynamic
states, in the order of `names`. A restored state continues bit for bit where it stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np

from livetwin.errors import InvalidInput

FORMAT = 1

FAILURE_REASONS = {
    0: "ok",
    1: "the model returned non-finite values",
    2: "the covariance lost positive definiteness",
    3: "the innovation covariance was not positive definite",
    4: "measurements were rejected as outliers too many steps in a row",
}


@dataclass
class FilterState:
    """Mean ``[N,n]`` and covariance ``[N,n,n]`` of N twins, plus bookkeeping.

    `failed` is sticky: True once a twin has been reset (restarted from its prior covariance,
    see `BatchFilter._reset`); `reason` is the code of its last failure in `FAILURE_REASONS`;
    `rejects` counts consecutive outlier-gated updates. `noise_*` hold the
    running measurement-noise estimate when none was configured (`livetwin.calibrate.noise`:
    the second-difference bootstrap in `noise_var`/`_count`/`_hist`, the innovations'
    covariance matching in `noise_sum`/`noise_weight`); `ensemble` the members of an
    ensemble filter; `fit_*` the window of the model-fit check (`livetwin.calibrate.fit`).
    """

    mean: np.ndarray
    cov: np.ndarray
    names: tuple[str, ...]
    model: str
    kind: str = "ukf"
    t: float = float("nan")
    steps: int = 0
    type_version: int = 0
    failed: np.ndarray = field(default=None)  # type: ignore[assignment]
    reason: np.ndarray = field(default=None)  # type: ignore[assignment]
    rejects: np.ndarray = field(default=None)  # type: ignore[assignment]
    noise_var: np.ndarray | None = None
    noise_count: np.ndarray | None = None
    noise_hist: np.ndarray | None = None
    noise_sum: np.ndarray | None = None
    noise_weight: np.ndarray | None = None
    ensemble: np.ndarray | None = None
    fit_nis: np.ndarray | None = None
    fit_dof: np.ndarray | None = None
    fit_e: np.ndarray | None = None
    fit_count: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.mean)
        if self.failed is None:
            self.failed = np.zeros(n, dtype=bool)
        if self.reason is None:
            self.reason = np.zeros(n, dtype=np.int8)
        if self.rejects is None:
            self.rejects = np.zeros(n, dtype=np.int32)
        self.names = tuple(self.names)

    @property
    def n_twins(self) -> int:
        return len(self.mean)

    def copy(self) -> FilterState:
        """A deep copy (arrays copied)."""
        return replace(
            self,
            **{f.name: getattr(self, f.name).copy() for f in fields(self) if _is_array(self, f)},
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain NumPy arrays (no pickles): ``np.savez(path, **state.to_arrays())``."""
        out = {"format": np.array(FORMAT)}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = np.array(list(value) if f.name == "names" else value)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> FilterState:
        """Inverse of `to_arrays` (accepts the mapping `np.load` returns)."""
        fmt = int(arrays["format"]) if "format" in arrays else None
        if fmt != FORMAT:
            raise InvalidInput(
                f"filter state format {fmt} is not supported (expected {FORMAT})",
                field="format",
                fix="re-initialise the filter",
            )
        kw: dict = {}
        for f in fields(cls):
            if f.name not in arrays:
                continue
            value = np.asarray(arrays[f.name])
            if f.name == "names":
                kw[f.name] = tuple(str(v) for v in value)
            elif f.name in ("model", "kind"):
                kw[f.name] = str(value)
            elif f.name == "t":
                kw[f.name] = float(value)
            elif f.name in ("steps", "type_version"):
                kw[f.name] = int(value)
            else:
                kw[f.name] = np.array(value)
        return cls(**kw)


def _is_array(state: FilterState, f) -> bool:
    return isinstance(getattr(state, f.name), np.ndarray)
