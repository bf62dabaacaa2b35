"""The candidate of a back-test: a full type spec, or a patch of the current version, checked and
compiled like a `PUT /api/types` body; mistakes are 422 errors naming the candidate's field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from livetwin.errors import InvalidInput, LivetwinError
from livetwin.spec.types import CompiledType, TwinTypeSpec, compile_type, parse_type_spec

MAPS = ("properties", "parameters", "derived", "rules")  # a patch merges these by name
FIELDS = ("calibration",)  # a patch replaces the fields it gives of these, keeps the others
NOT_BACKTESTED = ("model",)


def merge_patch(current: dict, patch: dict) -> dict:
    """`current` (a spec as JSON) with `patch` applied: in the sections `MAPS`, names are added
    or replaced, and a name set to null is removed; in `FIELDS` each field given replaces its
    value (the others are kept); any other section given replaces the current one."""
    merged = dict(current)
    for key, value in patch.items():
        if key in MAPS and isinstance(value, dict):
            section = dict(merged.get(key) or {})
            for name, item in value.items():
                if item is None:
                    section.pop(name, None)
                else:
                    section[name] = item
            merged[key] = section
        elif key in FIELDS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def compile_candidate(
    type_name: str, current: TwinTypeSpec, body: Any, resolve_model: Callable
) -> CompiledType:
    """The candidate version of `type_name` from a request's `candidate` field: `{"spec":
    {...}}` (a full type spec) or `{"patch": {...}}` (changes to the current version `current`).

    The model section must be that of the current version; a changed calibration section is
    back-tested by re-running the batched filter (`livetwin.backtest.calibration`).
    """
    if not isinstance(body, dict) or len(body) != 1 or next(iter(body)) not in ("spec", "patch"):
        raise InvalidInput(
            "candidate must be an object with exactly one of 'spec' or 'patch'",
            field="candidate",
            fix='send {"patch": {"derived": {"x": "a + b"}}} or {"spec": {...a full type...}}',
        )
    kind, value = next(iter(body.items()))
    if not isinstance(value, dict):
        raise InvalidInput(
            f"candidate.{kind} must be an object",
            field=f"candidate.{kind}",
            fix="send the type's sections (derived, rules, ...) as an object",
        )
    now = current.model_dump(mode="json", exclude={"name"}, by_alias=True)
    spec_json = merge_patch(now, value) if kind == "patch" else value
    try:
        spec = parse_type_spec(spec_json, type_name)
        for section in NOT_BACKTESTED:
            if _dump(getattr(spec, section)) != _dump(getattr(current, section)):
                raise InvalidInput(
                    f"the candidate changes the {section} section: a back-test re-runs the "
                    "recorded model under other calibration settings, not another model",
                    field=section,
                    fix=f"leave {section} as in the current version (a patch: leave it out)",
                )
        return compile_type(spec, 0, resolve_model=resolve_model)
    except LivetwinError as exc:
        exc.field = f"candidate.{kind}" + (f".{exc.field}" if exc.field else "")
        raise


def _dump(section: Any) -> Any:
    return None if section is None else section.model_dump(mode="json", by_alias=True)
