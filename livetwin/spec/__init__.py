"""Twin types and extractor specs as data: pydantic models, validation, compiled forms."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from livetwin.errors import MAX_EXCERPT, InvalidInput, bounded

M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], data: Any, *, what: str) -> M:
    """Validate `data` as `model`, turning pydantic's errors into one clear `InvalidInput`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_from_pydantic(exc, what=what) from None


def invalid_from_pydantic(exc: ValidationError, *, what: str) -> InvalidInput:
    """The first pydantic error as an `InvalidInput` naming the field; all errors in details."""
    errors = []
    for err in exc.errors(include_url=False):
        field = bounded(".".join(str(p) for p in err["loc"]), MAX_EXCERPT) or None
        errors.append({"field": field, "message": bounded(err["msg"])})
    first = errors[0]
    extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    error = InvalidInput(
        f"invalid {what}: {first['field'] or 'body'}: {first['message']}{extra}",
        field=first["field"],
        fix=f"correct '{first['field']}' as the message says; see the {what} reference in the docs",
    )
    error.details = errors
    return error
