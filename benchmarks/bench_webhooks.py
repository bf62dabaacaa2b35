"""Webhook benchmark: deliveries/s and latency to ten live endpoints beside one dead one.

Run with `livetwin bench webhooks [--json] [--quick]`; each scenario prints one JSON line.
The ten live endpoints are uvicorn servers in a separate process (their own CPU and GIL); the
dead one is a socket that is listening but never accepts, so each attempt runs into the timeout.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

try:
    from benchmarks.common import PROPS, Report, temp_dir, type_spec
except ImportError:  # run as a script from benchmarks/
    from common import PROPS, Report, temp_dir, type_spec

from livetwin.actions.webhooks import WebhookService
from livetwin.engine.events import StateChanged
from livetwin.outbound import OutboundPolicy
from livetwin.platform import Platform, Settings

LIVE = 10
TWINS_PER_EVENT = 10  # observations per ingest call, so one state change carries 10 rows
TIMEOUT_S = 5.0  # the service's per-attempt timeout: what the dead endpoint costs each time
SECRET = "bench-secret-bench-secret"
T0 = 1_767_225_600_000


def main(json_only: bool = False, quick: bool = False) -> None:
    report = Report(json_only, quick)
    burst = 150 if quick else 1_000  # events ingested back to back
    paced_s = 3.0 if quick else 10.0
    rate = 20  # events/s in the paced scenarios: 200 deliveries/s, below the burst capacity
    with temp_dir("livetwin-bench-webhooks-") as tmp, Receivers() as receivers:
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        dead.listen(4096)  # the kernel completes connections; nobody ever answers
        dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}/hook"
        try:
            report.note(f"webhooks_burst: {burst} events to {LIVE} live + 1 dead endpoint ...")
            emit(report, "webhooks_burst", run(tmp, receivers, dead_url, burst, None))
            report.note(f"webhooks_paced: {rate} events/s for {paced_s:.0f} s, with and without")
            paced = int(rate * paced_s)
            with_dead = run(tmp, receivers, dead_url, paced, rate)
            without = run(tmp, receivers, None, paced, rate)
            emit(report, "webhooks_paced", with_dead, baseline=without)
        finally:
            dead.close()
    report.table("livetwin bench webhooks" + (" (--quick)" if quick else ""))


def run(tmp: Path, receivers: Receivers, dead_url: str | None, events: int, rate: float | None):
    """Ingest `events` state changes (paced at `rate` per second, or back to back); wait until
    every live endpoint has them all (or 60 s passed); the delivery log and timings."""
    receivers.reset()
    published: dict[int, float] = {}
    data = tmp / f"run-{time.monotonic_ns()}"
    with Platform(data, settings=Settings(webhooks=False)) as platform:  # ours, below
        platform.put_type("bench", type_spec())
        hooks = WebhookService(
            clock=platform.clock,
            bus=platform.bus,
            reader=platform.query,
            open_db=platform.open_db,
            timeout_s=TIMEOUT_S,
            max_attempts=1000,
            outbound=OutboundPolicy(("127.0.0.0/8",)),  # the receivers listen on loopback
        ).start()
        try:
            live = {
                hooks.create({"url": url, "secret": SECRET})["id"]: url for url in receivers.urls
            }
            if dead_url:
                dead_id = hooks.create({"url": dead_url, "secret": SECRET})["id"]

            def on_event(event) -> None:
                if isinstance(event, StateChanged):
                    published[event.seq] = time.monotonic()

            platform.bus.subscribe(on_event)
            rng = np.random.default_rng(7)
            started = time.monotonic()
            for k in range(events):
                if rate:
                    delay = started + k / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                values = rng.uniform(0, 100, (TWINS_PER_EVENT, len(PROPS))).tolist()
                platform.ingest(
                    [
                        {
                            "twin": f"t{(k * TWINS_PER_EVENT + i) % 1000}",
                            "type": "bench",
                            "ts": T0 + k,
                            "values": dict(zip(PROPS, v, strict=True)),
                        }
                        for i, v in enumerate(values)
                    ]
                )
            ingest_s = time.monotonic() - started
            expected = events * LIVE
            deadline = time.monotonic() + 60
            while receivers.count() < expected and time.monotonic() < deadline:
                time.sleep(0.05)
            log = receivers.log()
            dead_attempts = hooks.get(dead_id)["attempts"]["total"] if dead_url else None
        finally:
            hooks.stop()
    seen: dict[str, float] = {}
    for d_id, at in log:  # the first arrival of each delivery id
        seen.setdefault(d_id, at)
    latencies = [at - published[int(d_id.split(".")[1])] for d_id, at in seen.items()]
    live_ids = {d_id for d_id in seen if d_id.split(".")[0] in live}
    return {
        "events": events,
        "expected": expected,
        "delivered": len(live_ids),
        "duplicates": len(log) - len(seen),
        "seconds": max(seen.values()) - started if seen else None,
        "ingest_seconds": ingest_s,
        "latencies": latencies,
        "dead_attempts": dead_attempts,
        "rate": rate,
    }


def emit(report: Report, scenario: str, r: dict, baseline: dict | None = None) -> None:
    lat = np.asarray(r["latencies"]) * 1e3
    p50 = float(np.percentile(lat, 50)) if len(lat) else None
    p99 = float(np.percentile(lat, 99)) if len(lat) else None
    complete = r["delivered"] == r["expected"]
    extra = {}
    if baseline is not None:
        base = np.asarray(baseline["latencies"]) * 1e3
        extra = {
            "p50_ms_without_dead": round(float(np.percentile(base, 50)), 2),
            "p99_ms_without_dead": round(float(np.percentile(base, 99)), 2),
            "delivered_without_dead": baseline["delivered"],
        }
    paced = r["rate"] is not None
    report.emit(
        scenario,
        values_per_s=None,
        observations_per_s=None,
        p99_ms=p99,
        deliveries_per_s=round(r["delivered"] / r["seconds"]) if r["seconds"] else None,
        p50_ms=None if p50 is None else round(p50, 2),
        delivered=r["delivered"],
        expected=r["expected"],
        duplicates=r["duplicates"],
        valid=complete,
        events=r["events"],
        seconds=round(r["seconds"], 3) if r["seconds"] else None,
        dead_endpoint_attempts=r["dead_attempts"],
        target="all live deliveries arrive; p99 at most 2x the run without the dead endpoint"
        if baseline
        else None,
        meets_target=(complete and p99 <= 2 * extra["p99_ms_without_dead"]) if baseline else None,
        **extra,
        note=(
            f"{LIVE} live subscriptions (uvicorn in another process) + "
            + f"1 dead (listening, never answering; {TIMEOUT_S:.0f} s timeout per attempt)"
            + f"; one event = one ingest call of {TWINS_PER_EVENT} observations = one delivery "
            "per subscription; latency: from the bus publishing the committed batch to the "
            "endpoint receiving the POST; "
            + (
                f"events paced at {r['rate']}/s; *_without_dead: the same run with no dead endpoint"
                if paced
                else "events ingested back to back; deliveries_per_s counts live deliveries "
                "from the first ingest to the last arrival"
            )
        ),
    )


class Receivers:
    """Ten uvicorn endpoints in a child process that log (delivery id, monotonic arrival)."""

    def __enter__(self) -> Receivers:
        self.ports = [_free_port() for _ in range(LIVE)]
        self.urls = [f"http://127.0.0.1:{p}/hook" for p in self.ports]
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--receivers", *map(str, self.ports)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.http = httpx.Client(timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.count()
                return self
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.__exit__()
                    raise RuntimeError("the receiver process did not start") from None
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(10)

    def count(self) -> int:
        return sum(self.http.get(f"http://127.0.0.1:{p}/count").json() for p in self.ports)

    def log(self) -> list[tuple[str, float]]:
        return [
            tuple(x) for p in self.ports for x in self.http.get(f"http://127.0.0.1:{p}/log").json()
        ]

    def reset(self) -> None:
        for p in self.ports:
            self.http.post(f"http://127.0.0.1:{p}/reset")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_receivers(ports: list[int]) -> None:
    """The child: one asyncio loop, one uvicorn server per port, a raw ASGI app each."""
    import asyncio

    import orjson
    import uvicorn

    def app_for() -> object:
        log: list[tuple[str, float]] = []

        async def app(scope, receive, send) -> None:
            if scope["type"] != "http":
                return
            more = True
            while more:
                message = await receive()
                more = message.get("more_body", False)
            at = time.monotonic()
            path = scope["path"]
            body = b""
            if path == "/hook":
                headers = dict(scope["headers"])
                log.append((headers[b"x-livetwin-delivery"].decode(), at))
            elif path == "/count":
                body = orjson.dumps(len(log))
            elif path == "/log":
                body = orjson.dumps(log)
            elif path == "/reset":
                log.clear()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})

        return app

    async def serve() -> None:
        servers = [
            uvicorn.Server(uvicorn.Config(app_for(), host="127.0.0.1", port=p, log_level="error"))
            for p in ports
        ]
        await asyncio.gather(*(s.serve() for s in servers))

    asyncio.run(serve())


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--receivers":
        _serve_receivers([int(p) for p in sys.argv[2:]])
    else:
        main(json_only="--json" in sys.argv, quick="--quick" in sys.argv)
