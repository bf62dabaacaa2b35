"""The access rule: scopes (read, write, admin) on namespaces, grants, principals, and what a
request needs. No I/O and no web framework: `livetwin.api.auth` applies it to HTTP requests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from livetwin import namespaces
from livetwin.errors import InvalidInput, LivetwinError

SCOPES = ("read", "write", "admin")  # each includes the ones before it
ALL = "*"  # the namespace that covers every namespace
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Unauthorized(LivetwinError):
    """No credentials, or credentials that are malformed, unknown, revoked or expired (401)."""

    status = 401
    code = "unauthorized"


class Forbidden(LivetwinError):
    """Valid credentials without the scope or namespace the request needs (403)."""

    status = 403
    code = "forbidden"


@dataclass(frozen=True)
class Grant:
    """One permission: `scope` (read, write or admin) on `namespace` ("*" for all)."""

    scope: str
    namespace: str

    def covers(self, scope: str, namespace: str) -> bool:
        rank_ok = SCOPES.index(self.scope) >= SCOPES.index(scope)
        return rank_ok and self.namespace in (ALL, namespace)

    def __str__(self) -> str:
        return f"{self.scope}:{self.namespace}"


@dataclass(frozen=True)
class Principal:
    """Who made a request (a token id or a JWT subject) and what it may do."""

    subject: str
    grants: tuple[Grant, ...]

    def allows(self, scope: str, namespace: str) -> bool:
        return any(g.covers(scope, namespace) for g in self.grants)

    @property
    def namespaces(self) -> frozenset[str]:
        return frozenset(g.namespace for g in self.grants)


@dataclass(frozen=True)
class Requirement:
    """What a request needs: a scope on a namespace (ALL for fleet-wide requests)."""

    scope: str
    namespace: str = ALL

    def check(self, principal: Principal) -> None:
        """Raise Forbidden unless `principal` holds this scope on this namespace."""
        if principal.allows(self.scope, self.namespace):
            return
        where = "all namespaces ('*')" if self.namespace == ALL else f"namespace '{self.namespace}'"
        held = ", ".join(str(g) for g in principal.grants) or "nothing"
        raise Forbidden(
            f"this request needs '{self.scope}' on {where}; the credentials hold {held}",
            field="authorization",
            fix=f"use a token with --scope {self.scope} --namespace "
            f"{'*' if self.namespace == ALL else self.namespace}",
        )


def namespace_of(twin_id: str) -> str:
    """A twin's namespace: the part of its id before the first '/' (`plant-a/pump-1`).

    An id without '/' belongs to no namespace; only '*' grants reach it (returned as ALL).
    """
    head, slash, _ = twin_id.partition("/")
    return head if slash and head else ALL


def parse_grant(text: str) -> Grant | None:
    """`read:plant-a`, `write:*`, `admin:*` as a Grant; None for claims that are not ours."""
    scope, colon, namespace = text.partition(":")
    if not colon or scope not in SCOPES:
        return None
    try:
        return Grant(scope, check_namespace(namespace))
    except InvalidInput:
        return None


def grants_from_claims(claims: dict, claim: str = "permissions") -> tuple[Grant, ...]:
    """Grants in a JWT: the `claim` list (or space-separated string), else the `scope` string."""
    raw: Any = claims.get(claim)
    if raw is None:
        raw = claims.get("scope", "")
    items: Iterable = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else ()
    found = (parse_grant(item) for item in items if isinstance(item, str))
    return tuple(g for g in found if g is not None)


def requirement(
    method: str, path: str, twin: str | None, admin_paths: Iterable[str] = ()
) -> Requirement:
    """The access rule (docs/auth.md): the method picks read or write; definitions need admin.

    - GET, HEAD, OPTIONS need `read`; POST, PUT, PATCH, DELETE need `write`.
    - `admin`: anything under /api/tokens, PUT/PATCH/DELETE under /api/types, /api/extractors,
      /api/mappings and /api/opcua (declaring types, extractors, import mappings and OPC UA
      connectors: these make the server call out), importing types
      (POST /api/types/import), creating a webhook (POST /api/webhooks)
      or declaring a function (PUT /api/functions/...): both make the server call out or run
      code; plus `admin_paths` prefixes.
    - The namespace is that of the twin in the path (`twin`), else ALL: fleet-wide routes
      (lists, types, streams, services) need a grant on '*'.
    """
    method = method.upper()
    scope = "read" if method in READ_METHODS else "write"
    if (
        _under(path, ("/api/tokens", *admin_paths))
        or (
            method in ("PUT", "PATCH", "DELETE")
            and _under(path, ("/api/types", "/api/extractors", "/api/mappings", "/api/opcua"))
        )
        or (method == "POST" and path.rstrip("/") in ("/api/webhooks", "/api/types/import"))
        or (method == "PUT" and path.startswith("/api/functions/"))
    ):
        scope = "admin"
    return Requirement(scope, ALL if twin is None else namespace_of(twin))


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidInput(
            f"unknown scope '{scope}'", field="scope", fix=f"use one of: {', '.join(SCOPES)}"
        )
    return scope


def check_namespace(namespace: Any) -> str:
    """A grant's namespace: '*', or a name by the one namespace rule (`livetwin.namespaces`)
    that can head a twin id (the part before its first '/', see `namespace_of`): so no '/'."""
    if namespace == ALL:
        return ALL
    if namespace is None:
        raise InvalidInput("a namespace is needed", field="namespace", fix="use '*' or a name")
    namespaces.check_namespace(namespace)
    if "/" in namespace:
        raise InvalidInput(
            f"'{namespace}' cannot be the namespace of a twin: that is the part of the twin's id "
            "before its first '/'",
            field="namespace",
            fix=f"use '{namespace.partition('/')[0]}' (it covers twins such as '{namespace}')",
        )
    return namespace
