"""MQTT ingest benchmark: sustained QoS 1 publishing through Mosquitto into the embedded store.

Run with `python benchmarks/bench_mqtt.py [--json] [--quick]`; each scenario prints one JSON line.
Needs Mosquitto on 127.0.0.1:1883. The devices are a separate process (`mosquitto_pub -l`, or a
paho publisher when mosquitto-clients is not installed), so they do not share livetwin's CPU time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

try:
    from benchmarks.common import PROPS, Report, temp_dir
except ImportError:  # run as a script from benchmarks/
    from common import PROPS, Report, temp_dir

from livetwin.ingest.mqtt import MqttBridge
from livetwin.platform import Platform
from livetwin.settings import MqttConnection

HOST, PORT = "127.0.0.1", 1883
TYPE = {"properties": {name: {} for name in PROPS}}  # 5 values per observation, as bench ingest


def run(report: Report, tmp, scenario: str, messages: int, per_message: int, twins: int) -> None:
    """Publish `messages` QoS 1 messages of `per_message` observations; time until all stored."""
    with Platform(tmp / scenario) as platform:
        platform.put_type("dev", TYPE)
        if per_message == 1:
            spec = {
                "twin": "$.id",
                "type": "dev",
                "ts": "$.ts",
                "ts_format": "epoch_ms",
                "values": {name: f"$.{name}" for name in PROPS},
            }
        else:
            spec = {
                "foreach": "$.r[*]",
                "twin": "@.id",
                "type": "dev",
                "ts": "@.ts",
                "ts_format": "epoch_ms",
                "values": {name: f"@.{name}" for name in PROPS},
            }
        platform.put_extractor("x", spec)
        prefix = f"bench-{uuid.uuid4().hex}"
        bridge = MqttBridge(
            MqttConnection(HOST, PORT),
            ingest=platform.core,
            extractor=platform.extractor,
            configs=platform.core.store,
            clock=platform.clock,
        ).start()
        bridge.put_subscription("s", {"topic": f"{prefix}/+", "extractor": "x"})
        bridge.wait_connected()
        time.sleep(0.3)
        now = platform.clock() - 3_600_000
        bodies = []
        for m in range(messages):
            if per_message == 1:
                body = {"id": f"d{m % twins}", "ts": now + m, **dict.fromkeys(PROPS, m % 100)}
            else:
                rows = [
                    {
                        "id": f"d{(m * per_message + k) % twins}",
                        "ts": now + m,
                        **dict.fromkeys(PROPS, k),
                    }
                    for k in range(per_message)
                ]
                body = {"r": rows}
            bodies.append(orjson.dumps(body))
        chunk = 10_000 if per_message == 1 else 200
        files = []
        for start in range(0, messages, chunk):
            files.append(tmp / f"{scenario}-{start}.lines")
            files[-1].write_bytes(b"\n".join(bodies[start : start + chunk]) + b"\n")
        started = time.perf_counter()
        for k, path in enumerate(files):
            # Devices keep at most two chunks unstored: sustained load, not an unbounded burst
            # that a default Mosquitto (max_queued_messages 1000) would drop past the window.
            while bridge.stats()["ingested"] < (k - 2) * chunk:
                time.sleep(0.002)
            publish(f"{prefix}/t", path)
        deadline = time.monotonic() + 120
        while bridge.stats()["ingested"] + bridge.stats()["rejected"] < messages:
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        seconds = time.perf_counter() - started
        stats = bridge.stats()
        journaled = platform.stats()["journal_observations"]
        bridge.stop()
    observations = stats["observations_accepted"]
    lost = messages * per_message - journaled  # counted in the journal, not by the bridge
    values = observations * len(PROPS)
    rate = messages / seconds if per_message == 1 else values / seconds
    report.emit(
        scenario,
        values_per_s=values / seconds,
        observations_per_s=observations / seconds,
        messages_per_s=round(messages / seconds),
        values_per_observation=len(PROPS),
        lost=lost,
        n=values,
        seconds=round(seconds, 3),
        target=">= 10,000 msgs/s" if per_message == 1 else ">= 200,000 values/s",
        meets_target=rate >= (10_000 if per_message == 1 else 200_000) and lost == 0,
    )


def publish(topic: str, lines: Path) -> None:
    """Publish each line of `lines` as one QoS 1 message, from another process; wait for it."""
    if shutil.which("mosquitto_pub"):
        command = ["mosquitto_pub", "-h", HOST, "-p", str(PORT), "-q", "1", "-t", topic, "-l"]
    else:
        command = [sys.executable, __file__, "--publish", topic, str(lines)]
    with open(lines, "rb") as stdin:
        subprocess.run(command, stdin=stdin, check=True)


def _paho_publisher(topic: str, lines: Path) -> None:
    """The fallback device process: paho, up to 5,000 QoS 1 messages in flight."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.max_inflight_messages_set(5000)
    client.max_queued_messages_set(0)
    client.connect(HOST, PORT)
    client.loop_start()
    with open(lines, "rb") as f:
        infos = [client.publish(topic, line.rstrip(b"\n"), qos=1) for line in f]
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def main(json_only: bool = False, quick: bool = False) -> None:
    report = Report(json_only, quick)
    with temp_dir("livetwin-bench-mqtt-") as tmp:
        run(report, tmp, "mqtt_single", 20_000 if quick else 60_000, 1, 1000)
        run(report, tmp, "mqtt_batched_100", 1_000 if quick else 8_000, 100, 1000)
    report.table("livetwin bench mqtt" + (" (--quick)" if quick else ""))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--publish"]:
        _paho_publisher(sys.argv[2], Path(sys.argv[3]))
        sys.exit(0)
    main(json_only="--json" in sys.argv, quick="--quick" in sys.argv)
