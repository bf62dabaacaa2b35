"""The dashboard's sign-in over HTTP: `GET /api/auth/config` (public: how to sign in, no
secrets), `GET /api/auth/me` (who the credentials are) and `POST /api/auth/ticket` (a stream
ticket, for the one request a browser cannot give a header: EventSource). docs/auth.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from livetwin.api.tenancy import TENANT
from livetwin.auth import Access, Principal, Unauthorized
from livetwin.errors import Conflict, LivetwinError

STREAM_PATHS = frozenset({"/api/stream"})  # the routes a stream ticket opens
TICKET_FIX = "POST /api/auth/ticket (with your bearer token) and open /api/stream?ticket=ltt_..."


@dataclass(frozen=True)
class LoginConfig:
    """How the dashboard signs in: the auth mode, and for OIDC the issuer (discovery at
    `<issuer>/.well-known/openid-configuration`), the public client id, scopes and audience."""

    mode: str = "open"
    issuer: str | None = None
    client_id: str | None = None
    scopes: str | None = None
    audience: str | None = None


class OidcLogin(BaseModel):
    """'Sign in with OIDC': authorization code + PKCE against `issuer` (a public client)."""

    enabled: bool
    issuer: str | None = None
    client_id: str | None = None
    scopes: str = Field("openid", description="space-separated scopes the dashboard asks for")
    audience: str | None = Field(None, description="sent as `audience` (Auth0-style IdPs)")
    why_not: str | None = Field(None, description="when not enabled on an oidc server: the fix")


class AuthConfig(BaseModel):
    """What the dashboard needs before anyone signs in (public; no secrets)."""

    mode: Literal["open", "tokens", "oidc"]
    login: bool = Field(description="whether requests need credentials (mode is not open)")
    tokens: bool = Field(description="whether API tokens (lt_...) are accepted")
    oidc: OidcLogin


class Me(BaseModel):
    """Who the presented credentials are and what they reach."""

    subject: str | None = Field(description="token:<id> or jwt:<sub>; null when auth is off")
    mode: Literal["open", "tokens", "oidc"]
    grants: list[str] = Field(examples=[["read:plant-a"]])
    scopes: list[str] = Field(description="the scopes held on some namespace")
    namespaces: list[str] = Field(description="'*' is every namespace")
    fleet: bool = Field(description="whether the credentials read every namespace")


class Ticket(BaseModel):
    """A stream ticket: pass it as `?ticket=` to /api/stream once, before it expires."""

    ticket: str = Field(examples=["ltt_0123456789abcdef_..."])
    expires: str
    expires_in: int = Field(description="seconds")
    stream: str = "/api/stream"


def auth_config(config: LoginConfig) -> AuthConfig:
    why = None
    if config.mode == "oidc" and not config.issuer:
        why = "set the issuer: --issuer or LIVETWIN_JWT_ISSUER"
    elif config.mode == "oidc" and not config.client_id:
        why = "set the dashboard's client id: --oidc-client-id or LIVETWIN_OIDC_CLIENT_ID"
    oidc = config.mode == "oidc" and why is None
    return AuthConfig(
        mode=config.mode,  # type: ignore[arg-type]
        login=config.mode != "open",
        tokens=config.mode != "open",
        oidc=OidcLogin(
            enabled=oidc,
            issuer=config.issuer if oidc else None,
            client_id=config.client_id if oidc else None,
            scopes=config.scopes or "openid",
            audience=config.audience if oidc else None,
            why_not=why,
        ),
    )


def describe(principal: Principal | None, mode: str) -> Me:
    if principal is None:
        return Me(
            subject=None, mode=mode, grants=["admin:*"], scopes=["admin"], namespaces=["*"],
            fleet=True,
        )  # fmt: skip
    return Me(
        subject=principal.subject,
        mode=mode,  # type: ignore[arg-type]
        grants=[str(g) for g in principal.grants],
        scopes=sorted({g.scope for g in principal.grants}),
        namespaces=sorted(principal.namespaces),
        fleet=Access.of(principal, "read").fleet,
    )


def login_routes(app: FastAPI) -> None:
    """Add the /api/auth routes; `install_auth` sets `app.state.login` and `.tickets`."""

    def config_of(request: Request) -> LoginConfig:
        return getattr(request.app.state, "login", None) or LoginConfig()

    @app.get("/api/auth/config", tags=["auth"])
    def get_auth_config(request: Request) -> AuthConfig:
        """How to sign in (public): the mode, and for 'Sign in with OIDC' the issuer, client
        id, scopes and audience."""
        return auth_config(config_of(request))

    # these two take an Access (TENANT) so that credentials of any namespace may call them
    @app.get("/api/auth/me", tags=["auth"])
    def get_me(request: Request, access: Access = TENANT) -> Me:
        """Who the credentials are: subject, grants, scopes and namespaces."""
        principal = request.scope.get("state", {}).get("principal")
        return describe(principal, config_of(request).mode)

    @app.post("/api/auth/ticket", tags=["auth"], status_code=201)
    async def create_ticket(request: Request, access: Access = TENANT) -> Ticket:
        """A single-use stream ticket (60 s) for `/api/stream?ticket=` (EventSource cannot
        send a header); it carries the caller's namespaces with `read` only."""
        principal = request.scope.get("state", {}).get("principal")
        tickets = getattr(request.app.state, "tickets", None)
        if principal is None or tickets is None:
            raise Conflict(
                "authentication is off on this server: the stream needs no ticket",
                field="ticket",
                fix="open /api/stream without a ticket",
            )
        return Ticket(**await run_in_threadpool(tickets.issue, principal))


def stream_ticket(path: str, scope: Scope) -> str | None:
    """The `?ticket=` of a request to the live stream; None without one. Credentials in a URL
    are refused otherwise: `?access_token=` anywhere, a ticket on any other route."""
    raw = scope.get("query_string", b"")
    if b"access_token" not in raw and b"ticket" not in raw:
        return None  # most requests: nothing to parse
    query = parse_qs(raw.decode("latin-1"))
    if "access_token" in query:
        raise LivetwinError(
            "credentials in the URL (?access_token=) are refused: URLs end up in logs, proxies "
            "and browser history",
            field="access_token",
            fix="send 'Authorization: Bearer <token>'; for the live stream (EventSource) "
            + TICKET_FIX,
        )
    ticket = query.get("ticket")
    if not ticket:
        return None
    if path not in STREAM_PATHS:
        raise Unauthorized(
            "a stream ticket opens only the live stream",
            field="ticket",
            fix="send 'Authorization: Bearer <token>' here; tickets are for /api/stream",
        )
    return ticket[0]
