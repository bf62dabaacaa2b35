"""The candidate of a back-test: a full type spec, or a patch of the current version, checked and
compiled like a `PUT /api/types` body; mistakes are 422 errors naming the candidate's field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from livetwin.errors import InvalidInput, LivetwinError
from livetwin.spec.types import CompiledType, TwinTypeSpec, compile_type, parse_type_spec

MAPS = ("properties", "parameters", "derived", "rules")  # a patch merges these by name
FIELDS = ("model", "calibration")  # a patch replaces the fields it gives of these, keeps the others
MODEL_FIXED = ("virtual",)  # model fields a candidate keeps; `dt`, `units`, ref options may change


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

    The model must be that of the current version (its `dt`, units and the options of its
    `ref` may change); changed calibration settings are back-tested by re-running the batched
    filter (`livetwin.jobs.backtest_calibration`).
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
        _check_model(spec, current)
        return compile_type(spec, 0, resolve_model=resolve_model)
    except LivetwinError as exc:
        exc.field = f"candidate.{kind}" + (f".{exc.field}" if exc.field else "")
        raise


def _check_model(spec: TwinTypeSpec, current: TwinTypeSpec) -> None:
    """Refuse a candidate with another model (or none, or other virtual sensors): options of
    the same model are back-tested, another model is not."""
    old, new = current.model, spec.model
    if old is None and new is None:
        return
    same = (
        old is not None
        and new is not None
        and _base(old.ref) == _base(new.ref)
        and all(getattr(old, k) == getattr(new, k) for k in MODEL_FIXED)
    )
    if not same:
        raise InvalidInput(
            "the candidate changes the model: a back-test re-runs the recorded model under other "
            "settings (dt, units, the options of its ref), not another model or other virtual "
            "sensors",
            field="model",
            fix="keep model.ref (up to its ?options) and model.virtual as in the current version",
        )


def _base(ref: str) -> str:
    """A model reference without its options (`fmu:path?options`)."""
    return ref.split("?", 1)[0]
