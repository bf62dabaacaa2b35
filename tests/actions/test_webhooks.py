"""Webhooks against real local HTTP receivers: retries, restarts, catch-up, isolation, DLQ, API."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest
from conftest import PUMP, T0, obs
from fastapi.testclient import TestClient
from webhook_support import LOCAL_OUTBOUND, Receiver, free_port, wait_for

from livetwin.actions.webhooks import WebhookService, verify
from livetwin.api.app import create_app
from livetwin.engine.events import Notice
from livetwin.outbound import OutboundPolicy
from livetwin.platform import Platform, Settings

SECRET = "s3cret-s3cret-s3cret"
FAST = {"backoff_s": 0.05, "max_backoff_s": 0.2, "timeout_s": 5.0}


def webhook_service(platform: Platform, **options) -> WebhookService:
    """A webhook service on a platform's ports, wired as the platform wires its own."""
    return WebhookService(
        clock=platform.clock,
        bus=platform.bus,
        reader=platform.query,
        open_db=platform.open_db,
        **{"outbound": LOCAL_OUTBOUND, **options},
    )


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


NO_HOOKS = Settings(webhooks=False)  # each test runs its own service with fast retries


@pytest.fixture
def platform(tmp_path, clock):
    with Platform(tmp_path / "data", clock=clock, settings=NO_HOOKS) as p:
        yield p


@pytest.fixture
def pumps(platform):
    platform.put_type("pump", PUMP)
    return platform


def subscribe(hooks: WebhookService, url: str, **filters) -> str:
    return hooks.create({"url": url, "secret": SECRET, "filters": filters or None})["id"]


def state_events(bodies: dict[str, dict]) -> list[tuple[str, int]]:
    return sorted(
        (e["twin"], e["ts"]) for b in bodies.values() if b["kind"] == "state" for e in b["events"]
    )


def test_payload_signature_and_filters(pumps, receivers):
    r_all, r_prefix = receivers(), receivers()
    with webhook_service(pumps, **FAST) as hooks:
        all_id = subscribe(hooks, r_all.url, kinds=["state", "created"])
        subscribe(hooks, r_prefix.url, type="pump", twin_prefix="a/")
        subscribe(hooks, r_prefix.url, type="other")  # never matches
        pumps.ingest([obs("a/p1", T0, flow=1.0), obs("b/p2", T0, flow=2.0, pressure=3.0)])
        wait_for(lambda: len(r_all.received) == 2 and len(r_prefix.received) == 1)

    by_kind = {b["kind"]: (d_id, b) for d_id, b in r_all.bodies().items()}
    d_id, state = by_kind["state"]
    assert state["type"] == "pump" and state["seq"] >= 1 and "from_journal" not in state
    assert state["delivery_id"] == d_id == f"{all_id}.{state['seq']}.state"
    assert [(e["twin"], e["ts"]) for e in state["events"]] == [("a/p1", T0), ("b/p2", T0)]
    values = state["events"][1]["values"]
    assert values["pressure"] == 3.0 and values["power"] == pytest.approx(2 * 3 / 36 / 0.8)
    assert sorted(by_kind["created"][1]["twins"]) == ["a/p1", "b/p2"]
    for r in r_all.received + r_prefix.received:
        # the docs' snippet, independent of livetwin's own helper
        mac = "sha256=" + hmac.new(SECRET.encode(), r["body"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(mac, r["signature"])
        assert verify(SECRET, r["body"], r["signature"])
        assert not verify("another-secret-0000", r["body"], r["signature"])
        assert not verify(SECRET, r["body"] + b" ", r["signature"])
    only = orjson.loads(r_prefix.received[0]["body"])
    assert [e["twin"] for e in only["events"]] == ["a/p1"]


def test_endpoint_down_then_back_gets_each_delivery_once(pumps, receivers):
    r = receivers(status=503)
    with webhook_service(pumps, max_attempts=100, **FAST) as hooks:
        sub = subscribe(hooks, r.url)
        sent = [(f"p{i % 3}", T0 + i * 1000) for i in range(10)]
        for twin, ts in sent:
            pumps.ingest([obs(twin, ts, flow=float(ts % 7))])
        wait_for(lambda: r.attempts >= 5)  # it has been failing for a while
        assert not r.received
        r.status = 200
        wait_for(lambda: hooks.get(sub)["deliveries"]["delivered"] == 10)
        info = hooks.get(sub)
        assert info["deliveries"]["pending"] == 0
        assert info["attempts"]["failed"] >= 5 and info["attempts"]["last_status"] == 200

    bodies = r.bodies()
    assert len(bodies) == 10 and len({b["seq"] for b in bodies.values()}) == 10
    assert state_events(bodies) == sorted(sent)  # every event exactly once across distinct ids


def test_platform_and_service_restarted_mid_retry_still_deliver(tmp_path, receivers):
    port = free_port()  # nothing listens yet: connections are refused
    url = f"http://127.0.0.1:{port}/hook"
    data = tmp_path / "data"
    platform = Platform(data, settings=NO_HOOKS)
    platform.put_type("pump", PUMP)
    hooks = webhook_service(platform, max_attempts=1000, **FAST).start()
    sub = subscribe(hooks, url, kinds=["state", "created"])
    platform.ingest([obs("p1", T0, flow=1.0), obs("p2", T0, flow=2.0)])
    platform.ingest([obs("p1", T0 + 1000, flow=1.5)])
    wait_for(lambda: any(d["attempts"] >= 2 for d in hooks.deliveries(sub)))
    hooks.stop()  # the order the Platform uses: writer, then webhooks, then the store
    platform.close()

    with Platform(data, settings=NO_HOOKS) as again:
        hooks = webhook_service(again, max_attempts=1000, **FAST)
        assert hooks.stats()["outbox"]["pending"] == 3  # 2 state + 1 created, from webhooks.db
        r = receivers(port=port)
        with hooks:
            again.ingest([obs("p3", T0, flow=3.0)])  # and new events still flow after them
            wait_for(lambda: hooks.get(sub)["deliveries"]["delivered"] == 5)
            assert hooks.get(sub)["deliveries"]["pending"] == 0
    bodies = r.bodies()
    assert len(bodies) == 5
    assert state_events(bodies) == [("p1", T0), ("p1", T0 + 1000), ("p2", T0), ("p3", T0)]
    created = sorted(t for b in bodies.values() if b["kind"] == "created" for t in b["twins"])
    assert created == ["p1", "p2", "p3"]


def test_events_committed_while_the_service_was_down_are_caught_up(tmp_path, receivers):
    r = receivers()
    data = tmp_path / "data"
    with Platform(data, settings=NO_HOOKS) as platform:
        platform.put_type("pump", PUMP)
        platform.ingest([obs("old", T0, flow=1.0)])  # before any subscription: never sent
        with webhook_service(platform, **FAST) as hooks:
            sub = subscribe(hooks, r.url, kinds=["state", "created"])
            platform.ingest([obs("p1", T0, flow=1.0)])
            wait_for(lambda: len(r.ids()) == 2)
        # the service is down (as after a crash between commit and outbox): events go on
        platform.ingest([obs("p1", T0 + 1000, flow=2.0), obs("p2", T0, pressure=5.0)])
        platform.ingest([obs("old", T0 + 1000, flow=3.0)])

    with Platform(data, settings=NO_HOOKS) as platform, webhook_service(platform, **FAST) as hooks:
        wait_for(lambda: hooks.get(sub)["deliveries"]["delivered"] == 5)
        platform.ingest([obs("p2", T0 + 1000, flow=4.0)])  # live again
        wait_for(lambda: hooks.get(sub)["deliveries"]["delivered"] == 6)
    bodies = r.bodies()
    assert len(bodies) == 6  # nothing twice under a new id, nothing lost
    assert state_events(bodies) == [
        ("old", T0 + 1000),
        ("p1", T0),
        ("p1", T0 + 1000),
        ("p2", T0),
        ("p2", T0 + 1000),
    ]
    recovered = [b for b in bodies.values() if b.get("from_journal")]
    assert {b["kind"] for b in recovered} == {"state", "created"} and len(recovered) == 3
    created = sorted(t for b in bodies.values() if b["kind"] == "created" for t in b["twins"])
    assert created == ["p1", "p2"]  # "old" existed before; p2 was new in the caught-up entry
    p2 = next(
        e for b in recovered if b["kind"] == "state" for e in b["events"] if e["twin"] == "p2"
    )
    assert p2["values"] == {"pressure": 5.0}  # observed inputs: derived values are not journaled


def test_inbox_overflow_falls_back_to_the_journal(pumps, receivers):
    r = receivers()
    with webhook_service(pumps, max_inbox=1, **FAST) as hooks:
        sub = subscribe(hooks, r.url)
        with hooks._lock:  # hold the outbox: the pump cannot drain, so the inbox overflows
            for i in range(40):
                pumps.ingest([obs(f"p{i % 4}", T0 + i, flow=float(i))])
        wait_for(lambda: hooks.get(sub)["deliveries"]["delivered"] == 40)
    bodies = r.bodies()
    assert len(bodies) == 40 and len(state_events(bodies)) == 40
    assert sum(bool(b.get("from_journal")) for b in bodies.values()) >= 38


CRASHING_CHILD = """
import os, sys
from livetwin.actions.webhooks import WebhookService
from livetwin.platform import Platform, Settings
sys.path.insert(0, sys.argv[3])
from conftest import PUMP, T0, obs
platform = Platform(sys.argv[1], settings=Settings(webhooks=False, outbound_allow=("127.0.0.1",)))
platform.put_type("pump", PUMP)
hooks = WebhookService(
    clock=platform.clock, bus=platform.bus, reader=platform.query, open_db=platform.open_db,
    outbound=platform.outbound,
).start()
hooks.create({"url": sys.argv[2], "secret": "s3cret-s3cret-s3cret"})
for i in range(20):
    platform.ingest([obs(f"p{i % 3}", T0 + i, flow=float(i))])
os._exit(0)  # a crash: no stop, no close, whatever the outbox had not written is gone
"""


def test_a_crash_right_after_commit_loses_nothing(tmp_path, receivers):
    import subprocess
    import sys
    from pathlib import Path

    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    data = tmp_path / "data"
    tests = str(Path(__file__).parents[1])  # conftest.py
    subprocess.run([sys.executable, "-c", CRASHING_CHILD, str(data), url, tests], check=True)
    r = receivers(port=port)
    with Platform(data, settings=NO_HOOKS) as platform, webhook_service(platform, **FAST) as hooks:
        (sub,) = hooks.subscriptions()
        wait_for(lambda: hooks.get(sub["id"])["deliveries"]["delivered"] == 20)
    bodies = r.bodies()
    assert len(bodies) == 20
    assert state_events(bodies) == sorted((f"p{i % 3}", T0 + i) for i in range(20))


def test_dead_endpoint_does_not_delay_live_ones(pumps, receivers):
    hung = receivers(hang=True)  # accepts, then never answers while the test runs
    live = [receivers() for _ in range(3)]
    with webhook_service(pumps, max_attempts=1000, backoff_s=0.05, timeout_s=60) as hooks:
        subscribe(hooks, hung.url)
        subscribe(hooks, f"http://127.0.0.1:{free_port()}/refused")
        for r in live:
            subscribe(hooks, r.url)
        for i in range(5):
            pumps.ingest([obs("p1", T0 + i * 1000, flow=1.0)])
        wait_for(lambda: all(len(r.ids()) == 5 for r in live), timeout=20)
        # the live ones got everything while the hung endpoint still holds its first delivery
        assert hung.attempts == 1 and not hung.received
        hung.release.set()


def test_alarm_and_job_notices(pumps, receivers):
    r_alarm, r_job = receivers(), receivers()
    with webhook_service(pumps, **FAST) as hooks:
        alarms = subscribe(hooks, r_alarm.url, kinds=["alarm"], type="pump", twin_prefix="a/")
        subscribe(hooks, r_job.url, kinds=["job"])
        bus = pumps.bus
        bus.publish(Notice("alarm", "al-1", {"twin": "a/p1", "type": "pump", "state": "active"}))
        bus.publish(Notice("alarm", "al-1", {"twin": "a/p1", "type": "pump", "state": "active"}))
        bus.publish(Notice("alarm", "al-2", {"twin": "b/p1", "type": "pump"}))  # prefix differs
        bus.publish(Notice("alarm", "al-3", {"twin": "a/p9", "type": "fan"}))  # type differs
        bus.publish(Notice("job", "run-7", {"job": "calibrate", "status": "done"}))
        pumps.ingest([obs("a/p1", T0, flow=1.0)])  # a state change: neither wants it
        wait_for(lambda: len(r_alarm.ids()) == 1 and len(r_job.ids()) == 1)
        wait_for(lambda: hooks.stats()["outbox"]["pending"] == 0)
    alarm = r_alarm.bodies()[f"{alarms}.alarm.al-1"]  # one delivery for a repeated notice id
    assert alarm == {
        "kind": "alarm",
        "delivery_id": f"{alarms}.alarm.al-1",
        "id": "al-1",
        "data": {"twin": "a/p1", "type": "pump", "state": "active"},
    }
    assert len(r_alarm.received) == 1
    (job,) = r_job.bodies().values()
    assert job["kind"] == "job" and job["data"]["status"] == "done"


def test_run_notices_go_out_as_run_and_as_job_to_older_subscribers(pumps, receivers):
    r_run, r_job = receivers(), receivers()
    with webhook_service(pumps, **FAST) as hooks:
        subscribe(hooks, r_run.url, kinds=["run"])
        subscribe(hooks, r_job.url, kinds=["job"])
        pumps.bus.publish(Notice("job", "run-8", {"job": "calibrate", "status": "done"}))
        pumps.bus.publish(Notice("run", "run-9", {"job": "train", "status": "done"}))
        wait_for(lambda: len(r_run.ids()) == 2 and len(r_job.ids()) == 2)
    assert sorted((b["kind"], b["id"]) for b in r_run.bodies().values()) == [
        ("run", "run-8"),
        ("run", "run-9"),
    ]
    assert sorted((b["kind"], b["id"]) for b in r_job.bodies().values()) == [
        ("job", "run-8"),
        ("job", "run-9"),
    ]


def test_delivered_rows_are_pruned(pumps, receivers):
    r = receivers()
    with webhook_service(pumps, keep_delivered=3, **FAST) as hooks:
        sub = subscribe(hooks, r.url)
        for i in range(8):
            pumps.ingest([obs("p1", T0 + i, flow=1.0)])
        wait_for(lambda: hooks.get(sub)["deliveries"]["delivered"] == 8)
        wait_for(lambda: len(hooks.deliveries(sub)) == 3)
        kept = hooks.deliveries(sub)
        assert [d["seq"] for d in kept] == sorted((d["seq"] for d in kept), reverse=True)
        assert all(d["status"] == "delivered" and d["attempts"] == 1 for d in kept)
        assert hooks.stats()["outbox"]["delivered"] == 3
    assert len(r.ids()) == 8


def test_dead_letters_redeliver_and_attempts_over_the_api(pumps, receivers, platform):
    r = receivers(status=500)
    hooks = webhook_service(pumps, max_attempts=3, backoff_s=0.02, max_backoff_s=0.05).start()
    platform.webhooks = hooks  # as the platform's own service
    app = create_app(platform)
    try:
        with TestClient(app) as client:
            sub = client.post("/api/webhooks", json={"url": r.url, "secret": SECRET}).json()["id"]
            pumps.ingest([obs("p1", T0, flow=1.0)])
            pumps.ingest([obs("p1", T0 + 1000, flow=2.0)])
            wait_for(lambda: len(client.get("/api/webhooks/dead").json()) == 2)
            dead = client.get(f"/api/webhooks/{sub}/deliveries", params={"status": "dead"}).json()
            assert len(dead) == 2 and all(d["attempts"] == 3 for d in dead)
            assert all(d["last_status"] == 500 and d["last_error"] == "HTTP 500" for d in dead)
            assert r.attempts == 6 and not r.received
            info = client.get(f"/api/webhooks/{sub}").json()
            assert info["attempts"]["total"] == 6 and info["attempts"]["failed"] == 6
            assert info["deliveries"] == {"pending": 0, "delivered": 0, "dead": 2}

            r.status = 200
            one = client.post(
                f"/api/webhooks/{sub}/redeliver", params={"delivery": dead[0]["delivery_id"]}
            )
            assert one.json()["requeued"] == 1
            wait_for(lambda: len(r.ids()) == 1)
            assert r.ids() == {dead[0]["delivery_id"]}
            missing = client.post(f"/api/webhooks/{sub}/redeliver", params={"delivery": "nope"})
            assert missing.status_code == 404 and missing.json()["error"]["field"] == "delivery"
            assert client.post(f"/api/webhooks/{sub}/redeliver").json()["requeued"] == 1
            wait_for(lambda: len(r.ids()) == 2)
            assert r.ids() == {d["delivery_id"] for d in dead}  # the same delivery ids
            wait_for(lambda: client.get("/api/webhooks/dead").json() == [])
            info = client.get(f"/api/webhooks/{sub}").json()
            assert info["deliveries"]["delivered"] == 2 and info["attempts"]["total"] == 8
    finally:
        hooks.stop()


def test_api_validation_and_crud(platform):
    hooks = webhook_service(platform, **FAST)
    platform.webhooks = hooks  # as the platform's own service
    app = create_app(platform)
    good = {"url": "https://example.com/hook", "secret": SECRET}
    cases = [
        ({**good, "url": "ftp://example.com/x"}, "url"),
        ({**good, "url": "https://"}, "url"),
        ({**good, "url": 5}, "url"),
        ({"url": good["url"]}, "secret"),
        ({**good, "secret": "short"}, "secret"),
        ({**good, "filters": {"kinds": ["state", "bogus"]}}, "filters.kinds"),
        ({**good, "filters": {"kinds": []}}, "filters.kinds"),
        ({**good, "filters": {"type": ""}}, "filters.type"),
        ({**good, "filters": {"colour": "red"}}, "filters.colour"),
        ({**good, "extra": 1}, "extra"),
        ([good], "body"),
    ]
    try:
        with TestClient(app) as client:
            for body, field in cases:
                answer = client.post("/api/webhooks", json=body)
                assert answer.status_code == 422, body
                error = answer.json()["error"]
                assert error["field"] == field and error["fix"], body
            bad_json = client.post("/api/webhooks", content=b"{nope")
            assert bad_json.status_code == 400 and bad_json.json()["error"]["field"] == "body"

            kinds = ["alarm", "state", "job", "created"]
            filters = {"type": "pump", "kinds": kinds}
            created = client.post("/api/webhooks", json={**good, "filters": filters})
            assert created.status_code == 201
            sub = created.json()["id"]
            assert SECRET not in created.text
            listed = client.get("/api/webhooks")
            assert [s["id"] for s in listed.json()] == [sub] and SECRET not in listed.text
            one = client.get(f"/api/webhooks/{sub}")
            assert one.json()["filters"]["kinds"] == ["state", "created", "alarm", "job"]
            assert one.json()["deliveries"] == {"pending": 0, "delivered": 0, "dead": 0}
            assert SECRET not in one.text
            wrong = client.get(f"/api/webhooks/{sub}/deliveries", params={"status": "lost"})
            assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "status"
            assert client.get("/api/webhooks/wh_nope").status_code == 404
            assert client.delete(f"/api/webhooks/{sub}").json()["deleted"] is True
            assert client.get(f"/api/webhooks/{sub}").status_code == 404
    finally:
        hooks.stop()


# ---- the outbound policy -------------------------------------------------------------------


def test_a_webhook_to_an_inside_address_is_refused_when_created(platform):
    hooks = webhook_service(platform, outbound=OutboundPolicy(), **FAST)  # the default policy
    platform.webhooks = hooks  # as the platform's own service
    try:
        with TestClient(create_app(platform)) as client:
            for url in ("http://localhost:9/hook", "http://169.254.169.254/", "http://10.0.0.7/"):
                answer = client.post("/api/webhooks", json={"url": url, "secret": SECRET})
                assert answer.status_code == 422, answer.text
                error = answer.json()["error"]
                assert error["field"] == "url" and "LIVETWIN_OUTBOUND_ALLOW" in error["fix"]
            assert client.get("/api/webhooks").json() == []
    finally:
        hooks.stop()


def test_a_delivery_the_policy_now_refuses_is_dead_lettered_at_once(pumps, receivers):
    r = receivers()
    with webhook_service(pumps, max_attempts=100, **FAST) as hooks:
        sub = subscribe(hooks, r.url)  # allowed when it was made ...
        hooks.outbound = OutboundPolicy()  # ... and the allow-list was taken away since
        pumps.ingest([obs("p1", T0, flow=1.0)])
        wait_for(lambda: hooks.get(sub)["deliveries"]["dead"] == 1)
        (dead,) = hooks.deliveries(sub, "dead")
        assert dead["attempts"] == 1 and "LIVETWIN_OUTBOUND_ALLOW" in dead["last_error"]
        assert r.attempts == 0
