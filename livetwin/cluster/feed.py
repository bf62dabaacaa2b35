"""The live stream of a cluster front end: every shard's events, merged."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from livetwin.api.stream import LiveFeed
from livetwin.engine.events import EventBus, Notice, StateChanged

if TYPE_CHECKING:
    from livetwin.cluster.frontend import ClusterFrontend

RUN_NOTICES = ("run", "job")  # the scheduler's notices, sent on by shard 0's webhooks
FRONT_END = "front_end"  # the field of a front end's notice naming it (run, type)
TYPE_NOTICE = "type"  # a front end's notice that it declared a type (relayed by shard 0)


class ClusterFeed:
    """The live stream of a front end: every shard's applied batches and notices, polled from
    the shards (from the first client on) and published in the order they arrive here (per
    shard in journal order) on a bus of this front end, whose `LiveFeed` serves the clients.
    Event ids are this front end's: a client that reconnects to another one starts over with
    `event: reset`."""

    POLL_S = 0.1

    def __init__(self, frontend: ClusterFrontend):
        self.frontend = frontend
        self.bus = EventBus()
        self.feed = LiveFeed(self.bus)
        self._seq = 0
        self._lock = threading.Lock()
        self._started = False

    def stream(self, **options: Any):
        """`LiveFeed.stream` of the merged events (starts polling the shards)."""
        self.follow()
        return self.feed.stream(**options)

    def follow(self) -> None:
        """Start polling every shard's feed (once; the stream's first client or the
        scheduler)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        for index in range(self.frontend.shards.count):
            threading.Thread(
                target=self._poll, args=(index,), name=f"shard-{index}-feed", daemon=True
            ).start()

    def _poll(self, index: int) -> None:
        after = None
        while not self.feed.closed:
            try:
                position, events = self.frontend.shards.call(index, "events", after).result(10)
            except Exception:  # recovering: its state says so; ask again
                time.sleep(1.0)
                continue
            if after is not None and position[0] < after[0]:  # a shard restarted from an older
                after = None  # snapshot replays nothing new: follow it from now on
                continue
            after = position
            for event in events:
                self._publish(event)
            if not events:
                time.sleep(self.POLL_S)

    def _publish(self, event: Any) -> None:
        if isinstance(event, Notice) and event.data.get(FRONT_END) == self.frontend.ident:
            return  # this front end's own notice: published here when it was made
        if isinstance(event, Notice) and event.kind == TYPE_NOTICE:  # another front end's type
            self.frontend._refresh_types()
            self.frontend._type_defined(event.data["type"])
            return
        with self._lock:
            if isinstance(event, StateChanged):
                self._seq += 1
                event = StateChanged(self._seq, event.applied)
            self.bus.publish(event)

    def close(self) -> None:
        self.feed.close()
