"""API tokens in the service database `auth` (`<data>/auth.db`, or a PostgreSQL schema of its own
when one is configured): only sha256 hashes of the secrets are kept.
"""

from __future__ import annotations

import hmac
import re
import secrets

from livetwin.auth.rules import Grant, Principal, Unauthorized, check_namespace, check_scope
from livetwin.auth.store import AuthStore, digest
from livetwin.errors import InvalidInput, NotFound
from livetwin.timefmt import format_ts, parse_duration

TOKEN_PREFIX = "lt_"
TOKEN_RE = re.compile(r"^lt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, scope TEXT NOT NULL, namespace TEXT NOT NULL,
    hash BLOB NOT NULL, created INTEGER NOT NULL, expires INTEGER, revoked INTEGER);
"""


class TokenStore(AuthStore):
    """API tokens: `create`, `list`, `revoke`, and `authenticate` a presented one.

    A token reads `lt_<12 hex id>_<43 url-safe chars>`: the id finds the row, the secret (32
    random bytes) is compared by hash in constant time. The plain token is shown once.
    """

    SCHEMA = SCHEMA

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
        self._write(
            "INSERT INTO tokens VALUES (?,?,?,?,?,?,?,NULL)",
            (token_id, name.strip(), scope, namespace, digest(secret), now, expires_at),
        )
        return {**self.get(token_id), "token": f"{TOKEN_PREFIX}{token_id}_{secret}"}

    def get(self, token_id: str) -> dict:
        rows = self._read("SELECT * FROM tokens WHERE id = ?", (token_id,))
        if not rows:
            raise NotFound(
                f"no token '{token_id}'", field="id", fix="list tokens with `livetwin token list`"
            )
        return self._public(rows[0])

    def list(self) -> list[dict]:
        return [self._public(r) for r in self._read("SELECT * FROM tokens ORDER BY created, id")]

    def revoke(self, token_id: str) -> dict:
        """Revoke a token from now on (kept in the list, marked revoked)."""
        self.get(token_id)
        self._write(
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
        rows = self._read(
            "SELECT hash, scope, namespace, expires, revoked FROM tokens WHERE id = ?", (token_id,)
        )
        # compare against a dummy hash for unknown ids too, so timing tells nothing
        stored, scope, namespace, expires, revoked = rows[0] if rows else (b"\0" * 32, "", "", 0, 0)
        if not hmac.compare_digest(stored, digest(secret)) or not rows:
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
