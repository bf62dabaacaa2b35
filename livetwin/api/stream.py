"""Server-Sent Events: a live feed of what became durable, resumable with Last-Event-ID.

The feed keeps the most recent applied batches (not one object per observation) in a ring;
each connection keeps a cursor into it and turns only the rows it wants into JSON. An event id
is `<seq>.<row>`: the journal sequence number and the row within that journal entry.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
import orjson

from livetwin.engine.events import Event, EventBus, StateChanged
from livetwin.errors import InvalidInput

KINDS = ("state",)
HEARTBEAT_S = 15.0


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


class LiveFeed:
    """Recent state changes for SSE clients (bounded by `max_rows` observations)."""

    def __init__(self, bus: EventBus, *, max_rows: int = 100_000):
        self.max_rows = max_rows
        self._ring: deque[StateChanged] = deque()
        self._rows = 0
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
        """Called on the writer thread right after a commit: store, then wake the clients."""
        if not isinstance(event, StateChanged):
            return
        with self._lock:
            self._ring.append(event)
            self._rows += len(event.applied.twins)
            while self._rows > self.max_rows and len(self._ring) > 1:
                self._rows -= len(self._ring.popleft().applied.twins)
        self._wake()

    def _wake(self) -> None:
        for loop, flag in list(self._waiters):
            loop.call_soon_threadsafe(flag.set)

    def after(self, cursor: Cursor | None) -> tuple[list[StateChanged], bool]:
        """Batches holding events after `cursor`, and whether the ring still reaches back there."""
        with self._lock:
            ring = list(self._ring)
        if cursor is None:
            return [], True
        complete = not ring or ring[0].seq <= cursor.seq + 1
        return [e for e in ring if e.seq >= cursor.seq], complete

    def newest(self) -> Cursor:
        with self._lock:
            if not self._ring:
                return Cursor(0, -1)
            last = self._ring[-1]
        return Cursor(last.seq, len(last.applied.twins) - 1)

    async def stream(
        self,
        *,
        cursor: Cursor | None,
        wanted: Callable[[str, str], bool],
        columns_of: Callable[[str, int], tuple[tuple[str, ...], frozenset[str]]],
        disconnected: Callable[[], object],
    ) -> AsyncIterator[bytes]:
        """SSE bytes from `cursor` on (or from now when None), until the client goes away."""
        flag = asyncio.Event()
        waiter = (asyncio.get_running_loop(), flag)
        self._waiters.add(waiter)
        try:
            missed = cursor is not None and not self.after(cursor)[1]
            cursor = cursor or self.newest()  # fixed before the first byte: nothing slips by
            yield b"retry: 2000\n\n"
            if missed:
                yield b'event: reset\ndata: {"reason": "events were missed; reload state"}\n\n'
            while not self.closed:
                flag.clear()  # an event that lands while we send sets it again
                for event in self.after(cursor)[0]:
                    chunks, cursor = _encode(event, cursor, wanted, columns_of)
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


def _encode(event: StateChanged, cursor: Cursor, wanted, columns_of):
    """SSE messages for the rows of `event` after `cursor` that the client wants, and the new
    cursor (the end of `event`)."""
    applied = event.applied
    start = cursor.row + 1 if event.seq == cursor.seq else 0
    end = Cursor(event.seq, len(applied.twins) - 1)
    if event.seq < cursor.seq or start >= len(applied.twins):
        return [], max(cursor, end, key=lambda c: (c.seq, c.row))
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
        chunks.append(
            b"id: %d.%d\nevent: state\ndata: %s\n\n" % (event.seq, row, orjson.dumps(body))
        )
    return chunks, end
