"""OPC UA ingest benchmark: an asyncua server changing many variables as fast as it can, in a
separate process, and one connector subscribed to all of them feeding the embedded store.

Run with `livetwin bench opcua [--json] [--quick]` or `python benchmarks/bench_opcua.py` (needs
the `opcua` extra); prints one JSON line: the value changes the server wrote, those received and
those stored (in the twins' history, counted there), and the rates; `values_per_s` is the
changes stored per second.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

try:
    from benchmarks.common import PROPS, Report, temp_dir
except ImportError:  # run as a script from benchmarks/
    from common import PROPS, Report, temp_dir

from livetwin.platform import Platform
from livetwin.settings import Settings

TYPE = {"properties": {name: {} for name in PROPS}}


async def serve(port: int, twins: int, seconds: float) -> None:
    """The device side: `twins` objects of 5 variables each under Objects/2:Plant, all written
    round after round for `seconds` once a line arrives on stdin; prints the writes made."""
    from asyncua import Server, ua

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:livetwin:bench")
    plant = await server.nodes.objects.add_folder(ns, "Plant")
    variables = []
    for i in range(twins):
        twin = await plant.add_object(ns, f"d{i}")
        for name in PROPS:
            variables.append(await twin.add_variable(ua.NodeId(f"d{i}.{name}", ns), name, 0.0))
    async with server:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        writes, deadline, value = 0, time.monotonic() + seconds, 0.0
        while time.monotonic() < deadline:
            value += 1.0
            for variable in variables:
                await variable.write_value(value)
            writes += len(variables)
            await asyncio.sleep(0)  # let the server publish between rounds
        print(writes, flush=True)
        await asyncio.sleep(30)  # serve the last publishes until the benchmark ends


def main(json_only: bool = False, quick: bool = False) -> None:
    report = Report(json_only, quick)
    twins, seconds = (20, 3.0) if quick else (100, 10.0)
    with temp_dir("livetwin-bench-opcua-") as tmp:
        measure(report, tmp, twins, seconds)
    report.table("bench opcua" + (" (--quick)" if quick else ""))


def measure(report: Report, tmp: Path, twins: int, seconds: float) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    device = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), str(twins), str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert device.stdout.readline().strip() == "ready"
        settings = Settings(webhooks=False, run_schedules=False, outbound_allow=("127.0.0.1/32",))
        with Platform(tmp / "opcua", settings=settings) as platform:
            platform.put_type("dev", TYPE)
            spec = {
                "endpoint": f"opc.tcp://127.0.0.1:{port}/",
                "type": "dev",
                "browse": [{"path": "2:Plant/*/*", "twin": "{1}", "property": "{2}"}],
                "sampling_ms": 0,
                "publishing_ms": 100,
            }
            view = platform.opcua.put_connector("bench", spec)
            assert view["status"]["connected"], view["status"]
            time.sleep(1.0)  # the initial values are received and stored before the count
            before = platform.opcua.connector("bench")["status"]["values_received"]
            stored_before = stored(platform, twins)
            started = time.perf_counter()
            device.stdin.write("go\n")
            device.stdin.flush()
            writes = int(device.stdout.readline())
            wrote_s = time.perf_counter() - started
            time.sleep(2.5)  # the server's last publishes and our last flush
            status = platform.opcua.connector("bench")["status"]
            received = status["values_received"] - before
            kept = stored(platform, twins) - stored_before
            report.emit(
                "opcua_subscribe",
                values_per_s=kept / wrote_s,
                observations_per_s=None,
                twins=twins,
                variables=twins * len(PROPS),
                server_writes=writes,
                server_writes_per_s=round(writes / wrote_s),
                values_received=received,
                received_per_s=round(received / wrote_s),
                values_stored=kept,
                observations_accepted=status["observations_accepted"],
                dropped=status["dropped"],
                values_rejected=status["values_rejected"],
                seconds=round(wrote_s, 2),
            )
    finally:
        device.kill()
        device.wait()


def stored(platform: Platform, twins: int) -> int:
    """Values in the twins' history (history flushed first)."""
    platform.snapshot()
    total = 0
    for i in range(twins):
        series = platform.history(f"d{i}", list(PROPS))["series"]
        total += sum(v is not None for values in series.values() for v in values)
    return total


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
    else:
        main(json_only="--json" in sys.argv, quick="--quick" in sys.argv)
