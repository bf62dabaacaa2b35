"""A what-if request as data: which twins, how far ahead, and how each input behaves.

`parse_request` checks the body's shape; `input_grid` turns one input's description into its
value per model step for every twin (the scenario), given the twins' current values.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from livetwin.errors import InvalidInput
from livetwin.spec import parse_model
from livetwin.timefmt import parse_duration

MAX_TWINS = 1_000
MAX_MODEL_STEPS = 100_000  # per twin
MAX_POINTS = 10_000  # reported points per twin
MAX_TWIN_STEPS = 2_000_000  # twins x model steps: a scenario's work
MAX_STORED_POINTS = 200_000  # twins x reported points: a scenario's stored result
MAX_SERIES_VALUES = 100_000

Offset = float | str  # seconds after the scenario's start, or a duration such as '5m'


class _Kind(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Constant(_Kind):
    """The input holds `value` over the whole horizon."""

    kind: Literal["constant"]
    value: float


class _Change(_Kind):
    """A new level: `to` (absolute), `by` (added) or `factor` (times the current value)."""

    to: float | None = None
    by: float | None = None
    factor: float | None = None

    @model_validator(mode="after")
    def _one_target(self):
        given = [k for k in ("to", "by", "factor") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of to, by, factor")
        return self

    def target(self, current: np.ndarray) -> np.ndarray:
        if self.to is not None:
            return np.full_like(current, self.to)
        if self.by is not None:
            return current + self.by
        return current * self.factor


class Step(_Change):
    """The current value until `at`, then the new level."""

    kind: Literal["step"]
    at: Offset = 0


class Ramp(_Change):
    """The current value until `at`, then a straight line to the new level over `over`."""

    kind: Literal["ramp"]
    at: Offset = 0
    over: Offset


class Schedule(_Kind):
    """Values at offsets, held (or interpolated) between them; the current value before."""

    kind: Literal["schedule"]
    points: list[tuple[Offset, float]] = Field(min_length=1, max_length=MAX_SERIES_VALUES)
    interpolate: Literal["hold", "linear"] = "hold"


class Recorded(_Kind):
    """The twin's own recorded values of the input in [from, to), replayed from the start
    (aligned on the model step, last value per step, carried forward; the last value is held
    after the window ends), times `scale` plus `offset`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    kind: Literal["recorded"]
    start: float | str = Field(alias="from")
    end: float | str = Field(alias="to")
    scale: float = 1.0
    offset: float = 0.0


class Series(_Kind):
    """Uploaded values, one per `every` from the start; the last value is held after them."""

    kind: Literal["series"]
    values: list[float] = Field(min_length=1, max_length=MAX_SERIES_VALUES)
    every: Offset | None = None  # default: the model step


InputSpec = Annotated[
    Constant | Step | Ramp | Schedule | Recorded | Series, Field(discriminator="kind")
]


class TwinFilter(BaseModel):
    """Twins chosen by type, parent and a `where` expression over their current values."""

    model_config = ConfigDict(extra="forbid")
    type: str
    parent: str | None = None
    where: str | None = None


class ScenarioRequest(BaseModel):
    """The body of `POST /api/scenarios`."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("", max_length=200)
    twins: list[str] | TwinFilter
    horizon: Offset
    step: Offset | None = None  # reported every; default: the model step
    inputs: dict[str, InputSpec] = Field(default_factory=dict)


def parse_request(body: Any) -> ScenarioRequest:
    """The request's shape checked (names and ranges are checked against the twins later)."""
    if not isinstance(body, dict):
        raise InvalidInput(
            "a scenario must be a JSON object",
            field="body",
            fix='e.g. {"twins": ["line-1"], "horizon": "10m", "inputs": {"brake_torque": '
            '{"kind": "step", "at": "1m", "factor": 1.2}}}',
        )
    request = parse_model(ScenarioRequest, body, what="scenario")
    if isinstance(request.twins, list) and not 1 <= len(request.twins) <= MAX_TWINS:
        raise InvalidInput(
            f"name 1 to {MAX_TWINS} twins",
            field="twins",
            fix="list twin ids, or choose them with a filter {type, parent, where}",
        )
    return request


def offset_ms(value: Offset, field: str) -> int:
    """Milliseconds of an offset: a number of seconds (>= 0) or a duration string."""
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            if value.strip() in ("0", "0s", "0ms"):
                return 0
            raise InvalidInput(str(exc), field=field, fix="e.g. '90s', '5m' or 300") from None
    if not np.isfinite(value) or value < 0 or value > 10 * 365 * 86_400:
        raise InvalidInput(
            f"{value} is not an offset in seconds (0 to 10 years)",
            field=field,
            fix="a number of seconds >= 0, or a duration such as '5m'",
        )
    return round(value * 1000)


def input_grid(
    spec: Constant | Step | Ramp | Schedule | Series,
    current: np.ndarray,
    steps: int,
    dt_ms: int,
    field: str,
) -> np.ndarray:
    """Values ``[steps, N]`` of one input for N twins: step k is held over
    ``[start + k dt, start + (k+1) dt)``. (Recorded inputs come from history: `recorded_grid`.)"""
    t = np.arange(steps, dtype=float) * dt_ms  # each step's start, ms after the scenario start
    n = len(current)
    if isinstance(spec, Constant):
        return np.full((steps, n), spec.value)
    if isinstance(spec, Step):
        after = t >= offset_ms(spec.at, f"{field}.at")
        return np.where(after[:, None], spec.target(current)[None, :], current[None, :])
    if isinstance(spec, Ramp):
        at = offset_ms(spec.at, f"{field}.at")
        over = max(offset_ms(spec.over, f"{field}.over"), 1)
        share = np.clip((t - at) / over, 0.0, 1.0)[:, None]
        return current[None, :] + share * (spec.target(current) - current)[None, :]
    if isinstance(spec, Schedule):
        at = np.array([offset_ms(p[0], f"{field}.points") for p in spec.points], dtype=float)
        values = np.array([p[1] for p in spec.points])
        if np.any(np.diff(at) <= 0):
            raise InvalidInput(
                "schedule points must be in increasing time order",
                field=f"{field}.points",
                fix="sort the points by their offset, each offset once",
            )
        if spec.interpolate == "linear":
            line = np.interp(t, at, values)
        else:
            line = values[np.maximum(np.searchsorted(at, t, side="right") - 1, 0)]
        before = t < at[0]
        return np.where(before[:, None], current[None, :], line[:, None])
    if isinstance(spec, Series):
        every = dt_ms if spec.every is None else offset_ms(spec.every, f"{field}.every")
        if every <= 0:
            raise InvalidInput("every must be positive", field=f"{field}.every", fix="e.g. '1s'")
        index = np.minimum((t // every).astype(np.int64), len(spec.values) - 1)
        return np.repeat(np.asarray(spec.values, float)[index][:, None], n, axis=1)
    raise TypeError(f"no grid for {type(spec).__name__}")


def recorded_grid(
    ts: np.ndarray, values: np.ndarray, start: int, steps: int, dt_ms: int
) -> np.ndarray | None:
    """One twin's recorded values (times `ts`, from `start` on) as ``[steps]`` per model step
    (steps of the epoch grid, as calibration aligns them, from the one holding `start`): the
    last value in each step, carried forward, the last one held; None without any."""
    if len(ts) == 0:
        return None
    slot = ts // dt_ms - start // dt_ms
    keep = slot < steps
    slot, values = slot[keep], values[keep]
    out = np.full(steps, np.nan)
    out[slot] = values  # later rows overwrite earlier ones: the last value per step
    known = np.where(~np.isnan(out), np.arange(steps), -1)
    last = np.maximum.accumulate(known)
    first = int(np.flatnonzero(known >= 0)[0])
    return out[np.where(last < 0, first, last)]
