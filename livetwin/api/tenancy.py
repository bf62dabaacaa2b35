"""Tenancy for routes: the `Access` of a request (the namespaces its credentials reach with the
scope the request needs). A route becomes tenant-aware by taking `access: Access = TENANT`; the
auth middleware then lets namespace-scoped tokens in and the route filters by `access`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, Query, Request

from livetwin.auth import Access
from livetwin.errors import Conflict, NotFound

NAMESPACE_QUERY = Query(
    None,
    description="only this namespace (a token holding several picks one); "
    "default: every namespace the credentials reach",
)


def tenant_access(request: Request) -> Access:
    """The caller's Access: from the principal and scope the auth middleware found; every
    namespace when auth is off."""
    state = request.scope.get("state", {})
    return Access.of(state.get("principal"), state.get("scope", "read"))


TENANT: Any = Depends(tenant_access)


def target_namespace(
    access: Access = TENANT,
    namespace: str | None = Query(
        None, description="the namespace (default: the token's only one, else 'default')"
    ),
) -> str:
    """The `?namespace=` a route acts in, checked against the caller (`Access.target`)."""
    return access.target(namespace)


TARGET_NAMESPACE: Any = Depends(target_namespace)


def uses_tenancy(route: Any) -> bool:
    """Whether a route (or one of its dependencies) takes the caller's Access."""
    stack = [getattr(route, "dependant", None)]
    while stack:
        dependant = stack.pop()
        if dependant is None:
            continue
        if dependant.call is tenant_access:
            return True
        stack.extend(dependant.dependencies)
    return False


def check_type(platform: Any, name: str, access: Access) -> str:
    """The namespace of type `name`; 404 for a type the caller cannot reach, as for no type."""
    fix = f"declare it with PUT /api/types/{name}"
    return check_owner(platform.type_namespace, name, access, "twin type", fix)


def check_owner(owner: Callable[[str], str], name: str, access: Access, what: str, fix: str):
    """`owner(name)`: the namespace of the named object (NotFound for none); 404 as well for
    one the caller cannot reach."""
    namespace = owner(name)  # NotFound, with the fix
    access.check(namespace, f"{what} '{name}'", fix)
    return namespace


def claim_type(platform: Any, name: str, body: Any, access: Access) -> Any:
    """A type declaration with its namespace settled (`claim`)."""
    return claim("type", name, body, platform.type_namespace, access)


def claim(what: str, name: str, body: Any, owner: Callable[[str], str], access: Access) -> Any:
    """A declaration (type, extractor, import mapping) with its namespace settled: the body's
    `namespace` (reachable by the caller), else that of the object of that name (`owner`, as
    in `check_owner`), else the caller's only namespace (or `default`). Names are shared by all
    namespaces: one that another namespace holds is a 409."""
    if not isinstance(body, dict):
        return body  # the declaration's own check says what is wrong
    try:
        existing = owner(name)
    except NotFound:
        existing = None
    if existing is not None and not access.allows(existing):
        raise Conflict(
            f"the {what} name '{name}' is taken in another namespace",
            field="name",
            fix=f"{what} names are shared by all namespaces: choose another, e.g. 'plant-a-{name}'",
        )
    wanted = body.get("namespace")
    namespace = access.target(wanted if wanted is not None else existing)
    return {**body, "namespace": namespace}
