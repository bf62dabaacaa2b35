"""Shared helpers of the benchmarks: machine facts, JSON lines, the summary table, workloads."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in epoch ms: every benchmark's first timestamp
PROPS = ("a", "b", "c", "d", "e")


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu or platform.machine(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def load_avg() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages now (None where the OS has none): what else ran
    while a figure was measured."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class Report:
    """Collects one JSON object per scenario, prints each as a line, then a table (not --json)."""

    def __init__(self, json_only: bool, quick: bool):
        self.json_only, self.quick = json_only, quick
        self.rows: list[dict] = []
        self.machine = machine()

    def note(self, text: str) -> None:
        """Progress for humans, on stderr, never with --json."""
        if not self.json_only:
            print(text, file=sys.stderr, flush=True)

    def emit(
        self,
        scenario: str,
        *,
        values_per_s: float | None,
        observations_per_s: float | None,
        p99_ms: float | None = None,
        baseline_ratio: float | None = None,
        target: str | None = None,
        meets_target: bool | None = None,
        **extra,
    ) -> dict:
        row = {
            "scenario": scenario,
            "values_per_s": _round(values_per_s),
            "observations_per_s": _round(observations_per_s),
            "p99_ms": None if p99_ms is None else round(p99_ms, 2),
            "baseline_ratio": None if baseline_ratio is None else round(baseline_ratio, 3),
            "target": target,
            "meets_target": meets_target,
            "quick": self.quick,
            **extra,
            "machine": self.machine,
            "python": self.machine["python"],
            "load_avg": load_avg(),
        }
        self.rows.append(row)
        sys.stdout.buffer.write(orjson.dumps(row) + b"\n")
        sys.stdout.flush()
        return row

    def table(self, title: str) -> None:
        if self.json_only:
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        table.add_column("scenario", no_wrap=True)
        for name in ("values/s", "obs/s", "p99 ms", "vs baseline"):
            table.add_column(name, justify="right", no_wrap=True)
        table.add_column("target")
        table.add_column("met", no_wrap=True)
        table.add_column("details")
        for r in self.rows:
            met = r["meets_target"]
            table.add_row(
                r["scenario"],
                _fmt(r["values_per_s"]),
                _fmt(r["observations_per_s"]),
                _fmt(r["p99_ms"]),
                _fmt(r["baseline_ratio"]),
                r["target"] or "",
                "" if met is None else ("[green]yes[/]" if met else "[red]no[/]"),
                _details(r),
            )
        console = Console(width=max(Console().width, 150))
        console.print(table)
        m = self.machine
        console.print(
            f"{m['cpu']}, {m['cores']} cores, {m['os']}, Python {m['python']}, "
            f"load average {load_avg()}"
        )


def _details(row: dict) -> str:
    parts = []
    if row.get("n") is not None and row.get("seconds") is not None:
        parts.append(f"{row['n']:,} obs in {row['seconds']:.2f} s")
    elif row.get("seconds") is not None:
        parts.append(f"{row['seconds']:.3f} s")
    for key, label in (
        ("twins", "twins"),
        ("p50_ms", "p50 ms"),
        ("peak_rss_mb", "peak RSS MB"),
        ("threads", "threads"),
        ("clients", "clients"),
    ):
        if row.get(key) is not None:
            parts.append(f"{label} {row[key]:,}")
    if row.get("snapshot_used") is False:
        parts.append("[red]no snapshot found: whole journal replayed[/]")
    if row.get("valid") is False:
        parts.append("[red]INVALID (failures)[/]")
    return ", ".join(parts)


def _round(x: float | None) -> float | int | None:
    if x is None:
        return None
    return round(x) if x >= 100 else round(x, 3)


def _fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and x < 100:
        return f"{x:.3g}"
    return f"{x:,.0f}"


@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A fresh temporary directory, removed at the end."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def type_spec(derived: dict[str, str] | None = None) -> dict:
    """The benchmark type: five properties a..e (no ranges), optional derived values."""
    spec: dict = {"properties": {p: {"unit": ""} for p in PROPS}}
    if derived:
        spec["derived"] = derived
    return spec


def observations(
    twins: list[str], ts: np.ndarray, rng: np.random.Generator, type_name: str = "bench"
) -> list[dict]:
    """One observation of all five properties per (twin, ts), as a JSON-ready list of dicts."""
    values = np.round(rng.uniform(0, 100, (len(twins), len(PROPS))), 3).tolist()
    return [
        {"twin": t, "type": type_name, "ts": s, "values": dict(zip(PROPS, v, strict=True))}
        for t, s, v in zip(twins, ts.tolist(), values, strict=True)
    ]


def rolling_batch(k: int, n_twins: int, size: int, rng: np.random.Generator) -> list[dict]:
    """Batch k of a stream over twins t0..t{n_twins-1}: `size` consecutive twins (cyclic), one
    observation each, timestamps increasing by 1 ms across the whole stream."""
    start = k * size
    twins = [f"t{(start + i) % n_twins}" for i in range(size)]
    return observations(twins, T0 + start + np.arange(size, dtype=np.int64), rng)


def percentile_ms(samples: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(samples) * 1e3, q)) if samples else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by a process (this one by default)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """`livetwin serve` on the checkout, in a subprocess (its own interpreter and GIL), with
    `options` added to its command line and `env` to its environment."""

    def __init__(
        self, data: Path, *options: str, env: dict[str, str] | None = None, ready_s: float = 60
    ):
        self.port, self.ready_s = free_port(), ready_s
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        }
        self.log = open(data.parent / f"{data.name}-server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "livetwin.cli", "serve", "--data", str(data)]
            + ["--port", str(self.port), *options],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start within {timeout} s: {self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        try:
            return Path(self.log.name).read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> Server:
        try:
            self.wait_ready(self.ready_s)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
