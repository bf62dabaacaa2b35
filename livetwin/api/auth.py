"""Auth over HTTP: an ASGI middleware that checks every /api request, and the /api/tokens routes.

`install_auth(app, platform, mode=...)` picks the mode: `open`, `tokens` or `oidc` (JWTs from a
JWKS URL, and API tokens too). The rule itself lives in `livetwin.auth` (docs/auth.md).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from livetwin.api.app import error_response
from livetwin.api.body import parse_body, read_body
from livetwin.api.devices import check_device_route
from livetwin.api.login import LoginConfig, stream_ticket
from livetwin.api.openapi import guarded, secure
from livetwin.api.tenancy import uses_tenancy
from livetwin.auth import (
    ALL,
    TOKEN_PREFIX,
    Forbidden,
    JwtVerifier,
    Principal,
    Requirement,
    TicketStore,
    TokenStore,
    Unauthorized,
    namespace_of,
    requirement,
)
from livetwin.auth.devices import DEVICE_PREFIX, DevicePrincipal, DeviceStore
from livetwin.errors import InvalidInput, LivetwinError, NotFound, PayloadTooLarge

log = logging.getLogger(__name__)

MODES = ("open", "tokens", "oidc")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
TWIN_PARAMS = ("twin_id", "twin")  # path parameters that name a twin (and so a namespace)
PUBLIC = ("/api/health", "/api/auth/config")  # liveness; how to sign in: no twin data
NAMESPACED_INGEST = "/api/ingest"  # its body's twins are checked for namespaced tokens


def default_mode(host: str) -> str:
    """`open` when only this machine can connect, `tokens` otherwise."""
    return "open" if host in LOOPBACK else "tokens"


class Authenticator:
    """Turns a presented bearer credential into a Principal: API tokens, and JWTs if configured."""

    def __init__(
        self,
        tokens: TokenStore | None,
        jwt: JwtVerifier | None = None,
        devices: DeviceStore | None = None,
    ):
        self.tokens, self.jwt, self.devices = tokens, jwt, devices

    async def principal(self, credential: str) -> Principal:
        if credential.startswith(DEVICE_PREFIX) and self.devices is not None:
            return self.devices.authenticate(credential)  # one indexed read
        if credential.startswith(TOKEN_PREFIX) and self.tokens is not None:
            return self.tokens.authenticate(credential)  # one indexed read
        if self.jwt is not None and credential.count(".") == 2:
            # a JWKS fetch on a key-cache miss blocks: keep it off the event loop
            return await anyio.to_thread.run_sync(self.jwt.authenticate, credential)
        raise Unauthorized(
            "malformed bearer credential",
            field="authorization",
            fix="send 'Authorization: Bearer <token>' with a token from `livetwin token create`"
            + (" or a JWT from the identity provider" if self.jwt else ""),
        )


class AuthMiddleware:
    """Checks every request under /api and /ngsi-ld (and /metrics) before any route runs.

    Routes are found generically through the app's router, so route modules added later are
    covered without being listed here.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        api: FastAPI,
        authenticator: Authenticator,
        public: Iterable[str] = PUBLIC,
        admin_paths: Iterable[str] = (),
        max_body: int = 32 * 1024 * 1024,
        tickets: TicketStore | None = None,
    ):
        self.app, self.api, self.authenticator = app, api, authenticator
        self.tickets = tickets
        self.public = frozenset(public)
        self.admin_paths = tuple(admin_paths)
        self.max_body = max_body
        self._tenant_aware: dict[int, bool] = {}

    def protects(self, scope: Scope) -> bool:
        path = _route_path(scope)
        return guarded(path) and path not in self.public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.protects(scope):
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._principal(scope)
            route, twin = self._route(scope)
            tenant = route is not None and self._tenancy(route)
            path = _route_path(scope)
            need = requirement(scope["method"], path, twin, self.admin_paths, tenant=tenant)
            if isinstance(principal, DevicePrincipal):  # its own twins' observations only
                check_device_route(scope["method"], path, principal)
                receive = await self._check_ingest_body(scope, receive, principal.check_row)
            elif self._ingest_by_namespace(scope, need, principal):
                receive = await self._check_ingest_body(
                    scope, receive, functools.partial(_check_writable, principal)
                )
            else:
                _check_hiding_twins(need, principal, twin)
        except LivetwinError as exc:
            response = error_response(exc)
            if exc.status == 401:
                response.headers["www-authenticate"] = 'Bearer realm="livetwin"'
            await response(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["principal"], state["scope"] = principal, need.scope  # for tenant_access
        await self.app(scope, receive, send)

    async def _principal(self, scope: Scope) -> Principal:
        """The caller: from a stream ticket on the live stream (livetwin/api/login.py), else
        from the Authorization header."""
        ticket = stream_ticket(_route_path(scope), scope)
        if ticket is not None and self.tickets is not None:
            return await anyio.to_thread.run_sync(self.tickets.redeem, ticket)
        return await self.authenticator.principal(_credential(scope))

    def _tenancy(self, route: Any) -> bool:
        """Whether the route filters by tenant itself (cached per route)."""
        known = self._tenant_aware.get(id(route))
        if known is None:
            known = self._tenant_aware[id(route)] = uses_tenancy(route)
        return known

    def _route(self, scope: Scope) -> tuple[Any, str | None]:
        """The route the router will pick and the twin named in its path (`{twin_id}`), if any.

        Like the router: the first route whose path and method match, else the first whose
        path matches (the router then answers 405). Regexes only: no scope copies.
        """
        path = _route_path(scope)
        fallback: tuple[Any, str | None] | None = None
        for route in self.api.router.routes:
            regex = getattr(route, "path_regex", None)
            found = regex.match(path) if regex is not None else None
            if found is None:
                continue
            names = found.groupdict()
            twin = next((names[p] for p in TWIN_PARAMS if p in names), None)
            methods = getattr(route, "methods", None)
            if methods is None or scope["method"] in methods:
                return route, twin
            fallback = fallback or (None, twin)
        return fallback if fallback else (None, None)

    @staticmethod
    def _ingest_by_namespace(scope: Scope, need: Requirement, principal: Principal) -> bool:
        """POST /api/ingest from credentials that may write some namespaces but not all."""
        return (
            _route_path(scope) == NAMESPACED_INGEST
            and scope["method"] == "POST"
            and not principal.allows(need.scope, ALL)
            and any(principal.allows("write", ns) for ns in principal.namespaces)
        )

    async def _check_ingest_body(
        self, scope: Scope, receive: Receive, check: Callable[[str, str], None]
    ) -> Receive:
        """Every observation's twin (and parent) must pass `check(field, twin)`, which raises
        when the caller may not write it: then the request is refused and nothing is written.

        The body is read here (within the size limit) and replayed to the route unchanged.
        """
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                raise PayloadTooLarge(
                    f"body exceeds the limit of {self.max_body} bytes",
                    field="body",
                    fix="send smaller batches",
                )
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        headers = dict(scope["headers"])
        body = await run_in_threadpool(parse_body, raw, headers.get(b"content-type", b"").decode())
        rows = body if isinstance(body, list) else [body]
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                continue  # the route rejects it; nothing is written
            for field in ("twin", "parent"):
                twin = row.get(field)
                if isinstance(twin, str):
                    try:
                        check(field, twin)
                    except LivetwinError as exc:
                        exc.field = f"[{i}].{field}"
                        raise
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        return replay


def _check_writable(principal: Principal, field: str, twin: str) -> None:
    """Forbidden unless `principal` may write in the namespace of `twin`."""
    Requirement("write", namespace_of(twin)).check(principal)


def _check_hiding_twins(need: Requirement, principal: Principal, twin: str | None) -> None:
    """`need.check`, except that a twin in a namespace the caller cannot even read answers 404,
    as a twin that does not exist does: another tenant's twins are not revealed."""
    try:
        need.check(principal)
    except Forbidden:
        if twin is not None and not principal.allows("read", need.namespace):
            raise NotFound(
                f"no twin '{twin}'",
                field="twin_id",
                fix="check the id; your credentials reach the namespaces "
                + ", ".join(sorted(principal.namespaces)),
            ) from None
        raise


def _route_path(scope: Scope) -> str:
    """The path the router sees (without a proxy's root_path prefix)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _credential(scope: Scope) -> str:
    """The bearer credential of the Authorization header (EventSource: see `stream_ticket`)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            kind, _, credential = value.decode("latin-1").strip().partition(" ")
            if kind.lower() != "bearer" or not credential.strip():
                raise Unauthorized(
                    "the Authorization header is not 'Bearer <token>'",
                    field="authorization",
                    fix="send 'Authorization: Bearer <token>'",
                )
            return credential.strip()
    raise Unauthorized(
        "this endpoint needs a bearer token",
        field="authorization",
        fix="send 'Authorization: Bearer <token>' (create one with `livetwin token create`)",
    )


def auth_routes(app: FastAPI, tokens: TokenStore) -> None:
    """`/api/tokens`: list, create (the secret is shown once) and revoke API tokens (admin)."""

    @app.get("/api/tokens", tags=["auth"])
    def list_tokens() -> list[dict]:
        """All tokens (never their secrets)."""
        return tokens.list()

    @app.post(
        "/api/tokens",
        tags=["auth"],
        status_code=201,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "example": {"name": "ci", "scope": "write", "namespace": "plant-a"}
                    }
                },
            }
        },
    )
    async def create_token(request: Request) -> dict:
        """Create a token: `{name, scope, namespace, expires?}`; `token` is shown only here."""
        body = await read_body(request, 64 * 1024)
        if not isinstance(body, dict):
            raise InvalidInput(
                "the body must be a JSON object", field="body", fix='send {"name": "ci", ...}'
            )
        unknown = set(body) - {"name", "scope", "namespace", "expires"}
        if unknown:
            raise InvalidInput(
                f"unknown field(s): {', '.join(sorted(unknown))}",
                field=sorted(unknown)[0],
                fix="use name, scope, namespace and expires",
            )
        return tokens.create(
            name=body.get("name", ""),
            scope=body.get("scope", "read"),
            namespace=body.get("namespace", "*"),
            expires=body.get("expires"),
        )

    @app.delete("/api/tokens/{token_id}", tags=["auth"])
    def revoke_token(token_id: str) -> dict:
        """Revoke a token from now on."""
        return tokens.revoke(token_id)


def install_auth(
    app: FastAPI,
    platform: Any,
    mode: str = "tokens",
    *,
    host: str | None = None,
    jwks_url: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    claim: str = "permissions",
    public: Iterable[str] = PUBLIC,
    admin_paths: Iterable[str] = (),
    oidc_client_id: str | None = None,
    oidc_scopes: str | None = None,
) -> TokenStore | None:
    """Protect `app` (call it after all routes are added); returns the token store, if any.

    `open` checks nothing and logs a loud warning. `tokens` checks API tokens. `oidc` also
    accepts JWTs signed by a key from `jwks_url` with claims such as `read:plant-a`; the
    dashboard signs in against `issuer` as the public client `oidc_client_id`.
    """
    if mode not in MODES:
        raise InvalidInput(
            f"unknown auth mode '{mode}'", field="auth", fix=f"use one of: {', '.join(MODES)}"
        )
    app.state.login = LoginConfig(mode, issuer, oidc_client_id, oidc_scopes, audience)
    if mode == "open":
        where = host or "this server"
        log.warning(
            "AUTHENTICATION IS OFF (--auth open): anyone who can reach %s can read and write "
            "every twin. Use --auth tokens before exposing it.",
            where,
        )
        return None
    if mode == "oidc" and not jwks_url:
        raise InvalidInput(
            "--auth oidc needs the identity provider's JWKS URL",
            field="jwks_url",
            fix="pass --jwks-url https://idp.example.com/.well-known/jwks.json",
        )
    tokens = TokenStore(platform.open_db, clock=platform.clock).start()
    devices = getattr(platform, "devices", None)  # credentials of devices (docs/devices.md)
    verifier = (
        JwtVerifier(
            jwks_url, audience=audience, issuer=issuer, claim=claim, outbound=platform.outbound
        )
        if mode == "oidc"
        else None
    )
    tickets = TicketStore(platform.open_db, clock=platform.clock).start()
    auth_routes(app, tokens)
    app.add_middleware(
        AuthMiddleware,
        api=app,
        authenticator=Authenticator(tokens, verifier, devices),
        public=public,
        admin_paths=admin_paths,
        max_body=platform.settings.max_body_bytes,
        tickets=tickets,
    )
    app.state.tokens, app.state.tickets = tokens, tickets
    secure(app, frozenset(public))  # the document declares the bearer scheme and 401/403
    _close_on_shutdown(app, tokens, tickets)
    return tokens


def _close_on_shutdown(app: FastAPI, *stores: TokenStore | TicketStore) -> None:
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a):
        try:
            async with inner(a) as state:
                yield state
        finally:
            for store in stores:
                store.stop()

    app.router.lifespan_context = lifespan
