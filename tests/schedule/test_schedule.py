"""The scheduler in-process: cron across DST under a fake clock, missed-run policies, rising-edge
conditions, engine-event triggers, event joins (FIFO, per key, namespaces), runs and their logs."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from datetime import UTC, datetime

import pytest
from conftest import PUMP, T0, obs
from schedule_support import FailingCommit, new_scheduler
from webhook_support import wait_for

from livetwin.engine.events import Notice
from livetwin.errors import InvalidInput
from livetwin.platform import Platform
from livetwin.schedule import CronTrigger, Scheduler
from livetwin.store.open import DATABASE_URL_ENV

HOUR = 3_600_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def scheduler(platform):
    s = new_scheduler(platform, workers=4).start()
    yield s
    s.stop()


def settle(platform: Platform, scheduler: Scheduler) -> None:
    """Wait until the scheduler has seen every state change ingested so far.

    The writer publishes a group's events before it takes the next group, so once a later
    ingest returns, the earlier events are on the scheduler's queue; a tick queues behind them.
    """
    if "barrier" not in platform.core.engine.types:
        platform.put_type("barrier", {"properties": {"x": {}}})
    platform.ingest([{"twin": "barrier-0", "type": "barrier", "values": {"x": 1}}])
    platform.ingest([{"twin": "barrier-0", "type": "barrier", "values": {"x": 2}}])
    scheduler.tick()
    scheduler.wait_idle(10)


def fired(scheduler: Scheduler, schedule_id: str) -> list[int]:
    runs = scheduler.runs(schedule=schedule_id, limit=1000)
    return sorted(r["trigger"]["scheduled_for"] for r in runs)


# ---- cron and time zones ---------------------------------------------------------------------


def test_cron_fires_at_the_right_instants_across_the_autumn_dst_change(platform, clock):
    """Europe/Berlin falls back 03:00 CEST -> 02:00 CET on 2026-10-25: an hourly job fires in
    both 02:00 hours, a daily 02:30 job fires once, at the first 02:30."""
    clock.now = ms("2026-10-24T21:30:00")
    s = new_scheduler(platform).start()
    try:
        s.register("job", lambda ctx: None)
        hourly = s.add_schedule(
            {"function": "job", "trigger": {"kind": "cron", "cron": "0 * * * *",
                                             "tz": "Europe/Berlin"}}
        )["id"]  # fmt: skip
        daily = s.add_schedule(
            {"function": "job", "trigger": {"kind": "cron", "cron": "30 2 * * *",
                                             "tz": "Europe/Berlin"}}
        )["id"]  # fmt: skip
        while clock.now < ms("2026-10-26T02:00:00"):
            clock.now += 30 * 60_000  # land on every :00 and :30, exactly when due
            s.tick()
        s.wait_idle(10)
        hours = fired(s, hourly)
        assert hours[:6] == [
            ms("2026-10-24T22:00:00"),  # 00:00 CEST
            ms("2026-10-24T23:00:00"),  # 01:00 CEST
            ms("2026-10-25T00:00:00"),  # 02:00 CEST
            ms("2026-10-25T01:00:00"),  # 02:00 CET (the repeated hour)
            ms("2026-10-25T02:00:00"),  # 03:00 CET
            ms("2026-10-25T03:00:00"),
        ]
        assert len(hours) == len(set(hours)) == 29  # 22:00Z on the 24th .. 02:00Z on the 26th
        assert fired(s, daily) == [ms("2026-10-25T00:30:00"), ms("2026-10-26T01:30:00")]
        assert all(r["trigger"]["late_ms"] == 0 for r in s.runs(schedule=hourly, limit=1000))
    finally:
        s.stop()


def test_cron_in_the_spring_gap():
    """2026-03-29 02:00 CET -> 03:00 CEST: a fixed 02:30 runs at 03:30 CEST; an hourly job has
    no 02:00 that day."""
    daily = CronTrigger("30 2 * * *", "Europe/Berlin")
    assert daily.next_after(ms("2026-03-28T23:00:00")) == ms("2026-03-29T01:30:00")
    assert daily.next_after(ms("2026-03-29T01:30:00")) == ms("2026-03-30T00:30:00")
    hourly = CronTrigger("0 * * * *", "Europe/Berlin")
    assert hourly.next_after(ms("2026-03-29T00:00:00")) == ms("2026-03-29T01:00:00")  # 03:00 CEST
    utc = CronTrigger("*/15 * * * *")
    assert utc.next_after(ms("2026-01-01T00:07:00")) == ms("2026-01-01T00:15:00")


def test_missed_runs_after_downtime_follow_each_policy(tmp_path, clock):
    clock.now = T0
    with Platform(tmp_path / "d", clock=clock) as platform:
        s = new_scheduler(platform).start()
        s.register("job", lambda ctx: None)
        ids = {
            policy: s.add_schedule(
                {"id": f"every-hour-{policy}", "function": "job", "missed": policy,
                 "trigger": {"kind": "interval", "every": "1h"}}
            )["id"]
            for policy in ("skip", "once", "catch_up")
        }  # fmt: skip
        once_skip = s.add_schedule(
            {"function": "job", "missed": "skip", "trigger": {"kind": "once", "after": "2h"}}
        )["id"]
        s.stop()
        clock.now = T0 + 5 * HOUR + 30 * 60_000  # down for 5.5 hours: 5 instants missed
        s = new_scheduler(platform)
        s.register("job", lambda ctx: None)
        s.start()
        s.tick()
        s.wait_idle(10)
        assert fired(s, ids["skip"]) == []
        assert len(fired(s, ids["once"])) == 1
        assert fired(s, ids["catch_up"]) == [T0 + k * HOUR for k in range(1, 6)]
        for sid in ids.values():
            assert s.schedule(sid)["next"] == s.schedule(ids["once"])["next"]
        assert fired(s, once_skip) == []
        assert s.schedule(once_skip)["enabled"] is False
        # on time again: every policy fires the next instant
        clock.now = T0 + 6 * HOUR
        s.tick()
        s.wait_idle(10)
        assert [len(fired(s, ids[p])) for p in ("skip", "once", "catch_up")] == [1, 2, 6]
        s.stop()


def test_run_now_and_disable(platform, scheduler, clock):
    scheduler.register("job", lambda ctx: ctx.args["n"] * 2)
    sid = scheduler.add_schedule(
        {"function": "job", "args": {"n": 21}, "trigger": {"kind": "interval", "every": "1h"}}
    )["id"]
    run = scheduler.wait(scheduler.run_schedule(sid)["id"])
    assert run["state"] == "succeeded" and run["result"] == 42
    assert run["trigger"] == {"kind": "manual", "schedule": sid}
    scheduler.update_schedule(sid, {"enabled": False})
    clock.now += 3 * HOUR
    scheduler.tick()
    assert [r["id"] for r in scheduler.runs(schedule=sid)] == [run["id"]]
    scheduler.update_schedule(sid, {"enabled": True})
    scheduler.tick()
    assert len(scheduler.runs(schedule=sid)) == 2  # re-enabled: the missed instant runs once


# ---- engine events and conditions -------------------------------------------------------------


def test_condition_fires_on_the_rising_edge_per_twin(platform, scheduler, clock):
    platform.put_type("pump", PUMP)
    platform.ingest([obs("pump-0", T0, flow=990, pressure=1)])  # already true: never an edge
    seen = []
    scheduler.register("high-flow", lambda ctx: seen.append(ctx.trigger["twin"]))
    sid = scheduler.add_schedule(
        {"function": "high-flow",
         "trigger": {"kind": "condition", "type": "pump", "when": "flow > 900"}}
    )["id"]  # fmt: skip

    def step(k: int, **flows) -> None:
        platform.ingest([obs(t, T0 + k * 1000, flow=f, pressure=1) for t, f in flows.items()])
        settle(platform, scheduler)

    step(1, **{"pump-0": 995, "pump-1": 950, "pump-2": 100})
    assert seen == ["pump-1"]
    step(2, **{"pump-1": 960, "pump-2": 200})  # still high: no new edge
    assert seen == ["pump-1"]
    step(3, **{"pump-1": 100, "pump-0": 10})  # falls
    step(4, **{"pump-1": 970, "pump-0": 999, "pump-2": 901})  # rises again, each once
    assert sorted(seen) == ["pump-0", "pump-1", "pump-1", "pump-2"]
    assert scheduler.schedule(sid)["fired"] == 4


def test_condition_state_survives_a_restart(tmp_path, clock):
    with Platform(tmp_path / "d", clock=clock) as platform:
        platform.put_type("pump", PUMP)
        s = new_scheduler(platform).start()
        s.register("alarm", lambda ctx: None)
        s.add_schedule(
            {"id": "hi", "function": "alarm",
             "trigger": {"kind": "condition", "type": "pump", "when": "flow > 900"}}
        )  # fmt: skip
        platform.ingest([obs("p", T0, flow=950, pressure=1)])
        settle(platform, s)
        s.stop()
        s = new_scheduler(platform)
        s.register("alarm", lambda ctx: None)
        s.start()
        platform.ingest([obs("p", T0 + 1000, flow=960, pressure=1)])  # still high after restart
        settle(platform, s)
        assert len(s.runs(schedule="hi")) == 1
        s.stop()


def test_state_trigger_filters_by_type_and_twin_prefix(platform, scheduler):
    platform.put_type("pump", PUMP)
    done = threading.Event()
    scheduler.register("on-change", lambda ctx: done.set() or ctx.trigger["twins"])
    sid = scheduler.add_schedule(
        {"function": "on-change",
         "trigger": {"kind": "event", "on": "state", "type": "pump", "twin_prefix": "site-a/"}}
    )["id"]  # fmt: skip
    platform.ingest([obs("site-b/1", T0, flow=1, pressure=1)])
    settle(platform, scheduler)
    assert scheduler.runs(schedule=sid) == []
    platform.ingest([obs("site-a/1", T0, flow=1, pressure=1), obs("site-b/2", T0, flow=2)])
    settle(platform, scheduler)
    (run,) = scheduler.runs(schedule=sid)
    assert run["state"] == "succeeded" and run["result"] == ["site-a/1"]


def test_run_notices_on_the_bus_chain_functions(platform, scheduler):
    notices = []
    platform.bus.subscribe(lambda e: notices.append(e) if isinstance(e, Notice) else None)
    scheduler.register("first", lambda ctx: "one")
    scheduler.register("second", lambda ctx: ctx.trigger["result"] + "+two")
    scheduler.add_schedule(
        {"function": "second",
         "trigger": {"kind": "event", "on": "job", "function": "first", "state": "succeeded"}}
    )  # fmt: skip
    first = scheduler.run_function("first")
    scheduler.wait(first["id"])
    deadline = time.monotonic() + 10
    while len(scheduler.runs(function="second", state="succeeded")) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert scheduler.runs(function="second")[0]["result"] == "one+two"
    jobs = [n for n in notices if n.kind == "run"]
    assert jobs[0].id == first["id"] and jobs[0].data["state"] == "succeeded"


# ---- event joins -----------------------------------------------------------------------------


def test_join_consumes_each_event_once_in_fifo_order_per_key(platform, scheduler):
    got = []
    scheduler.register("train", lambda ctx: got.append(ctx.events), events=["data", "model"])
    scheduler.post_event("data", {"n": 1}, key="pump-1")
    scheduler.post_event("data", {"n": 2}, key="pump-1")
    scheduler.post_event("model", {"v": 7}, key="pump-2")
    (fn,) = scheduler.functions()
    assert sorted(fn["joins"], key=lambda j: j["key"]) == [
        {"key": "pump-1", "ready": {"data": 2}, "waiting": ["model"]},
        {"key": "pump-2", "ready": {"model": 1}, "waiting": ["data"]},
    ]
    first = scheduler.post_event("model", {"v": 8}, key="pump-1")
    assert len(first["runs"]) == 1
    scheduler.wait(first["runs"][0])
    assert [(e["name"], e["data"]) for e in got[0]] == [("data", {"n": 1}), ("model", {"v": 8})]
    scheduler.post_event("data", {"n": 3}, key="pump-2")
    second = scheduler.post_event("model", {"v": 9}, key="pump-1")
    scheduler.wait_idle(10)
    assert [e["data"] for e in got[1]] == [{"n": 3}, {"v": 7}]  # pump-2's own pair
    assert [e["data"] for e in got[2]] == [{"n": 2}, {"v": 9}]  # pump-1's next data, FIFO
    assert len(second["runs"]) == 1 and scheduler.functions()[0]["joins"] == []
    assert scheduler.functions()[0]["last_run"]["state"] == "succeeded"


def test_namespaces_keep_functions_events_and_runs_apart(platform, scheduler):
    calls = []
    for ns in ("fleet-a", "fleet-b"):
        scheduler.register("f", lambda ctx: calls.append(ctx.namespace), namespace=ns,
                           events=["go", "set"])  # fmt: skip
    scheduler.post_events([{"name": "go", "namespace": "fleet-a"},
                           {"name": "set", "namespace": "fleet-b"}])  # fmt: skip
    scheduler.wait_idle(10)
    assert calls == []
    scheduler.post_event("set", namespace="fleet-a")
    scheduler.wait_idle(10)
    assert calls == ["fleet-a"]
    assert [r["namespace"] for r in scheduler.runs(namespace="fleet-a")] == ["fleet-a"]
    assert scheduler.runs(namespace="fleet-b") == []
    assert [f["namespace"] for f in scheduler.functions("fleet-b")] == ["fleet-b"]


# ---- runs ------------------------------------------------------------------------------------


def test_failing_or_slow_functions_never_block_others(platform, scheduler):
    release = threading.Event()
    scheduler.register("slow", lambda ctx: release.wait(10), concurrency=1)
    scheduler.register("broken", lambda ctx: 1 / 0)
    scheduler.register("fast", lambda ctx: "ok")
    slow = [scheduler.run_function("slow")["id"] for _ in range(3)]
    broken = scheduler.run_function("broken")["id"]
    fast = scheduler.run_function("fast")["id"]
    assert scheduler.wait(fast)["result"] == "ok"
    failed = scheduler.wait(broken)
    assert failed["state"] == "failed" and "ZeroDivisionError" in failed["error"]
    assert any("ZeroDivisionError" in line for line in failed["logs"])
    wait_for(lambda: scheduler.run(slow[0])["state"] == "running", timeout=10)
    states = [scheduler.run(r)["state"] for r in slow]
    assert states == ["running", "queued", "queued"]  # concurrency 1, FIFO
    fn = scheduler.function("slow")
    assert fn["running"] == 1 and fn["queued"] == 2
    assert scheduler.function("broken")["last_error"]["run"] == broken
    release.set()
    scheduler.wait_idle(10)
    assert [scheduler.run(r)["state"] for r in slow] == ["succeeded"] * 3


def test_run_logs_capture_ctx_log_and_logging(platform, scheduler):
    def noisy(ctx):
        ctx.log("hello from the run")
        logging.getLogger("user.model").warning("drift %d%%", 7)
        return {"ok": True}

    scheduler.register("noisy", noisy, retries=0)
    run = scheduler.wait(scheduler.run_function("noisy", args={"x": 1})["id"])
    assert run["logs"] == ["hello from the run", "WARNING user.model: drift 7%"]
    assert run["args"] == {"x": 1} and run["attempts"] == 1 and run["duration_ms"] >= 0


def test_python_reference_and_builtin_calibrate(tmp_path, clock):
    from livetwin.examples.rollers import ROLLER_TYPE, observations, roller_fleet

    clock.now = T0 + 10**8
    with Platform(tmp_path / "d", clock=clock) as platform:
        platform.put_type("roller_line", ROLLER_TYPE)
        sim, ids = roller_fleet(2, seed=1), ["line-0", "line-1"]
        rows = []
        for k in range(60):
            rows += observations(sim.step(), ids, T0 + k * 100)
        platform.ingest(rows)
        s = new_scheduler(platform).start()
        try:
            s.define_function("recal", {"kind": "builtin", "job": "calibrate",
                                        "args": {"type": "roller_line"}})  # fmt: skip
            s.define_function("ref", {"kind": "python", "ref": "test_schedule:referenced"})
            run = s.wait(s.run_function("recal")["id"], 60)
            assert run["state"] == "succeeded", run["error"]
            assert run["result"]["status"] == "succeeded" and run["result"]["calibrated"] == 2
            assert s.wait(s.run_function("ref")["id"])["result"] == "referenced ref"
        finally:
            s.stop()


def referenced(ctx) -> str:
    return f"referenced {ctx.function}"


def test_one_scheduler_per_data_directory_and_allowed_modules(platform, scheduler):
    from livetwin.errors import Unavailable

    with pytest.raises(Unavailable):
        platform.new_scheduler()
    scheduler.stop()
    s = platform.new_scheduler(allow_modules=("test_schedule",)).start()
    try:
        s.define_function(
            "ok", {"kind": "python", "ref": "test_schedule:referenced"}, trusted=False
        )
        with pytest.raises(InvalidInput) as error:
            s.define_function("no", {"kind": "python", "ref": "os.path:join"}, trusted=False)
        assert error.value.field == "ref"
        assert s.wait(s.run_function("ok")["id"])["result"] == "referenced ok"
    finally:
        s.stop()


def test_a_failed_commit_loses_nothing_acknowledged_and_runs_nothing_twice(platform, scheduler):
    from livetwin.errors import Unavailable

    release, calls = threading.Event(), []
    scheduler.register("slow", lambda ctx: calls.append("slow") or release.wait(10))
    scheduler.register("pair", lambda ctx: calls.append("pair"), events=["a", "b"])
    slow = scheduler.run_function("slow")["id"]
    scheduler.post_event("a", {"n": 1})
    wait_for(lambda: scheduler.run(slow)["state"] == "running", timeout=10)
    real = scheduler._store
    scheduler._store = FailingCommit(real)
    with pytest.raises(Unavailable):
        scheduler.post_event("b", {"n": 2})  # not acknowledged: not stored, no run
    assert scheduler._store.failures == 0  # it was the commit that failed
    scheduler._store = real
    scheduler.tick()  # dispatches whatever the recovery queued: the running "slow" must not be
    assert scheduler.function("pair")["joins"] == [
        {"key": None, "ready": {"a": 1}, "waiting": ["b"]}
    ]
    release.set()
    assert scheduler.wait(slow)["state"] == "succeeded"
    run = scheduler.post_event("b", {"n": 3})["runs"][0]
    assert [e["data"] for e in scheduler.wait(run)["events"]] == [{"n": 1}, {"n": 3}]
    scheduler.wait_idle(10)
    assert calls == ["slow", "pair"]


def test_runs_of_a_callable_not_yet_registered_wait_for_it(tmp_path, clock):
    with Platform(tmp_path / "d", clock=clock) as platform:
        s = new_scheduler(platform).start()
        s.register("later", lambda ctx: "first process")
        s.stop()
        s = new_scheduler(platform).start()  # a new process: the declaration, no callable
        try:
            run = s.run_function("later")["id"]
            s.tick()
            assert s.run(run)["state"] == "queued"
            assert s.function("later")["registered"] is False
            s.register("later", lambda ctx: "second process")
            assert s.wait(run)["result"] == "second process"
        finally:
            s.stop()


def test_a_schedule_db_from_before_the_meta_table_keeps_its_event_ids(tmp_path, clock, monkeypatch):
    """Older files kept the event-id high-water mark only in sqlite_sequence."""
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)  # a SQLite file, whatever is configured
    with Platform(tmp_path / "d", clock=clock) as platform:
        last = platform.scheduler.post_events([{"name": "tick"}] * 3)[-1]["id"]
    with sqlite3.connect(tmp_path / "d" / "schedule.db") as db:
        db.execute("DROP TABLE meta")
        db.execute("DELETE FROM events")  # pruned: only sqlite_sequence remembers
    db.close()
    with Platform(tmp_path / "d", clock=clock) as platform:
        assert platform.scheduler.post_event("tick")["id"] == last + 1


def test_a_state_trigger_with_names_fires_only_for_batches_carrying_them(platform, scheduler):
    platform.put_type("pump", PUMP)
    scheduler.register("on-flow", lambda ctx: ctx.trigger["twins"])
    sid = scheduler.add_schedule(
        {"function": "on-flow",
         "trigger": {"kind": "event", "on": "state", "type": "pump", "names": ["flow"]}}
    )["id"]  # fmt: skip
    platform.ingest([obs("p1", T0, pressure=2)])  # no flow: nothing to do
    settle(platform, scheduler)
    assert scheduler.runs(schedule=sid) == []
    platform.ingest([obs("p1", T0 + 1, pressure=3), obs("p2", T0 + 1, flow=5)])
    settle(platform, scheduler)
    (run,) = scheduler.runs(schedule=sid)
    assert run["result"] == ["p2"]
    with pytest.raises(InvalidInput) as info:
        scheduler.add_schedule(
            {"function": "on-flow", "trigger": {"kind": "event", "on": "created", "names": ["x"]}}
        )
    assert info.value.field == "trigger.names"


# ---- system schedules ------------------------------------------------------------------------


def per_type(ctype) -> list[dict]:
    """A system schedule for each type whose description names an interval."""
    every = ctype.spec.description
    if not every:
        return []
    trigger = {"kind": "interval", "every": every}
    return [{"id": f"slow.{ctype.name}", "function": "slow", "trigger": trigger, "args": {}}]


def test_system_schedules_follow_their_types_and_never_overlap_a_run(platform, clock):
    s = new_scheduler(platform, workers=4)
    release = threading.Event()
    s.register_job("slow", lambda ctx: release.wait(10))
    s.add_system_schedules(per_type, {"slow": {"kind": "builtin", "job": "slow"}})
    platform.put_type("early", {"description": "1s", "properties": {"x": {}}})  # before start
    s.register("mine", lambda ctx: None, namespace="system")  # declared by hand: left alone
    s.add_schedule({"id": "mine", "namespace": "system", "function": "mine",
                    "trigger": {"kind": "interval", "every": "1h"}})  # fmt: skip
    s.start()
    platform.put_type("late", {"properties": {"x": {}}})
    s.tick()  # after the bus events: the system schedules are in step

    def system() -> dict[str, int]:
        found = {x["id"]: x["trigger"]["every"] for x in s.schedules(namespace="system")}
        assert found.pop("mine") == 3_600_000
        return found

    assert system() == {"slow.early": 1000}
    assert s.function("slow", "system")["job"] == "slow"
    platform.put_type("late", {"description": "5s", "properties": {"x": {}}})
    platform.put_type("early", {"description": "2s", "properties": {"x": {}}})
    s.tick()
    assert system() == {"slow.early": 2000, "slow.late": 5000}
    platform.put_type("late", {"properties": {"x": {}}})  # no interval any more
    s.tick()
    assert system() == {"slow.early": 2000}
    # a run still going when the next is due: not started twice
    clock.now += 2000
    s.tick()
    clock.now += 2000
    s.tick()
    assert len(s.runs(schedule="slow.early")) == 1
    release.set()
    s.wait_idle(10)
    clock.now += 2000
    s.tick()
    s.wait_idle(10)
    assert [r["state"] for r in s.runs(schedule="slow.early")] == ["succeeded", "succeeded"]
    s.stop()


def test_a_scheduler_needs_only_ports_and_knows_no_jobs(tmp_path, clock):
    from functools import partial

    from livetwin.core import TwinCore
    from livetwin.query import Query
    from livetwin.store.servicedb import open_service_db

    with TwinCore.sandbox(clock=clock) as core:
        s = Scheduler(
            clock=core.clock,
            bus=core.bus,
            reader=Query(core),
            open_db=partial(open_service_db, tmp_path),
        ).start()
        try:
            with pytest.raises(InvalidInput) as info:  # no job kinds unless registered
                s.define_function("cal", {"kind": "builtin", "job": "calibrate"})
            assert info.value.field == "job"
            s.register_job("echo", lambda ctx: [ctx.args, ctx.platform])
            s.define_function("echo", {"kind": "builtin", "job": "echo", "args": {"n": 1}})
            assert s.wait(s.run_function("echo")["id"])["result"] == [{"n": 1}, None]
        finally:
            s.stop()
