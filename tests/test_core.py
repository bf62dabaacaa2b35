"""Twin cores: several in one process share nothing; a sandbox is fed from another's journal."""

from __future__ import annotations

from conftest import PUMP, T0, obs

from livetwin.core import TwinCore
from livetwin.query import Query
from livetwin.settings import Settings


def test_two_cores_in_one_process_stay_independent(tmp_path, clock):
    heard: dict[str, list] = {"a": [], "b": []}
    with (
        TwinCore.open(tmp_path / "a", clock=clock) as a,
        TwinCore.open(tmp_path / "b", clock=clock) as b,
    ):
        a.bus.subscribe(lambda e: heard["a"].append(e))
        b.bus.subscribe(lambda e: heard["b"].append(e))
        a.put_type("pump", PUMP)
        b.put_type("pump", {**PUMP, "description": "another pump"})
        a.ingest([obs("p-1", T0, flow=10, pressure=2), obs("p-2", T0, flow=1, pressure=1)])
        b.ingest([obs("p-1", T0, flow=99, pressure=3)])
        qa, qb = Query(a), Query(b)
        assert qa.twin("p-1")["properties"]["flow"] == 10
        assert qb.twin("p-1")["properties"]["flow"] == 99
        assert qa.twin_count() == 2 and qb.twin_count() == 1
        assert qa.get_type("pump")["spec"]["description"] == "test pump"
        assert qb.get_type("pump")["spec"]["description"] == "another pump"
        assert a.engine is not b.engine and a.lock is not b.lock and a.bus is not b.bus
        assert len([e for e in heard["a"] if e.kind == "state"]) == 1
        assert len([e for e in heard["b"] if e.kind == "state"]) == 1
        a.snapshot()
    with TwinCore.open(tmp_path / "a", clock=clock) as again:  # a's data survived a's close
        assert Query(again).twin("p-2")["properties"]["flow"] == 1
        assert again.stats()["twins"] == 2


def test_a_sandbox_replays_a_journal_range_and_writes_nowhere_live(tmp_path, clock):
    with TwinCore.open(tmp_path / "live", clock=clock) as live:
        live.put_type("pump", PUMP)
        for k in range(5):
            live.ingest([obs("p-1", T0 + k * 60_000, flow=10 + k, pressure=2)])
        live_entries = live.stats()["journal_entries"]
        with TwinCore.sandbox(clock=clock, settings=Settings()) as sandbox:
            fed = sandbox.feed(live.store.journal(after=0))
            assert fed == {"types": 1, "observations": 5}
            query = Query(sandbox)
            assert query.twin("p-1")["properties"]["flow"] == 14
            assert query.history("p-1", ["flow"])["series"]["flow"] == [10, 11, 12, 13, 14]
            sandbox.ingest([obs("p-1", T0 + 600_000, flow=500, pressure=2)])
            assert query.twin("p-1")["properties"]["flow"] == 500
        assert Query(live).twin("p-1")["properties"]["flow"] == 14
        assert live.stats()["journal_entries"] == live_entries
    left = {p.name for p in (tmp_path / "live").iterdir()}
    assert left <= {
        "history.db",
        "livetwin.db",
        "snapshots",
        "livetwin.db-wal",
        "livetwin.db-shm",
        "history.db-wal",
        "history.db-shm",
    }


CRASHING_CORE = """
import os, sys
sys.path.insert(0, sys.argv[2])
from conftest import PUMP, T0, obs
from livetwin.core import TwinCore
from livetwin.settings import Settings
core = TwinCore.open(sys.argv[1], settings=Settings(snapshot_after_replay=10**9))
core.put_type("pump", PUMP)
for k in range(int(sys.argv[3])):
    core.ingest([obs(f"p-{i}", T0 + k * 1000, flow=k, pressure=1) for i in range(100)])
os._exit(0)  # a crash: no drain, no final snapshot
"""


def test_a_start_that_replayed_much_snapshots_at_once(tmp_path):
    """After a crash, the next start replays the journal tail and snapshots right away, so a
    crash loop replays no more at each start than what came after the last start."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    data, tests = tmp_path / "data", str(Path(__file__).parent)
    subprocess.run([sys.executable, "-c", CRASHING_CORE, str(data), tests, "30"], check=True)
    settings = Settings(snapshot_after_replay=2_000)
    core = TwinCore.open(data, settings=settings)
    try:
        assert core.recovered["replayed_observations"] == 3_000
        deadline = time.monotonic() + 10
        while core.writer.flusher.snapshot_seq < core.recovered["last_seq"]:
            assert time.monotonic() < deadline, "no snapshot after a long replay"
            time.sleep(0.02)
    finally:
        core.writer.flusher.stop()  # like a crash: the snapshot above is the only one
        core.store.close()
    with TwinCore.open(data, settings=settings) as again:
        assert again.recovered["replayed_observations"] == 0
        assert Query(again).twin("p-7")["properties"]["flow"] == 29
