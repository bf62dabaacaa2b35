"""Which filter runs a calibration: the estimator (UKF or EnKF) and the array backend (NumPy, the
reference, or the compiled JAX step), chosen here and nowhere else.

The default backend is ``jax`` when JAX is installed (``pip install 'livetwin[jax]'``), the
estimator is the UKF and the model is written against the array namespace (``array_api``);
otherwise ``numpy``. Asking for ``jax`` where it cannot run is an error that says why.
"""

from __future__ import annotations

import importlib.util

from livetwin.calibrate.batch import BatchFilter
from livetwin.calibrate.enkf import BatchEnKF
from livetwin.calibrate.spec import CalibrationSpec
from livetwin.calibrate.ukf import BatchUKF
from livetwin.errors import InvalidInput
from livetwin.models.base import resolve_model

BACKENDS = ("numpy", "jax")
ESTIMATORS = {"ukf": BatchUKF, "enkf": BatchEnKF}


def jax_installed() -> bool:
    """True when the optional JAX extra is importable (without importing it)."""
    return importlib.util.find_spec("jax") is not None


def choose_backend(model, estimator: str = "ukf", backend: str | None = None) -> str:
    """The backend a calibration of `model` runs on: `backend` when given (checked), else the
    default (see the module docstring)."""
    if backend is None:
        fits = estimator == "ukf" and resolve_model(model).array_api
        return "jax" if fits and jax_installed() else "numpy"
    if backend not in BACKENDS:
        raise InvalidInput(
            f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}",
            field="backend",
            fix="use numpy or jax (or leave it out for the default)",
        )
    if backend == "jax" and estimator != "ukf":
        raise InvalidInput(
            f"the jax backend runs the UKF only, not the {estimator}",
            field="backend",
            fix="use estimator ukf, or backend numpy",
        )
    if backend == "jax" and not resolve_model(model).array_api:
        raise InvalidInput(
            f"model {resolve_model(model).name!r} is NumPy-only: the jax backend needs a model "
            "written against the array namespace",
            field="backend",
            fix="use backend numpy, or port the model (@model(..., array_api=True), "
            "see livetwin.models.xp)",
        )
    if backend == "jax" and not jax_installed():
        raise InvalidInput(
            "the jax backend needs JAX, which is not installed here",
            field="backend",
            fix="pip install 'livetwin[jax]', or use backend numpy",
        )
    return backend


def make_filter(
    spec: CalibrationSpec,
    n_twins: int,
    *,
    estimator: str = "ukf",
    backend: str | None = None,
    precision: str = "float64",
    **options,
) -> BatchFilter:
    """The batched filter for `spec` and `n_twins` twins; `options` go to its constructor."""
    if estimator not in ESTIMATORS:
        raise InvalidInput(
            f"estimator must be one of {', '.join(ESTIMATORS)}, not {estimator!r}",
            field="estimator",
            fix="use ukf or enkf",
        )
    chosen = choose_backend(spec.model, estimator, backend)
    if chosen == "jax":
        from livetwin.calibrate.compiled import CompiledUKF  # JAX is imported on first use

        options.pop("executor", None)  # XLA runs the chunks (on threads), not a process pool
        return CompiledUKF(spec, n_twins, precision=precision, **options)
    if precision != "float64":
        raise InvalidInput(
            f"precision {precision} needs the jax backend; NumPy filters run in float64",
            field="precision",
            fix="use backend jax, or precision float64",
        )
    return ESTIMATORS[estimator](spec, n_twins, **options)
