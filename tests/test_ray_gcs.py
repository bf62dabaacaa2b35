"""Ray's head without a single point of failure: GCS fault tolerance on the external Redis
(docs/cluster.md). A local Ray cluster (a head without CPUs, one worker node) keeps its state in
Redis; its GCS server is killed (SIGKILL) and started again as a supervisor (Kubernetes) would; a
detached actor on the worker kept its state and the cluster takes new work.

Needs Ray (`pip install 'livetwin[ray]'`) and Redis on 127.0.0.1:6379: skipped without them,
failed under CI=true. Takes about 30 s."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.services  # needs Redis (and Ray)

REDIS = ("127.0.0.1", 6379)
RAY = Path(sys.executable).with_name("ray")

DRIVER = """
import sys, ray
ray.init(address=sys.argv[1], namespace="livetwin-test")

@ray.remote(num_cpus=0.1)
class Counter:
    def __init__(self):
        self.n = 0
    def add(self):
        self.n += 1
        return self.n

if sys.argv[2] == "create":
    counter = Counter.options(name="counter", lifetime="detached").remote()
    print([ray.get(counter.add.remote()) for _ in range(3)][-1])
else:
    print(ray.get(ray.get_actor("counter").add.remote()))
    print(ray.get(ray.remote(lambda: 42).options(num_cpus=0.1).remote()))
"""


def missing(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (required under CI=true)")
    pytest.skip(message)


def redis(*command: str) -> object:
    """One Redis command over RESP (no client library needed); its reply."""
    parts = [f"*{len(command)}\r\n"] + [f"${len(c.encode())}\r\n{c}\r\n" for c in command]
    with socket.create_connection(REDIS, timeout=5) as conn:
        conn.sendall("".join(parts).encode())
        reader = conn.makefile("rb")

        def read() -> object:
            line = reader.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind in (b"+", b":"):
                return rest.decode()
            if kind == b"$":
                return None if rest == b"-1" else reader.read(int(rest) + 2)[:-2].decode()
            if kind == b"*":
                return [read() for _ in range(int(rest))]
            raise AssertionError(line)

        return read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_of(marker: str) -> list[tuple[int, list[str]]]:
    """The processes whose command line names `marker` (this test's own Ray temp dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                args = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
            except OSError:
                continue
            if any(marker in a for a in args):
                found.append((int(proc.name), args))
    return found


@pytest.fixture
def ray_cluster() -> Iterator[tuple[str, str, dict]]:
    """A head (no CPUs) and a worker node with GCS state in Redis: (address, temp dir, env).
    Only this cluster's processes (found by its temp dir) are killed afterwards, never others'
    (`ray stop` would stop every Ray cluster of the user)."""
    if not RAY.exists():
        missing("Ray is not installed (pip install 'livetwin[ray]')")
    try:
        redis("PING")
    except OSError:
        missing(f"Redis is not reachable on {REDIS[0]}:{REDIS[1]}")
    tag = uuid.uuid4().hex[:8]
    tmp, namespace = f"/tmp/ltray{tag}", f"livetwin-test-{tag}"  # short: socket paths
    env = {
        **os.environ,
        "RAY_REDIS_ADDRESS": f"{REDIS[0]}:{REDIS[1]}",
        "RAY_external_storage_namespace": namespace,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    address = f"127.0.0.1:{free_port()}"

    def start(*args: str) -> None:
        node = ["--temp-dir", tmp, "--dashboard-agent-listen-port", str(free_port())]
        done = subprocess.run(
            [str(RAY), "start", *args, *node], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]

    try:
        start(
            "--head", "--port", address.split(":")[1], "--num-cpus", "0",
            "--include-dashboard", "false", "--dashboard-port", str(free_port()),
            "--ray-client-server-port", str(free_port()),
        )  # fmt: skip
        start("--address", address, "--num-cpus", "1")
        yield address, tmp, env
    finally:
        for pid, _ in processes_of(tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for key in redis("KEYS", f"RAY{namespace}@*"):
            redis("DEL", key)


def driver(address: str, env: dict, step: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, address, step],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def test_the_cluster_survives_its_gcs_server_restarting_from_redis(ray_cluster):
    address, tmp, env = ray_cluster
    assert driver(address, env, "create") == ["3"]
    namespace = env["RAY_external_storage_namespace"]
    assert redis("KEYS", f"RAY{namespace}@*")  # the cluster's tables live in Redis
    ((pid, args),) = [(p, a) for p, a in processes_of(tmp) if a[0].endswith("gcs_server")]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    gcs_env = dict(e.decode().split("=", 1) for e in environ if b"=" in e)
    os.kill(pid, signal.SIGKILL)  # the head's GCS is lost ...
    time.sleep(1)
    subprocess.Popen(  # ... and a supervisor starts it again, as it was
        args,
        env=gcs_env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert driver(address, env, "check") == ["4", "42"]  # the actor kept its state
