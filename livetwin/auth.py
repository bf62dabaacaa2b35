"""API tokens with scopes per namespace, OIDC/JWT permission claims, and the access rule.

No web framework in here: `livetwin.api.auth` applies these to HTTP requests.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livetwin.errors import InvalidInput, LivetwinError, NotFound
from livetwin.timefmt import format_ts, parse_duration

SCOPES = ("read", "write", "admin")  # each includes the ones before it
ALL = "*"  # the namespace that covers every namespace
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_PREFIX = "lt_"
NAMESPACE_RE = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")
TOKEN_RE = re.compile(r"^lt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, scope TEXT NOT NULL, namespace TEXT NOT NULL,
    hash BLOB NOT NULL, created INTEGER NOT NULL, expires INTEGER, revoked INTEGER);
"""


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
    if not colon or scope not in SCOPES or not NAMESPACE_RE.match(namespace):
        return None
    return Grant(scope, namespace)


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
    - `admin`: anything under /api/tokens, and PUT/PATCH/DELETE under /api/types and
      /api/extractors (declaring types and extractors), plus `admin_paths` prefixes.
    - The namespace is that of the twin in the path (`twin`), else ALL: fleet-wide routes
      (lists, types, streams, services) need a grant on '*'.
    """
    method = method.upper()
    scope = "read" if method in READ_METHODS else "write"
    if _under(path, ("/api/tokens", *admin_paths)) or (
        method in ("PUT", "PATCH", "DELETE") and _under(path, ("/api/types", "/api/extractors"))
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


def check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not NAMESPACE_RE.match(namespace):
        raise InvalidInput(
            f"invalid namespace {namespace!r}",
            field="namespace",
            fix="use '*' or letters, digits, '-', '_', '.' (at most 64, no '/')",
        )
    return namespace


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class TokenStore:
    """API tokens in `<directory>/auth.db` (SQLite, WAL): only sha256 hashes are kept.

    A token reads `lt_<12 hex id>_<43 url-safe chars>`: the id finds the row, the secret (32
    random bytes) is compared by hash in constant time. The plain token is shown once.
    """

    def __init__(self, directory: str | Path, *, clock=None):
        self.path = Path(directory) / "auth.db"
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    @classmethod
    def of(cls, platform) -> TokenStore:
        """The token store of a platform (its data directory and clock)."""
        return cls(platform.path, clock=platform.clock)

    def start(self) -> TokenStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=10000")
        db.executescript(SCHEMA)
        self._db = db
        return self

    def stop(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> TokenStore:
        return self.start() if self._db is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _sql(self, query: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            if self._db is None:
                self.start()
            return self._db.execute(query, args).fetchall()

    def create(
        self, *, name: str, scope: str, namespace: str, expires: str | int | None = None
    ) -> dict:
        """A new token; the result's `token` is the only time the secret is shown."""
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
            raise InvalidInput(
                "a token needs a name of 1-100 characters",
                field="name",
                fix="name it after its user, e.g. --name ci",
            )
        check_scope(scope)
        check_namespace(namespace)
        now = self.clock()
        expires_at = None
        if expires not in (None, "", 0):
            try:
                expires_at = now + (
                    expires if isinstance(expires, int) else parse_duration(str(expires))
                )
            except ValueError as exc:
                raise InvalidInput(str(exc), field="expires", fix="e.g. 90d or 12h") from None
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        self._sql(
            "INSERT INTO tokens VALUES (?,?,?,?,?,?,?,NULL)",
            (token_id, name.strip(), scope, namespace, _digest(secret), now, expires_at),
        )
        return {**self.get(token_id), "token": f"{TOKEN_PREFIX}{token_id}_{secret}"}

    def get(self, token_id: str) -> dict:
        rows = self._sql("SELECT * FROM tokens WHERE id = ?", (token_id,))
        if not rows:
            raise NotFound(
                f"no token '{token_id}'", field="id", fix="list tokens with `livetwin token list`"
            )
        return self._public(rows[0])

    def list(self) -> list[dict]:
        return [self._public(r) for r in self._sql("SELECT * FROM tokens ORDER BY created, id")]

    def revoke(self, token_id: str) -> dict:
        """Revoke a token from now on (kept in the list, marked revoked)."""
        self.get(token_id)
        self._sql(
            "UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL",
            (self.clock(), token_id),
        )
        return self.get(token_id)

    def authenticate(self, token: str) -> Principal:
        """The principal of a presented token; Unauthorized when malformed, unknown or stale."""
        match = TOKEN_RE.match(token)
        if match is None:
            raise Unauthorized(
                "malformed API token",
                field="authorization",
                fix="send 'Authorization: Bearer lt_...' with a token from `livetwin token create`",
            )
        token_id, secret = match.groups()
        rows = self._sql(
            "SELECT hash, scope, namespace, expires, revoked FROM tokens WHERE id = ?", (token_id,)
        )
        # compare against a dummy hash for unknown ids too, so timing tells nothing
        stored, scope, namespace, expires, revoked = rows[0] if rows else (b"\0" * 32, "", "", 0, 0)
        if not hmac.compare_digest(stored, _digest(secret)) or not rows:
            raise Unauthorized(
                "unknown API token",
                field="authorization",
                fix="create one with `livetwin token create`",
            )
        if revoked is not None:
            raise Unauthorized(
                "this API token was revoked", field="authorization", fix="create a new token"
            )
        if expires is not None and self.clock() >= expires:
            raise Unauthorized(
                f"this API token expired at {format_ts(expires)}",
                field="authorization",
                fix="create a new token (--expires sets its lifetime)",
            )
        return Principal(f"token:{token_id}", (Grant(scope, namespace),))

    @staticmethod
    def _public(row: tuple) -> dict:
        token_id, name, scope, namespace, _, created, expires, revoked = row
        return {
            "id": token_id,
            "name": name,
            "scope": scope,
            "namespace": namespace,
            "created": format_ts(created),
            "expires": format_ts(expires) if expires is not None else None,
            "revoked": format_ts(revoked) if revoked is not None else None,
        }


class JwtVerifier:
    """Bearer JWTs signed by a key from a JWKS URL (OIDC); grants from permission claims."""

    def __init__(
        self,
        jwks_url: str,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        claim: str = "permissions",
        algorithms: tuple[str, ...] = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256"),
        leeway_s: float = 30.0,
    ):
        import jwt

        self._jwt = jwt
        self.client = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=10)
        self.audience, self.issuer, self.claim = audience, issuer, claim
        self.algorithms, self.leeway_s = list(algorithms), leeway_s

    def authenticate(self, token: str) -> Principal:
        """Verify signature, expiry, audience and issuer; Unauthorized with the reason if not."""
        jwt = self._jwt
        try:
            key = self.client.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"verify_aud": self.audience is not None, "require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized(
                "the bearer JWT has expired", field="authorization", fix="get a fresh token"
            ) from None
        except jwt.PyJWKClientConnectionError as exc:
            raise Unauthorized(
                f"cannot fetch the signing keys: {exc}",
                field="authorization",
                fix="check the server's --jwks-url and that the identity provider is reachable",
            ) from None
        except (jwt.PyJWTError, ValueError) as exc:
            raise Unauthorized(
                f"invalid bearer JWT: {exc}",
                field="authorization",
                fix="send a JWT issued by the configured identity provider",
            ) from None
        subject = str(claims.get("sub", "?"))
        return Principal(f"jwt:{subject}", grants_from_claims(claims, self.claim))
