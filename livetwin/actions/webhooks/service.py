"""The webhook service: events go bus -> in-memory inbox -> durable outbox (with the last journal
seq fanned out, so a restart catches up from the journal) -> one sender task per subscription.
Signed HTTP POSTs of state changes, creations, alarms and job results, at least once.

On PostgreSQL several processes may share one outbox: each fans its own events out into it, and
only the one holding the sender lease (store/lease.py) sends; another takes over when it is lost.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from livetwin.actions.webhooks.outbox import (
    STATUSES,
    Outbox,
    Row,
    journal_rows,
    notice_rows,
    rows_for,
)
from livetwin.actions.webhooks.subscriptions import (
    NOTICE_KINDS,
    Subscription,
    sign,
    validate_subscription,
)
from livetwin.engine.batch import decode_batch
from livetwin.engine.events import Event, Notice, StateChanged
from livetwin.errors import InvalidInput, NotFound
from livetwin.outbound import OutboundDenied, OutboundPolicy
from livetwin.store.lease import Lease
from livetwin.store.open import configured_url

if TYPE_CHECKING:
    from livetwin.ports import Bus, Clock, OpenServiceDB
    from livetwin.query import Query

log = logging.getLogger(__name__)

CATCH_UP_CHUNK = 500  # journal entries per outbox transaction while catching up
SEND_BATCH = 64  # pending rows a sender reads at once
PRUNE_EVERY = 500  # deliveries between prunes of a busy subscription (an idle one prunes now)


def new_subscription_id() -> str:
    return "wh_" + secrets.token_hex(8)


class WebhookService:
    """Subscriptions, the durable outbox and the senders of one twin core.

    `reader` gives the journal (catch-up) and type layouts; `open_db` opens the outbox;
    `outbound` is where deliveries may go (checked when a subscription is made and before each
    attempt: a denied destination dead-letters the delivery at once; redirects are not followed).
    `start()` subscribes to the bus, catches up from the journal and starts sending; `stop()`
    writes what the inbox still holds to the outbox and stops (the next start resumes). On
    PostgreSQL (`database_url`, default LIVETWIN_DATABASE_URL) only the holder of the sender
    lease sends; every process reloads the subscriptions every `lease_retry_s`, and the sender
    looks at the outbox as often for rows other processes fanned out. `source` goes into the
    delivery ids where several journals share subscriptions (a cluster's shards).
    """

    def __init__(
        self,
        *,
        clock: Clock,
        bus: Bus,
        reader: Query,
        open_db: OpenServiceDB,
        backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
        max_attempts: int = 8,
        timeout_s: float = 5.0,
        keep_delivered: int = 1000,
        max_inbox: int = 10_000,
        outbound: OutboundPolicy | None = None,
        database_url: str | None = None,
        lease_retry_s: float = 1.0,
        source: str = "",
    ):
        self.clock, self.bus, self.reader = clock, bus, reader
        self.source = source  # in delivery ids, where several journals share subscriptions
        self.outbound = outbound or OutboundPolicy()
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.keep_delivered = keep_delivered
        self.max_inbox = max_inbox
        self.outbox = Outbox(open_db)
        db = self.outbox.db
        self._lease = (
            None
            if db.dialect == "sqlite"
            else Lease(
                configured_url(database_url),
                f"{db.schema}.webhooks-sender",
                retry_s=lease_retry_s,
                timeout_s=db.timeout_s,
            )
        )
        self._sending = threading.Event()  # this process sends (it holds the lease, or SQLite)
        # held while the subscription set and the outbox change together (create, delete,
        # fan-out), so no event is fanned out to a subscription half made or half deleted
        self._lock = threading.Lock()
        self._subs: dict[str, Subscription] = self.outbox.subscriptions()
        meta = self.outbox.cursor()
        if "seq" not in meta or not self._subs:  # nothing before now was ever promised
            meta = {"seq": reader.last_seq(), "max_uid": reader.newest_uid()}
            self.outbox.save_cursor(meta["seq"], meta["max_uid"])
        self._seq: int = meta["seq"]  # the last journal seq fanned out into the outbox
        self._max_uid: int = meta["max_uid"]  # the newest twin uid up to there ("created")
        self._inbox: deque[tuple[float, Event]] = deque()
        self._inbox_ready = threading.Event()
        self._lagging = False  # the inbox overflowed: the journal has what it dropped
        # where the next catch-up stops: at first the journal seq when the bus subscription
        # began, so an event committed after start() goes out live (with its derived values);
        # None (to the journal's end) once the inbox has dropped anything
        self._catch_up_to: int | None = None
        self._stopping = False
        self._born: dict[str, float] = {}  # delivery id -> monotonic publish time (latency)
        self._latencies: deque[float] = deque(maxlen=10_000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender: threading.Thread | None = None
        self._pump: threading.Thread | None = None
        self._token: int | None = None
        self._wakers: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._follower: asyncio.Task | None = None  # _follow_outbox, on PostgreSQL
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> WebhookService:
        """Subscribe to the bus, start the outbox and sender threads (idempotent)."""
        if self._sender is not None or self._closed:
            return self
        self._token = self.bus.subscribe(self._on_event)
        self._catch_up_to = self.reader.last_seq()
        if self._lease is None or self._lease.try_acquire():
            self._sending.set()
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
                if self._lease is not None:
                    follow = self._follow_outbox(self._lease.retry_s)
                    self._follower = self._loop.create_task(follow)
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
        if self._lease is not None:
            self._lease.on_acquired = self._take_over
            self._lease.on_lost = self._sending.clear
            self._lease.start()
        return self

    @property
    def sending(self) -> bool:
        """Whether this process sends the outbox (on PostgreSQL: it holds the sender lease)."""
        return self._sending.is_set()

    def _take_over(self) -> None:
        log.warning("this process sends the webhook outbox now")
        self._sending.set()
        self._in_loop(self._wake, list(self._subs))

    async def _follow_outbox(self, every_s: float) -> None:
        """On PostgreSQL: subscriptions made or deleted by other processes, and (when sending)
        rows they fanned out, are seen within `every_s`."""
        while True:
            await asyncio.sleep(every_s)
            try:
                subs, gone = await asyncio.to_thread(self._reload_subscriptions)
            except Exception as exc:
                log.debug("cannot reload webhook subscriptions: %s", exc)
                continue
            for sub_id in gone:
                self._cancel(sub_id)
            for sub_id in subs:
                self._spawn(sub_id)
            if self.sending:
                self._wake(list(subs))

    def _reload_subscriptions(self) -> tuple[dict[str, Subscription], set[str]]:
        """The stored subscriptions, and the ids of those gone. Read under the lock, so a
        subscription this process makes meanwhile is not dropped by a read from before it."""
        with self._lock:
            subs = self.outbox.subscriptions()
            gone, self._subs = set(self._subs) - set(subs), subs
        return subs, gone

    def stop(self) -> None:
        """Unsubscribe, move the inbox to the outbox, stop sending and close the outbox."""
        if self._closed:
            return
        self._closed = True
        if self._lease is not None:
            self._lease.close()
        if self._token is not None:
            self.bus.unsubscribe(self._token)
        if self._pump is not None:
            self._stopping = True
            self._inbox_ready.set()
            self._pump.join()
        if self._loop is not None and self._sender is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._sender.join(timeout=30)
            self._loop.close()
        self.outbox.close()

    async def _shutdown(self) -> None:
        tasks = [*self._tasks.values(), *([self._follower] if self._follower else [])]
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

    def create(self, body: Any, *, sub_id: str | None = None) -> dict:
        """Validate and store a subscription to events committed from now on; its public form.
        `sub_id`: the id to give it (a cluster front end gives every shard the same one); one
        that exists already is answered as it is (a retried fan-out)."""
        url, secret, filters = validate_subscription(body)
        self.outbound.check_url(url, unresolved_ok=True)
        if sub_id is not None and sub_id in self._subs:
            return self._subs[sub_id].public()
        sub = Subscription(
            sub_id or new_subscription_id(),
            url,
            secret,
            filters,
            self.reader.last_seq(),
            int(self.clock()),
        )
        with self._lock:
            self.outbox.add_subscription(sub)
            self._subs = {**self._subs, sub.id: sub}
        self._in_loop(self._spawn, sub.id)
        return sub.public()

    def get(self, sub_id: str) -> dict:
        """A subscription (no secret) with its delivery counts and attempt record."""
        sub = self._sub(sub_id)
        return {**sub.public(), **self.outbox.record(sub_id)}

    def subscriptions(self) -> list[dict]:
        return [sub.public() for sub in sorted(self._subs.values(), key=lambda s: s.created)]

    def delete(self, sub_id: str) -> dict:
        """Remove a subscription and its outbox rows; stops its sender task."""
        self._sub(sub_id)
        with self._lock:
            self.outbox.delete_subscription(sub_id)
            self._subs = {k: v for k, v in self._subs.items() if k != sub_id}
        self._in_loop(self._cancel, sub_id)
        return {"id": sub_id, "deleted": True}

    def deliveries(self, sub_id: str, status: str | None = None, limit: int = 100) -> list[dict]:
        """A subscription's deliveries (with attempts and last error), newest first."""
        self._sub(sub_id)
        if status is not None and status not in STATUSES:
            raise InvalidInput(
                f"unknown delivery status '{status}'",
                field="status",
                fix=f"use one of: {', '.join(STATUSES)}",
            )
        return self.outbox.deliveries(sub_id, status or None, limit)

    def dead(self, limit: int = 100) -> list[dict]:
        """Dead letters of all subscriptions, newest first."""
        return self.outbox.deliveries(None, "dead", limit)

    def redeliver(self, sub_id: str, delivery_id: str | None = None) -> dict:
        """Re-queue a subscription's dead letters, or one of them (attempts reset, same ids)."""
        self._sub(sub_id)
        n = self.outbox.requeue(sub_id, delivery_id)
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
        totals = self.outbox.totals()
        lat = np.asarray(self._latencies)
        return {
            "subscriptions": len(self._subs),
            "sending": int(self.sending),
            **totals,
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
                self._catch_up_to = None
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
                    upto, self._catch_up_to = self._catch_up_to, None
                    self._catch_up(upto)
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

    def _catch_up(self, upto: int | None = None) -> None:
        """Fan out journal entries after the cursor (up to `upto`, if given): what a crash,
        downtime or overflow missed."""
        chunk: list[tuple[float, Any]] = []
        now = time.monotonic()
        for entry in self.reader.journal(after=self._seq):
            if self._stopping or (upto is not None and entry.seq > upto):
                break
            chunk.append((now, entry))
            if len(chunk) >= CATCH_UP_CHUNK:
                self._fan_out(chunk)
                chunk = []
        if chunk:
            self._fan_out(chunk)

    def _fan_out(self, items: list[tuple[float, Any]]) -> None:
        """Write the deliveries of these events and the new cursor in one transaction."""
        rows: list[tuple[float, Row]] = []
        seq, max_uid = self._seq, self._max_uid
        subs = list(self._subs.values())
        for born, item in items:
            if isinstance(item, Notice):
                rows.extend((born, r) for r in notice_rows(item, subs, self.source))
                continue
            if item.seq <= seq:  # already fanned out (by the catch-up or before a restart)
                continue
            seq = item.seq
            if isinstance(item, StateChanged):
                rows.extend((born, r) for r in self._state_rows(item, subs))
                uids = item.applied.uids
            elif item.kind == "obs":  # a journal entry
                batch = decode_batch(item.body)
                rebuilt = journal_rows(item.seq, batch, subs, max_uid, self.source)
                rows.extend((born, r) for r in rebuilt)
                uids = batch.uids
            else:
                continue
            if uids is not None and len(uids):
                max_uid = max(max_uid, int(uids.max()))
        if not rows and (seq == self._seq or not subs):
            self._seq, self._max_uid = seq, max_uid  # no subscriber: no write on the hot path
            return
        now = int(self.clock())
        with self._lock:
            rows = [(b, r) for b, r in rows if r.sub_id in self._subs]  # none deleted meanwhile
            self.outbox.add_deliveries([r for _, r in rows], seq, max_uid, now)
        self._seq, self._max_uid = seq, max_uid
        for born, r in rows:
            self._born[r.id] = born
        if rows:
            self._in_loop(self._wake, {r.sub_id for _, r in rows})

    def _state_rows(self, event: StateChanged, subs: list[Subscription]) -> Iterator[Row]:
        """Deliveries of a live state change: observed inputs and derived values per row."""
        applied = event.applied
        wanted = [
            s for s in subs if event.seq > s.from_seq and s.filters.type in (None, applied.type)
        ]
        if not wanted:
            return
        columns, derived = self.reader.layout(applied.type, applied.version)
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

        yield from rows_for(event.seq, applied, applied.created, state, wanted, {}, self.source)

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

    async def _worker(self, sub_id: str) -> None:
        """Send one subscription's queue in outbox order; a failure backs off this one only."""
        flag = self._wakers[sub_id]
        unpruned = 0  # delivered since the last prune
        while True:
            try:
                flag.clear()
                if not self._sending.is_set():  # another process holds the sender lease
                    await flag.wait()
                    continue
                pending = self.outbox.pending(sub_id, SEND_BATCH)
                if not pending:
                    if unpruned:
                        self.outbox.prune(sub_id, self.keep_delivered)
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
                            self.outbox.prune(sub_id, self.keep_delivered)
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
        denied = False
        try:
            async with asyncio.timeout(self.timeout_s):  # the whole exchange, not per read
                await asyncio.to_thread(self.outbound.check_url, sub.url)
                response = await self._client.post(sub.url, content=body, headers=headers)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except OutboundDenied as exc:
            error, denied = str(exc)[:500], True
        except (httpx.HTTPError, TimeoutError) as exc:
            error = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:500]
        attempts += 1
        ok = error is None
        dead = denied or (not ok and attempts >= self.max_attempts)
        self.outbox.record_attempt(
            sub.id,
            d_id,
            attempts=attempts,
            ok=ok,
            dead=dead,
            status=status,
            error=error,
            now=int(self.clock()),
        )
        born = self._born.pop(d_id, None) if ok or dead else None
        if ok and born is not None:
            self._latencies.append(time.monotonic() - born)
        if dead:
            log.warning("webhook delivery %s is dead after %d attempts: %s", d_id, attempts, error)
        return ok, dead
