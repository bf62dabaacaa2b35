"""Errors that reach a user: each names the field at fault and how to fix it.

The API turns every `LivetwinError` into a JSON body `{"error": {...}}` with its HTTP status.
"""

from __future__ import annotations


class LivetwinError(Exception):
    """A user-facing error with a field, a message and a fix."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.fix = fix
        self.details: list[dict] | None = None

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.fix is not None:
            body["fix"] = self.fix
        if self.details:
            body["details"] = self.details
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
