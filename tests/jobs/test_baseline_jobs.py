"""The seasonal-baseline jobs under the scheduler and a fake clock: nightly cron retraining into
new registry versions, the inactivity check whose verdicts make the home rule raise and clear
its alarm (a replay of the journal reproduces it), bad args."""

from __future__ import annotations

import numpy as np
import pytest
from alarm_support import alarm_story, replayed_alarms

from livetwin.errors import InvalidInput, NotFound
from livetwin.examples.home import DEMO_NOW, run_home_demo, schedule_home_jobs
from livetwin.jobs.baseline import last_midnight, model_name, train_baselines
from livetwin.jobs.inactivity import check_inactivity
from livetwin.timefmt import parse_ts

MINUTE = 60_000


def runs_of(platform, function: str) -> list[dict]:
    return platform.scheduler.runs(function=function, limit=100)


def advance(platform, clock, to_ms: int) -> None:
    """Move the fake clock to `to_ms`, fire what is due and wait for the runs to finish."""
    clock.now = to_ms
    platform.scheduler.tick()
    platform.scheduler.wait_idle(30)
    platform.alarms.sync()  # the rules have seen what the runs wrote back


def motion(platform, room: str, at_ms: int) -> None:
    """One presence interval of a minute in `room` (motion 1, then 0)."""
    platform.ingest(
        [
            {"twin": room, "type": "room", "ts": at_ms, "values": {"motion": 1}},
            {"twin": room, "type": "room", "ts": at_ms + MINUTE, "values": {"motion": 0}},
        ]
    )


@pytest.mark.platform_services("schedules")
def test_nightly_cron_retrains_into_a_later_version(platform, clock):
    clock.now = DEMO_NOW  # Wednesday 2026-04-08 15:00 in Berlin
    fleet = run_home_demo(platform, out=None, announce=False)["fleet"]
    first = platform.registry.get("activity.home-1", 1)
    assert parse_ts(first["training"]["end"]) == parse_ts("2026-04-07T22:00:00Z")
    declared = schedule_home_jobs(platform)
    nightly = {s["id"]: s for s in declared["schedules"]}["home-baselines-nightly"]
    assert nightly["next"] == "2026-04-09T01:00:00.000Z"  # 03:00 CEST
    assert schedule_home_jobs(platform)["schedules"][0]["next"] == nightly["next"]  # idempotent
    # Wednesday evening in home-1: after the first training period, inside the second
    evening = parse_ts("2026-04-08T18:00:00Z")
    motion(platform, "home-1/kitchen", evening)

    advance(platform, clock, parse_ts("2026-04-09T00:55:00Z"))
    assert runs_of(platform, "train-home-baselines") == []  # not yet 03:00 in Berlin
    advance(platform, clock, parse_ts("2026-04-09T01:00:00Z"))
    (run,) = runs_of(platform, "train-home-baselines")
    assert run["state"] == "succeeded", run["error"]
    assert run["trigger"]["scheduled_for"] == parse_ts("2026-04-09T01:00:00Z")
    summary = run["result"]
    assert summary["versions"] == 4 and summary["skipped"] == 0
    assert summary["training"]["end"] == "2026-04-08T22:00:00.000Z"
    assert {t["model"]: t["version"] for t in summary["trained"]} == {
        f"activity.home-{i}": 2 for i in range(1, 5)
    }
    logs = platform.scheduler.run(run["id"])["logs"]
    assert any("registered 4 versions" in line for line in logs)

    second = platform.registry.get("activity.home-1", 2)
    assert parse_ts(second["training"]["end"]) == parse_ts("2026-04-08T22:00:00Z")
    assert parse_ts(second["training"]["end"]) > parse_ts(first["training"]["end"])
    first_report = int(fleet.ts[np.char.startswith(fleet.twin.astype(str), "home-1/")].min())
    assert parse_ts(second["training"]["start"]) == first_report  # all stored history
    assert second["tags"] == {"twin": "home-1", "type": "home", "property": "motion"}
    # the new version learnt Wednesday 20:00 (local) in home-1; the old one did not see it
    learnt = platform.registry.predict("activity.home-1", {"ts": evening})
    before = platform.registry.predict("activity.home-1", {"ts": evening}, version=1)
    assert learnt["version"] == 2 and before["version"] == 1
    (n,), (old_mean,) = before["visits"]["count"], before["visits"]["mean"]
    assert learnt["visits"]["count"][0] == n + 1  # one more Wednesday 20:00 hour, with a visit
    assert learnt["visits"]["mean"][0] * (n + 1) == pytest.approx(old_mean * n + 1)
    assert second["metrics"]["reports"] > first["metrics"]["reports"]
    (rooms,) = runs_of(platform, "train-room-baselines")
    assert rooms["state"] == "succeeded" and rooms["result"]["versions"] == 16
    assert platform.registry.get("activity.home-1.kitchen", 2)["version"] == 2
    # the next check uses the newest version; a production alias pins one
    advance(platform, clock, parse_ts("2026-04-09T01:05:00Z"))
    check = runs_of(platform, "check-home-inactivity")[0]
    assert check["trigger"]["scheduled_for"] == parse_ts("2026-04-09T01:05:00Z")
    assert {v["version"] for v in check["result"]["verdicts"]} == {2}
    platform.registry.set_alias("activity.home-2", "production", 1)
    pinned = check_inactivity(platform, "home", twins=["home-2", "home-3"], alarms=False)
    assert {v["twin"]: v["version"] for v in pinned["verdicts"]} == {"home-2": 1, "home-3": 2}
    # the next night retrains again: version 3
    advance(platform, clock, parse_ts("2026-04-10T01:00:00Z"))
    assert platform.registry.get("activity.home-1", 3)["training"]["end"].startswith(
        "2026-04-09T22:00"
    )


@pytest.mark.platform_services("schedules")
def test_check_raises_for_the_stopped_home_only_and_clears_when_activity_resumes(platform, clock):
    clock.now = DEMO_NOW
    demo = run_home_demo(platform, out=None, announce=False)  # trains v1, raises nothing
    assert platform.alarms.list()["total"] == 0 and demo["emergencies"] == ["home-4"]
    schedule_home_jobs(platform)

    advance(platform, clock, DEMO_NOW + 5 * MINUTE)
    (run,) = runs_of(platform, "check-home-inactivity")
    assert run["state"] == "succeeded", run["error"]
    assert run["result"]["emergencies"] == ["home-4"] and run["result"]["checked"] == 4
    assert {v["twin"]: v["alarm"] for v in run["result"]["verdicts"]}["home-4"] == 1
    assert run["result"]["verdicts"][0]["version"] == 1
    # the verdict went back in through ingest; the home type's `inactivity` rule raised the alarm
    (alarm,) = platform.alarms.list(state="open")["items"]
    assert (alarm["twin"], alarm["rule"], alarm["severity"]) == ("home-4", "inactivity", "critical")
    assert alarm["source"] == "rule" and alarm["raised"] == "2026-04-08T13:05:00.000Z"
    assert alarm["values"]["inactivity_emergency"] == 1 and alarm["values"]["inactive_min"] > 300
    assert alarm["message"].startswith("no activity in home-4 for 30")
    assert platform.twin("home-4")["properties"]["emergency"] == 1.0
    assert platform.twin("home-1")["properties"]["emergency"] == 0.0
    assert platform.twin("home-1")["properties"]["inactivity_emergency"] == 0.0

    advance(platform, clock, DEMO_NOW + 10 * MINUTE)  # still quiet: the same alarm stays open
    (still,) = platform.alarms.list(state="open")["items"]
    assert still["id"] == alarm["id"] and still["count"] == 1
    assert platform.twin("home-4")["properties"]["inactive_min"] > 305

    # below the threshold without any new activity (a lax rule): the alarm stays open
    lax = check_inactivity(platform, "home", twins=["home-4"], factor=100.0)
    assert not lax["verdicts"][0]["emergency"] and lax["cleared"] == []
    assert lax["verdicts"][0]["alarm"] == 1  # held: no activity since the emergency
    platform.alarms.sync()
    assert platform.alarms.find_open("home-4", "inactivity")["id"] == alarm["id"]

    motion(platform, "home-4/kitchen", DEMO_NOW + 12 * MINUTE)  # the occupant moves again
    advance(platform, clock, DEMO_NOW + 15 * MINUTE)
    latest = runs_of(platform, "check-home-inactivity")[0]
    assert latest["result"]["emergencies"] == [] and latest["result"]["cleared"] == ["home-4"]
    cleared = platform.alarms.get(alarm["id"])
    assert cleared["state"] == "cleared" and cleared["cleared_by"] == "condition"
    assert cleared["cleared"] == "2026-04-08T13:15:00.000Z"
    assert cleared["history"][-1]["note"] == "condition no longer holds"
    assert platform.twin("home-4")["properties"]["emergency"] == 0.0
    assert platform.twin("home-4")["properties"]["inactive_min"] == pytest.approx(2.0)
    assert platform.alarms.list()["total"] == 1  # no other home was ever alarmed

    # no job raised or cleared it: replaying the journal into a sandbox reproduces the alarm
    (replayed,) = replayed_alarms(platform)
    assert replayed == alarm_story(cleared)


def test_training_picks_the_property_and_skips_twins_without_reports(platform, clock):
    clock.now = DEMO_NOW
    run_home_demo(platform, homes=2, out=None, announce=False)
    platform.ingest([{"twin": "home-empty", "type": "home", "values": {"emergency": 0}}])
    summary = train_baselines(platform, "home", tz="Europe/Berlin", window="14d", until="now")
    assert summary["versions"] == 2 and summary["skipped"] == 1
    assert summary["skipped_twins"][0]["twin"] == "home-empty"
    v2 = {t["twin"]: t for t in summary["trained"]}
    assert summary["reports"] == sum(t["reports"] for t in v2.values())
    assert summary["samples"]["visits"] == 2 * 14 * 24  # whole hours in the window, per home
    assert summary["samples"]["duration"] == sum(t["visits"] for t in v2.values()) > 100
    assert summary["training"] == {
        "start": "2026-03-25T13:00:00.000Z",
        "end": "2026-04-08T13:00:00.000Z",
    }
    version = platform.registry.get("activity.home-1", 2)
    assert version["training"]["start"] == "2026-03-25T13:00:00.000Z"
    check = check_inactivity(platform, "home", alarms=False, publish=False)
    empty = {v["twin"]: v for v in check["verdicts"]}["home-empty"]
    assert not empty["emergency"] and "no registered model" in empty["reason"]
    # a room's own history, and a home's rooms, give the same last activity
    rooms = check_inactivity(platform, "room", twins=["home-1/kitchen"], alarms=False)
    assert rooms["verdicts"][0]["model"] == "activity.home-1.kitchen"


@pytest.mark.platform_services("schedules")
def test_bad_arguments_fail_the_run_with_the_field(platform, clock):
    clock.now = DEMO_NOW
    scheduler = platform.scheduler
    scheduler.define_function("train", {"kind": "builtin", "job": "train-baseline"})
    scheduler.define_function("check", {"kind": "builtin", "job": "check-inactivity"})
    platform.put_type("room", {"properties": {"motion": {}}})
    platform.put_type("home", {"properties": {"emergency": {}}, "children": ["room"]})
    cases = [
        ("train", {}, "args.type"),
        ("train", {"type": "lamp"}, "no twin type 'lamp'"),
        ("train", {"type": "home", "tz": "Mars/Olympus"}, "unknown time zone"),
        ("train", {"type": "home", "colour": "red"}, "unknown argument(s) of train-baseline"),
        ("train", {"type": "home", "property": "heat"}, "no twin type declares property"),
        ("train", {"type": "home", "until": "soon"}, "args.until"),
        ("train", {"type": "home", "window": "1 fortnight"}, "bad duration"),
        ("train", {"type": "home", "twins": ["ghost"]}, "not twins of type 'home'"),
        ("train", {"type": "home", "since": "2030-01-01T00:00:00Z"}, "is empty"),
        ("train", {"type": "home", "model_prefix": "1-"}, "is not a model name"),
        ("check", {"type": "home", "severity": "dire"}, "unknown severity"),
        ("check", {"type": "home", "factor": "big"}, "args.factor must be a number"),
        ("check", {"type": "home", "alarms": "yes"}, "args.alarms must be true or false"),
    ]
    for function, args, expected in cases:
        run = scheduler.wait(scheduler.run_function(function, args=args)["id"], 10)
        assert run["state"] == "failed", (function, args)
        assert expected in run["error"], (args, run["error"])
        logs = scheduler.run(run["id"])["logs"]
        assert any("; fix: " in line for line in logs), logs  # the field and the fix, logged
    (last,) = [r for r in scheduler.runs(function="train", limit=100) if r["args"] == {}]
    assert "error in args.type: " in scheduler.run(last["id"])["logs"][0]
    with pytest.raises(InvalidInput) as info:
        model_name("1-", "home")
    assert info.value.field == "model_prefix"
    with pytest.raises(NotFound):
        train_baselines(platform, "lamp")


def test_last_midnight_follows_the_time_zone():
    assert last_midnight(DEMO_NOW, "Europe/Berlin") == parse_ts("2026-04-07T22:00:00Z")
    assert last_midnight(DEMO_NOW, "UTC") == parse_ts("2026-04-08T00:00:00Z")
    winter = parse_ts("2026-01-10T23:30:00Z")  # already 00:30 on the 11th in Berlin
    assert last_midnight(winter, "Europe/Berlin") == parse_ts("2026-01-10T23:00:00Z")
    assert model_name("activity.", "home-1/kitchen") == "activity.home-1.kitchen"
