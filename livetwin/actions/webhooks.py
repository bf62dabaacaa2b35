"""Webhooks: signed HTTP POSTs of state changes, creations, alarms and job results, at least once.

Events go bus -> in-memory inbox -> durable outbox (`<data>/webhooks.db`, with the last journal
seq fanned out, so a restart catches up from the journal) -> one sender task per subscription.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson

from livetwin.engine.events import Event, Notice, StateChanged, notice_name
from livetwin.errors import InvalidInput, NotFound
from livetwin.ingest.batch import decode_batch
from livetwin.store.sqlite import immediate

log = logging.getLogger(__name__)

KINDS = ("state", "created", "alarm", "run", "job")  # "job": the older name of "run"
NOTICE_KINDS = ("alarm", "run", "job")
STATUSES = ("pending", "delivered", "dead")
MIN_SECRET = 16
CATCH_UP_CHUNK = 500  # journal entries per outbox transaction while catching up
SEND_BATCH = 64  # pending rows a sender reads at once
PRUNE_EVERY = 500  # deliveries between prunes of a busy subscription (an idle one prunes now)

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


@dataclass(frozen=True)
class Filters:
    """Which events a subscription wants: a twin type, a twin id prefix, and event kinds."""

    type: str | None = None
    twin_prefix: str | None = None
    kinds: tuple[str, ...] = ("state",)

    def to_dict(self) -> dict:
        return {"type": self.type, "twin_prefix": self.twin_prefix, "kinds": list(self.kinds)}

    def twin_ok(self, twin: str | None) -> bool:
        return self.twin_prefix is None or (twin is not None and twin.startswith(self.twin_prefix))


@dataclass(frozen=True)
class Subscription:
    id: str
    url: str
    secret: str
    filters: Filters
    from_seq: int
    created: int

    def public(self) -> dict:
        """What the API shows: everything but the secret."""
        return {
            "id": self.id,
            "url": self.url,
            "filters": self.filters.to_dict(),
            "from_seq": self.from_seq,
            "created": self.created,
        }


@dataclass
class _Row:
    """One delivery for the outbox."""

    id: str
    sub_id: str
    seq: int | None
    kind: str
    body: bytes


def sign(secret: str, body: bytes) -> str:
    """The `X-Livetwin-Signature` header value for `body`: `sha256=<hex HMAC-SHA256>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """Whether `header` is the signature of `body` under `secret` (constant-time compare)."""
    return hmac.compare_digest(sign(secret, body), header or "")


def _invalid(message: str, field: str, fix: str) -> InvalidInput:
    return InvalidInput(message, field=field, fix=fix)


def validate_subscription(body: Any) -> tuple[str, str, Filters]:
    """(url, secret, filters) from a POST body, or InvalidInput naming the field and the fix."""
    if not isinstance(body, dict):
        raise _invalid(
            "the body must be a JSON object",
            "body",
            'send {"url": "https://...", "secret": "...", "filters": {...}}',
        )
    unknown = sorted(set(body) - {"url", "secret", "filters"})
    if unknown:
        raise _invalid(
            f"unknown field(s): {', '.join(unknown)}", unknown[0], "use only url, secret, filters"
        )
    url = body.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid(
            "url must be an http:// or https:// URL with a host",
            "url",
            "e.g. https://example.com/hooks/livetwin",
        )
    secret = body.get("secret")
    if not isinstance(secret, str) or len(secret) < MIN_SECRET:
        raise _invalid(
            f"secret is required: a string of at least {MIN_SECRET} characters",
            "secret",
            "generate one, e.g. python -c 'import secrets; print(secrets.token_hex(32))'",
        )
    raw = body.get("filters") or {}
    if not isinstance(raw, dict):
        raise _invalid(
            "filters must be an object",
            "filters",
            'e.g. {"type": "pump", "twin_prefix": "site-a/", "kinds": ["state", "alarm"]}',
        )
    unknown = sorted(set(raw) - {"type", "twin_prefix", "kinds"})
    if unknown:
        raise _invalid(
            f"unknown filter(s): {', '.join(unknown)}",
            f"filters.{unknown[0]}",
            "use only type, twin_prefix and kinds",
        )
    for name in ("type", "twin_prefix"):
        if raw.get(name) is not None and (not isinstance(raw[name], str) or not raw[name]):
            raise _invalid(
                f"filters.{name} must be a non-empty string",
                f"filters.{name}",
                f"give a string or leave {name} out to match all",
            )
    kinds = raw.get("kinds", ["state"])
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
        raise _invalid(
            "filters.kinds must be a non-empty list of strings",
            "filters.kinds",
            f"use some of: {', '.join(KINDS)}",
        )
    bad = sorted(set(kinds) - set(KINDS))
    if bad:
        raise _invalid(
            f"unknown event kind(s): {', '.join(bad)}",
            "filters.kinds",
            f"use some of: {', '.join(KINDS)}",
        )
    kinds_in_order = tuple(k for k in KINDS if k in kinds)
    return url, secret, Filters(raw.get("type"), raw.get("twin_prefix"), kinds_in_order)


class WebhookService:
    """Subscriptions, the durable outbox and the senders of one platform.

    `start()` subscribes to the bus, catches up from the journal and starts sending; `stop()`
    writes what the inbox still holds to the outbox and stops (the next start resumes).
    """

    def __init__(
        self,
        platform: Any,
        *,
        backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
        max_attempts: int = 8,
        timeout_s: float = 5.0,
        keep_delivered: int = 1000,
        max_inbox: int = 10_000,
    ):
        self.platform = platform
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.keep_delivered = keep_delivered
        self.max_inbox = max_inbox
        self.path = platform.path / "webhooks.db"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives a process crash; after a power loss the last commits may be
        # gone, and then their cursor with them, so the journal catch-up makes them again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()  # guards self._db
        self._subs: dict[str, Subscription] = {
            row[0]: Subscription(row[0], row[1], row[2], _filters(row[3]), row[4], row[5])
            for row in self._db.execute(
                "SELECT id, url, secret, filters, from_seq, created FROM subscriptions"
            )
        }
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        if "seq" not in meta or not self._subs:  # nothing before now was ever promised
            meta = {"seq": platform.store.last_seq(), "max_uid": platform.engine.next_uid - 1}
            self._save_cursor(self._db, meta["seq"], meta["max_uid"])
        self._seq: int = meta["seq"]  # the last journal seq fanned out into the outbox
        self._max_uid: int = meta["max_uid"]  # the newest twin uid up to there ("created")
        self._inbox: deque[tuple[float, Event]] = deque()
        self._inbox_ready = threading.Event()
        self._lagging = False  # the inbox overflowed: the journal has what it dropped
        self._stopping = False
        self._born: dict[str, float] = {}  # delivery id -> monotonic publish time (latency)
        self._latencies: deque[float] = deque(maxlen=10_000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender: threading.Thread | None = None
        self._pump: threading.Thread | None = None
        self._token: int | None = None
        self._wakers: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> WebhookService:
        """Subscribe to the bus, start the outbox and sender threads (idempotent)."""
        if self._sender is not None or self._closed:
            return self
        self._token = self.platform.bus.subscribe(self._on_event)
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            # one connection per subscription at most, so no pool limit can make one wait
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
            try:
                self._client = httpx.AsyncClient(timeout=self.timeout_s, limits=limits)
                for sub_id in list(self._subs):
                    self._spawn(sub_id)
            finally:
                ready.set()
            self._loop.run_forever()

        self._sender = threading.Thread(target=run, name="livetwin-webhooks-send", daemon=True)
        self._sender.start()
        ready.wait()
        self._pump = threading.Thread(
            target=self._run_pump, name="livetwin-webhooks-outbox", daemon=True
        )
        self._pump.start()
        return self

    def stop(self) -> None:
        """Unsubscribe, move the inbox to the outbox, stop sending and close the outbox."""
        if self._closed:
            return
        self._closed = True
        if self._token is not None:
            self.platform.bus.unsubscribe(self._token)
        if self._pump is not None:
            self._stopping = True
            self._inbox_ready.set()
            self._pump.join()
        if self._loop is not None and self._sender is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._sender.join(timeout=30)
            self._loop.close()
        with self._lock:
            self._db.close()

    async def _shutdown(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def __enter__(self) -> WebhookService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- subscriptions ---------------------------------------------------------------------

    def create(self, body: Any) -> dict:
        """Validate and store a subscription to events committed from now on; its public form."""
        url, secret, filters = validate_subscription(body)
        sub = Subscription(
            "wh_" + secrets.token_hex(8),
            url,
            secret,
            filters,
            self.platform.store.last_seq(),
            int(self.platform.clock()),
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO subscriptions (id, url, secret, filters, from_seq, created) "
                "VALUES (?,?,?,?,?,?)",
                (sub.id, url, secret, _json(filters.to_dict()), sub.from_seq, sub.created),
            )
            self._subs = {**self._subs, sub.id: sub}
        self._in_loop(self._spawn, sub.id)
        return sub.public()

    def get(self, sub_id: str) -> dict:
        """A subscription (no secret) with its delivery counts and attempt record."""
        sub = self._sub(sub_id)
        with self._lock:
            counts = dict(
                self._db.execute(
                    "SELECT status, count(*) FROM deliveries WHERE sub_id=? AND status!='delivered'"
                    " GROUP BY status",
                    (sub_id,),
                ).fetchall()
            )
            attempts, failures, delivered, last_at, last_status, last_error = self._db.execute(
                "SELECT attempts, failures, delivered, last_attempt, last_status, last_error "
                "FROM subscriptions WHERE id=?",
                (sub_id,),
            ).fetchone()
        return {
            **sub.public(),
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

    def subscriptions(self) -> list[dict]:
        return [sub.public() for sub in sorted(self._subs.values(), key=lambda s: s.created)]

    def delete(self, sub_id: str) -> dict:
        """Remove a subscription and its outbox rows; stops its sender task."""
        self._sub(sub_id)
        with self._transaction() as db:
            db.execute("DELETE FROM subscriptions WHERE id=?", (sub_id,))
            db.execute("DELETE FROM deliveries WHERE sub_id=?", (sub_id,))
            self._subs = {k: v for k, v in self._subs.items() if k != sub_id}
        self._in_loop(self._cancel, sub_id)
        return {"id": sub_id, "deleted": True}

    def deliveries(self, sub_id: str, status: str | None = None, limit: int = 100) -> list[dict]:
        """A subscription's deliveries (with attempts and last error), newest first."""
        self._sub(sub_id)
        if status is not None and status not in STATUSES:
            raise _invalid(
                f"unknown delivery status '{status}'",
                "status",
                f"use one of: {', '.join(STATUSES)}",
            )
        query, args = f"SELECT {_COLUMNS} FROM deliveries WHERE sub_id=?", [sub_id]
        if status:
            query += " AND status=?"
            args.append(status)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY n DESC LIMIT ?", (*args, limit)).fetchall()
        return [_delivery(row) for row in rows]

    def dead(self, limit: int = 100) -> list[dict]:
        """Dead letters of all subscriptions, newest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM deliveries WHERE status='dead' ORDER BY n DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [_delivery(row) for row in rows]

    def redeliver(self, sub_id: str, delivery_id: str | None = None) -> dict:
        """Re-queue a subscription's dead letters, or one of them (attempts reset, same ids)."""
        self._sub(sub_id)
        query, args = "UPDATE deliveries SET status='pending', attempts=0 WHERE sub_id=?", [sub_id]
        query += " AND status='dead'"
        if delivery_id is not None:
            query += " AND id=?"
            args.append(delivery_id)
        with self._lock:
            n = self._db.execute(query, args).rowcount
        if delivery_id is not None and n == 0:
            raise NotFound(
                f"no dead letter '{delivery_id}' in subscription '{sub_id}'",
                field="delivery",
                fix=f"list them with GET /api/webhooks/{sub_id}/deliveries?status=dead",
            )
        self._in_loop(self._wake, [sub_id])
        return {"id": sub_id, "requeued": n}

    def stats(self) -> dict:
        """Subscriptions, outbox rows by status, the journal cursor and delivery latency."""
        with self._lock:
            counts = dict(
                self._db.execute("SELECT status, count(*) FROM deliveries GROUP BY status")
            )
            totals = self._db.execute(
                "SELECT coalesce(sum(attempts), 0), coalesce(sum(failures), 0), "
                "coalesce(sum(delivered), 0) FROM subscriptions"
            ).fetchone()
        lat = np.asarray(self._latencies)
        return {
            "subscriptions": len(self._subs),
            "outbox": {s: counts.get(s, 0) for s in STATUSES},
            "attempts": totals[0],
            "failed_attempts": totals[1],
            "delivered": totals[2],
            "journal_seq": self._seq,
            "latency_p50_s": round(float(np.percentile(lat, 50)), 4) if len(lat) else None,
            "latency_p99_s": round(float(np.percentile(lat, 99)), 4) if len(lat) else None,
        }

    def _sub(self, sub_id: str) -> Subscription:
        sub = self._subs.get(sub_id)
        if sub is None:
            raise NotFound(
                f"no webhook subscription '{sub_id}'",
                field="id",
                fix="list subscriptions with GET /api/webhooks",
            )
        return sub

    # ---- bus -> inbox (on the publishing thread: quick) ------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            if len(self._inbox) >= self.max_inbox:
                self._lagging = True  # the journal still has it: the pump catches up
                self._inbox_ready.set()
                return
        elif not (isinstance(event, Notice) and event.kind in NOTICE_KINDS):
            return
        self._inbox.append((time.monotonic(), event))
        self._inbox_ready.set()

    # ---- inbox -> outbox (the pump thread) -------------------------------------------------

    def _run_pump(self) -> None:
        self._lagging = True  # first catch up with what was committed while we were away
        self._inbox_ready.set()
        while True:
            self._inbox_ready.wait()
            self._inbox_ready.clear()
            stopping = self._stopping
            events = []
            while self._inbox:
                events.append(self._inbox.popleft())
            try:
                if self._lagging and not stopping:
                    self._lagging = False
                    self._catch_up()
                self._fan_out(events)
            except Exception:  # e.g. a full disk: the cursor did not move
                log.exception("webhooks: writing the outbox failed; trying again in 1 s")
                self._inbox.extendleft(reversed(events))
                self._lagging = True
                if not stopping:
                    time.sleep(1.0)
                    self._inbox_ready.set()
            if stopping:
                return

    def _catch_up(self) -> None:
        """Fan out journal entries after the cursor: what a crash, downtime or overflow missed."""
        chunk: list[tuple[float, Any]] = []
        now = time.monotonic()
        for entry in self.platform.store.journal(after=self._seq):
            if self._stopping:
                break
            chunk.append((now, entry))
            if len(chunk) >= CATCH_UP_CHUNK:
                self._fan_out(chunk)
                chunk = []
        if chunk:
            self._fan_out(chunk)

    def _fan_out(self, items: list[tuple[float, Any]]) -> None:
        """Write the deliveries of these events and the new cursor in one transaction."""
        rows: list[tuple[float, _Row]] = []
        seq, max_uid = self._seq, self._max_uid
        subs = list(self._subs.values())
        for born, item in items:
            if isinstance(item, Notice):
                rows.extend((born, r) for r in _notice_rows(item, subs))
                continue
            if item.seq <= seq:  # already fanned out (by the catch-up or before a restart)
                continue
            seq = item.seq
            if isinstance(item, StateChanged):
                rows.extend((born, r) for r in self._state_rows(item, subs))
                uids = item.applied.uids
            elif item.kind == "obs":  # a journal entry
                batch = decode_batch(item.body)
                rows.extend((born, r) for r in _journal_rows(item.seq, batch, subs, max_uid))
                uids = batch.uids
            else:
                continue
            if uids is not None and len(uids):
                max_uid = max(max_uid, int(uids.max()))
        if not rows and (seq == self._seq or not subs):
            self._seq, self._max_uid = seq, max_uid  # no subscriber: no write on the hot path
            return
        now = int(self.platform.clock())
        with self._transaction() as db:
            rows = [(b, r) for b, r in rows if r.sub_id in self._subs]  # none deleted meanwhile
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (id, sub_id, seq, kind, body, created) "
                "VALUES (?,?,?,?,?,?)",
                [(r.id, r.sub_id, r.seq, r.kind, r.body, now) for _, r in rows],
            )
            self._save_cursor(db, seq, max_uid)
        self._seq, self._max_uid = seq, max_uid
        for born, r in rows:
            self._born[r.id] = born
        if rows:
            self._in_loop(self._wake, {r.sub_id for _, r in rows})

    def _state_rows(self, event: StateChanged, subs: list[Subscription]) -> Iterator[_Row]:
        """Deliveries of a live state change: observed inputs and derived values per row."""
        applied = event.applied
        wanted = [
            s for s in subs if event.seq > s.from_seq and s.filters.type in (None, applied.type)
        ]
        if not wanted:
            return
        columns, derived = self.platform.layout(applied.type, applied.version)
        encoded: dict[int, dict] = {}

        def state(i: int) -> dict:
            if i not in encoded:
                values = {
                    name: (v if math.isfinite(v) else None)
                    for name, v in zip(columns, applied.values[i].tolist(), strict=True)
                    if name in derived or v == v  # NaN: an input this row did not carry
                }
                encoded[i] = {"twin": applied.twins[i], "ts": int(applied.ts[i]), "values": values}
            return encoded[i]

        yield from _rows_for(event.seq, applied, applied.created, state, wanted, {})

    # ---- outbox -> endpoints (the sender thread's event loop) ------------------------------

    def _in_loop(self, callback, *args) -> None:
        """Run `callback(*args)` on the sender loop (nothing when it is not running)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def _wake(self, sub_ids: Iterable[str]) -> None:
        for sub_id in sub_ids:
            flag = self._wakers.get(sub_id)
            if flag is not None:
                flag.set()

    def _spawn(self, sub_id: str) -> None:
        if sub_id in self._tasks or sub_id not in self._subs or self._loop is None:
            return
        self._wakers[sub_id] = asyncio.Event()
        self._tasks[sub_id] = self._loop.create_task(self._worker(sub_id))

    def _cancel(self, sub_id: str) -> None:
        task = self._tasks.pop(sub_id, None)
        self._wakers.pop(sub_id, None)
        if task is not None:
            task.cancel()

    def _pending(self, sub_id: str) -> list[tuple[str, bytes, int]]:
        with self._lock:
            return self._db.execute(
                "SELECT id, body, attempts FROM deliveries WHERE sub_id=? AND status='pending' "
                "ORDER BY n LIMIT ?",
                (sub_id, SEND_BATCH),
            ).fetchall()

    async def _worker(self, sub_id: str) -> None:
        """Send one subscription's queue in outbox order; a failure backs off this one only."""
        flag = self._wakers[sub_id]
        unpruned = 0  # delivered since the last prune
        while True:
            try:
                flag.clear()
                pending = self._pending(sub_id)
                if not pending:
                    if unpruned:
                        self._prune(sub_id)
                        unpruned = 0
                    await flag.wait()
                    continue
                sub = self._subs.get(sub_id)
                if sub is None:
                    return
                for d_id, body, attempts in pending:
                    ok, dead = await self._attempt(sub, d_id, bytes(body), attempts)
                    if ok:
                        unpruned += 1
                        if unpruned >= PRUNE_EVERY:
                            self._prune(sub_id)
                            unpruned = 0
                    elif not dead:
                        delay = min(self.backoff_s * 2**attempts, self.max_backoff_s)
                        await asyncio.sleep(delay)
                        break  # read the queue again: a redelivery may have come first
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or a closed outbox must not kill the queue silently
                log.exception("webhook sender for %s failed; retrying in 1 s", sub_id)
                await asyncio.sleep(1.0)

    async def _attempt(
        self, sub: Subscription, d_id: str, body: bytes, attempts: int
    ) -> tuple[bool, bool]:
        """POST one delivery and record the attempt: (delivered, now dead)."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "livetwin-webhooks",
            "X-Livetwin-Delivery": d_id,
            "X-Livetwin-Signature": sign(sub.secret, body),
            "X-Livetwin-Attempt": str(attempts + 1),
        }
        status: int | None = None
        error: str | None = None
        assert self._client is not None
        try:
            async with asyncio.timeout(self.timeout_s):  # the whole exchange, not per read
                response = await self._client.post(sub.url, content=body, headers=headers)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except (httpx.HTTPError, TimeoutError) as exc:
            error = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:500]
        attempts += 1
        ok = error is None
        dead = not ok and attempts >= self.max_attempts
        now = int(self.platform.clock())
        with self._transaction() as db:
            db.execute(
                "UPDATE deliveries SET status=?, attempts=?, last_status=?, last_error=?, "
                "last_attempt=?, delivered=? WHERE id=?",
                (
                    "delivered" if ok else "dead" if dead else "pending",
                    attempts,
                    status,
                    error,
                    now,
                    now if ok else None,
                    d_id,
                ),
            )
            db.execute(
                "UPDATE subscriptions SET attempts=attempts+1, failures=failures+?, "
                "delivered=delivered+?, last_attempt=?, last_status=?, last_error=? WHERE id=?",
                (0 if ok else 1, 1 if ok else 0, now, status, error, sub.id),
            )
        born = self._born.pop(d_id, None) if ok or dead else None
        if ok and born is not None:
            self._latencies.append(time.monotonic() - born)
        if dead:
            log.warning("webhook delivery %s is dead after %d attempts: %s", d_id, attempts, error)
        return ok, dead

    def _prune(self, sub_id: str) -> None:
        """Keep only the newest `keep_delivered` delivered rows of a subscription."""
        with self._lock:
            self._db.execute(
                "DELETE FROM deliveries WHERE sub_id=? AND status='delivered' AND n <= ("
                " SELECT n FROM deliveries WHERE sub_id=? AND status='delivered'"
                " ORDER BY n DESC LIMIT 1 OFFSET ?)",
                (sub_id, sub_id, self.keep_delivered),
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The outbox connection inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an error)."""
        with self._lock, immediate(self._db) as db:
            yield db

    @staticmethod
    def _save_cursor(db: sqlite3.Connection, seq: int, max_uid: int) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [("seq", int(seq)), ("max_uid", int(max_uid))],
        )


# ---- building deliveries --------------------------------------------------------------------


def _rows_for(seq, batch, created, state, subs, extra: dict) -> Iterator[_Row]:
    """The state and created deliveries of one journal entry (`batch`: its `type` and `twins`)
    for the subscriptions `subs`; `state(i)` is row i's JSON object, `extra` goes in each body."""
    for sub in subs:
        f = sub.filters
        if "state" in f.kinds:
            picked = [i for i, twin in enumerate(batch.twins) if f.twin_ok(twin)]
            if picked:
                events = [state(i) for i in picked]
                yield _row(sub, seq, "state", {"type": batch.type, "events": events, **extra})
        if "created" in f.kinds and created:
            new = [t for t in created if f.twin_ok(t)]
            if new:
                yield _row(sub, seq, "created", {"type": batch.type, "twins": new, **extra})


def _journal_rows(seq: int, batch, subs: list[Subscription], max_uid: int) -> Iterator[_Row]:
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

    yield from _rows_for(seq, batch, created, state, wanted, {"from_journal": True})


def _notice_rows(notice: Notice, subs: list[Subscription]) -> Iterator[_Row]:
    """An alarm or job notice for each subscription that wants it (by kind, type and twin)."""
    data = notice.data if isinstance(notice.data, dict) else {}
    for sub in subs:
        f = sub.filters
        name = notice_name(notice.kind, f.kinds)  # `run`, or `job` to its older subscribers
        if name is None or not f.twin_ok(data.get("twin")):
            continue
        if f.type is not None and data.get("type") != f.type:
            continue
        d_id = f"{sub.id}.{notice.kind}.{notice.id}"
        try:
            body = {"kind": name, "delivery_id": d_id, "id": notice.id, "data": notice.data}
            yield _Row(d_id, sub.id, None, name, orjson.dumps(body))
        except TypeError:
            log.error("webhooks: notice %s has data that is not JSON; skipped", notice.id)
            return


def _row(sub: Subscription, seq: int, kind: str, fields: dict) -> _Row:
    d_id = f"{sub.id}.{seq}.{kind}"
    body = {"kind": kind, "delivery_id": d_id, "seq": seq, **fields}
    return _Row(d_id, sub.id, seq, kind, orjson.dumps(body))


_COLUMNS = (
    "id, sub_id, seq, kind, status, attempts, last_status, last_error, created, last_attempt, "
    "delivered"
)


def _delivery(row: tuple) -> dict:
    keys = ("delivery_id", "subscription", "seq", "kind", "status", "attempts", "last_status")
    keys += ("last_error", "created", "last_attempt", "delivered")
    return dict(zip(keys, row, strict=True))


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _filters(text: str | bytes) -> Filters:
    raw = orjson.loads(text)
    return Filters(raw.get("type"), raw.get("twin_prefix"), tuple(raw.get("kinds") or ("state",)))
