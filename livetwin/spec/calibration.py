"""The `model` and `calibration` sections of a twin type: which physics model the twin runs, which
parameters it calibrates, and which virtual sensors it publishes (with uncertainty bands).

Names are matched one to one: a model parameter is the type parameter of the same name, a model
input is the property (or parameter) of the same name, a model output with the name of a
property is *measured*; every other output is a *virtual sensor*.

The model itself is found by the caller's `resolve_model` (`livetwin.models.resolve_model`):
spec only reads the names a model declares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from livetwin.errors import InvalidInput
from livetwin.spec.rules import Rule
from livetwin.timefmt import parse_duration

BAND_SUFFIXES = ("_std", "_lower", "_upper")
# Calibration settings added after types were first stored: left out of the stored form at their
# defaults, so an unchanged type re-declared after an upgrade keeps its version.
LATER_DEFAULTS = {"publish_every": 1, "model_fit_alarm": False, "model_fit_window": 30}
FIT_VALUES = ("nis", "model_fit")  # published per twin by every calibration (calibrate/fit.py)
MODEL_FIT_RULE = "model_no_longer_fits"


class ModelNames(Protocol):
    """What a type version needs of its model: the names of its columns (`models.Model`)."""

    name: str
    params: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    states: tuple[str, ...]


ModelResolver = Callable[[str], ModelNames]  # `ref` -> model; raises InvalidInput


class ModelSection(BaseModel):
    """`model:` -- the physics model, referenced by name."""

    model_config = ConfigDict(extra="forbid")

    ref: str = Field(
        description="'package.module:function' of a vectorised model, or "
        "'fmu:path/to/model.fmu[?options]' (see docs/fmu.md)"
    )
    dt: str = Field("1s", description="the model/filter step; measurements are aligned on it")
    virtual: list[str] | None = Field(
        None, description="outputs to publish as virtual sensors (default: all unmeasured)"
    )
    units: dict[str, str] = Field(
        default_factory=dict, description="units of virtual sensors, e.g. {T1: N}"
    )


class CalibrationSection(BaseModel):
    """`calibration:` -- how the model's parameters follow the measurements."""

    model_config = ConfigDict(extra="forbid")

    parameters: list[str] | None = Field(
        None, description="parameters to calibrate (default: those with calibrate: true)"
    )
    estimator: Literal["ukf", "enkf"] = "ukf"
    every: str | None = Field(None, description="run on this interval, e.g. '10m'")
    continuous: bool = Field(False, description="run within a second of new measurements")
    prior_std: dict[str, float] = Field(
        default_factory=dict, description="std of a parameter's initial guess (default 30 %)"
    )
    process_noise: dict[str, float] = Field(
        default_factory=dict,
        description="random-walk std per step of a parameter (relative for positive ones)",
    )
    measurement_noise: dict[str, float] = Field(
        default_factory=dict, description="std of a measured output (default: from the data)"
    )
    state_prior: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="(initial value, std) of a model state that is not measured",
    )
    backend: Literal["numpy", "jax"] | None = Field(
        None,
        description="numpy, or jax: the UKF step compiled (pip install 'livetwin[jax]'); "
        "default jax when installed and the model supports it (see docs/calibration-backends.md)",
    )
    precision: Literal["float64", "float32"] = Field(
        "float64", description="float32 runs faster on the jax backend, at an accuracy cost"
    )
    publish_every: int = Field(
        1, ge=1, description="publish every k-th filter step (and a run's last); 1: every step"
    )
    model_fit_alarm: bool = Field(
        False,
        description="raise the built-in alarm 'model_no_longer_fits' when model_fit is 0 "
        "(see docs/calibration.md)",
    )
    model_fit_window: int = Field(
        30, ge=5, le=10_000, description="filter steps the model-fit check looks back over"
    )
    min_steps: int = Field(5, ge=1, description="fewer aligned rows than this is too little data")
    workers: int = Field(0, ge=0, le=64, description="processes for large fleets (0: this one)")


@dataclass(frozen=True)
class CalibrationPlan:
    """The checked model and calibration sections of one type version."""

    model: ModelNames  # a `livetwin.models.Model`
    dt_ms: int
    parameters: tuple[str, ...]  # calibrated
    measured: tuple[str, ...]  # model outputs that are properties of the type
    virtual: tuple[str, ...]  # model outputs published as virtual sensors
    section: CalibrationSection

    @property
    def published(self) -> tuple[str, ...]:
        """Columns calibration adds to the type: bands of parameters, virtual sensors and bands."""
        bands = tuple(p + s for p in self.parameters for s in BAND_SUFFIXES)
        virtual = tuple(v + s for v in self.virtual for s in ("", *BAND_SUFFIXES))
        return bands + virtual + FIT_VALUES

    def rules(self) -> dict:
        """The built-in rules `calibration` adds to the type (``model_fit_alarm: true``)."""
        if not self.section.model_fit_alarm:
            return {}
        rule = Rule(
            when="model_fit < 0.5",
            clear="model_fit > 0.5",
            severity="warning",
            message="{twin}: the model no longer explains the measurements "
            "(mean NIS {nis:.2f} over the window, 1 when it fits)",
            description="built in: calibration.model_fit_alarm (docs/calibration.md)",
        )
        return {MODEL_FIT_RULE: rule}


def plan_calibration(
    model_section: ModelSection,
    calibration: CalibrationSection | None,
    properties: dict,
    parameters: dict,
    resolve_model: ModelResolver,
) -> CalibrationPlan:
    """Resolve the model and check every name against it and the type; errors name the field."""
    try:
        model = resolve_model(model_section.ref)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field="model.ref", fix=exc.fix) from None
    try:
        dt_ms = parse_duration(model_section.dt)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="model.dt", fix="e.g. dt: 1s") from None
    calibration = calibration or CalibrationSection()
    if calibration.every is not None:
        try:
            parse_duration(calibration.every)
        except ValueError as exc:
            raise InvalidInput(str(exc), field="calibration.every", fix="e.g. every: 10m") from None
    _check_backend(model, calibration)
    for name in model.params:
        _require(name in parameters, "model.ref", f"model parameter '{name}'", "parameters")
    for name in model.inputs:
        known = name in properties or name in parameters
        _require(known, "model.ref", f"model input '{name}'", "properties")
    measured = tuple(o for o in model.outputs if o in properties)
    if not measured:
        raise InvalidInput(
            f"none of the model's outputs ({', '.join(model.outputs)}) is a property of the type",
            field="model.ref",
            fix="declare the measured outputs as properties with the same names",
        )
    unmeasured = tuple(o for o in model.outputs if o not in properties)
    virtual = unmeasured if model_section.virtual is None else tuple(model_section.virtual)
    for name in virtual:
        _require(name in unmeasured, "model.virtual", f"virtual sensor '{name}'", "")
    for name in model_section.units:
        _require(name in virtual, "model.units", f"virtual sensor '{name}'", "")
    chosen = calibration.parameters
    if chosen is None:
        chosen = [p for p, spec in parameters.items() if spec.calibrate]
    for name in chosen:
        _require(name in model.params, "calibration.parameters", f"parameter '{name}'", "")
    if not chosen:
        raise InvalidInput(
            "nothing to calibrate",
            field="calibration.parameters",
            fix="mark parameters with calibrate: true or list them in calibration.parameters",
        )
    for name, value in calibration.prior_std.items():
        _require(name in chosen, "calibration.prior_std", f"'{name}'", "")
        _positive(value, f"calibration.prior_std.{name}")
    for name, value in calibration.process_noise.items():
        known = name in chosen or name in model.states
        _require(known, "calibration.process_noise", f"'{name}'", "")
        _positive(value, f"calibration.process_noise.{name}")
    for name, (_, std) in calibration.state_prior.items():
        _require(name in model.states, "calibration.state_prior", f"state '{name}'", "")
        _positive(std, f"calibration.state_prior.{name}")
    for name in model.states:
        if name not in measured and name not in calibration.state_prior:
            raise InvalidInput(
                f"state '{name}' of the model is not measured, so it needs an initial guess",
                field=f"calibration.state_prior.{name}",
                fix=f"add state_prior: {{{name}: [initial value, std]}}",
            )
    for name, value in calibration.measurement_noise.items():
        _require(name in measured, "calibration.measurement_noise", f"'{name}'", "")
        _positive(value, f"calibration.measurement_noise.{name}")
    return CalibrationPlan(model, dt_ms, tuple(chosen), measured, virtual, calibration)


def _check_backend(model: ModelNames, calibration: CalibrationSection) -> None:
    """The jax backend runs the UKF of a model written against the array namespace; float32
    exists on that backend only."""
    if calibration.backend == "jax" and calibration.estimator != "ukf":
        raise InvalidInput(
            f"the jax backend runs the UKF only, not the {calibration.estimator}",
            field="calibration.backend",
            fix="use estimator: ukf, or backend: numpy",
        )
    if calibration.backend == "jax" and not getattr(model, "array_api", False):
        raise InvalidInput(
            f"model {model.name!r} is NumPy-only: the jax backend needs a model written "
            "against the array namespace",
            field="calibration.backend",
            fix="use backend: numpy, or declare the model with @model(..., array_api=True) "
            "(see livetwin.models.xp)",
        )
    if calibration.precision == "float32" and calibration.backend == "numpy":
        raise InvalidInput(
            "precision float32 needs the jax backend; NumPy filters run in float64",
            field="calibration.precision",
            fix="use backend: jax, or precision: float64",
        )


def _require(ok: bool, field: str, what: str, where: str) -> None:
    if not ok:
        place = f"declare it in {where} of the type" if where else "use a name the model has"
        raise InvalidInput(f"{what} is not known here", field=field, fix=place)


def _positive(value: float, field: str) -> None:
    if not value > 0:
        raise InvalidInput(
            f"{value} is not positive: a noise or prior std must be > 0",
            field=field,
            fix="give a positive standard deviation",
        )
