"""Who may do what: the access rule (`rules`), API tokens (`tokens`) and OIDC JWTs (`oidc`).

No web framework in here: `livetwin.api.auth` applies these to HTTP requests (docs/auth.md).
"""

from livetwin.auth.oidc import JwtVerifier
from livetwin.auth.rules import (
    ALL,
    SCOPES,
    Access,
    Forbidden,
    Grant,
    Principal,
    Requirement,
    Unauthorized,
    check_namespace,
    check_scope,
    grants_from_claims,
    namespace_of,
    parse_grant,
    requirement,
)
from livetwin.auth.tokens import TOKEN_PREFIX, TokenStore

__all__ = [
    "ALL",
    "SCOPES",
    "Access",
    "TOKEN_PREFIX",
    "Forbidden",
    "Grant",
    "JwtVerifier",
    "Principal",
    "Requirement",
    "TokenStore",
    "Unauthorized",
    "check_namespace",
    "check_scope",
    "grants_from_claims",
    "namespace_of",
    "parse_grant",
    "requirement",
]
