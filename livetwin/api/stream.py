"""Server-Sent Events: a live feed of what became durable, resumable with Last-Event-ID.

The feed keeps the most recent applied batches (not one object per observation) and notices
(alarms, finished runs) in a ring; each connection keeps a cursor into it and turns only the rows
it wants into JSON. A state event's id is `<seq>.<row>`: the journal sequence number and the row
within that journal entry; a notice takes the next row after the newest state event. A client
that missed events, or holds an id the journal never reached (its data was reset), first gets
`event: reset`: reload state, then follow the stream.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
import orjson

from livetwin.engine.events import Event, EventBus, Notice, StateChanged, notice_name
from livetwin.errors import InvalidInput

KINDS = ("state", "alarm", "run", "job", "removed")  # "job": the older name of "run" (a finished
# run); "removed": a twin deleted (DELETE /api/twins/{id}, or its type with cascade)
HEARTBEAT_S = 15.0
AHEAD = orjson.dumps(
    {"reason": "Last-Event-ID is ahead of this server's journal (its data was reset); reload state"}
)


@dataclass(frozen=True)
class Cursor:
    seq: int
    row: int

    @staticmethod
    def parse(text: str | None) -> Cursor | None:
        if not text:
            return None
        try:
            seq, row = text.split(".")
            return Cursor(int(seq), int(row))
        except ValueError:
            raise InvalidInput(
                f"Last-Event-ID '{text[:40]}' is not an id this stream sent",
                field="Last-Event-ID",
                fix="send the id of the last event you received, or none to start live",
            ) from None


@dataclass(frozen=True)
class _Item:
    """One ring entry: an applied batch (rows first..last) or a service's notice (one row)."""

    first: Cursor
    last: Cursor
    event: StateChanged | Notice

    @property
    def rows(self) -> int:
        return self.last.row - self.first.row + 1


class LiveFeed:
    """Recent state changes and notices (alarms, finished runs) for SSE clients.

    Bounded by `max_rows` observations. A notice takes the position right after the newest
    state row, so one cursor orders both and Last-Event-ID resumes either.
    """

    def __init__(self, bus: EventBus, *, last_seq: int = 0, max_rows: int = 100_000):
        self.max_rows = max_rows
        self._ring: deque[_Item] = deque()
        self._rows = 0
        self._head = Cursor(last_seq, -1)  # the newest position handed out
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._token = bus.subscribe(self._on_event)
        self._bus = bus
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self._bus.unsubscribe(self._token)
        self._wake()

    def _on_event(self, event: Event) -> None:
        """Called on the publishing thread (the writer's, for state): store, wake the clients."""
        with self._lock:
            if isinstance(event, StateChanged):
                first = Cursor(event.seq, 0)
                last = Cursor(event.seq, len(event.applied.twins) - 1)
            elif isinstance(event, Notice):
                first = last = Cursor(self._head.seq, self._head.row + 1)
            else:
                return
            self._head = last
            self._ring.append(_Item(first, last, event))
            self._rows += self._ring[-1].rows
            while self._rows > self.max_rows and len(self._ring) > 1:
                self._rows -= self._ring.popleft().rows
        self._wake()

    def _wake(self) -> None:
        for loop, flag in list(self._waiters):
            loop.call_soon_threadsafe(flag.set)

    def after(self, cursor: Cursor | None) -> tuple[list[_Item], bool]:
        """Entries holding events after `cursor`, and whether the ring still reaches back there."""
        with self._lock:
            ring = list(self._ring)
        if cursor is None:
            return [], True
        complete = (
            not ring
            or _key(ring[0].first) <= (cursor.seq, cursor.row + 1)
            or (ring[0].first.row == 0 and ring[0].first.seq <= cursor.seq + 1)
        )
        return [item for item in ring if _key(item.last) > _key(cursor)], complete

    def newest(self) -> Cursor:
        with self._lock:
            return self._head

    async def stream(
        self,
        *,
        cursor: Cursor | None,
        kinds: frozenset[str],
        wanted: Callable[[str | None, str | None], bool],
        columns_of: Callable[[str, int], tuple[tuple[str, ...], frozenset[str]]],
        disconnected: Callable[[], object],
    ) -> AsyncIterator[bytes]:
        """SSE bytes from `cursor` on (or from now when None), until the client goes away."""
        flag = asyncio.Event()
        waiter = (asyncio.get_running_loop(), flag)
        self._waiters.add(waiter)
        try:
            newest = self.newest()
            ahead = cursor is not None and cursor.seq > newest.seq  # an id from before a reset
            missed = cursor is not None and not ahead and not self.after(cursor)[1]
            if cursor is None or ahead:
                cursor = newest  # fixed before the first byte: nothing slips by
            yield b"retry: 2000\n\n"
            if missed:
                yield b'event: reset\ndata: {"reason": "events were missed; reload state"}\n\n'
            if ahead:  # carries the current id, so the browser's next reconnect resumes here
                yield b"id: %d.%d\nevent: reset\ndata: %s\n\n" % (*_key(cursor), AHEAD)
            while not self.closed:
                flag.clear()  # an event that lands while we send sets it again
                for item in self.after(cursor)[0]:
                    if isinstance(item.event, Notice):
                        chunks = _encode_notice(item, kinds, wanted)
                    elif "state" in kinds:
                        chunks = _encode_state(item, cursor, wanted, columns_of)
                    else:
                        chunks = []
                    cursor = item.last
                    for chunk in chunks:
                        yield chunk
                try:
                    await asyncio.wait_for(flag.wait(), HEARTBEAT_S)
                except TimeoutError:
                    if await disconnected():
                        return
                    yield b": heartbeat\n\n"
        finally:
            self._waiters.discard(waiter)


def _key(cursor: Cursor) -> tuple[int, int]:
    return cursor.seq, cursor.row


def _encode_notice(item: _Item, kinds: frozenset[str], wanted) -> list[bytes]:
    """A notice under the name the client asked for (`run`, or its older name `job`)."""
    notice = item.event
    data = notice.data
    name = notice_name(notice.kind, kinds)
    if name is None or not wanted(data.get("type"), data.get("twin")):
        return []
    body = orjson.dumps({"kind": name, "id": notice.id, **data})
    return [b"id: %d.%d\nevent: %s\ndata: %s\n\n" % (*_key(item.last), name.encode(), body)]


def _encode_state(item: _Item, cursor: Cursor, wanted, columns_of) -> list[bytes]:
    """SSE messages for the rows of a state entry after `cursor` that the client wants."""
    applied = item.event.applied
    seq = item.first.seq
    start = cursor.row + 1 if seq == cursor.seq else 0
    columns, derived = columns_of(applied.type, applied.version)
    chunks = []
    for row in range(start, len(applied.twins)):
        twin = applied.twins[row]
        if not wanted(applied.type, twin):
            continue
        values = {
            name: (v if np.isfinite(v) else None)
            for name, v in zip(columns, applied.values[row].tolist(), strict=True)
            if name in derived or not np.isnan(v)
        }
        body = {"twin": twin, "type": applied.type, "ts": int(applied.ts[row]), "values": values}
        chunks.append(b"id: %d.%d\nevent: state\ndata: %s\n\n" % (seq, row, orjson.dumps(body)))
    return chunks
