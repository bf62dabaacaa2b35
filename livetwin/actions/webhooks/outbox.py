"""The durable webhook outbox: subscriptions, deliveries and the journal cursor in the service
database `webhooks` (`<data>/webhooks.db`, or its PostgreSQL schema), and how the deliveries of
a journal entry, a live state change or a notice are built.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from livetwin.actions.webhooks.subscriptions import Filters, Subscription, filters_from_json
from livetwin.engine.events import Notice, notice_name

if TYPE_CHECKING:
    from livetwin.ports import OpenServiceDB
    from livetwin.store.servicedb import Connection

log = logging.getLogger(__name__)

STATUSES = ("pending", "delivered", "dead")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    filters TEXT NOT NULL,
    from_seq INTEGER NOT NULL,           -- journal seq at creation: later events only
    created INTEGER NOT NULL,            -- epoch ms
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    last_attempt INTEGER,
    last_status INTEGER,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    n INTEGER PRIMARY KEY AUTOINCREMENT,  -- outbox order; each subscription sends in this order
    id TEXT NOT NULL UNIQUE,              -- X-Livetwin-Delivery, stable across retries
    sub_id TEXT NOT NULL,
    seq INTEGER,                          -- journal seq (state, created); NULL for notices
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER,
    last_error TEXT,
    created INTEGER NOT NULL,
    last_attempt INTEGER,
    delivered INTEGER
);
CREATE INDEX IF NOT EXISTS deliveries_queue ON deliveries (sub_id, status, n);
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status, n);
"""

_COLUMNS = (
    "id, sub_id, seq, kind, status, attempts, last_status, last_error, created, last_attempt, "
    "delivered"
)
_DELIVERY_KEYS = (
    "delivery_id", "subscription", "seq", "kind", "status", "attempts", "last_status",
    "last_error", "created", "last_attempt", "delivered",
)  # fmt: skip


@dataclass
class Row:
    """One delivery for the outbox."""

    id: str
    sub_id: str
    seq: int | None
    kind: str
    body: bytes


class Outbox:
    """The outbox's tables. Each method is one statement or one transaction; writers are
    serialised by the database (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL)."""

    def __init__(self, open_db: OpenServiceDB):
        # NORMAL: a commit survives a process crash; after a power loss the last commits may be
        # gone, and then their cursor with them, so the journal catch-up makes them again.
        self.db = open_db("webhooks", SCHEMA, sqlite_synchronous="NORMAL")

    def close(self) -> None:
        self.db.close()

    # ---- subscriptions and the cursor ------------------------------------------------------

    def subscriptions(self) -> dict[str, Subscription]:
        rows = self.db.read().execute(
            "SELECT id, url, secret, filters, from_seq, created FROM subscriptions"
        )
        return {
            row[0]: Subscription(row[0], row[1], row[2], filters_from_json(row[3]), row[4], row[5])
            for row in rows
        }

    def cursor(self) -> dict[str, int]:
        """The saved journal cursor: {"seq", "max_uid"}, or {} when none was ever saved."""
        return dict(self.db.read().execute("SELECT key, value FROM meta"))

    def save_cursor(self, seq: int, max_uid: int) -> None:
        with self.db.write() as conn:
            _save_cursor(conn, seq, max_uid)

    def add_subscription(self, sub: Subscription) -> None:
        self.db.read().execute(
            "INSERT INTO subscriptions (id, url, secret, filters, from_seq, created) "
            "VALUES (?,?,?,?,?,?)",
            (sub.id, sub.url, sub.secret, _json(sub.filters.to_dict()), sub.from_seq, sub.created),
        )

    def delete_subscription(self, sub_id: str) -> None:
        """The subscription and all its deliveries, in one transaction."""
        with self.db.write() as conn:
            conn.execute("DELETE FROM subscriptions WHERE id=?", (sub_id,))
            conn.execute("DELETE FROM deliveries WHERE sub_id=?", (sub_id,))

    def add_deliveries(self, rows: list[Row], seq: int, max_uid: int, now: int) -> None:
        """Deliveries (those already there are kept as they are) and the new cursor, at once."""
        with self.db.write() as conn:
            conn.executemany(
                "INSERT INTO deliveries (id, sub_id, seq, kind, body, created) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                [(r.id, r.sub_id, r.seq, r.kind, r.body, now) for r in rows],
            )
            _save_cursor(conn, seq, max_uid)

    # ---- reads for the API -----------------------------------------------------------------

    def record(self, sub_id: str) -> dict:
        """A subscription's delivery counts and attempt record."""
        read = self.db.read()
        counts = dict(
            read.execute(
                "SELECT status, count(*) FROM deliveries WHERE sub_id=? AND status!='delivered'"
                " GROUP BY status",
                (sub_id,),
            ).fetchall()
        )
        attempts, failures, delivered, last_at, last_status, last_error = read.execute(
            "SELECT attempts, failures, delivered, last_attempt, last_status, last_error "
            "FROM subscriptions WHERE id=?",
            (sub_id,),
        ).fetchone()
        return {
            "deliveries": {
                "pending": counts.get("pending", 0),
                "delivered": delivered,
                "dead": counts.get("dead", 0),
            },
            "attempts": {
                "total": attempts,
                "failed": failures,
                "last_at": last_at,
                "last_status": last_status,
                "last_error": last_error,
            },
        }

    def deliveries(self, sub_id: str | None, status: str | None, limit: int) -> list[dict]:
        """Deliveries of one subscription (or all), optionally of one status, newest first."""
        where, args = [], []
        if sub_id is not None:
            where.append("sub_id=?")
            args.append(sub_id)
        if status is not None:
            where.append("status=?")
            args.append(status)
        query = f"SELECT {_COLUMNS} FROM deliveries"
        if where:
            query += " WHERE " + " AND ".join(where)
        rows = self.db.read().execute(query + " ORDER BY n DESC LIMIT ?", (*args, limit))
        return [dict(zip(_DELIVERY_KEYS, row, strict=True)) for row in rows.fetchall()]

    def requeue(self, sub_id: str, delivery_id: str | None) -> int:
        """Dead letters of a subscription (or one of them) pending again, attempts reset."""
        query, args = "UPDATE deliveries SET status='pending', attempts=0 WHERE sub_id=?", [sub_id]
        query += " AND status='dead'"
        if delivery_id is not None:
            query += " AND id=?"
            args.append(delivery_id)
        return self.db.read().execute(query, args).rowcount

    def totals(self) -> dict:
        """Rows by status, and attempts, failures and deliveries summed over subscriptions."""
        read = self.db.read()
        counts = dict(read.execute("SELECT status, count(*) FROM deliveries GROUP BY status"))
        attempts, failures, delivered = read.execute(
            "SELECT coalesce(sum(attempts), 0), coalesce(sum(failures), 0), "
            "coalesce(sum(delivered), 0) FROM subscriptions"
        ).fetchone()
        return {
            "outbox": {s: counts.get(s, 0) for s in STATUSES},
            "attempts": int(attempts),  # PostgreSQL sums to numeric
            "failed_attempts": int(failures),
            "delivered": int(delivered),
        }

    # ---- the senders -----------------------------------------------------------------------

    def pending(self, sub_id: str, limit: int) -> list[tuple[str, bytes, int]]:
        """(id, body, attempts) of a subscription's next pending deliveries, in outbox order."""
        return (
            self.db.read()
            .execute(
                "SELECT id, body, attempts FROM deliveries WHERE sub_id=? AND status='pending' "
                "ORDER BY n LIMIT ?",
                (sub_id, limit),
            )
            .fetchall()
        )

    def record_attempt(
        self,
        sub_id: str,
        delivery_id: str,
        *,
        attempts: int,
        ok: bool,
        dead: bool,
        status: int | None,
        error: str | None,
        now: int,
    ) -> None:
        """A delivery's new state and its subscription's attempt record, in one transaction."""
        with self.db.write() as conn:
            conn.execute(
                "UPDATE deliveries SET status=?, attempts=?, last_status=?, last_error=?, "
                "last_attempt=?, delivered=? WHERE id=?",
                (
                    "delivered" if ok else "dead" if dead else "pending",
                    attempts,
                    status,
                    error,
                    now,
                    now if ok else None,
                    delivery_id,
                ),
            )
            conn.execute(
                "UPDATE subscriptions SET attempts=attempts+1, failures=failures+?, "
                "delivered=delivered+?, last_attempt=?, last_status=?, last_error=? WHERE id=?",
                (0 if ok else 1, 1 if ok else 0, now, status, error, sub_id),
            )

    def prune(self, sub_id: str, keep: int) -> None:
        """Keep only the newest `keep` delivered rows of a subscription."""
        self.db.read().execute(
            "DELETE FROM deliveries WHERE sub_id=? AND status='delivered' AND n <= ("
            " SELECT n FROM deliveries WHERE sub_id=? AND status='delivered'"
            " ORDER BY n DESC LIMIT 1 OFFSET ?)",
            (sub_id, sub_id, keep),
        )


def _save_cursor(conn: Connection, seq: int, max_uid: int) -> None:
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [("seq", int(seq)), ("max_uid", int(max_uid))],
    )


# ---- building deliveries --------------------------------------------------------------------


def rows_for(seq, batch, created, state, subs, extra: dict, source: str = "") -> Iterator[Row]:
    """The state and created deliveries of one journal entry (`batch`: its `type` and `twins`)
    for the subscriptions `subs`; `state(i)` is row i's JSON object, `extra` goes in each body;
    `source` names the journal in delivery ids where several share subscriptions (a cluster's
    shards: "s03"), "" on a single node."""
    for sub in subs:
        f = sub.filters
        if "state" in f.kinds:
            picked = [i for i, twin in enumerate(batch.twins) if f.twin_ok(twin)]
            if picked:
                events = [state(i) for i in picked]
                fields = {"type": batch.type, "events": events, **extra}
                yield _row(sub, seq, "state", fields, source)
        if "created" in f.kinds and created:
            new = [t for t in created if f.twin_ok(t)]
            if new:
                yield _row(sub, seq, "created", {"type": batch.type, "twins": new, **extra}, source)


def journal_rows(
    seq: int, batch, subs: list[Subscription], max_uid: int, source: str = ""
) -> Iterator[Row]:
    """Deliveries rebuilt from a journal entry: observed inputs only (derived values are not
    journaled), twins with a uid above `max_uid` counted as created."""
    wanted = [s for s in subs if seq > s.from_seq and s.filters.type in (None, batch.type)]
    if not wanted:
        return
    uids = batch.uids.tolist()
    created = list(dict.fromkeys(t for t, u in zip(batch.twins, uids, strict=True) if u > max_uid))
    names, values = batch.names, batch.values

    def state(i: int) -> dict:
        observed = {n: v for n, v in zip(names, values[:, i].tolist(), strict=True) if v == v}
        return {"twin": batch.twins[i], "ts": int(batch.ts[i]), "values": observed}

    yield from rows_for(seq, batch, created, state, wanted, {"from_journal": True}, source)


def notice_rows(notice: Notice, subs: list[Subscription], source: str = "") -> Iterator[Row]:
    """An alarm or job notice for each subscription that wants it (by kind, type and twin)."""
    data = notice.data if isinstance(notice.data, dict) else {}
    for sub in subs:
        f: Filters = sub.filters
        name = notice_name(notice.kind, f.kinds)  # `run`, or `job` to its older subscribers
        if name is None or not f.twin_ok(data.get("twin")):
            continue
        if f.type is not None and data.get("type") != f.type:
            continue
        d_id = _delivery_id(sub, source, notice.kind, notice.id)
        try:
            body = {"kind": name, "delivery_id": d_id, "id": notice.id, "data": notice.data}
            yield Row(d_id, sub.id, None, name, orjson.dumps(body))
        except TypeError:
            log.error("webhooks: notice %s has data that is not JSON; skipped", notice.id)
            return


def _delivery_id(sub: Subscription, source: str, *parts: Any) -> str:
    """`<subscription>.<parts>`, or `<subscription>.<source>.<parts>` (a cluster's shards)."""
    return ".".join(str(p) for p in (sub.id, *([source] if source else []), *parts))


def _row(sub: Subscription, seq: int, kind: str, fields: dict, source: str = "") -> Row:
    d_id = _delivery_id(sub, source, seq, kind)
    body = {"kind": kind, "delivery_id": d_id, "seq": seq, **fields}
    return Row(d_id, sub.id, seq, kind, orjson.dumps(body))


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
