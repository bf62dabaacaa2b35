"""Server-Sent Events over a real server: live state changes, filters, resume without gaps."""

from __future__ import annotations

import threading

import httpx
import orjson
from conftest import PUMP, T0, obs


def read_events(url: str, n: int, headers: dict | None = None, ready=None) -> list[dict]:
    """Read `n` SSE messages (event, id, data) from `url`, then disconnect."""
    events: list[dict] = []
    with httpx.Client(timeout=10) as client, client.stream("GET", url, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        message: dict = {}
        for line in r.iter_lines():
            if line.startswith("retry:") and ready is not None:
                ready.set()
            elif line.startswith(("id:", "event:", "data:")):
                key, _, value = line.partition(": ")
                message[key] = value
            elif line == "" and message:
                message["data"] = orjson.loads(message["data"])
                events.append(message)
                message = {}
                if len(events) == n:
                    break
    return events


def stream_in_background(url: str, n: int, headers: dict | None = None):
    ready, out = threading.Event(), []
    thread = threading.Thread(target=lambda: out.extend(read_events(url, n, headers, ready)))
    thread.start()
    assert ready.wait(10), "the stream did not start"
    return thread, out


def test_live_state_changes_and_resume_without_gaps(live_server, platform):
    platform.put_type("pump", PUMP)
    url = f"{live_server}/api/stream?twin=p1"
    thread, first = stream_in_background(url, 3)
    for k in range(3):
        platform.ingest([obs("p2", T0 + k, flow=0.0), obs("p1", T0 + k, flow=float(k))])
    thread.join(10)
    assert [e["data"]["values"]["flow"] for e in first] == [0.0, 1.0, 2.0]
    assert all(e["event"] == "state" and e["data"]["twin"] == "p1" for e in first)
    assert first[-1]["data"]["values"]["flow_avg"] == 1.0  # derived values come along

    for k in range(3, 7):  # the client is away
        platform.ingest([obs("p1", T0 + k, flow=float(k))])
    headers = {"Last-Event-ID": first[-1]["id"]}
    thread, resumed = stream_in_background(url, 5, headers)
    platform.ingest([obs("p1", T0 + 7, flow=7.0)])
    thread.join(10)
    assert [e["data"]["values"]["flow"] for e in resumed] == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_stream_filters_by_type_and_rejects_bad_input(live_server, platform):
    platform.put_type("pump", PUMP)
    platform.put_type("valve", {"properties": {"open": {}}})
    thread, got = stream_in_background(f"{live_server}/api/stream?type=valve", 1)
    platform.ingest([obs("p", T0, flow=1.0), obs("v", T0, type="valve", open=1)])
    thread.join(10)
    assert got[0]["data"] == {"twin": "v", "type": "valve", "ts": T0, "values": {"open": 1.0}}
    r = httpx.get(f"{live_server}/api/stream?kinds=gossip")
    assert r.status_code == 422 and r.json()["error"]["field"] == "kinds"
    r = httpx.get(f"{live_server}/api/stream", headers={"Last-Event-ID": "yesterday"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "Last-Event-ID"


def test_alarm_and_job_notices_share_the_stream_and_resume(live_server, platform):
    from livetwin.engine.events import Notice

    platform.put_type("pump", PUMP)
    url = f"{live_server}/api/stream?kinds=state,alarm&twin=p1"
    thread, first = stream_in_background(url, 3)
    platform.ingest([obs("p1", T0, flow=1.0)])
    platform.bus.publish(Notice("job", "run-1", {"function": "calibrate"}))  # not asked for
    platform.bus.publish(Notice("alarm", "a1.1", {"twin": "p1", "type": "pump", "state": "active"}))
    platform.bus.publish(Notice("alarm", "a2.1", {"twin": "p9", "type": "pump"}))  # other twin
    platform.ingest([obs("p1", T0 + 1, flow=2.0)])
    thread.join(10)
    assert [e["event"] for e in first] == ["state", "alarm", "state"]
    assert first[1]["data"] == {
        "kind": "alarm",
        "id": "a1.1",
        "twin": "p1",
        "type": "pump",
        "state": "active",
    }

    # resume right after the alarm: the next state change comes, nothing is repeated
    thread, resumed = stream_in_background(url, 2, {"Last-Event-ID": first[1]["id"]})
    platform.bus.publish(Notice("alarm", "a1.2", {"twin": "p1", "type": "pump"}))
    thread.join(10)
    assert [(e["event"], e["data"].get("id")) for e in resumed] == [
        ("state", None),
        ("alarm", "a1.2"),
    ]
    assert resumed[0]["data"]["values"]["flow"] == 2.0

    thread, jobs = stream_in_background(f"{live_server}/api/stream?kinds=job", 1)
    platform.ingest([obs("p1", T0 + 2, flow=3.0)])  # state is not asked for
    platform.bus.publish(Notice("job", "run-2", {"function": "calibrate", "state": "succeeded"}))
    thread.join(10)
    assert jobs[0]["event"] == "job" and jobs[0]["data"]["id"] == "run-2"


def test_finished_runs_are_run_notices_and_job_still_works(live_server, platform):
    """`kinds=run` gets finished runs as `event: run`; a client of the older name `job` keeps
    getting them as `event: job`, whichever of the two names the scheduler publishes."""
    from livetwin.engine.events import Notice

    url = f"{live_server}/api/stream?kinds="
    runs, jobs = stream_in_background(url + "run", 2), stream_in_background(url + "job", 2)
    both = stream_in_background(url + "run,job,alarm", 3)
    platform.bus.publish(Notice("job", "run-1", {"function": "calibrate"}))
    platform.bus.publish(Notice("alarm", "a1.1", {"twin": "p1", "type": "pump"}))
    platform.bus.publish(Notice("run", "run-2", {"function": "train"}))
    for thread, _ in (runs, jobs, both):
        thread.join(10)
    assert [(e["event"], e["data"]["kind"], e["data"]["id"]) for e in runs[1]] == [
        ("run", "run", "run-1"),
        ("run", "run", "run-2"),
    ]
    assert [(e["event"], e["data"]["kind"], e["data"]["id"]) for e in jobs[1]] == [
        ("job", "job", "run-1"),
        ("job", "job", "run-2"),
    ]
    assert [e["event"] for e in both[1]] == ["run", "alarm", "run"]  # once each, the new name


def test_notice_names_old_and_new():
    from livetwin.engine.events import notice_name

    assert notice_name("job", {"run"}) == "run" and notice_name("run", {"job"}) == "job"
    assert notice_name("job", {"job", "run"}) == "run" and notice_name("run", {"run"}) == "run"
    assert notice_name("alarm", {"alarm"}) == "alarm"
    assert notice_name("alarm", {"run", "job"}) is None and notice_name("job", {"alarm"}) is None


def test_an_id_ahead_of_the_journal_gets_a_reset_and_then_live_events(live_server, platform):
    """A browser holding an id from before a data reset is told to reload at once (with the
    current id, for its next reconnect) and then follows the stream."""
    platform.put_type("pump", PUMP)
    platform.ingest([obs("p1", T0, flow=1.0)])
    url = f"{live_server}/api/stream?twin=p1"
    thread, got = stream_in_background(url, 2, {"Last-Event-ID": "987654.3"})
    platform.ingest([obs("p1", T0 + 1, flow=2.0)])
    thread.join(10)
    assert [e["event"] for e in got] == ["reset", "state"]
    assert "reload" in got[0]["data"]["reason"]
    assert int(got[0]["id"].split(".")[0]) < 987654
    assert got[1]["data"]["values"]["flow"] == 2.0
