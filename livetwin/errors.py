"""Errors that reach a user: each names the field at fault and how to fix it.

The API turns every `LivetwinError` into a JSON body `{"error": {...}}` with its HTTP status.
"""

from __future__ import annotations

import reprlib

MAX_EXCERPT = 200  # characters of a rejected value an error message may quote
MAX_MESSAGE = 1000  # characters of any message, fix or field sent back
MAX_DETAILS = 50  # entries of an error's details list

_excerpts = reprlib.Repr()
_excerpts.maxlevel = 3
_excerpts.maxdict = _excerpts.maxlist = _excerpts.maxtuple = _excerpts.maxset = 5
_excerpts.maxstring = _excerpts.maxother = _excerpts.maxlong = MAX_EXCERPT


def excerpt(value: object, limit: int = MAX_EXCERPT) -> str:
    """A repr of `value` of at most `limit` characters, computed without expanding it whole
    (a hostile body can nest or share values that would print as megabytes)."""
    if isinstance(value, str):
        text = repr(value[:limit])
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 640:
        text = f"<an integer of {value.bit_length()} bits>"
    else:
        text = _excerpts.repr(value)
    return bounded(text, limit)


def bounded(text: str | None, limit: int = MAX_MESSAGE) -> str | None:
    """`text` cut to `limit` characters (marked with an ellipsis when cut)."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "\u2026"


class LivetwinError(Exception):
    """A user-facing error with a field, a message and a fix."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, fix: str | None = None):
        message = bounded(message)
        super().__init__(message)
        self.message = message
        self.field = bounded(field, MAX_EXCERPT)
        self.fix = bounded(fix)
        self.details: list[dict] | None = None

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.fix is not None:
            body["fix"] = self.fix
        if self.details:
            body["details"] = self.details[:MAX_DETAILS]
        return body


class InvalidInput(LivetwinError):
    """The request is well-formed JSON but its content is wrong (422)."""

    status = 422
    code = "invalid_input"


class NotFound(LivetwinError):
    status = 404
    code = "not_found"


class Conflict(LivetwinError):
    status = 409
    code = "conflict"


class PayloadTooLarge(LivetwinError):
    status = 413
    code = "payload_too_large"


class Unavailable(LivetwinError):
    """The platform cannot serve the request right now (closed, storage failed)."""

    status = 503
    code = "unavailable"
