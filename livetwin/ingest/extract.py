"""Apply an extractor spec to a device payload: JSON in, ingest-shaped observation dicts out.

Only mapping happens here; values, timestamps and types are validated later by the ingest path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from livetwin.errors import MAX_EXCERPT, InvalidInput, bounded, excerpt
from livetwin.spec.extractor import CompiledPath, ExtractorSpec

__all__ = ["ExtractResult", "extract"]

_MISSING = object()


@dataclass
class ExtractResult:
    """Observations extracted from one payload, and the problems with the elements that failed.

    `observations` are in payload order, each shaped like an ingest observation:
    `{"twin", "type", "ts"?, "values", "key"?, "parent"?}`. Each error is
    `{"index", "field", "error", "fix"}` where `index` is the element's position among the
    `foreach` matches (0 without `foreach`, and 0 for problems with the payload as a whole).
    """

    observations: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


def extract(
    spec: ExtractorSpec, payload: Any, *, topic_vars: Mapping[str, str] | None = None
) -> ExtractResult:
    """Map `payload` (parsed JSON) to observations with `spec`; one bad element never sinks others.

    `topic_vars` fill the `{name}` placeholders of `spec.twin_prefix` (meant for MQTT topic
    segments). A value path that matches nothing, or matches null, leaves that property out; an
    element whose value paths all miss is an error. A missing `ts` is left out, so the caller
    uses the receive time.
    """
    result = ExtractResult()
    try:
        prefix = spec.twin_prefix_for(topic_vars)
    except InvalidInput as exc:
        result.errors.append(_error(0, exc.field or "twin_prefix", exc.message, exc.fix or ""))
        return result

    paths = spec.paths
    if "foreach" in paths:
        foreach = paths["foreach"]
        try:
            elements = foreach.find(payload)
        except Exception as exc:  # a jsonpath-ng filter can fail on odd data
            result.errors.append(_eval_error(0, "foreach", foreach.text, exc))
            return result
        if not elements:
            result.errors.append(
                _error(
                    0,
                    "foreach",
                    f"foreach {foreach.text} matched nothing in the payload",
                    "check that the payload has the array the path names, or fix foreach",
                )
            )
            return result
    else:
        elements = [payload]

    fields = {
        name: _Field(name, path, payload) for name, path in paths.items() if name != "foreach"
    }
    twin, type_path, ts = fields["twin"], fields.get("type_path"), fields.get("ts")
    values = [(prop, fields[f"values.{prop}"]) for prop in spec.values]
    extras = [(name, fields[name]) for name in ("key", "parent") if name in fields]

    for index, element in enumerate(elements):
        errors: list[dict] = []
        observation = {"twin": _twin_id(twin, element, index, errors, prefix), "type": spec.type}
        if type_path is not None:
            observation["type"] = _type_name(type_path, element, index, errors)
        if ts is not None:
            raw = ts.single(element, index, errors)
            if raw is not _MISSING and raw is not None:
                observation["ts"], problem = _convert_ts(raw, spec.ts_format)
                if problem:
                    errors.append(_error(index, "ts", problem, _ts_fix(spec.ts_format)))
        observation["values"] = _values(values, element, index, errors)
        for name, extra in extras:
            got = extra.single(element, index, errors)
            if got is _MISSING or got is None:
                continue
            if _is_id(got):
                observation[name] = str(got)
            else:
                errors.append(
                    _error(
                        index,
                        name,
                        f"{name} must be a string or an integer, got {_describe(got)}",
                        f"point {name} at a string or integer field",
                    )
                )
        if errors:
            result.errors.extend(errors)
        else:
            result.observations.append(observation)
    return result


class _Field:
    """One path of the spec, ready to read the single node it names from an element."""

    __slots__ = ("name", "text", "find", "shared")

    def __init__(self, name: str, path: CompiledPath, payload: Any) -> None:
        self.name = name
        self.text = path.text
        # An absolute path reads the same nodes for every element: evaluate it once. A fast
        # relative path cannot raise, so it skips the try/except of _find.
        self.shared = _find(path, payload) if path.absolute else None
        self.find = path.find if path.fast else partial(_find, path)

    def single(self, element: Any, index: int, errors: list[dict]) -> Any:
        """The one node matched in `element`, or _MISSING; several matches are an error."""
        found = self.shared if self.shared is not None else self.find(element)
        if isinstance(found, Exception):
            errors.append(_eval_error(index, self.name, self.text, found))
            return _MISSING
        if not found:
            return _MISSING
        if len(found) > 1:
            errors.append(
                _error(
                    index,
                    self.name,
                    f"{self.name}: {self.text} matched {len(found)} nodes, expected one",
                    "narrow the path to one node, e.g. with an index [0] or a filter",
                )
            )
            return _MISSING
        return found[0]


def _twin_id(twin: _Field, element: Any, index: int, errors: list[dict], prefix: str) -> Any:
    """The element's twin id with the prefix, or None after recording an error."""
    before = len(errors)
    value = twin.single(element, index, errors)
    if _is_id(value):
        return prefix + str(value)
    if len(errors) == before:
        if value is _MISSING or value is None:
            what = "null" if value is None else "nothing"
            message = f"no twin id: {twin.text} matched {what}"
            fix = "send the twin id in the payload, or fix the twin path"
        else:
            message = f"twin id must be a string or an integer, got {_describe(value)}"
            fix = "point twin at a string or integer field"
        errors.append(_error(index, "twin", message, fix))
    return None


def _type_name(type_path: _Field, element: Any, index: int, errors: list[dict]) -> Any:
    """The element's type name read with type_path, or None after recording an error."""
    before = len(errors)
    value = type_path.single(element, index, errors)
    if isinstance(value, str) and value:
        return value
    if len(errors) == before:
        got = "nothing" if value is _MISSING or value is None else _describe(value)
        errors.append(
            _error(
                index,
                "type_path",
                f"type_path {type_path.text} must match a type name, got {got}",
                "send the type name in the payload, or use type: <name> instead",
            )
        )
    return None


def _values(
    values: list[tuple[str, _Field]], element: Any, index: int, errors: list[dict]
) -> dict[str, Any]:
    """The property values found in `element`; missing and null ones are left out."""
    found: dict[str, Any] = {}
    before = len(errors)
    for prop, value_field in values:
        value = value_field.single(element, index, errors)
        if value is _MISSING or value is None:
            continue
        if isinstance(value, (dict, list, tuple)):
            errors.append(
                _error(
                    index,
                    value_field.name,
                    f"{value_field.name}: {value_field.text} matched {_describe(value)}, "
                    "expected a scalar",
                    "point the path at a number, e.g. append .value or [0]",
                )
            )
            continue
        found[prop] = value
    if not found and len(errors) == before:
        errors.append(
            _error(
                index,
                "values",
                "no value path matched",
                "check the payload has at least one of the properties in values, or fix the paths",
            )
        )
    return found


def _find(path: CompiledPath, data: Any) -> list[Any] | Exception:
    """Matches of `path` in `data`, or the exception jsonpath-ng raised (reported per element)."""
    try:
        return path.find(data)
    except Exception as exc:
        return exc


def _convert_ts(raw: Any, ts_format: str) -> tuple[Any, str | None]:
    """Convert a matched timestamp: (value, None), or (None, what is wrong).

    iso: a string passes through unchanged (the ingest path parses it). epoch_s/ms/us: a number,
    or a string holding one, becomes integer epoch milliseconds (rounded to the nearest).
    """
    if ts_format == "iso":
        if isinstance(raw, str):
            return raw, None
        return None, f"ts is {_describe(raw)}, expected an ISO 8601 string (ts_format: iso)"
    number = raw
    if isinstance(raw, str):
        try:
            number = int(raw)
        except ValueError:
            try:
                number = float(raw)
            except ValueError:
                return None, f"ts {excerpt(raw)} is not a number (ts_format: {ts_format})"
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        return None, f"ts is {_describe(raw)}, expected a number (ts_format: {ts_format})"
    if isinstance(number, float) and not math.isfinite(number):
        return None, f"ts {excerpt(raw)} is not a finite number"
    if ts_format == "epoch_s":
        return round(number * 1000), None
    if ts_format == "epoch_ms":
        return round(number), None
    if isinstance(number, int):  # epoch_us
        return (number + 500) // 1000, None  # exact for integers beyond 2**53
    return round(number / 1000), None


def _ts_fix(ts_format: str) -> str:
    if ts_format == "iso":
        return (
            "set ts_format to epoch_s, epoch_ms or epoch_us if the device sends numbers, "
            "or point ts at an ISO 8601 string"
        )
    unit = {"epoch_s": "seconds", "epoch_ms": "milliseconds", "epoch_us": "microseconds"}
    return (
        f"send ts as {unit[ts_format]} since 1970-01-01 UTC, or change ts_format "
        "(iso for ISO 8601 strings)"
    )


def _is_id(value: Any) -> bool:
    return (isinstance(value, str) and value != "") or (
        isinstance(value, int) and not isinstance(value, bool)
    )


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if value == "":
        return "an empty string"
    return excerpt(value)


def _error(index: int, name: str, message: str, fix: str) -> dict:
    return {
        "index": index,
        "field": bounded(name, MAX_EXCERPT),
        "error": bounded(message),
        "fix": fix,
    }


def _eval_error(index: int, name: str, text: str, exc: Exception) -> dict:
    return _error(
        index,
        name,
        f"{name}: evaluating {text} failed: {exc}",
        "simplify the path, or check the payload has the shape the path expects",
    )
