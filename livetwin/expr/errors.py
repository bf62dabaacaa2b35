"""The error raised for an expression livetwin refuses to compile."""

from __future__ import annotations

from livetwin.errors import InvalidInput


class ExpressionError(InvalidInput):
    """An invalid expression; the message names the expression, the position and what is allowed.

    `line` and `col` (1-based, in characters) are None when the error has no single position.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        fix: str | None = None,
        source: str | None = None,
        line: int | None = None,
        col: int | None = None,
    ):
        super().__init__(message, field=field, fix=fix)
        self.source = source
        self.line = line
        self.col = col
