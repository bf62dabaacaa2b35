"""Tenancy for routes: the `Access` of a request (the namespaces its credentials reach with the
scope the request needs). A route becomes tenant-aware by taking `access: Access = TENANT`; the
auth middleware then lets namespace-scoped tokens in and the route filters by `access`.
"""

from __future__ import annotations

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
    namespace = platform.type_namespace(name)  # NotFound, with the fix
    access.check(namespace, f"twin type '{name}'", f"declare it with PUT /api/types/{name}")
    return namespace


def claim_type(platform: Any, name: str, body: Any, access: Access) -> Any:
    """A type declaration with its namespace settled: the body's `namespace` (reachable by the
    caller), else the type's current one, else the caller's only namespace (or `default`)."""
    if not isinstance(body, dict):
        return body  # put_type says what is wrong
    try:
        existing = platform.type_namespace(name)
    except NotFound:
        existing = None
    if existing is not None and not access.allows(existing):
        raise Conflict(
            f"the type name '{name}' is taken in another namespace",
            field="name",
            fix="type names are shared by all namespaces: choose another, e.g. 'plant-a-pump'",
        )
    wanted = body.get("namespace")
    namespace = access.target(wanted if wanted is not None else existing)
    return {**body, "namespace": namespace}
