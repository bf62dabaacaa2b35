"""Namespaces: the tenants. One rule for their names, and the namespace of a twin id (the part
before its first '/', else `default`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from livetwin.errors import InvalidInput

DEFAULT = "default"
MAX_LENGTH = 64
NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}")


def check_namespace(value: Any, field: str = "namespace") -> str:
    """A namespace: 1-64 letters, digits, `_ . : -` (starting with a letter or digit), no '/'
    because it heads twin ids; None is `default`."""
    if value is None:
        return DEFAULT
    if isinstance(value, str) and NAMESPACE.fullmatch(value):
        return value
    head = value.partition("/")[0] if isinstance(value, str) else ""
    fix = (
        f"use '{head}': a twin such as '{value}' is in namespace '{head}'"
        if head and NAMESPACE.fullmatch(head)
        else "e.g. 'default', 'fleet-a' or 'home:7'"
    )
    raise InvalidInput(
        f"namespace must be 1-{MAX_LENGTH} letters, digits, '_', '.', ':' or '-' "
        "(starting with a letter or digit, no '/')",
        field=field,
        fix=fix,
    )


def owner_namespace(value: Any) -> str | None:
    """A spec's `namespace` field (types, extractors, import mappings) by the one rule, for a
    pydantic validator: ValueError (with the fix) for a bad one, None for `default` (the
    default is left unstored)."""
    try:
        value = check_namespace(value)
    except InvalidInput as exc:
        raise ValueError(f"{exc.message}; {exc.fix}") from None
    return None if value == DEFAULT else value


def namespace_of(twin_id: str) -> str:
    """A twin's namespace: the part of its id before the first '/' (`plant-a/pump-1` is in
    `plant-a`); an id without one (or starting with '/') is in `default`."""
    head, slash, _ = twin_id.partition("/")
    return head if slash and head else DEFAULT


def twin_filter_sql(column: str, namespaces: Iterable[str]) -> tuple[str, list[str]]:
    """A SQL condition (SQLite and PostgreSQL) true when the twin id in `column` lies in one of
    `namespaces`, and its arguments; an empty set matches nothing."""
    parts, args = [], []
    for ns in sorted(namespaces):
        if ns == DEFAULT:
            parts.append(f"({column} NOT LIKE '%/%' OR {column} LIKE '/%')")
        else:
            parts.append(f"{column} LIKE ? ESCAPE '!'")
            args.append(re.sub(r"([!%_])", r"!\1", ns) + "/%")
    return ("(" + " OR ".join(parts) + ")" if parts else "1 = 0"), args
