"""One scheduler leader at a time on PostgreSQL: a standby takes over when the leader's session
is lost (in-process) or the leader's process is killed (two `livetwin serve`), and no instant of
a time trigger fires twice."""

from __future__ import annotations

import os
import signal
import threading
import time
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import psycopg
import pytest
from cli_support import serving
from postgres_support import PG_URL, fresh_schema
from webhook_support import free_port, wait_for

from livetwin.platform import Platform
from livetwin.schedule import Scheduler
from livetwin.store.open import DATABASE_URL_ENV
from livetwin.store.servicedb import open_service_db

pytestmark = pytest.mark.services  # needs PostgreSQL (see conftest.py)


def scheduled_for(runs: list[dict]) -> list[int]:
    """The instants the runs of a time trigger were fired for (manual runs have none)."""
    return [r["trigger"]["scheduled_for"] for r in runs if "scheduled_for" in r["trigger"]]


def test_a_standby_takes_over_when_the_leaders_session_is_lost(tmp_path, monkeypatch):
    with fresh_schema() as url:
        monkeypatch.setenv(DATABASE_URL_ENV, url)
        with Platform(tmp_path / "a") as platform:
            leader = platform.scheduler
            leader.register("tick", lambda ctx: ctx.trigger["scheduled_for"])
            leader.add_schedule(
                {"id": "t", "function": "tick", "trigger": {"kind": "interval", "every": "1s"}}
            )
            (tmp_path / "b").mkdir()
            standby = Scheduler(
                clock=platform.clock,
                bus=platform.bus,
                reader=platform.query,
                open_db=partial(open_service_db, tmp_path / "b"),
                lease_retry_s=0.2,
            ).start()
            try:
                assert standby.register("tick", lambda ctx: "b")["standby"] is True
                wait_for(lambda: len(leader.runs(schedule="t", state="succeeded")) >= 2)
                with psycopg.connect(PG_URL, autocommit=True) as admin:  # the leader's session dies
                    pid = leader._lease._conn.info.backend_pid
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                wait_for(lambda: standby.role == "leader", timeout=10)  # it tries every 0.2 s
                wait_for(lambda: leader.role == "standby", timeout=10)  # it checks every 1 s
                wait_for(lambda: any(r["result"] == "b" for r in standby.runs(schedule="t")))
                with pytest.raises(Exception, match="on standby"):
                    leader.run_schedule("t")
                assert standby.run_schedule("t")["id"]
                instants = scheduled_for(standby.runs(schedule="t", limit=1000))
                assert len(instants) == len(set(instants)) >= 3
            finally:
                standby.stop()


class Calls:
    """An HTTP endpoint on loopback that records the bodies scheduler http functions POST."""

    def __init__(self):
        self.bodies: list[dict] = []
        calls = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                calls.bodies.append({**orjson.loads(body), "at": time.monotonic()})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/tick"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fired(self) -> set[int]:
        """The instants of the runs called so far (a run interrupted by the kill runs again:
        it is called twice, for one instant)."""
        return {body["trigger"]["scheduled_for"] for body in self.bodies}


def test_killing_the_leader_process_moves_the_schedule_to_the_other_server(tmp_path, monkeypatch):
    calls = Calls()
    with fresh_schema() as url:
        monkeypatch.setenv(DATABASE_URL_ENV, url)
        monkeypatch.setenv("LIVETWIN_OUTBOUND_ALLOW", "127.0.0.0/8")
        with (
            serving(tmp_path, tmp_path / "a", free_port()) as (first, a),
            serving(tmp_path, tmp_path / "b", free_port()) as (_second, b),
        ):
            function = {"kind": "http", "url": calls.url, "retries": 0}
            assert httpx.put(f"{a}/api/functions/tick", json=function).status_code == 200
            refused = httpx.put(f"{b}/api/functions/tick", json=function)
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert "on standby; the leader is" in error["message"] and error["fix"]
            every = {"kind": "interval", "every": "1s"}
            schedule = {"id": "t", "function": "tick", "trigger": every}
            assert httpx.post(f"{a}/api/schedules", json=schedule).status_code == 201
            wait_for(lambda: len(calls.fired()) >= 2)
            os.kill(first.pid, signal.SIGKILL)
            killed, before = time.monotonic(), calls.fired()
            first.wait()
            wait_for(lambda: len(calls.fired() - before) >= 2, timeout=1 + 10)  # from b
            new = min(c["at"] for c in calls.bodies if c["trigger"]["scheduled_for"] not in before)
            print(f"the first instant fired by the new leader arrived {new - killed:.2f} s after")
            assert httpx.put(f"{b}/api/functions/tick", json=function).status_code == 200
            runs = httpx.get(f"{b}/api/runs", params={"schedule": "t", "limit": 1000}).json()
            instants = scheduled_for(runs if isinstance(runs, list) else runs["runs"])
            assert len(instants) == len(set(instants))  # no instant fired twice
            assert set(instants) >= calls.fired()  # every call was a run of its own instant


def test_a_lease_whose_server_cannot_be_reached_says_so_as_a_503():
    """Asking who leads (what a standby's refusal names) on a server that cannot be reached or
    takes no more connections is a clear Unavailable, never an unexpected error (a 500)."""
    from livetwin.errors import Unavailable
    from livetwin.store.lease import Lease

    lease = Lease("postgresql://postgres@127.0.0.1:1/nowhere", "x.scheduler", timeout_s=1)
    for ask in (lease.holder, lease.try_acquire):
        with pytest.raises(Unavailable) as refused:
            ask()
        assert "cannot reach PostgreSQL for the lease x.scheduler" in refused.value.message
        assert refused.value.field == "LIVETWIN_DATABASE_URL"
