"""Extractor specs: declarative maps from a device's own JSON payload to livetwin observations.

A spec names JSONPaths for the twin id, the timestamp, each property value and so on; the paths
are checked and compiled once, when the spec is created. `livetwin.ingest.extract` applies them.
"""

from __future__ import annotations

import difflib
import keyword
import re
from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType
from typing import Any, Literal

import jsonpath_ng.jsonpath as jp
from jsonpath_ng.ext import parse as _jsonpath_parse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from livetwin.errors import InvalidInput
from livetwin.namespaces import owner_namespace
from livetwin.spec.safe_yaml import load_yaml

__all__ = ["CompiledPath", "ExtractorSpec", "TsFormat", "compile_path"]

TsFormat = Literal["iso", "epoch_ms", "epoch_s", "epoch_us"]

PATH_FIX = "write a JSONPath like $.data.flow (from the payload root) or @.flow (from the element)"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_PROPERTY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z0-9_]+)\}")

# A fast path is a tuple of steps: a str is a dict key, an int a list index, _EVERY is `[*]`.
_EVERY = object()
_MISSING = object()


class CompiledPath:
    """One JSONPath of a spec, parsed once by jsonpath-ng.

    `absolute` paths start with `$` and are evaluated on the whole payload; relative paths start
    with `@` and are evaluated on the current `foreach` element. Paths that are plain chains of
    names, indices and `[*]` (e.g. `$.a.b[0]`, `@.readings[*]`) are evaluated by walking dicts and
    lists directly (`fast`); anything else (filters, slices, `..`, unions) goes through jsonpath-ng.
    Both give the same matches in the same order.
    """

    __slots__ = ("text", "absolute", "expr", "steps", "find")

    def __init__(self, text: str, absolute: bool, expr: jp.JSONPath) -> None:
        self.text = text
        self.absolute = absolute
        self.expr = expr
        self.steps = _fast_steps(expr)
        # find(data) -> list of matched values (empty if none); an attribute, not a method, so
        # the hot path costs one Python call.
        self.find: Callable[[Any], list[Any]] = self.find_slow
        if self.steps is not None:
            keys_only = all(type(step) is str for step in self.steps)
            self.find = partial(_walk_keys if keys_only else _walk, self.steps)

    @property
    def fast(self) -> bool:
        """Whether `find` walks the data directly instead of calling jsonpath-ng."""
        return self.steps is not None

    def find_slow(self, data: Any) -> list[Any]:
        """Return the matches as jsonpath-ng computes them (the reference for `find`)."""
        return [match.value for match in self.expr.find(data)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompiledPath) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"CompiledPath({self.text!r}, fast={self.fast})"


def compile_path(text: str, field: str) -> CompiledPath:
    """Parse the JSONPath `text` of spec field `field`; raise InvalidInput naming the field."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "$@":
        raise InvalidInput(
            f"{field}: JSONPath {text!r} must start with $ (payload root) or @ (foreach element)",
            field=field,
            fix=PATH_FIX,
        )
    try:
        expr = _jsonpath_parse(stripped)
    except Exception as exc:  # jsonpath-ng raises several exception types for bad syntax
        raise InvalidInput(
            f"{field}: JSONPath {text!r} does not parse: {exc}", field=field, fix=PATH_FIX
        ) from None
    return CompiledPath(stripped, stripped[0] == "$", expr)


def _fast_steps(expr: jp.JSONPath) -> tuple[Any, ...] | None:
    """Turn `$`/`@` followed by single names, single indices and `[*]` into steps, else None."""
    steps: list[Any] = []
    node = expr
    while type(node) is jp.Child:
        right = node.right
        if (
            type(right) is jp.Fields
            and len(right.fields) == 1
            and not getattr(right, "_deprecated_wildcard_use", False)
            and right.fields[0] != jp.auto_id_field
        ):
            steps.append(str(right.fields[0]))
        elif type(right) is jp.Index and len(right.indices) == 1:
            steps.append(int(right.indices[0]))
        elif type(right) is jp.Wildcard:
            steps.append(_EVERY)
        else:
            return None
        node = node.left
    if type(node) not in (jp.Root, jp.This):
        return None
    steps.reverse()
    return tuple(steps)


def _walk_keys(keys: tuple[str, ...], node: Any) -> list[Any]:
    """Follow dict keys through plain JSON data (the most common path: `@.data.flow`).

    Indexing a list, string or number with a str key raises TypeError, a missing key KeyError:
    both mean no match, exactly as in jsonpath-ng.
    """
    try:
        for key in keys:
            node = node[key]
    except (KeyError, TypeError):
        return []
    return [node]


def _walk(steps: tuple[Any, ...], data: Any) -> list[Any]:
    """Evaluate fast-path steps (keys, indices, `[*]`) on plain JSON data."""
    node = data
    for position, step in enumerate(steps):
        if step is _EVERY:  # every child, then the remaining steps from each child
            if isinstance(node, dict):
                children = list(node.values())
            elif isinstance(node, (list, tuple)):
                children = list(node)
            else:
                return []
            rest = steps[position + 1 :]
            if not rest:
                return children
            return [match for child in children for match in _walk(rest, child)]
        if type(step) is int:
            if not isinstance(node, (list, tuple)) or not -len(node) <= step < len(node):
                return []
            node = node[step]
        else:
            if not isinstance(node, dict):
                return []
            node = node.get(step, _MISSING)
            if node is _MISSING:
                return []
    return [node]


class ExtractorSpec(BaseModel):
    """How to turn one device payload into observations, declared as data (JSON or YAML).

    Paths starting with `$` are read from the whole payload; paths starting with `@` are read from
    the current element of `foreach` (and are only allowed when `foreach` is set). Without
    `foreach` the payload gives exactly one observation. `twin_prefix` may contain `{name}`
    placeholders filled from the `topic_vars` given to `extract` (reserved for MQTT topics).

    Build it with `ExtractorSpec.from_data` / `from_yaml` to get every mistake as InvalidInput;
    calling the constructor directly raises pydantic's ValidationError for shape errors (unknown
    or missing fields, wrong types) and InvalidInput for bad paths and combinations. A spec is
    frozen; to change one, build a new one (`model_copy(update=...)` would skip the checks).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    namespace: str | None = Field(
        None, description="the namespace (tenant) that owns it (default: 'default')"
    )
    foreach: str | None = None
    twin: str
    twin_prefix: str = ""
    type: str | None = None
    type_path: str | None = None
    ts: str | None = None
    ts_format: TsFormat = "iso"
    values: dict[str, str]
    key: str | None = None
    parent: str | None = None

    _paths: dict[str, CompiledPath] = PrivateAttr(default_factory=dict)
    _prefix_vars: tuple[str, ...] = PrivateAttr(default=())

    @field_validator("namespace")
    @classmethod
    def _namespace_by_the_one_rule(cls, value: str | None) -> str | None:
        return owner_namespace(value)

    @model_validator(mode="after")
    def _check_and_compile(self) -> ExtractorSpec:
        if self.name is not None and not _NAME_RE.fullmatch(self.name):
            raise InvalidInput(
                f"name {self.name!r} is not a valid extractor name",
                field="name",
                fix="use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit",
            )
        self._check_type()
        self._check_values()
        if self.ts is None and self.ts_format != "iso":
            raise InvalidInput(
                f"ts_format is {self.ts_format} but ts is not set",
                field="ts_format",
                fix="add ts: a JSONPath to the timestamp, or remove ts_format",
            )
        self._prefix_vars = _check_prefix(self.twin_prefix)
        self._paths = self._compile_paths()
        return self

    def _check_type(self) -> None:
        if (self.type is None) == (self.type_path is None):
            raise InvalidInput(
                "give exactly one of type (a type name) and type_path (a JSONPath to it)",
                field="type",
                fix="write type: pump, or type_path: $.kind",
            )
        if self.type is not None and not self.type.strip():
            raise InvalidInput("type is empty", field="type", fix="write a type name, e.g. pump")

    def _check_values(self) -> None:
        if not self.values:
            raise InvalidInput(
                "values is empty: the spec would never produce a value",
                field="values",
                fix="map at least one property to a JSONPath, e.g. values: {flow: $.data.flow}",
            )
        for prop in self.values:
            if not _PROPERTY_RE.fullmatch(prop) or keyword.iskeyword(prop):
                raise InvalidInput(
                    f"property name {prop!r} is not an identifier",
                    field=f"values.{prop}",
                    fix="use letters, digits and '_', not starting with a digit, e.g. flow_rate",
                )

    def _compile_paths(self) -> dict[str, CompiledPath]:
        sources: dict[str, str | None] = {
            "foreach": self.foreach,
            "twin": self.twin,
            "type_path": self.type_path,
            "ts": self.ts,
            "key": self.key,
            "parent": self.parent,
        }
        sources.update({f"values.{prop}": path for prop, path in self.values.items()})
        paths = {
            field: compile_path(text, field) for field, text in sources.items() if text is not None
        }
        foreach = paths.get("foreach")
        if foreach is not None and not foreach.absolute:
            raise InvalidInput(
                f"foreach: JSONPath {foreach.text!r} is relative; foreach is read from the payload",
                field="foreach",
                fix="start foreach with $, e.g. $.readings[*]",
            )
        if foreach is None:
            for field, path in paths.items():
                if not path.absolute:
                    raise InvalidInput(
                        f"{field}: JSONPath {path.text!r} is relative (@) but there is no foreach",
                        field=field,
                        fix=f"use ${path.text[1:]} to read from the payload root, "
                        "or add foreach: $.items[*] to fan out over an array",
                    )
        return paths

    @property
    def paths(self) -> Mapping[str, CompiledPath]:
        """The compiled paths by spec field: foreach, twin, type_path, ts, key, parent, values.x."""
        return MappingProxyType(self._paths)

    @property
    def prefix_vars(self) -> tuple[str, ...]:
        """The `{name}` placeholders used in `twin_prefix`, in order."""
        return self._prefix_vars

    def twin_prefix_for(self, topic_vars: Mapping[str, str] | None = None) -> str:
        """`twin_prefix` with its `{name}` placeholders filled from `topic_vars`.

        Raises InvalidInput (field `twin_prefix`) when a placeholder has no value.
        """
        if not self._prefix_vars:
            return self.twin_prefix
        given = topic_vars or {}
        for var in self._prefix_vars:
            if var not in given:
                raise InvalidInput(
                    f"twin_prefix {self.twin_prefix!r} needs {{{var}}}, which was not given",
                    field="twin_prefix",
                    fix="pass topic_vars with that name, or remove the placeholder",
                )
        return _PLACEHOLDER_RE.sub(lambda match: str(given[match.group(1)]), self.twin_prefix)

    @classmethod
    def from_data(cls, data: Any, *, name: str | None = None) -> ExtractorSpec:
        """Validate a parsed JSON/YAML body; `name` (from the URL) fills or must match `name`.

        Every problem is raised as InvalidInput naming the field and the fix.
        """
        if not isinstance(data, Mapping):
            raise InvalidInput(
                f"an extractor spec is an object, got {_json_type(data)}",
                fix="send an object like {twin: $.id, type: pump, values: {flow: $.flow}}",
            )
        body = dict(data)
        if name is not None:
            if body.get("name") is not None and body["name"] != name:
                raise InvalidInput(
                    f"name {body['name']!r} in the body differs from {name!r} in the URL",
                    field="name",
                    fix="leave name out of the body, or make it match the URL",
                )
            body["name"] = name
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise _invalid_input(exc) from None

    @classmethod
    def from_yaml(cls, text: str, *, name: str | None = None) -> ExtractorSpec:
        """Parse YAML (or JSON, which is YAML) text and validate it like `from_data`."""
        try:
            data = load_yaml(text)
        except InvalidInput as exc:
            raise InvalidInput(
                f"the extractor spec is not valid YAML/JSON: {exc.message}",
                fix="check indentation and quoting; quote JSONPaths, e.g. twin: '$.id'",
            ) from None
        return cls.from_data(data, name=name)


def _check_prefix(prefix: str) -> tuple[str, ...]:
    """Return the `{name}` placeholders of a twin prefix; reject stray braces."""
    if "{" in _PLACEHOLDER_RE.sub("", prefix) or "}" in _PLACEHOLDER_RE.sub("", prefix):
        raise InvalidInput(
            f"twin_prefix {prefix!r} has a brace that is not a {{name}} placeholder",
            field="twin_prefix",
            fix="write placeholders as {name} with letters, digits or '_', e.g. 'site-{site}-'",
        )
    return tuple(_PLACEHOLDER_RE.findall(prefix))


def _invalid_input(exc: ValidationError) -> InvalidInput:
    """Turn pydantic's first complaint into an InvalidInput with a field and a fix."""
    problems = exc.errors()
    # An unknown field is usually a typo of a missing one: report the typo first.
    problems.sort(key=lambda problem: problem["type"] != "extra_forbidden")
    first = problems[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    kind = first["type"]
    if kind == "extra_forbidden":
        known = list(ExtractorSpec.model_fields)
        close = difflib.get_close_matches(str(first["loc"][-1]), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        message = f"unknown field {field!r}"
        fix = f"{hint}remove it; the fields are: {', '.join(known)}"
    elif kind == "missing":
        message = f"missing field {field!r}"
        fix = {
            "twin": "add twin: a JSONPath to the twin id, e.g. $.device_id",
            "values": "add values: a map of property -> JSONPath, e.g. {flow: $.data.flow}",
        }.get(str(field), f"add {field}")
    elif kind == "literal_error" and field == "ts_format":
        message = f"ts_format {first['input']!r} is not known"
        fix = "use one of iso, epoch_ms, epoch_s, epoch_us"
    elif kind in ("string_type", "dict_type"):
        expected = "a string" if kind == "string_type" else "an object (property -> JSONPath)"
        message = f"{field} must be {expected}, got {_json_type(first['input'])}"
        fix = f"write {field} as {expected}"
    else:
        message = f"{field}: {first['msg']}" if field else first["msg"]
        fix = "paths, names and type are strings; values is a map of property -> JSONPath"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem(s))"
    error = InvalidInput(message, field=field, fix=fix)
    # Every complaint, as livetwin.spec.invalid_from_pydantic lists them.
    error.details = [
        {"field": ".".join(str(part) for part in p["loc"]) or None, "message": p["msg"]}
        for p in problems
    ]
    return error


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    return type(value).__name__
