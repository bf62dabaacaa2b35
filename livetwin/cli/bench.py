"""`livetwin bench ...`: the benchmarks of the source checkout (benchmarks/bench_<name>.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import typer

from livetwin.cli.common import console

bench_app = typer.Typer(help="Benchmarks (print JSON with --json).", no_args_is_help=True)


@bench_app.command("ingest")
def bench_ingest(
    json: bool = typer.Option(False, "--json", help="Print JSON lines only."),
    quick: bool = typer.Option(False, help="A smaller, faster run."),
    backend: str = typer.Option(
        None, "--backend", help="Compare storage backends: sqlite, postgres or both."
    ),
):
    """Ingest throughput: HTTP, in-process SDK, read latency under load, memory."""
    _benchmark("ingest").main(json_only=json, quick=quick, backend=backend)


BENCHMARKS = {
    "scheduler": "Scheduler: joined events dispatched per second, trigger latency p50/p99.",
    "mqtt": "MQTT ingest at QoS 1 through the local broker: messages/s, values/s, lost.",
    "opcua": "OPC UA ingest: a local asyncua server changing many variables; changes/s stored.",
    "webhooks": "Webhook deliveries/s and latency: one dead endpoint among ten live ones.",
    "replay": "Replay throughput from the journal.",
    "backtest": "Back-test throughput (baseline and candidate in lock-step) vs plain replay.",
    "calibrate": "Batched UKF speed (vs FilterPy twin by twin), band coverage and RMSE.",
    "import": "CSV file import: values/s through the ingest path, peak memory of a large file.",
    "scenario": "What-if forecasts: 1,000 roller lines x 1,000 steps with bands; coverage.",
    "retention": "Disk for a year of 1-minute data of 1,000 twins under retention; query times.",
    "aggregate": "Aggregates over children: time per child batch, 100,000 children, 1,000 parents.",
    "cluster": "Cluster mode: HTTP ingest and read p99 on 1-3 local Ray nodes vs single node on "
    "PostgreSQL; recovery time of a lost shard.",
}


def _bench_command(name: str, doc: str):
    """`livetwin bench <name> [--json] [--quick]`: runs benchmarks/bench_<name>.py."""

    def command(
        json: bool = typer.Option(False, "--json", help="Print JSON lines only."),
        quick: bool = typer.Option(False, help="A smaller, faster run."),
    ):
        _benchmark(name).main(json_only=json, quick=quick)

    command.__doc__ = doc
    return command


for _name, _doc in BENCHMARKS.items():
    bench_app.command(_name)(_bench_command(_name, _doc))


def _benchmark(name: str):
    """Benchmarks live in the source checkout's benchmarks/ folder."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"bench_{name}.py"
    if not path.exists():
        console.print(
            f"[red]benchmark {path} not found: benchmarks ship with the source "
            "checkout (git clone), not with the wheel[/]"
        )
        raise typer.Exit(2)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
