"""Journal behaviour: group commit, events after durability, snapshots plus tail replay, CLI."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import PUMP, T0, obs
from typer.testing import CliRunner

from livetwin.cli import app
from livetwin.engine.events import StateChanged, TypeDefined
from livetwin.errors import Unavailable
from livetwin.platform import Platform, Settings


def test_concurrent_callers_share_commits(platform, monkeypatch):
    platform.put_type("pump", PUMP)
    commits = []
    real_commit = platform.core.store.commit

    def slow_commit(*args):
        time.sleep(0.01)  # an fsync on a slow card: callers pile up behind it
        commits.append(len(args[0]))
        real_commit(*args)

    monkeypatch.setattr(platform.core.store, "commit", slow_commit)
    results = []

    def client(c: int) -> None:
        for k in range(10):
            results.append(platform.ingest([obs(f"p{c}", T0 + k * 1000, flow=float(k))]))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.accepted for r in results) == 80
    assert sum(commits) == 80  # one journal entry per call ...
    assert len(commits) < 80  # ... but far fewer commits (fsyncs) than calls
    assert platform.twin("p3")["properties"]["flow"] == 9.0


def test_a_caller_that_stops_waiting_does_not_stop_the_writer(platform, monkeypatch):
    """An HTTP client that disconnects (or a connector that stops) cancels its future while
    the batch is being committed: the batch is stored all the same, and so are later ones."""
    platform.put_type("pump", PUMP)
    committing = threading.Event()
    real_commit = platform.core.store.commit

    def slow_commit(*args):
        committing.set()
        time.sleep(0.2)
        real_commit(*args)

    monkeypatch.setattr(platform.core.store, "commit", slow_commit)
    future = platform.core.submit([obs("p1", T0, flow=1.0)])
    assert committing.wait(5)
    assert future.cancel()
    assert platform.ingest([obs("p1", T0 + 1000, flow=2.0)]).accepted == 1
    assert platform.twin("p1")["properties"]["flow"] == 2.0
    assert platform.stats()["journal_observations"] == 2


def test_events_are_published_after_commit(platform):
    seen = []
    token = platform.bus.subscribe(seen.append)
    platform.put_type("pump", PUMP)
    platform.ingest([obs("a", T0, flow=1.0), obs("b", T0, flow=2.0)])
    platform.bus.unsubscribe(token)
    platform.ingest([obs("c", T0, flow=3.0)])
    assert isinstance(seen[0], TypeDefined) and seen[0].ctype.name == "pump"
    change = seen[1]
    assert isinstance(change, StateChanged)
    assert change.applied.twins == ["a", "b"] and change.applied.created == ["a", "b"]
    assert change.seq <= platform.core.store.last_seq()
    assert len(seen) == 2


def test_restart_loads_snapshot_and_replays_only_the_tail(tmp_path, clock):
    path = tmp_path / "d"
    with Platform(path, clock=clock) as p:
        p.put_type("pump", PUMP)
        p.ingest([obs(f"p{i}", T0, flow=float(i)) for i in range(100)])
        assert p.snapshot() is not None
        p.ingest([obs("p1", T0 + 60_000, flow=50.0)])
        # a crash right here: neither the last history rows nor a final snapshot get written
        p.core.writer._snapshot = lambda **options: None
        p.core.writer.flusher.flush = lambda: None
    with Platform(path, clock=clock) as p:
        assert p.recovered["replayed_observations"] == 1
        assert p.recovered["snapshot_seq"] == 2
        twin = p.twin("p1")
        assert twin["properties"]["flow"] == 50.0 and twin["derived"]["flow_avg"] == 25.5
        # the history of the replayed tail is rebuilt from the journal
        history = p.history("p1", ["flow", "flow_avg"])
        assert history["series"] == {"flow": [1.0, 50.0], "flow_avg": [1.0, 25.5]}


def test_history_is_flushed_in_chunks_and_reads_span_store_and_buffer(platform):
    platform.put_type("pump", PUMP)
    platform.ingest([obs(f"p{i}", T0, flow=1.0) for i in range(3)])
    platform.snapshot()  # flushes the buffer into one chunk per twin
    assert platform.core.writer.history.rows == 0
    platform.ingest([obs("p1", T0 + 1000, flow=2.0), obs("p1", T0 + 2000, flow=3.0)])
    assert platform.core.writer.history.rows == 2
    assert platform.history("p1", ["flow"])["series"]["flow"] == [1.0, 2.0, 3.0]
    assert [e["values"]["flow"] for e in platform.events("p1", limit=2)] == [3.0, 2.0]
    assert [e["values"]["flow"] for e in platform.events("p1", before=T0 + 1000)] == [1.0]


def test_one_flush_holds_several_types(platform):
    platform.put_type("pump", PUMP)
    platform.put_type("valve", {"properties": {"open": {}}})
    platform.ingest([obs("p", T0, flow=1.0), obs("v", T0, type="valve", open=1.0)])
    platform.snapshot()
    assert platform.history("v")["series"] == {"open": [1.0]}
    assert platform.history("p", ["flow"])["series"] == {"flow": [1.0]}


def test_a_data_directory_serves_one_platform_at_a_time(platform):
    with pytest.raises(Unavailable, match="in use"):
        Platform(platform.path)


def test_automatic_snapshots(tmp_path, clock):
    settings = Settings(snapshot_every=50)
    with Platform(tmp_path / "d", clock=clock, settings=settings) as p:
        p.put_type("pump", PUMP)
        for k in range(6):
            p.ingest([obs(f"p{i}", T0 + k, flow=1.0) for i in range(20)])
        deadline = time.monotonic() + 5
        while not list(p.core.snapshot_dir.glob("snapshot-*.npz")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list(p.core.snapshot_dir.glob("snapshot-*.npz"))


def test_cli_replay_rebuilds_from_the_journal(tmp_path, clock):
    path = tmp_path / "d"
    with Platform(path, clock=clock) as p:
        p.put_type("pump", PUMP)
        p.ingest([obs(f"p{i}", T0 + k * 1000, flow=float(k)) for k in range(3) for i in range(10)])
        before = p.twin("p7")
    for snap in (path / "snapshots").glob("*.npz"):
        snap.unlink()
    result = CliRunner().invoke(app, ["replay", "--data", str(path)])
    assert result.exit_code == 0, result.output
    assert '"observations": 30' in result.output
    with Platform(path, clock=clock) as p:
        assert p.recovered["replayed_observations"] == 0  # the replay left a fresh snapshot
        assert p.twin("p7") == before


def test_idempotency_keys_are_scoped_by_twin_across_restarts(tmp_path):
    def keyed(twin: str, key: str, flow: float) -> dict:
        return {**obs(twin, T0, flow=flow), "key": key}

    with Platform(tmp_path) as platform:
        platform.put_type("pump", PUMP)
        first = platform.ingest([keyed("a", "k", 1.0), keyed("b", "k", 2.0), keyed("a", "k", 3.0)])
        assert (first.accepted, first.duplicates) == (2, 1)  # a repeat within one call too
    with Platform(tmp_path) as platform:  # the keys are durable, still per twin
        again = platform.ingest([keyed("a", "k", 4.0), keyed("c", "k", 5.0)])
        assert (again.accepted, again.duplicates) == (1, 1)
        assert [platform.twin(t)["properties"]["flow"] for t in "abc"] == [1.0, 2.0, 5.0]
