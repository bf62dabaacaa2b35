"""API tokens in the service database `auth` (`<data>/auth.db`, or a PostgreSQL schema of its own
when one is configured): only sha256 hashes of the secrets are kept.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import threading
from pathlib import Path

from livetwin.auth.rules import Grant, Principal, Unauthorized, check_namespace, check_scope
from livetwin.errors import InvalidInput, NotFound
from livetwin.ports import Clock, OpenServiceDB
from livetwin.store.servicedb import ServiceDB, open_service_db
from livetwin.timefmt import format_ts, parse_duration, wall_clock_ms

TOKEN_PREFIX = "lt_"
TOKEN_RE = re.compile(r"^lt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
DB_NAME = "auth"  # the file auth.db, the PostgreSQL schema <schema>_auth
SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, scope TEXT NOT NULL, namespace TEXT NOT NULL,
    hash BLOB NOT NULL, created INTEGER NOT NULL, expires INTEGER, revoked INTEGER);
"""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class TokenStore:
    """API tokens: `create`, `list`, `revoke`, and `authenticate` a presented one.

    A token reads `lt_<12 hex id>_<43 url-safe chars>`: the id finds the row, the secret (32
    random bytes) is compared by hash in constant time. The plain token is shown once.
    `open_db` opens the service database (the deployment's storage choice, see ports.py).
    """

    def __init__(self, open_db: OpenServiceDB, *, clock: Clock = wall_clock_ms):
        self.open_db, self.clock = open_db, clock
        self._db: ServiceDB | None = None
        self._opening = threading.Lock()

    @classmethod
    def in_directory(
        cls, directory: str | Path, *, database_url: str | None = None, clock: Clock = wall_clock_ms
    ) -> TokenStore:
        """The token store of a data directory without a running platform (the CLI's)."""
        open_db = functools.partial(open_service_db, directory, database_url=database_url)
        return cls(open_db, clock=clock)

    def start(self) -> TokenStore:
        with self._opening:
            if self._db is None:
                self._db = self.open_db(DB_NAME, SCHEMA)
        return self

    def stop(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def __enter__(self) -> TokenStore:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _opened(self) -> ServiceDB:
        return self._db or self.start()._db

    def _read(self, query: str, args: tuple = ()) -> list[tuple]:
        return self._opened().read().execute(query, args).fetchall()

    def _write(self, query: str, args: tuple) -> None:
        with self._opened().write() as conn:
            conn.execute(query, args)

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
            (token_id, name.strip(), scope, namespace, _digest(secret), now, expires_at),
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
