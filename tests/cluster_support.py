"""Cluster test support: shards in this process (no Ray) that a test can take down."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from livetwin.cluster.shard import Shard


class LocalShards:
    """`Shards` over `Shard` objects in this process; a shard in `down` fails every call the
    way an unreachable Ray actor does (ConnectionError)."""

    def __init__(self, meta):
        self.shards = [
            Shard(i, url, meta.services_url, shards=meta.shards)
            for i, url in enumerate(meta.shard_urls)
        ]
        self.count = len(self.shards)
        self.down: set[int] = set()
        self.pool = ThreadPoolExecutor(8)

    def call(self, index: int, method: str, *args: Any, retry: bool = True, **kw: Any) -> Future:
        if index in self.down:
            future: Future = Future()
            future.set_exception(ConnectionError(f"shard {index} is down"))
            return future
        return self.pool.submit(getattr(self.shards[index], method), *args, **kw)

    def close(self) -> None:
        self.pool.shutdown()
        for shard in self.shards:
            shard.close()
