"""The scheduler over HTTP: a join survives a server restart and runs once, a remote function
(a real HTTP server on loopback) retried with backoff, and bad input answered with 422 JSON."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from fastapi.testclient import TestClient
from schedule_support import new_scheduler
from webhook_support import LOOPBACK

from livetwin.api.app import create_app
from livetwin.errors import InvalidInput
from livetwin.outbound import OutboundPolicy
from livetwin.platform import Platform, Settings


class Server:
    """A platform, its scheduler and the API over both (what `livetwin serve` runs)."""

    def __init__(self, path, clock, calls: list, allow: tuple[str, ...] = LOOPBACK):
        # the remote functions below listen on loopback: allowed here, refused by default
        self.platform = Platform(path, clock=clock, settings=Settings(outbound_allow=allow))
        self.scheduler = new_scheduler(self.platform)
        self.scheduler.register("join", lambda ctx: calls.append(ctx.events) or len(calls))
        self.scheduler.start()
        app = create_app(self.platform)
        self.client = TestClient(app).__enter__()

    def close(self) -> None:
        self.client.__exit__(None, None, None)
        self.scheduler.stop()
        self.platform.close()


@pytest.fixture
def server(tmp_path, clock):
    s = Server(tmp_path / "d", clock, [])
    yield s
    s.close()


def test_restart_between_an_event_and_its_join_partner_runs_once(tmp_path, clock):
    calls: list = []
    server = Server(tmp_path / "d", clock, calls)
    try:
        r = server.client.put(
            "/api/functions/join", json={"kind": "python", "events": ["ready", "go"]}
        )
        assert r.status_code == 200, r.text
        r = server.client.post("/api/events", json={"name": "ready", "data": {"n": 1},
                                                    "key": "pump-1"})  # fmt: skip
        assert r.status_code == 202 and r.json()["events"][0]["runs"] == []
    finally:
        server.close()  # the event is durable: it was answered
    server = Server(tmp_path / "d", clock, calls)
    try:
        (fn,) = server.client.get("/api/functions").json()
        assert fn["joins"] == [{"key": "pump-1", "ready": {"ready": 1}, "waiting": ["go"]}]
        r = server.client.post("/api/events", json={"name": "go", "key": "pump-1"})
        (run_id,) = r.json()["events"][0]["runs"]
        run = server.scheduler.wait(run_id)
        assert run["state"] == "succeeded"
        assert [(e["name"], e["data"]) for e in run["events"]] == [
            ("ready", {"n": 1}),
            ("go", None),
        ]
        # a second partner finds nothing to join: exactly one run
        r = server.client.post("/api/events", json={"name": "go", "key": "pump-1"})
        assert r.json()["events"][0]["runs"] == []
        server.scheduler.wait_idle(10)
        assert len(calls) == 1
        runs = server.client.get("/api/runs", params={"function": "join"}).json()
        assert [r["id"] for r in runs] == [run_id]
        assert server.client.get(f"/api/runs/{run_id}").json()["result"] == 1
    finally:
        server.close()
    server = Server(tmp_path / "d", clock, calls)  # and nothing runs again after a restart
    try:
        server.scheduler.wait_idle(10)
        assert len(calls) == 1
        (fn,) = server.client.get("/api/functions").json()
        assert fn["joins"] == [{"key": "pump-1", "ready": {"go": 1}, "waiting": ["ready"]}]
    finally:
        server.close()


class FlakyHandler(BaseHTTPRequestHandler):
    """Answers 503 to the first `failures` requests, then 200 with JSON."""

    failures = 2
    requests: list[dict] = []

    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).requests.append({"body": body, "attempt": self.headers["x-livetwin-attempt"]})
        ok = len(type(self).requests) > type(self).failures
        payload = orjson.dumps({"trained": body["args"]["model"]}) if ok else b"busy"
        self.send_response(200 if ok else 503)
        self.send_header("content-type", "application/json" if ok else "text/plain")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def remote():
    FlakyHandler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/train"
    httpd.shutdown()
    httpd.server_close()


def test_remote_function_failing_twice_succeeds_after_two_retries(server, remote):
    c = server.client
    r = c.put("/api/functions/retrain", params={"namespace": "fleet-a"},
              json={"kind": "http", "url": remote, "retries": 3, "backoff_s": 0.02,
                    "timeout_s": 5, "args": {"model": "baseline"}})  # fmt: skip
    assert r.status_code == 200, r.text
    r = c.post("/api/functions/retrain/run", params={"namespace": "fleet-a"})
    assert r.status_code == 202 and r.json()["state"] in ("queued", "running")
    run = server.scheduler.wait(r.json()["id"])
    assert run["state"] == "succeeded" and run["attempts"] == 3
    assert run["result"] == {"trained": "baseline"}
    assert [q["attempt"] for q in FlakyHandler.requests] == ["1", "2", "3"]
    assert FlakyHandler.requests[0]["body"]["namespace"] == "fleet-a"
    assert sum("HTTP 503" in line and "failed" in line for line in run["logs"]) == 2
    succeeded = c.get("/api/runs", params={"namespace": "fleet-a", "state": "succeeded"}).json()
    assert [r["id"] for r in succeeded] == [run["id"]]
    assert c.get("/api/runs", params={"namespace": "default"}).json() == []
    assert c.get("/api/runs", params={"state": "failed"}).json() == []


def test_remote_function_out_of_retries_fails(server, remote):
    FlakyHandler.failures = 10
    try:
        server.scheduler.define_function(
            "retrain", {"kind": "http", "url": remote, "retries": 1, "backoff_s": 0.01,
                        "args": {"model": "m"}}
        )  # fmt: skip
        run = server.scheduler.wait(server.scheduler.run_function("retrain")["id"])
        assert run["state"] == "failed" and run["attempts"] == 2 and "503" in run["error"]
        fn = server.client.get("/api/functions/retrain").json()
        assert fn["last_error"]["run"] == run["id"] and fn["last_run"]["state"] == "failed"
    finally:
        FlakyHandler.failures = 2


def test_schedules_over_http(server):
    c = server.client
    c.put("/api/functions/nightly", json={"kind": "builtin", "job": "calibrate",
                                          "args": {"type": "pump"}})  # fmt: skip
    body = {
        "id": "night",
        "function": "nightly",
        "missed": "skip",
        "trigger": {"kind": "cron", "cron": "0 3 * * *", "tz": "Europe/Berlin"},
    }
    r = c.post("/api/schedules", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["next"] == "2026-11-23T02:00:00.000Z"  # the clock is 2026-11-22T11:00Z
    assert c.post("/api/schedules", json=body).status_code == 409
    assert [s["id"] for s in c.get("/api/schedules").json()] == ["night"]
    run = c.post("/api/schedules/night/run").json()
    run = server.scheduler.wait(run["id"])
    assert run["state"] == "failed" and "pump" in run["error"]  # no such type: a clear error
    assert c.patch("/api/schedules/night", json={"enabled": False}).json()["enabled"] is False
    assert c.delete("/api/functions/nightly").status_code == 409  # still used
    assert c.delete("/api/schedules/night").json() == {"id": "night", "deleted": True}
    assert c.delete("/api/functions/nightly").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "field", "fix_has"),
    [
        (
            "post",
            "/api/schedules",
            {"function": "f", "trigger": {"kind": "cron", "cron": "61 * * * *"}},
            "trigger.cron",
            "0 3 * * *",
        ),
        (
            "post",
            "/api/schedules",
            {"function": "f", "trigger": {"kind": "cron", "cron": "0 3 * *"}},
            "trigger.cron",
            "minute hour",
        ),
        (
            "post",
            "/api/schedules",
            {"function": "f", "trigger": {"kind": "cron", "cron": "0 3 * * *", "tz": "Mars/Base"}},
            "trigger.tz",
            "Europe/Berlin",
        ),
        (
            "post",
            "/api/schedules",
            {"function": "nope", "trigger": {"kind": "interval", "every": "1m"}},
            "function",
            "PUT /api/functions",
        ),
        (
            "post",
            "/api/schedules",
            {"function": "f", "trigger": {"kind": "interval", "every": "soon"}},
            "trigger.every",
            "10m",
        ),
        (
            "post",
            "/api/schedules",
            {"function": "f", "trigger": {"kind": "weekly"}},
            "trigger.kind",
            "cron",
        ),
        (
            "post",
            "/api/schedules",
            {"function": "f", "missed": "maybe", "trigger": {"kind": "once", "after": "1m"}},
            "missed",
            "catch_up",
        ),
        (
            "post",
            "/api/schedules",
            {"function": "f", "trigger": {"kind": "condition", "type": "pump", "when": "x > 1"}},
            "trigger.type",
            "PUT /api/types/pump",
        ),
        (
            "put",
            "/api/functions/remote",
            {"kind": "http", "url": "file:///etc/passwd"},
            "url",
            "https://",
        ),
        (
            "put",
            "/api/functions/remote",
            {"kind": "http", "url": "ftp://example.com/x"},
            "url",
            "https://",
        ),
        ("put", "/api/functions/p", {"kind": "python", "ref": "os:system"}, "ref", "register"),
        ("put", "/api/functions/b", {"kind": "builtin", "job": "teleport"}, "job", "calibrate"),
        ("put", "/api/functions/b", {"kind": "python", "retries": -1}, "retries", "0"),
        ("post", "/api/events", {"name": "bad name!"}, "name", "e.g."),
        ("post", "/api/events", {"name": "ok", "key": ""}, "key", "correlation"),
        ("post", "/api/events", {"name": "ok", "colour": "red"}, "colour", "namespace"),
    ],
)
def test_bad_input_is_422_naming_field_and_fix(server, method, path, body, field, fix_has):
    server.scheduler.register("f", lambda ctx: None)
    r = getattr(server.client, method)(path, json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field and fix_has in error["fix"], error


def test_unknown_ids_and_filters(server):
    c = server.client
    assert c.post("/api/schedules/nope/run").json()["error"]["field"] == "id"
    assert c.post("/api/schedules/nope/run").status_code == 404
    assert c.get("/api/runs/run_x").status_code == 404
    assert c.post("/api/functions/ghost/run").status_code == 404
    r = c.get("/api/runs", params={"state": "sleeping"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "state"
    r = c.post("/api/events", content=b"{nope")  # malformed JSON: 400, as everywhere
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"


def test_a_retried_event_post_is_stored_once_and_waiting_events_are_listed(server):
    c = server.client
    r = c.put("/api/functions/join", json={"kind": "python", "events": ["ready", "go"],
                                           "ttl": "1h"})  # fmt: skip
    assert r.status_code == 200 and r.json()["ttl"] == "1h"
    body = {"name": "ready", "key": "pump-1", "idempotency_key": "gw-7/42"}
    first = c.post("/api/events", json=body).json()
    assert (first["accepted"], first["duplicates"]) == (1, 0)
    retry = c.post("/api/events", json=[body, {**body, "idempotency_key": "gw-7/43"}]).json()
    assert (retry["accepted"], retry["duplicates"]) == (1, 1)
    assert retry["events"][0] == {**first["events"][0], "duplicate": True}
    waiting = c.get("/api/events/waiting", params={"function": "join"}).json()
    assert [(w["name"], w["key"]) for w in waiting] == [("ready", "pump-1")] * 2
    assert waiting[0]["id"] == first["events"][0]["id"] and "expires" in waiting[0]
    assert c.get("/api/events/waiting", params={"limit": 1}).json() == waiting[:1]
    assert c.get("/api/events/waiting", params={"namespace": "lab"}).json() == []
    bad = c.post("/api/events", json={**body, "idempotency_key": ""})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "idempotency_key"
    bad = c.put("/api/functions/join", json={"kind": "python", "ttl": "soon"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "ttl"


# ---- outbound calls: the policy, redirects, response size -----------------------------------


class Answer(BaseHTTPRequestHandler):
    """Answers every request with the class's `status`, `headers` and `body`; counts them."""

    status, headers, body = 200, {}, b""
    hits: list[str] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        type(self).hits.append(self.path)
        self.send_response(self.status)
        for name, value in {"content-length": str(len(self.body)), **self.headers_out}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def _serve(**attrs) -> tuple[ThreadingHTTPServer, str]:
    handler = type("Handler", (Answer,), {"hits": [], "headers_out": {}, **attrs})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def test_http_function_to_an_inside_address_is_refused_when_declared(tmp_path, clock):
    with Platform(tmp_path / "d", clock=clock) as platform, TestClient(create_app(platform)) as c:
        for url in ("http://localhost:8080/admin/secret", "http://169.254.169.254/latest/"):
            r = c.put("/api/functions/f", json={"kind": "http", "url": url})
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert error["field"] == "url" and "LIVETWIN_OUTBOUND_ALLOW" in error["fix"], error


def test_a_run_to_a_destination_the_policy_now_refuses_fails_without_calling(server):
    httpd, base = _serve(body=b"secret")
    try:
        server.scheduler.define_function("f", {"kind": "http", "url": base + "/x", "retries": 0})
        server.scheduler.invoker.outbound = OutboundPolicy()  # the allow-list was taken away
        run = server.scheduler.wait(server.scheduler.run_function("f")["id"])
        assert run["state"] == "failed" and "LIVETWIN_OUTBOUND_ALLOW" in run["error"]
        assert httpd.RequestHandlerClass.hits == []
    finally:
        httpd.shutdown()


def test_a_redirect_to_an_inside_address_is_not_followed(tmp_path, clock):
    inside, inside_url = _serve(body=b"the admin secret")
    outside, outside_url = _serve(status=302, headers_out={"location": inside_url + "/secret"})
    server = Server(tmp_path / "d", clock, [], allow=(outside_url.removeprefix("http://"),))
    try:
        with pytest.raises(InvalidInput, match="loopback"):  # only the named host:port passes
            server.scheduler.define_function("g", {"kind": "http", "url": inside_url})
        server.scheduler.define_function("f", {"kind": "http", "url": outside_url, "retries": 0})
        run = server.scheduler.wait(server.scheduler.run_function("f")["id"])
        assert run["state"] == "failed" and "HTTP 302" in run["error"]
        assert inside.RequestHandlerClass.hits == [] and "secret" not in orjson.dumps(run).decode()
    finally:
        server.close()
        inside.shutdown()
        outside.shutdown()


def test_a_large_response_is_cut_in_the_run_record(server):
    httpd, base = _serve(body=b"x" * 500_000, headers_out={"content-type": "text/plain"})
    try:
        server.scheduler.define_function("big", {"kind": "http", "url": base, "retries": 0})
        run = server.scheduler.wait(server.scheduler.run_function("big")["id"])
        assert run["state"] == "succeeded", run
        assert run["result"]["truncated"] is True and "cut" in run["result"]["note"]
        assert len(orjson.dumps(run["result"])) <= 64 * 1024
        assert any("cut" in line for line in run["logs"])
    finally:
        httpd.shutdown()
