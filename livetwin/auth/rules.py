"""The access rule: scopes (read, write, admin) on namespaces, grants, principals, and what a
request needs. No I/O and no web framework: `livetwin.api.auth` applies it to HTTP requests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from livetwin import namespaces
from livetwin.errors import InvalidInput, LivetwinError, NotFound
from livetwin.namespaces import namespace_of

SCOPES = ("read", "write", "admin")  # each includes the ones before it
ALL = "*"  # the namespace that covers every namespace
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_POSTS = frozenset({"/api/auth/ticket"})  # POSTs that only let a reader read (a ticket)


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
    """What a request needs: a scope on a namespace (ALL for fleet-wide requests; None: on
    some namespace, for routes that filter by tenant themselves)."""

    scope: str
    namespace: str | None = ALL

    def check(self, principal: Principal) -> None:
        """Raise Forbidden unless `principal` holds this scope on this namespace."""
        if self.namespace is None:
            if any(principal.allows(self.scope, ns) for ns in principal.namespaces):
                return
        elif principal.allows(self.scope, self.namespace):
            return
        where = (
            "all namespaces ('*')"
            if self.namespace == ALL
            else "some namespace"
            if self.namespace is None
            else f"namespace '{self.namespace}'"
        )
        held = ", ".join(str(g) for g in principal.grants) or "nothing"
        raise Forbidden(
            f"this request needs '{self.scope}' on {where}; the credentials hold {held}",
            field="authorization",
            fix=f"use a token with --scope {self.scope} --namespace "
            f"{self.namespace if self.namespace not in (ALL, None) else '*'}",
        )


@dataclass(frozen=True)
class Access:
    """The namespaces a request may touch with its scope: every one (`namespaces` None) or a set.

    Made from the caller's grants (`of`); list routes filter by it, routes on one object `check`
    the object's namespace (404 outside it: another tenant's objects do not exist for you).
    """

    namespaces: frozenset[str] | None = None

    @classmethod
    def of(cls, principal: Principal | None, scope: str) -> Access:
        """What `principal` may reach with `scope`; no principal (auth off): everything."""
        if principal is None or principal.allows(scope, ALL):
            return cls(None)
        return cls(frozenset(ns for ns in principal.namespaces if principal.allows(scope, ns)))

    @property
    def fleet(self) -> bool:
        return self.namespaces is None

    def allows(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def allows_twin(self, twin_id: str) -> bool:
        return self.allows(namespace_of(twin_id))

    def check(self, namespace: str, what: str, fix: str = "check the name") -> None:
        """NotFound(`what`) unless `namespace` is reachable: the same answer as a missing one."""
        if not self.allows(namespace):
            raise NotFound(f"no {what}", field="namespace", fix=fix)

    def pick(self, namespace: str | None) -> Access:
        """Narrowed to `?namespace=` when given (404 outside this access, as for an object)."""
        if namespace is None:
            return self
        namespaces.check_namespace(namespace)
        self.check(namespace, f"namespace '{namespace}'", "use a namespace your token holds")
        return Access(frozenset({namespace}))

    def target(self, namespace: str | None) -> str:
        """The namespace a new object goes to: `namespace` if given and reachable, else the
        caller's only namespace, else `default`."""
        if namespace is None and self.namespaces is not None and len(self.namespaces) == 1:
            return next(iter(self.namespaces))
        namespace = namespaces.check_namespace(namespace)
        self.check(namespace, f"namespace '{namespace}'", "use a namespace your token holds")
        return namespace

    def filter(self, items: Iterable[dict], key: str = "namespace") -> list[dict]:
        """The items whose `key` (a namespace; absent: `default`) is reachable."""
        return [i for i in items if self.allows(i.get(key) or namespaces.DEFAULT)]


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
    method: str,
    path: str,
    twin: str | None,
    admin_paths: Iterable[str] = (),
    *,
    tenant: bool = False,
) -> Requirement:
    """The access rule (docs/auth.md): the method picks read or write; definitions need admin.

    - GET, HEAD, OPTIONS need `read`; POST, PUT, PATCH, DELETE need `write`, except the
      POSTs in READ_POSTS (a stream ticket: it only opens the stream), which need `read`.
    - `admin`: anything under /api/tokens and /api/devices (credentials), PUT/PATCH/DELETE
      under /api/types, /api/extractors, /api/mappings and /api/opcua (declaring types,
      extractors, import mappings and OPC UA connectors: these make the server call out),
      importing types
      (POST /api/types/import), creating a webhook (POST /api/webhooks)
      or declaring a function (PUT /api/functions/...): both make the server call out or run
      code; deleting a namespace (DELETE /api/namespaces/...); plus `admin_paths` prefixes.
    - The namespace is that of the twin in the path (`twin`), else ALL: fleet-wide routes
      need a grant on '*'; routes that filter by tenant (`tenant`: they take an `Access`,
      livetwin/api/tenancy.py) need the scope on some namespace.
    """
    method = method.upper()
    reads = method in READ_METHODS or (method == "POST" and path in READ_POSTS)
    scope = "read" if reads else "write"
    if (
        _under(path, ("/api/tokens", "/api/devices", *admin_paths))
        or (
            method in ("PUT", "PATCH", "DELETE")
            and _under(path, ("/api/types", "/api/extractors", "/api/mappings", "/api/opcua"))
        )
        or (method == "POST" and path.rstrip("/") in ("/api/webhooks", "/api/types/import"))
        or (method == "DELETE" and _under(path, ("/api/namespaces",)))
        or (method == "PUT" and path.startswith("/api/functions/"))
    ):
        scope = "admin"
    if twin is not None:
        return Requirement(scope, namespace_of(twin))
    return Requirement(scope, None if tenant else ALL)


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidInput(
            f"unknown scope '{scope}'", field="scope", fix=f"use one of: {', '.join(SCOPES)}"
        )
    return scope


def check_namespace(namespace: Any) -> str:
    """A grant's namespace: '*', or a name by the one namespace rule (`livetwin.namespaces`)."""
    if namespace == ALL:
        return ALL
    if namespace is None:
        raise InvalidInput("a namespace is needed", field="namespace", fix="use '*' or a name")
    return namespaces.check_namespace(namespace)
