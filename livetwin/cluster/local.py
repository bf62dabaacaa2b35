"""A local multi-node Ray cluster for tests and benchmarks: a head without CPUs and worker nodes
started as separate `ray start` processes, each with its own resources; a node can be killed
(SIGKILL of its raylet and everything under it) and another started.

Only this cluster's processes are ever signalled (found by its own temp directory), never
other Ray clusters of the user (`ray stop` would stop them all).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from livetwin.cluster.shard import SHARD_RESOURCE

# The head notices a lost node within about a second (Ray's default is about 15 s).
FAST_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "2",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray() -> str:
    ray = Path(sys.executable).with_name("ray")
    if not ray.exists():
        from livetwin.errors import Unavailable

        raise Unavailable(
            "Ray is not installed", field="cluster", fix="pip install 'livetwin[ray]'"
        )
    return str(ray)


def _processes() -> dict[int, tuple[int, list[str]]]:
    """Every process: pid -> (parent pid, command line)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found[int(proc.name)] = (ppid, args)
    return found


@dataclass
class Node:
    """A worker node: the port of its raylet names it among this cluster's processes."""

    port: int
    cpus: float
    started: float = field(default_factory=time.monotonic)


class LocalRayCluster:
    """`LocalRayCluster(nodes=3).start()`: a head and `nodes` worker nodes on this machine.

    Worker nodes offer `livetwin_shard` (shards are placed only there, never on the head).
    `address` is the head's GCS address for `ray.init` and `serve --cluster`. `stop()` kills
    every process of this cluster.
    """

    def __init__(
        self,
        nodes: int = 3,
        *,
        cpus_per_node: float = 1,
        object_store_bytes: int = 100_000_000,
        env: dict[str, str] | None = None,
    ):
        self.tag = uuid.uuid4().hex[:8]
        self.temp_dir = f"/tmp/ltray{self.tag}"  # short: Unix socket paths are limited
        self.size, self.cpus_per_node = nodes, cpus_per_node
        self.object_store_bytes = object_store_bytes
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
            **FAST_FAILURE_DETECTION,
            **(env or {}),
        }
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[Node] = []

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _ray_start(self, *args: str) -> None:
        common = [
            "--temp-dir", self.temp_dir,
            "--object-store-memory", str(self.object_store_bytes),
            "--dashboard-agent-listen-port", str(free_port()),
            "--disable-usage-stats",
        ]  # fmt: skip
        done = subprocess.run(
            [_ray(), "start", *args, *common],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed: {done.stderr[-2000:]}")

    def start(self) -> LocalRayCluster:
        try:
            self._ray_start(
                "--head", "--port", str(self.port), "--num-cpus", "0",
                "--include-dashboard", "false", "--dashboard-port", str(free_port()),
                "--ray-client-server-port", str(free_port()),
            )  # fmt: skip
            for _ in range(self.size):
                self.add_node()
        except BaseException:
            self.stop()
            raise
        return self

    def add_node(self, cpus: float | None = None) -> Node:
        """Start one more worker node (it joins the head)."""
        cpus = self.cpus_per_node if cpus is None else cpus
        node = Node(free_port(), cpus)
        self._ray_start(
            "--address", self.address,
            "--num-cpus", str(cpus),
            "--resources", json.dumps({SHARD_RESOURCE: 100}),
            "--node-manager-port", str(node.port),
        )  # fmt: skip
        self.nodes.append(node)
        return node

    def _raylet(self, node: Node, processes: dict) -> int | None:
        wanted = f"--node_manager_port={node.port}"
        for pid, (_, args) in processes.items():
            if args and args[0].endswith("raylet") and wanted in args:
                return pid
        return None

    def node_pids(self, node: Node) -> list[int]:
        """The raylet of `node` and every process under it (its workers and agents)."""
        processes = _processes()
        raylet = self._raylet(node, processes)
        if raylet is None:
            return []
        found, frontier = [raylet], [raylet]
        while frontier:
            parent = frontier.pop()
            children = [pid for pid, (ppid, _) in processes.items() if ppid == parent]
            found += children
            frontier += children
        return found

    def node_of_pid(self, pid: int) -> Node | None:
        """The worker node that runs process `pid` (e.g. a shard actor's worker)."""
        for node in self.nodes:
            if pid in self.node_pids(node):
                return node
        return None

    def kill_node(self, node: Node) -> list[int]:
        """SIGKILL a worker node's raylet and everything under it; the pids killed."""
        pids = self.node_pids(node)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.nodes.remove(node)
        return pids

    def stop(self) -> None:
        """Kill every process of this cluster (found by its temp directory) and remove it."""
        for _ in range(3):
            mine = [
                pid
                for pid, (_, args) in _processes().items()
                if pid != os.getpid() and any(self.temp_dir in a for a in args)
            ]
            for node in self.nodes:
                mine += self.node_pids(node)
            if not mine:
                break
            for pid in set(mine):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        self.nodes.clear()
        subprocess.run(["rm", "-rf", self.temp_dir], check=False)
