"""Cluster test support: shards in this process (no Ray) that a test can take down, and the
fixtures of a front end over four of them (import them into a test module to use them)."""

from __future__ import annotations

import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from conftest import PUMP
from fastapi.testclient import TestClient
from postgres_support import PG_URL, require_postgres

from livetwin.api.cluster import create_cluster_app
from livetwin.cluster.frontend import ClusterFrontend
from livetwin.cluster.meta import drop_cluster, open_cluster
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


@pytest.fixture
def cluster_name():
    """A fresh cluster name on PostgreSQL, dropped afterwards."""
    require_postgres()
    name = f"lt{uuid.uuid4().hex[:10]}"
    yield name
    drop_cluster(PG_URL, name)


@pytest.fixture
def front(cluster_name, tmp_path):
    """(a test client, the shards, the front end) over four shards, the pump type declared."""
    meta = open_cluster(PG_URL, shards=4, name=cluster_name)
    shards = LocalShards(meta)
    try:
        frontend = ClusterFrontend(meta, shards, write_timeout_s=10, data_dir=str(tmp_path))
        with TestClient(create_cluster_app(frontend)) as client:
            assert client.put("/api/types/pump", json=PUMP).status_code == 200
            yield client, shards, frontend
    finally:
        shards.close()
