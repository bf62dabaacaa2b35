"""What to calibrate: the model, measured outputs, priors, bounds and noise, checked and compiled
into per-twin arrays that the batched filters share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from livetwin.calibrate.noise import noise_matrix
from livetwin.calibrate.transforms import Transforms
from livetwin.errors import InvalidInput
from livetwin.models.base import Bounds, Model, resolve_model

ArrayLike = float | Sequence[float] | np.ndarray


@dataclass(frozen=True)
class CalibrationSpec:
    """A calibration problem, by names.

    * `measured`: model outputs that sensors measure; every other output is a virtual sensor.
    * `prior`: ``name -> (mean, std)`` in the variable's own units, for each parameter to
      calibrate and for each dynamic state of a transient model (its initial value). Values may
      be scalars or arrays of one value per twin. For a bounded parameter the std is converted
      with the transform's slope at the mean (for a log transform: the relative std ``std/mean``).
    * `fixed`: values of the model parameters that are not calibrated (scalar or per twin).
    * `bounds`: ``name -> (lower, upper)`` (None = open); overrides the model's own bounds.
      Bounds pick the transform (see `livetwin.calibrate.transforms`).
    * `process_noise`: ``name -> std per step`` (a missing name has none), or a covariance
      ``[n,n]``/``[N,n,n]`` in filter-variable order (parameters, then states). For a parameter
      the std is of its *transformed* value: for a log-transformed parameter 0.01 means a random
      walk of about 1 % per step. For a state it is in the state's units.
    * `meas_noise`: ``name -> std`` per measured output, or a covariance ``[m,m]``/``[N,m,m]``.
      None: estimated from the data per twin (`livetwin.calibrate.noise`).
    """

    model: str | Model | Callable
    measured: Sequence[str]
    prior: Mapping[str, tuple[ArrayLike, ArrayLike]]
    fixed: Mapping[str, ArrayLike] = field(default_factory=dict)
    bounds: Mapping[str, Bounds] = field(default_factory=dict)
    process_noise: Mapping[str, ArrayLike] | np.ndarray | None = None
    meas_noise: Mapping[str, ArrayLike] | np.ndarray | None = None


@dataclass
class Plan:
    """A `CalibrationSpec` compiled for N twins: indices, transforms and per-twin arrays."""

    model: Model
    n_twins: int
    params: tuple[str, ...]  # calibrated parameters
    cal_idx: np.ndarray  # their columns in the model's params
    fixed_idx: np.ndarray
    fixed: np.ndarray  # [N, n_fixed]
    tf: Transforms
    names: tuple[str, ...]  # filter variables: calibrated params then states
    meas_idx: np.ndarray  # measured columns among the model's outputs
    prior_mean: np.ndarray  # [N, n] (transformed)
    prior_cov: np.ndarray  # [N, n, n]
    q: np.ndarray | None  # [N, n, n] or None when there is no process noise
    r: np.ndarray | None  # [N, m, m] or None: estimated from data

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def n_params(self) -> int:
        return len(self.params)

    @property
    def measured(self) -> tuple[str, ...]:
        return tuple(self.model.outputs[i] for i in self.meas_idx)


def compile_spec(spec: CalibrationSpec, n_twins: int) -> Plan:
    """Check `spec` against its model and build the per-twin arrays for `n_twins` twins."""
    if int(n_twins) < 1:
        raise InvalidInput("n_twins must be at least 1", field="n_twins", fix="pass n_twins >= 1")
    n = int(n_twins)
    model = resolve_model(spec.model)
    measured = [spec.measured] if isinstance(spec.measured, str) else list(spec.measured)
    if not measured:
        raise InvalidInput(
            "no measured outputs: a filter needs at least one measurement to calibrate from",
            field="measured",
            fix=f"name at least one of {', '.join(model.outputs)}",
        )
    if len(set(measured)) != len(measured):
        raise InvalidInput("measured outputs repeat", field="measured", fix="list each once")
    meas_idx = np.array(model.index("outputs", measured))

    prior, fixed = dict(spec.prior), dict(spec.fixed)
    unknown = [k for k in [*prior, *fixed] if k not in model.params and k not in model.states]
    if unknown:
        raise InvalidInput(
            f"model {model.name!r} has no parameter or state {unknown[0]!r}",
            field=f"prior.{unknown[0]}" if unknown[0] in prior else f"fixed.{unknown[0]}",
            fix=f"parameters: {', '.join(model.params)}; states: {', '.join(model.states) or '-'}",
        )
    for name in model.params:
        if (name in prior) == (name in fixed):
            which = "both a prior and" if name in prior else "neither a prior nor"
            raise InvalidInput(
                f"parameter {name!r} has {which} a fixed value",
                field=f"prior.{name}",
                fix="give each parameter either a prior (to calibrate it) or a fixed value",
            )
    missing_states = [s for s in model.states if s not in prior]
    if missing_states:
        raise InvalidInput(
            f"state {missing_states[0]!r} of transient model {model.name!r} has no prior",
            field=f"prior.{missing_states[0]}",
            fix="give (initial value, std) for every dynamic state",
        )
    fixed_in_states = [s for s in fixed if s in model.states]
    if fixed_in_states:
        raise InvalidInput(
            f"{fixed_in_states[0]!r} is a state and cannot be fixed",
            field=f"fixed.{fixed_in_states[0]}",
            fix="give states a prior (initial value, std)",
        )
    bad_bounds = [k for k in spec.bounds if k not in model.params]
    if bad_bounds:
        raise InvalidInput(
            f"bounds given for {bad_bounds[0]!r}, which is not a parameter of {model.name!r}",
            field=f"bounds.{bad_bounds[0]}",
            fix=f"bounds apply to parameters: {', '.join(model.params)}",
        )

    params = tuple(p for p in model.params if p in prior)
    names = params + model.states
    bounds = {**model.bounds, **spec.bounds}
    tf = Transforms.from_bounds(params, [bounds.get(p, (None, None)) for p in params])
    mean = np.empty((n, len(names)))
    std = np.empty((n, len(names)))
    for j, name in enumerate(names):
        mean[:, j], std[:, j] = _prior(prior[name], n, name)
    pm = mean[:, : len(params)]
    inside = tf.inside(pm)
    if not inside.all():
        j = int(np.argwhere(~inside)[0][1])
        raise InvalidInput(
            f"prior mean of {params[j]!r} lies outside its bounds ({tf.lo[j]}, {tf.hi[j]})",
            field=f"prior.{params[j]}",
            fix="move the prior mean strictly inside the bounds",
        )
    std[:, : len(params)] *= np.abs(tf.slope(pm))
    mean[:, : len(params)] = tf.to_theta(pm)
    prior_cov = np.zeros((n, len(names), len(names)))
    idx = np.arange(len(names))
    prior_cov[:, idx, idx] = std * std

    fixed_names = [p for p in model.params if p in fixed]
    fixed_arr = np.empty((n, len(fixed_names)))
    for j, name in enumerate(fixed_names):
        fixed_arr[:, j] = _per_twin(fixed[name], n, f"fixed.{name}")
    return Plan(
        model=model,
        n_twins=n,
        params=params,
        cal_idx=np.array(model.index("params", params), dtype=int),
        fixed_idx=np.array(model.index("params", fixed_names), dtype=int),
        fixed=fixed_arr,
        tf=tf,
        names=names,
        meas_idx=meas_idx,
        prior_mean=mean,
        prior_cov=prior_cov,
        q=_process_noise(spec.process_noise, names, n),
        r=_meas_noise(spec.meas_noise, tuple(measured), n),
    )


def _per_twin(value: ArrayLike, n: int, fld: str) -> np.ndarray:
    a = np.asarray(value, dtype=float)
    if a.ndim > 1 or (a.ndim == 1 and len(a) not in (1, n)):
        raise InvalidInput(
            f"{fld} must be a number or one number per twin ({n}), got shape {a.shape}",
            field=fld,
            fix=f"pass a scalar or {n} values",
        )
    if not np.all(np.isfinite(a)):
        raise InvalidInput(f"{fld} must be finite", field=fld, fix="replace NaN/inf values")
    return np.broadcast_to(a, (n,))


def _prior(value: object, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        mean, std = value  # type: ignore[misc]
    except (TypeError, ValueError):
        raise InvalidInput(
            f"prior of {name!r} must be a pair (mean, std)",
            field=f"prior.{name}",
            fix="give [mean, std] in the variable's units",
        ) from None
    mean, std = _per_twin(mean, n, f"prior.{name}"), _per_twin(std, n, f"prior.{name}")
    if np.any(std <= 0):
        raise InvalidInput(
            f"prior std of {name!r} must be positive",
            field=f"prior.{name}",
            fix="give a positive std (how unsure you are of the initial value)",
        )
    return mean, std


def _process_noise(value: object, names: tuple[str, ...], n: int) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in names]
        if unknown:
            raise InvalidInput(
                f"process noise given for {unknown[0]!r}, which is not a filter variable",
                field=f"process_noise.{unknown[0]}",
                fix=f"use one of {', '.join(names)}",
            )
        std = np.zeros((n, len(names)))
        for j, name in enumerate(names):
            if name in value:
                std[:, j] = _per_twin(value[name], n, f"process_noise.{name}")
        value = std
    q = noise_matrix(value, n, len(names), "process_noise", strict=False)
    return q if q.any() else None


def _meas_noise(value: object, measured: tuple[str, ...], n: int) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        missing = [k for k in measured if k not in value]
        extra = [k for k in value if k not in measured]
        if missing or extra:
            name = (missing or extra)[0]
            raise InvalidInput(
                f"measurement noise {'missing' if missing else 'given'} for {name!r}"
                + ("" if missing else ", which is not measured"),
                field=f"meas_noise.{name}",
                fix=f"give one std for each measured output: {', '.join(measured)}",
            )
        value = np.stack([_per_twin(value[k], n, f"meas_noise.{k}") for k in measured], axis=1)
    return noise_matrix(value, n, len(measured), "meas_noise", strict=True)
