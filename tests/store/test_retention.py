"""Retention: rollups computed by the `compact` job, raw history deleted past its retention,
history queries on the finest resolution kept, journal compaction behind a base snapshot.
Each on SQLite and on PostgreSQL (a fresh schema)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import T0, FakeClock, obs
from postgres_support import fresh_schema, postgres_platform

from livetwin.errors import InvalidInput
from livetwin.jobs.retention import compact_journal, compact_type
from livetwin.journal import compaction
from livetwin.platform import Platform, Settings

MIN = 60_000
HOUR = 60 * MIN
SENSOR = {
    "properties": {"temp": {}, "load": {}},
    "derived": {"hot": "temp > 30"},
    "retention": {"raw": "2h", "rollups": {"1m": "1d", "1h": "forever"}},
}
STEP = 10_000  # one observation per twin every 10 s
SPAN = 6 * HOUR


@pytest.fixture(params=["sqlite", "postgres"])
def open_platform(request, tmp_path, monkeypatch):
    """A function (clock, **settings) -> a platform on SQLite or on a fresh PostgreSQL schema."""
    with contextlib.ExitStack() as stack:

        def make(clock, **settings):
            options = {"clock": clock, "settings": Settings(run_schedules=False, **settings)}
            if request.param == "sqlite":
                return stack.enter_context(Platform(tmp_path / "data", **options))
            url = stack.enter_context(fresh_schema())
            platform = postgres_platform(monkeypatch, tmp_path / "data", url, **options)
            return stack.enter_context(platform)

        yield make


def temp_at(ts):
    return 20 + 10 * np.sin(np.asarray(ts) / HOUR)


def fill(platform, twins=("s-1", "s-2")):
    """SPAN of data ending at T0 + SPAN, every STEP, in hour-sized batches."""
    for start in range(T0, T0 + SPAN, HOUR):
        ts = np.arange(start, start + HOUR, STEP)
        platform.ingest(
            [
                obs(t, int(x), "sensor", temp=float(temp_at(x)) + k, load=float(k))
                for x in ts
                for k, t in enumerate(twins)
            ]
        )
    platform.snapshot()  # flushes history


def test_compact_rolls_up_deletes_raw_and_history_picks_the_resolution(open_platform):
    clock = FakeClock(T0 + SPAN)
    platform = open_platform(clock)
    platform.put_type("sensor", SENSOR)
    fill(platform)
    # older than the raw retention: 1m buckets, computed from raw history before any rollup
    before = platform.history("s-1", ["temp"], start=T0, every="1m")
    assert before["resolution"] == "1m" and len(before["ts"]) == SPAN // MIN
    raw = platform.history("s-1", ["temp"], start=T0 + SPAN - HOUR, every="1m")
    assert raw["resolution"] == "raw" and raw["series"] == {"temp": before["series"]["temp"][-60:]}

    result = compact_type(platform.query, "sensor", clock())
    assert result["rollups"]["1m"]["rows_written"] > 0
    assert result["raw_deleted"] > 0

    # a range older than the raw retention comes from the 1m rollups, with the same buckets
    old = platform.history("s-1", ["temp"], start=T0, end=T0 + 3 * HOUR, every="1m")
    assert old["resolution"] == "1m" and old["every"] == "1m"
    assert old["ts"] == before["ts"][: 3 * 60]
    assert np.allclose(old["series"]["temp"], before["series"]["temp"][: 3 * 60])
    hourly = platform.history("s-1", ["temp"], start=T0, every="1h", agg="max")
    assert hourly["resolution"] == "1h" and len(hourly["ts"]) == SPAN // HOUR  # fewer rows
    assert hourly["series"]["temp"][0] == pytest.approx(
        temp_at(np.arange(T0, T0 + HOUR, STEP)).max()
    )
    halves = platform.history("s-1", ["temp"], start=T0, every="30m", agg="max")
    half = np.array(halves["series"]["temp"])
    assert halves["resolution"] == "1m"
    assert np.maximum(half[::2], half[1::2]) == pytest.approx(hourly["series"]["temp"])
    counts = platform.history("s-2", ["load"], start=T0, every="1h", agg="count")
    assert counts["series"]["load"] == [HOUR / STEP] * (SPAN // HOUR)
    # the recent range is still raw; raw older than 2h is gone
    recent = platform.history("s-1", ["temp"], start=T0 + SPAN - HOUR)
    assert recent["resolution"] == "raw" and len(recent["ts"]) == HOUR // STEP
    gone = platform.query.history_rows(
        platform.query.selection("sensor", ids=["s-1"])["uid"][0], "sensor", ["temp"], T0, T0 + HOUR
    )[0]
    assert len(gone) == 0

    # two days on, the 1m rollups are past their retention: the 1h rollups answer
    clock.now += 2 * 86_400_000
    compact_type(platform.query, "sensor", clock())
    later = platform.history("s-1", ["temp"], start=T0, end=T0 + SPAN, every="1m", agg="avg")
    assert later["resolution"] == "1h" and later["every"] == "1h"
    assert len(later["ts"]) == SPAN // HOUR
    expected = temp_at(np.arange(T0, T0 + HOUR, STEP)).mean()
    assert later["series"]["temp"][0] == pytest.approx(expected)


def test_late_rows_are_rolled_up_again_while_raw_history_holds_them(open_platform):
    clock = FakeClock(T0 + SPAN)
    platform = open_platform(clock)
    platform.put_type("sensor", SENSOR)
    fill(platform, twins=("s-1",))
    compact_type(platform.query, "sensor", clock())
    late = T0 + SPAN - 90 * MIN + 5_000  # inside raw retention, in an already rolled-up bucket
    platform.ingest([obs("s-1", late, "sensor", temp=1000.0, load=0.0)])
    platform.snapshot()
    compact_type(platform.query, "sensor", clock())
    clock.now += 3 * HOUR  # raw of that minute is gone now: the 1m rollup must hold the late row
    compact_type(platform.query, "sensor", clock())
    got = platform.history(
        "s-1", ["temp"], start=late - 5_000, end=late + 55_000, every="1m", agg="max"
    )
    assert got["resolution"] == "1m"
    assert got["series"]["temp"] == [1000.0]


def test_retention_spec_errors_name_the_fix(platform):
    bad = {
        "shorter than its own bucket": {"raw": "30d", "rollups": {"1h": "30m"}},
        "too short to compute": {"raw": "1h", "rollups": {"1h": "forever"}},
        "never read": {"raw": "30d", "rollups": {"1m": "forever", "1h": "1y"}},
        "bad duration": {"raw": "thirty days"},
    }
    for message, retention in bad.items():
        with pytest.raises(InvalidInput) as caught:
            platform.put_type("sensor", {**SENSOR, "retention": retention})
        assert message in caught.value.message
        assert caught.value.field.startswith("retention")


def test_journal_compaction_keeps_recovery_and_rebuild_working(open_platform, tmp_path):
    clock = FakeClock(T0)
    platform = open_platform(clock, journal_retention="3h")
    platform.put_type("sensor", {**SENSOR, "retention": None})
    for start in range(T0, T0 + SPAN, HOUR):  # journaled an hour apart, with keys
        clock.now = start + HOUR
        platform.ingest(
            [
                {**obs("s-1", x, "sensor", temp=float(x % 97), load=1.0), "key": f"k{x}"}
                for x in range(start, start + HOUR, MIN)
            ]
        )
    platform.snapshot()
    state = platform.twin("s-1")
    entries = platform.stats()["journal_entries"]
    result = compact_journal(platform.core, clock())
    assert result["deleted"] == 3 and result["base_seq"] == result["upto"]
    assert platform.stats()["journal_entries"] == entries - 3
    # cut: the type entry and the two hours journaled before now - 3h
    assert platform.rebuild()["observations"] == 4 * 60  # from the base, not from nothing
    assert platform.twin("s-1")["properties"] == state["properties"]
    assert compact_journal(platform.core, clock())["deleted"] == 0  # nothing more is old
    # the keys of the compacted entries are gone with them, the others still deduplicate
    again = platform.ingest(
        [
            {**obs("s-1", x, "sensor", temp=0.0, load=1.0), "key": f"k{x}"}
            for x in (T0, T0 + SPAN - MIN)
        ]
    )
    assert (again.accepted, again.duplicates) == (1, 1)
    store = platform.core.store
    if store.base_snapshot() is not None:  # PostgreSQL keeps it for a node without the files
        assert store.base_snapshot()[0] == result["base_seq"]
        empty = compaction.newest_base(tmp_path / "elsewhere", store)
        assert empty is not None and empty[0] == result["base_seq"]
        return
    platform.close()
    for snap in (tmp_path / "data" / "snapshots").glob("snapshot-*.npz"):
        snap.unlink()  # recovery without snapshots starts at the base snapshot
    settings = Settings(run_schedules=False, journal_retention="3h")
    with Platform(tmp_path / "data", clock=clock, settings=settings) as again:
        assert again.twin("s-1")["properties"] == state["properties"]
        assert again.recovered["snapshot_seq"] == result["base_seq"]


def test_a_type_with_retention_gets_a_compact_schedule_that_runs(tmp_path):
    clock = FakeClock(T0 + SPAN)
    settings = Settings(journal_retention="30d")
    with Platform(tmp_path / "data", clock=clock, settings=settings) as platform:
        platform.put_type("sensor", SENSOR)
        platform.put_type("plain", {"properties": {"x": {}}})
        fill(platform, twins=("s-1",))
        ids = {s["id"] for s in platform.scheduler.schedules(namespace="system")}
        assert ids == {"compact.sensor", "compact.journal"}
        run = platform.scheduler.wait(platform.scheduler.run_schedule("compact.sensor")["id"], 60)
        assert run["state"] == "succeeded", run
        assert run["result"]["rollups"]["1m"]["rows_written"] == 1
        run = platform.scheduler.wait(platform.scheduler.run_schedule("compact.journal")["id"], 60)
        assert run["state"] == "succeeded" and run["result"]["upto"] == 0  # nothing is 30d old


def test_the_api_says_which_resolution_answered(client, platform, clock):
    clock.now = T0 + SPAN
    platform.put_type("sensor", SENSOR)
    fill(platform, twins=("s-1",))
    old = client.get("/api/twins/s-1/history", params={"from": T0, "to": T0 + HOUR, "every": "5m"})
    assert old.status_code == 200
    assert old.headers["X-Livetwin-Resolution"] == "1m" and old.json()["resolution"] == "1m"
    recent = client.get(
        "/api/twins/s-1/history", params={"from": T0 + SPAN - HOUR}, headers={"Accept": "text/csv"}
    )
    assert recent.headers["X-Livetwin-Resolution"] == "raw" and recent.text.startswith("time,")
    bad = client.get("/api/twins/s-1/history", params={"from": T0, "every": "5m", "agg": "median"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "agg"


def test_a_back_test_after_journal_compaction_starts_from_the_base_snapshot(tmp_path):
    import backtest_support as fleet

    clock = FakeClock(fleet.T0)
    settings = Settings(run_schedules=False, webhooks=False, journal_retention="5d")
    with Platform(tmp_path / "data", clock=clock, settings=settings) as platform:
        ingest = platform.ingest

        def two_ages(rows):  # rows before minute 45 journaled ten days before the rest
            early = [r for r in rows if r["ts"] < fleet.T0 + 45 * fleet.MINUTE]
            late = [r for r in rows if r["ts"] >= fleet.T0 + 45 * fleet.MINUTE]
            accepted = ingest(early).accepted if early else 0
            clock.now = fleet.T0 + 10 * 86_400_000
            accepted += ingest(late).accepted if late else 0
            clock.now = fleet.T0
            return SimpleNamespace(accepted=accepted)

        platform.ingest = two_ages
        fleet.record(platform)
        platform.ingest = ingest
        clock.now = fleet.T0 + 10 * 86_400_000
        platform.snapshot()
        result = compact_journal(platform.core, clock())
        assert result["deleted"] > 0
        plan = platform.backtests.plan(
            {
                "type": "oven",
                "candidate": {"patch": {"rules": {"hot": {"when": "temp > 80", "for": "5m"}}}},
                "from": fleet.START,
                "to": fleet.END,
            }
        )
        platform.backtests.run(plan, "run_after_compaction")
        report = platform.backtests.report("run_after_compaction")
        [hot] = [r for r in report["rules"] if r["rule"] == "hot"]
        assert hot["candidate_alarms"] == len(fleet.expected_hot_alarms()) > 0
        early = platform.backtests.plan  # a window before the base snapshot: a clear error
        with pytest.raises(InvalidInput) as caught:
            early({"type": "oven", "candidate": {"patch": {}}, "from": fleet.T0, "to": fleet.START})
        assert caught.value.field == "from" and "retained journal" in caught.value.message


def test_a_bad_journal_retention_is_refused_at_start(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVETWIN_JOURNAL_RETENTION", "ninety days")
    with pytest.raises(InvalidInput) as caught:
        Platform(tmp_path / "data", settings=Settings(run_schedules=False))
    assert caught.value.field == "journal_retention" and "90d" in caught.value.fix


def test_bench_retention_quick_reports_disk_and_query_times(capsys):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_retention

    bench_retention.main(json_only=True, quick=True)
    rows = {r["scenario"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    disk = rows["retention: disk, a year of 1-minute data for 1,000 twins (extrapolated)"]
    assert disk["measured_twin_days"] == 20 and set(disk["year_gb"]) == {
        "raw",
        "1m",
        "1h",
        "journal",
    }
    assert all(v > 0 for v in disk["bytes_per_twin_day"].values())
    assert disk["total_gb"] == pytest.approx(sum(disk["year_gb"].values()), abs=0.02)
    resolutions = {k: r["resolution"] for k, r in rows.items() if "query" in k}
    assert sorted(set(resolutions.values())) == ["1h", "1m", "raw"]
    assert rows["retention: history query, 1h rollups, a year at 1d"]["points"] == 365


def test_raw_chunks_of_complete_days_are_merged_without_changing_history(open_platform):
    day = 86_400_000
    d0 = (T0 // day + 1) * day
    clock = FakeClock(d0 + 2 * day + 2 * HOUR)
    platform = open_platform(clock)
    platform.put_type("sensor", {**SENSOR, "retention": {"raw": "30d", "rollups": {"1h": "1y"}}})
    flush = platform.core.writer.flusher.request
    for x in range(d0, d0 + 2 * day, 10 * MIN):  # one chunk per flush, as live ingest stores
        platform.ingest([obs("s-1", x, "sensor", temp=float(x % 89), load=1.0)])
        flush().result()
    uid = int(platform.query.selection("sensor", ids=["s-1"])["uid"][0])
    store = platform.core.store

    def chunks():
        return len(store.history(uid, d0, d0 + 2 * day, 2**62))

    before = platform.history("s-1", start=d0)
    assert before["resolution"] == "raw" and chunks() == 2 * 144
    result = compact_type(platform.query, "sensor", clock())
    assert result["merged_chunks"] == 2 * 143 and chunks() == 2
    assert platform.history("s-1", start=d0) == before
    late = d0 + 5 * MIN  # a late row in a merged day: merged again at the next run
    platform.ingest([obs("s-1", late, "sensor", temp=500.0, load=2.0)])
    flush().result()
    assert chunks() == 3
    assert compact_type(platform.query, "sensor", clock())["merged_chunks"] == 1
    after = platform.history("s-1", ["temp"], start=d0, end=d0 + 11 * MIN)
    assert chunks() == 2 and after["series"]["temp"] == [
        before["series"]["temp"][0],
        500.0,
        before["series"]["temp"][1],
    ]
