"""Namespaces: the scope (a twin, a fleet) of functions, schedules, events, runs and models."""

from __future__ import annotations

import re
from typing import Any

from livetwin.errors import InvalidInput

DEFAULT = "default"
NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,199}")


def check_namespace(value: Any, field: str = "namespace") -> str:
    """A namespace (per twin or fleet): 1-200 characters of letters, digits, _ . : / -."""
    if value is None:
        return DEFAULT
    if not isinstance(value, str) or not NAMESPACE.fullmatch(value):
        raise InvalidInput(
            "namespace must be 1-200 letters, digits, '_', '.', ':', '/' or '-'",
            field=field,
            fix="e.g. 'default', 'fleet-a' or a twin id such as 'pump-1'",
        )
    return value
