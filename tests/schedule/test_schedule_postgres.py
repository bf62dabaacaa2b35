"""The scheduler's state on both backends: SQLite (`<data>/schedule.db`) and PostgreSQL (a fresh
schema per test, LIVETWIN_DATABASE_URL set): joins and cron schedules across a restart, run
listings, event ids never reused, one scheduler per deployment."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import psycopg
import pytest
from conftest import FakeClock
from postgres_support import PG_URL, fresh_schema
from schedule_support import FailingCommit

from livetwin.errors import Unavailable
from livetwin.platform import Platform
from livetwin.schedule import Scheduler
from livetwin.store.open import DATABASE_URL_ENV
from livetwin.store.servicedb import open_service_db
from livetwin.timefmt import format_ts

pytestmark = pytest.mark.services  # needs a real service (see conftest.py)

HOUR = 3_600_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, monkeypatch):
    """'sqlite', or the PostgreSQL URL of a fresh schema (set as LIVETWIN_DATABASE_URL)."""
    if request.param == "sqlite":
        monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
        yield "sqlite"
        return
    with fresh_schema() as url:
        monkeypatch.setenv(DATABASE_URL_ENV, url)
        yield url


def scheduler_schema_tables(url: str) -> set[str]:
    """The tables of the scheduler's own PostgreSQL schema (`<schema>_schedule`)."""
    with psycopg.connect(PG_URL) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema LIKE %s",
            ("%\\_schedule",),
        ).fetchall()
    schema = url.rsplit("%3D", 1)[1]
    return {table for owner, table in rows if owner == f"{schema}_schedule"}


def test_the_state_lives_in_the_configured_backend(backend, tmp_path):
    with Platform(tmp_path / "data", clock=FakeClock()) as platform:
        platform.scheduler.register("job", lambda ctx: None)
    if backend == "sqlite":
        assert (tmp_path / "data" / "schedule.db").exists()
    else:
        assert not (tmp_path / "data" / "schedule.db").exists()
        assert {"functions", "schedules", "events", "inbox", "runs", "meta"} <= (
            scheduler_schema_tables(backend)
        )


def test_a_join_across_a_restart_runs_exactly_once(backend, tmp_path):
    clock, calls = FakeClock(), []
    with Platform(tmp_path / "data", clock=clock) as platform:
        s = platform.scheduler
        s.register("pair", lambda ctx: calls.append([e["data"] for e in ctx.events]))
        s.register("pair", lambda ctx: None, events=["a", "b"])
        first = s.post_event("a", {"n": 1}, key="k1")
        assert first["runs"] == []
    with Platform(tmp_path / "data", clock=clock) as platform:
        s = platform.scheduler
        s.register("pair", lambda ctx: calls.append([e["data"] for e in ctx.events]),
                   events=["a", "b"])  # fmt: skip
        assert s.function("pair")["joins"] == [{"key": "k1", "ready": {"a": 1}, "waiting": ["b"]}]
        second = s.post_event("b", {"n": 2}, key="k1")
        assert second["id"] > first["id"]
        (run,) = second["runs"]
        assert s.wait(run)["state"] == "succeeded"
        assert s.post_event("b", {"n": 3}, key="k1")["runs"] == []  # "a" was consumed
        s.wait_idle(10)
    with Platform(tmp_path / "data", clock=clock) as platform:
        s = platform.scheduler
        s.register("pair", lambda ctx: calls.append("again"), events=["a", "b"])
        s.tick()
        s.wait_idle(10)
        assert [r["id"] for r in s.runs(function="pair")] == [run]
        assert s.function("pair")["joins"] == [{"key": "k1", "ready": {"b": 1}, "waiting": ["a"]}]
    assert calls == [[{"n": 1}, {"n": 2}]]


def test_a_cron_schedule_is_kept_and_fires_after_a_restart(backend, tmp_path):
    clock, calls = FakeClock(ms("2026-03-02T09:30:00")), []
    with Platform(tmp_path / "data", clock=clock) as platform:
        platform.scheduler.register("report", lambda ctx: None)
        sid = platform.scheduler.add_schedule(
            {"id": "hourly", "function": "report", "args": {"to": "ops"},
             "trigger": {"kind": "cron", "cron": "0 * * * *", "tz": "Europe/Berlin"}}
        )["id"]  # fmt: skip
        assert platform.scheduler.schedule(sid)["fired"] == 0
    clock.now = ms("2026-03-02T10:00:00")  # 11:00 in Berlin: one run due while it was down
    with Platform(tmp_path / "data", clock=clock) as platform:
        s = platform.scheduler
        s.register("report", lambda ctx: calls.append((ctx.args["to"], ctx.trigger)))
        s.tick()
        s.wait_idle(10)
        clock.now += HOUR
        s.tick()
        s.wait_idle(10)
        runs = s.runs(schedule=sid)
        assert [r["state"] for r in runs] == ["succeeded", "succeeded"]
        assert s.schedule(sid)["fired"] == 2
    assert [(to, t["scheduled_for"]) for to, t in calls] == [
        ("ops", ms("2026-03-02T10:00:00")),
        ("ops", ms("2026-03-02T11:00:00")),
    ]


def test_runs_are_listed_newest_first_with_filters(backend, tmp_path):
    with Platform(tmp_path / "data", clock=FakeClock()) as platform:
        s = platform.scheduler
        s.register("ok", lambda ctx: ctx.args["i"])
        s.register("bad", lambda ctx: 1 / 0, retries=0)
        s.register("ok", lambda ctx: "other", namespace="lab")
        oks = [s.run_function("ok", args={"i": i})["id"] for i in range(3)]
        bad = s.run_function("bad")["id"]
        lab = s.run_function("ok", namespace="lab")["id"]
        s.wait_idle(10)
        assert [r["id"] for r in s.runs()] == [lab, bad, *reversed(oks)]
        assert [r["id"] for r in s.runs(function="ok")] == [lab, *reversed(oks)]
        assert [r["id"] for r in s.runs(function="ok", namespace="default")] == oks[::-1]
        assert [r["id"] for r in s.runs(namespace="lab")] == [lab]
        assert [r["id"] for r in s.runs(state="failed")] == [bad]
        assert [r["id"] for r in s.runs(state="succeeded", limit=2)] == [lab, oks[2]]
        assert s.run(oks[1])["result"] == 1
        assert "ZeroDivisionError" in s.run(bad)["error"]
        assert s.stats()["runs"] == {"succeeded": 4, "failed": 1}


def test_event_ids_are_not_reused_after_old_events_are_pruned(backend, tmp_path):
    clock = FakeClock()
    with Platform(tmp_path / "data", clock=clock) as platform:
        last = platform.scheduler.post_events([{"name": "tick"}] * 3)[-1]["id"]
    clock.now += 8 * 24 * HOUR  # past the week of retention: pruned on the next start
    with Platform(tmp_path / "data", clock=clock) as platform:
        assert platform.scheduler.stats()["pending_events"] == 0
    with Platform(tmp_path / "data", clock=clock) as platform:  # no event row left to count on
        assert platform.scheduler.post_event("tick")["id"] == last + 1


def test_a_second_scheduler_is_refused_or_waits_on_standby(backend, tmp_path):
    with Platform(tmp_path / "data", clock=FakeClock()) as platform:
        if backend == "sqlite":
            with pytest.raises(Unavailable, match="another scheduler already runs") as refused:
                platform.new_scheduler()
            assert refused.value.fix
        else:  # another machine's data directory, the same database: a standby
            elsewhere = Path(tmp_path / "elsewhere")
            elsewhere.mkdir()
            standby = Scheduler(
                clock=platform.clock,
                bus=platform.bus,
                reader=platform.query,
                open_db=partial(open_service_db, elsewhere),
            )
            try:
                assert standby.role == "standby" and platform.scheduler.role == "leader"
                with pytest.raises(Unavailable, match="on standby; the leader is") as refused:
                    standby.run_function("job")
                assert refused.value.fix and refused.value.field == "scheduler"
                assert standby.stats()["leader"] == 0
            finally:
                standby.stop()
        platform.scheduler.stop()
        s = platform.scheduler = platform.new_scheduler().start()  # the lock went with the first
        s.register("job", lambda ctx: "fine")
        assert s.wait(s.run_function("job")["id"])["result"] == "fine"


@pytest.mark.parametrize("failures", [1, 2])  # 2: reloading the state fails once too
def test_a_failed_transaction_stores_nothing_and_the_state_is_reloaded(backend, tmp_path, failures):
    with Platform(tmp_path / "data", clock=FakeClock()) as platform:
        s = platform.scheduler
        s.register("pair", lambda ctx: [e["data"] for e in ctx.events], events=["a", "b"])
        s.post_event("a", {"n": 1})
        real = s._store
        s._store = FailingCommit(real, failures)
        with pytest.raises(Unavailable, match="nothing was stored"):
            s.post_event("b", {"n": 2})  # would have joined: undone, in memory too
        s.tick()  # an operation: the state is reloaded first (failed once more with 2)
        assert s.function("pair")["joins"] == [{"key": None, "ready": {"a": 1}, "waiting": ["b"]}]
        assert s._store.failures == 0
        s._store = real
        (run,) = s.post_event("b", {"n": 3})["runs"]
        assert s.wait(run)["result"] == [{"n": 1}, {"n": 3}]
        assert [r["id"] for r in s.runs(function="pair")] == [run]


def test_an_event_posted_again_with_its_idempotency_key_is_stored_once(backend, tmp_path):
    clock, calls = FakeClock(), []
    with Platform(tmp_path / "data", clock=clock) as platform:
        s = platform.scheduler
        s.register("pair", lambda ctx: calls.append([e["data"] for e in ctx.events]),
                   events=["a", "b"])  # fmt: skip
        first = s.post_event("a", {"n": 1}, key="k1", idempotency_key="r-1")
        again = s.post_events([  # a retry, twice in one post: both duplicates
            {"name": "a", "data": {"n": 1}, "key": "k1", "idempotency_key": "r-1"},
            {"name": "a", "data": {"n": 1}, "key": "k1", "idempotency_key": "r-1"},
        ])  # fmt: skip
        assert again == [{"id": first["id"], "name": "a", "key": "k1", "runs": [],
                          "duplicate": True}] * 2  # fmt: skip
        # the same key on another event name or in another namespace is another event
        other = s.post_event("b", {"n": 2}, key="k1", idempotency_key="r-1")
        assert other["id"] > first["id"] and len(other["runs"]) == 1
        lab = s.post_event("a", {"n": 1}, key="k1", namespace="lab", idempotency_key="r-1")
        assert lab["id"] > other["id"] and "duplicate" not in lab
        s.wait_idle(10)
    with Platform(tmp_path / "data", clock=clock) as platform:  # the keys are durable
        s = platform.scheduler
        s.register("pair", lambda ctx: calls.append("again"), events=["a", "b"])
        retry = s.post_event("a", {"n": 1}, key="k1", idempotency_key="r-1")
        assert retry["duplicate"] and retry["id"] == first["id"]
        assert s.function("pair")["joins"] == []  # the retry fed no join
        assert s.post_event("b", {"n": 3}, key="k1", idempotency_key="r-2")["runs"] == []
        s.wait_idle(10)
    assert calls == [[{"n": 1}, {"n": 2}]]


def test_events_waiting_in_a_join_expire_after_its_ttl(backend, tmp_path):
    clock, calls = FakeClock(), []
    with Platform(tmp_path / "data", clock=clock) as platform:
        s = platform.scheduler
        s.register("pair", lambda ctx: calls.append([e["data"] for e in ctx.events]),
                   events=["a", "b"], ttl="10m")  # fmt: skip
        assert s.function("pair")["ttl"] == "10m"
        old = s.post_event("a", {"n": 1}, key="k1")
        clock.now += 6 * 60_000
        new = s.post_event("a", {"n": 2}, key="k1")
        waiting = s.waiting_events()
        assert [(w["id"], w["function"], w["key"], w["name"]) for w in waiting] == [
            (old["id"], "pair", "k1", "a"),
            (new["id"], "pair", "k1", "a"),
        ]
        assert waiting[0]["expires"] == format_ts(clock.now - 6 * 60_000 + 10 * 60_000)
        clock.now += 5 * 60_000  # the first waited 11 minutes: expired, never joined
        s.tick()
        assert [w["id"] for w in s.waiting_events()] == [new["id"]]
        assert s.function("pair")["joins"] == [{"key": "k1", "ready": {"a": 1}, "waiting": ["b"]}]
    with Platform(tmp_path / "data", clock=clock) as platform:  # the expiry is durable
        s = platform.scheduler
        s.register("pair", lambda ctx: calls.append([e["data"] for e in ctx.events]))
        assert [w["id"] for w in s.waiting_events(function="pair")] == [new["id"]]
        assert s.waiting_events(namespace="lab") == []
        (run,) = s.post_event("b", {"n": 3}, key="k1")["runs"]
        assert s.wait(run)["state"] == "succeeded"
        clock.now += 60 * 60_000
        s.post_event("b", {"n": 4}, key="k1")
        clock.now += 10 * 60_000  # exactly the ttl: expired
        (run,) = s.post_event("a", {"n": 5}, key="k1")["runs"] or [None]
        assert run is None and [w["name"] for w in s.waiting_events()] == ["a"]
    assert calls == [[{"n": 2}, {"n": 3}]]
