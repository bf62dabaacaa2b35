"""Who may do what: the access rule (`rules`), API tokens (`tokens`), OIDC JWTs (`oidc`) and
stream tickets (`tickets`).

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
from livetwin.auth.tickets import TICKET_PREFIX, TicketStore
from livetwin.auth.tokens import TOKEN_PREFIX, TokenStore

__all__ = [
    "ALL",
    "SCOPES",
    "Access",
    "TICKET_PREFIX",
    "TOKEN_PREFIX",
    "Forbidden",
    "Grant",
    "JwtVerifier",
    "Principal",
    "Requirement",
    "TicketStore",
    "TokenStore",
    "Unauthorized",
    "check_namespace",
    "check_scope",
    "grants_from_claims",
    "namespace_of",
    "parse_grant",
    "requirement",
]
