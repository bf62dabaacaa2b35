"""Stream tickets: short-lived, single-use credentials for the one request that cannot send an
Authorization header, the browser's EventSource on `/api/stream` (docs/auth.md#stream-tickets).

Kept in the service database `auth` (table `tickets`), so any front end can redeem a ticket
another one issued; only sha256 hashes of the secrets are stored.
"""

from __future__ import annotations

import hmac
import re
import secrets

from livetwin.auth.rules import Grant, Principal, Unauthorized, parse_grant
from livetwin.auth.store import AuthStore, digest
from livetwin.ports import Clock, OpenServiceDB
from livetwin.timefmt import format_ts, wall_clock_ms

TICKET_PREFIX = "ltt_"
TICKET_RE = re.compile(r"^ltt_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
TICKET_TTL_MS = 60_000
FIX = "get a fresh one with POST /api/auth/ticket right before opening the stream"


class TicketStore(AuthStore):
    """`issue` a ticket for a principal (read grants only, `ttl_ms`), `redeem` it once.

    A ticket reads `ltt_<16 hex id>_<43 url-safe chars>`. Redeeming deletes it, so a ticket
    that shows up again (a proxy log, a browser history) opens nothing; expired ones are swept
    whenever a new one is issued.
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS tickets (
        id TEXT PRIMARY KEY, hash BLOB NOT NULL, subject TEXT NOT NULL, grants TEXT NOT NULL,
        expires INTEGER NOT NULL);
    """

    def __init__(
        self, open_db: OpenServiceDB, *, clock: Clock = wall_clock_ms, ttl_ms: int = TICKET_TTL_MS
    ):
        super().__init__(open_db, clock=clock)
        self.ttl_ms = ttl_ms

    def issue(self, principal: Principal) -> dict:
        """A new ticket carrying `principal`'s subject and its grants narrowed to `read`."""
        now = self.clock()
        ticket_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        grants = " ".join(sorted({f"read:{g.namespace}" for g in principal.grants}))
        with self._opened().write() as conn:
            conn.execute("DELETE FROM tickets WHERE expires <= ?", (now,))
            conn.execute(
                "INSERT INTO tickets VALUES (?,?,?,?,?)",
                (ticket_id, digest(secret), principal.subject, grants, now + self.ttl_ms),
            )
        return {
            "ticket": f"{TICKET_PREFIX}{ticket_id}_{secret}",
            "expires": format_ts(now + self.ttl_ms),
            "expires_in": self.ttl_ms // 1000,
        }

    def redeem(self, ticket: str) -> Principal:
        """The principal a ticket was issued to; Unauthorized when malformed, unknown, used or
        expired. The ticket is gone afterwards."""
        match = TICKET_RE.match(ticket)
        if match is None:
            raise Unauthorized(
                "malformed stream ticket", field="ticket", fix=f"pass ?ticket=ltt_...: {FIX}"
            )
        ticket_id, secret = match.groups()
        with self._opened().write() as conn:
            rows = conn.execute(
                "SELECT hash, subject, grants, expires FROM tickets WHERE id = ?", (ticket_id,)
            ).fetchall()
            stored, subject, grants, expires = rows[0] if rows else (b"\0" * 32, "", "", 0)
            if not hmac.compare_digest(stored, digest(secret)) or not rows:
                raise Unauthorized(
                    "unknown or already used stream ticket (a ticket opens one stream)",
                    field="ticket",
                    fix=FIX,
                )
            conn.execute("DELETE FROM tickets WHERE id = ?", (ticket_id,))
        if self.clock() >= expires:
            raise Unauthorized(
                f"this stream ticket expired at {format_ts(expires)}", field="ticket", fix=FIX
            )
        found = (parse_grant(g) for g in grants.split())
        return Principal(subject, tuple(g for g in found if isinstance(g, Grant)))
