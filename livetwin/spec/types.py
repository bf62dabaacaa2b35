"""Twin types as data: properties, parameters, derived values and allowed children.

`TwinTypeSpec` is what a user writes (JSON or YAML); `compile_type` checks it and compiles its
derived expressions once per version into a `CompiledType` that the engine runs.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from livetwin.errors import InvalidInput, excerpt
from livetwin.expr import RESERVED_NAMES, AggregateSpec, Compiled, compile_expression
from livetwin.namespaces import owner_namespace
from livetwin.spec import parse_model
from livetwin.spec.calibration import (
    LATER_DEFAULTS,
    CalibrationPlan,
    CalibrationSection,
    ModelResolver,
    ModelSection,
    plan_calibration,
)
from livetwin.spec.commands import CommandSection
from livetwin.spec.retention import Retention
from livetwin.spec.rules import CompiledRule, Rule, compile_rules
from livetwin.timefmt import parse_duration

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
TYPE_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Property(_Strict):
    """A measured quantity (telemetry). Values outside [min, max] are rejected at ingest."""

    unit: str = ""
    min: float | None = None
    max: float | None = None
    description: str = ""

    @model_validator(mode="after")
    def _range_ordered(self) -> Property:
        _no_nan_bounds(self.min, self.max)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max}): swap them")
        return self


def _no_nan_bounds(low: float | None, high: float | None) -> None:
    for bound, value in (("min", low), ("max", high)):
        if value is not None and math.isnan(value):
            raise ValueError(f"{bound} is NaN: give a number, or leave {bound} out for no bound")


class Parameter(_Strict):
    """A constant or a to-be-calibrated model parameter, with its initial value and bounds."""

    value: float
    min: float | None = None
    max: float | None = None
    unit: str = ""
    calibrate: bool = False
    description: str = ""

    @model_validator(mode="after")
    def _bounds(self) -> Parameter:
        _no_nan_bounds(self.min, self.max)
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"bounds inverted: min ({self.min}) must be below max ({self.max})")
        if not math.isfinite(self.value):
            raise ValueError("value must be a finite number")
        if (self.min is not None and self.value < self.min) or (
            self.max is not None and self.value > self.max
        ):
            raise ValueError(f"value {self.value} lies outside [min, max]")
        return self


class Derived(_Strict):
    """A value computed from properties, parameters and other derived values."""

    expr: str
    unit: str = ""
    description: str = ""


class Attribute(_Strict):
    """A text attribute of a twin (serial number, location, a status enum): set by ingest or
    PATCH /api/twins/{id}, kept beside the numeric columns, usable in `where` and rules."""

    type: Literal["string", "enum"] = "string"
    values: list[str] | None = Field(None, description="the allowed values of an enum")
    max_length: int = Field(256, ge=1, le=4096)
    description: str = ""

    @model_validator(mode="after")
    def _enum_values(self) -> Attribute:
        if self.type == "enum" and not self.values:
            raise ValueError("an enum needs values: give values: [auto, manual]")
        if self.type == "string" and self.values is not None:
            raise ValueError("values belong to an enum: write type: enum, or drop values")
        return self

    def check(self, name: str, value: object) -> str:
        """`value` as this attribute's value; ValueError naming the fix when it is not one."""
        if not isinstance(value, str):
            raise ValueError(f"attribute '{name}' takes a string, not {excerpt(value, 40)}")
        if self.values is not None and value not in self.values:
            raise ValueError(
                f"{excerpt(value, 40)} is not a value of enum '{name}' "
                f"(allowed: {', '.join(self.values)})"
            )
        if len(value) > self.max_length:
            raise ValueError(
                f"attribute '{name}' is {len(value)} characters long (max {self.max_length})"
            )
        return value

    def fix(self) -> str:
        """How to send a valid value."""
        if self.values is not None:
            return f"send one of: {', '.join(self.values)}"
        return f"send a string of at most {self.max_length} characters"


class SourceElement(_Strict):
    """One element of the source model that became a livetwin name or child."""

    name: str  # the livetwin property, parameter or derived value, or the child type
    kind: str  # its kind there: Telemetry, Property, Component, Relationship; Property, Range
    id: str = ""  # its id there: a DTDL @id or target, an AAS semanticId or referenced id
    datatype: str = ""  # its schema or value type there (double, integer, xs:int, ...)
    semantic_type: str = ""  # a DTDL semantic type (Temperature, Pressure, ...)


class Source(_Strict):
    """The standard model a type was imported from (livetwin/interop): its id names the type
    across versions, so importing a newer version of the model updates the same type."""

    standard: Literal["dtdl", "aas"]
    id: str  # a DTMI with its version, or an AAS submodel id
    version: str = ""  # the AAS administration version.revision (DTDL: in the DTMI)
    elements: dict[str, SourceElement] = Field(default_factory=dict)  # by path in the model


class TwinTypeSpec(_Strict):
    """A twin type as a user declares it."""

    name: str | None = Field(default=None, pattern=TYPE_NAME_PATTERN)
    namespace: str | None = Field(
        None, description="the namespace (tenant) that owns the type (default: 'default')"
    )
    description: str = ""
    properties: dict[str, Property] = Field(default_factory=dict)
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    derived: dict[str, Derived] = Field(default_factory=dict)
    attributes: dict[str, Attribute] = Field(
        default_factory=dict,
        description="text attributes, e.g. {serial: {type: string}, "
        "mode: {type: enum, values: [auto, manual]}}",
    )
    children: list[str] = Field(default_factory=list)
    model: ModelSection | None = None
    calibration: CalibrationSection | None = None
    commands: CommandSection | None = None
    rules: dict[str, Rule] = Field(default_factory=dict)
    source: Source | None = None
    stale_after: str | None = Field(
        None,
        description="a twin is stale after this long without an observation, e.g. '12h' "
        "(default: from the type's observed reporting interval)",
    )
    key_values: list[str] | None = Field(
        None,
        description="the names the fleet table shows "
        "(default: the first three properties and the first two derived values)",
    )
    retention: Retention | None = Field(
        None,
        description="how long raw history and rollups are kept, e.g. "
        "{raw: 30d, rollups: {1m: 1y, 1h: forever}} (default: raw history forever)",
    )

    @field_validator("namespace")
    @classmethod
    def _namespace_by_the_one_rule(cls, value: str | None) -> str | None:
        return owner_namespace(value)

    @field_validator("stale_after")
    @classmethod
    def _stale_after_is_a_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)  # its ValueError names the problem
        return value

    @field_validator("properties", "parameters", mode="before")
    @classmethod
    def _allow_empty_entries(cls, value: Any) -> Any:
        """`flow: {}` and `flow:` (null in YAML) both declare a property with defaults."""
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @field_validator("derived", mode="before")
    @classmethod
    def _derived_shorthand(cls, value: Any) -> Any:
        """`power: "flow * head"` is short for `power: {expr: "flow * head"}`."""
        if isinstance(value, dict):
            return {k: ({"expr": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value

    @field_validator("attributes", mode="before")
    @classmethod
    def _attribute_shorthand(cls, value: Any) -> Any:
        """`serial:` (null in YAML) or `serial: string` declare a string attribute."""
        if isinstance(value, dict):
            return {
                k: ({} if v is None else {"type": v} if isinstance(v, str) else v)
                for k, v in value.items()
            }
        return value

    @field_validator("properties", "parameters", "derived", "rules", "attributes")
    @classmethod
    def _names_are_identifiers(cls, value: dict) -> dict:
        for name in value:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(
                    f"{excerpt(name)} is not a valid name: use a letter then letters, digits or _"
                )
        return value


@dataclass(frozen=True)
class CompiledType:
    """A checked type version: its column layout and compiled derived expressions.

    Columns are the properties (declared, then those calibration publishes), the parameters,
    then the derived values in dependency order.
    """

    name: str
    version: int
    spec: TwinTypeSpec
    properties: tuple[str, ...]
    columns: tuple[str, ...]
    derived_order: tuple[str, ...]
    compiled: dict[str, Compiled] = field(repr=False)
    calibration: CalibrationPlan | None = field(default=None, repr=False)
    rules: dict[str, CompiledRule] = field(default_factory=dict, repr=False)
    aggregated: tuple[str, ...] = ()
    """Derived values that use an aggregate over children, directly or through others, in
    dependency order: the engine re-evaluates them when children change."""

    @functools.cached_property
    def aggregates(self) -> tuple[AggregateSpec, ...]:
        """The distinct aggregates over children the derived values use."""
        found = {a.key: a for name in self.derived_order for a in self.compiled[name].aggregates}
        return tuple(found.values())

    @functools.cached_property
    def rule_text(self) -> tuple[str, ...]:
        """The text attributes the rules read (the engine hands them to the rules)."""
        names = {n for r in self.rules.values() for n in r.names}
        return tuple(sorted(names.intersection(self.spec.attributes)))

    @property
    def attributes(self) -> dict[str, Attribute]:
        """The type's text attributes (kept beside the columns, not in them)."""
        return self.spec.attributes

    @property
    def inputs(self) -> tuple[str, ...]:
        """Names an observation may set: properties and parameters."""
        return self.properties + tuple(self.spec.parameters)

    def input_bounds(self) -> tuple[list[float], list[float]]:
        """Valid [min, max] of each input (infinite where none is declared)."""
        declared = {**self.spec.properties, **self.spec.parameters}
        lo, hi = [], []
        for name in self.inputs:
            spec = declared.get(name)
            lo.append(-math.inf if spec is None or spec.min is None else spec.min)
            hi.append(math.inf if spec is None or spec.max is None else spec.max)
        return lo, hi

    @property
    def stamped(self) -> tuple[str, ...]:
        """Inputs whose values keep their own time: parameters and what calibration publishes.
        They arrive after newer telemetry (a calibration run publishes its steps' times), so a
        late observation still sets them unless a newer value of the same name is applied."""
        return self.inputs[len(self.spec.properties) :]

    def column_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.columns)}

    def key_values(self) -> tuple[str, ...]:
        """The names the fleet shows: `key_values`, else the first three properties and the
        first two derived values."""
        if self.spec.key_values is not None:
            return tuple(self.spec.key_values)
        return tuple(self.spec.properties)[:3] + tuple(self.spec.derived)[:2]


# Fields added after types were first stored: left out of the stored form while unset, so a
# type declared before them keeps its stored JSON (re-declaring it makes no new version).
_LATER_FIELDS = ("namespace", "source", "stale_after", "key_values")


def stored_spec(spec: TwinTypeSpec) -> dict:
    """The JSON form of a type that the journal stores and versions compare (no name)."""
    later = {f for f in _LATER_FIELDS if getattr(spec, f) is None}
    if not spec.attributes:
        later.add("attributes")
    data = spec.model_dump(mode="json", exclude={"name", *later})
    if data.get("model") is not None and not data["model"].get("units"):
        data["model"].pop("units", None)
    if data.get("calibration") is not None:
        for key, default in LATER_DEFAULTS.items():
            if data["calibration"].get(key) == default:
                del data["calibration"][key]
    return data


def parse_type_spec(data: Any, name: str) -> TwinTypeSpec:
    """Validate a type spec body (a dict); the name comes from the URL."""
    if not isinstance(data, dict):
        raise InvalidInput(
            "a type spec must be a JSON or YAML object",
            field="body",
            fix="send an object with properties, parameters, derived and children",
        )
    body_name = data.get("name")
    if body_name is not None and body_name != name:
        raise InvalidInput(
            f"the body names type '{body_name}' but the URL names '{name}'",
            field="name",
            fix="drop 'name' from the body or make it match the URL",
        )
    spec = parse_model(TwinTypeSpec, {**data, "name": name}, what="type spec")
    for section in ("properties", "parameters", "derived", "attributes"):
        for reserved in sorted(RESERVED_NAMES.intersection(getattr(spec, section))):
            raise InvalidInput(
                f"'{reserved}' is a reserved word of expressions and cannot name a value",
                field=f"{section}.{reserved}",
                fix=f"rename it (e.g. '{reserved.lower()}_value'); reserved: True, False, None "
                "and Python's keywords (and, or, not, if, else, lambda, in, is, ...)",
            )
    return spec


def compile_type(
    spec: TwinTypeSpec, version: int, *, resolve_model: ModelResolver | None = None
) -> CompiledType:
    """Check names and expressions, order derived values, reject cycles.

    A type with a `model` section needs `resolve_model` (`livetwin.models.resolve_model`).
    """
    assert spec.name is not None
    seen: dict[str, str] = {}
    for section in ("properties", "parameters", "derived", "attributes"):
        for name in getattr(spec, section):
            if name in seen:
                raise InvalidInput(
                    f"'{name}' is declared in both {seen[name]} and {section}",
                    field=f"{section}.{name}",
                    fix="give each property, parameter, derived value and attribute its own name",
                )
            seen[name] = section
    if not spec.properties and not spec.parameters:
        raise InvalidInput(
            "a type needs at least one property or parameter",
            field="properties",
            fix="declare the telemetry it receives, e.g. properties: {flow: {unit: m3/h}}",
        )
    known = set(seen) - set(spec.attributes)  # derived values read numbers only
    if spec.children and "children" in known:
        raise InvalidInput(
            "'children' names a type's children in its expressions and cannot name a value",
            field=f"{seen['children']}.children",
            fix="rename it (e.g. 'children_count')",
        )
    child_types = spec.children or None
    compiled = {
        name: compile_expression(
            d.expr, known, field=f"derived.{name}.expr", child_types=child_types
        )
        for name, d in spec.derived.items()
    }
    order = _topological_order(compiled)
    aggregated = _aggregated(compiled, order)
    plan = None
    if spec.model is not None:
        if resolve_model is None:
            raise TypeError(f"compile_type needs resolve_model= for type {spec.name!r}'s model")
        plan = plan_calibration(
            spec.model, spec.calibration, spec.properties, spec.parameters, resolve_model
        )
        for name in plan.published:
            if name in seen:
                raise InvalidInput(
                    f"'{name}' is published by calibration and also declared in {seen[name]}",
                    field=f"{seen[name]}.{name}",
                    fix="rename it: calibration publishes <name>, <name>_std, _lower and _upper",
                )
    elif spec.calibration is not None:
        raise InvalidInput(
            "calibration needs a model",
            field="calibration",
            fix="add model: {ref: 'package.module:function'}",
        )
    properties = tuple(spec.properties) + (plan.published if plan else ())
    columns = properties + tuple(spec.parameters) + order
    for i, name in enumerate(spec.key_values or ()):
        if name not in columns:
            raise InvalidInput(
                f"key value '{name}' is not a name of the type",
                field=f"key_values.{i}",
                fix=f"use some of: {', '.join(columns)}",
            )
    builtin = plan.rules() if plan else {}
    for name in builtin:
        if name in spec.rules:
            raise InvalidInput(
                f"rule '{name}' is built in with calibration.model_fit_alarm",
                field=f"rules.{name}",
                fix="rename your rule, or drop model_fit_alarm",
            )
    rules = compile_rules({**builtin, **spec.rules}, set(columns), frozenset(spec.attributes))
    return CompiledType(
        spec.name,
        version,
        spec,
        properties,
        columns,
        order,
        compiled,
        plan,
        rules=rules,
        aggregated=aggregated,
    )


def _aggregated(compiled: dict[str, Compiled], order: tuple[str, ...]) -> tuple[str, ...]:
    """The derived values that depend on an aggregate; they may not use window functions,
    because children re-evaluate them between the parent's own observations."""
    found: list[str] = []
    for name in order:
        c = compiled[name]
        if not (c.aggregates or c.names.intersection(found)):
            continue
        if c.windows:
            via = sorted(c.names.intersection(found))
            reason = f"it uses {', '.join(via)}, which aggregate" if via else "it aggregates"
            raise InvalidInput(
                f"derived value '{name}' uses a window function while {reason} children",
                field=f"derived.{name}.expr",
                fix=f"compute the window ({c.windows[0].source}) in a derived value of its own "
                "and use its name here",
            )
        found.append(name)
    return tuple(found)


def _topological_order(compiled: dict[str, Compiled]) -> tuple[str, ...]:
    """Derived values ordered so each comes after the derived values it reads."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name) :] + [name]
            raise InvalidInput(
                f"derived values form a cycle: {' -> '.join(cycle)}",
                field=f"derived.{name}.expr",
                fix="break the cycle: a derived value cannot depend on itself",
            )
        state[name] = 1
        for dep in sorted(compiled[name].names):
            if dep in compiled:
                visit(dep, path + [name])
        state[name] = 2
        order.append(name)

    for name in compiled:
        visit(name, [])
    return tuple(order)
