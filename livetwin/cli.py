"""The `livetwin` command: serve, demo, replay, bench."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from livetwin.api.ops import configure_logging
from livetwin.cli_admin import fail, grafana_dashboard, token_app
from livetwin.errors import LivetwinError
from livetwin.ingest.mqtt import load_mqtt_config, parse_address
from livetwin.platform import Platform, Settings
from livetwin.timefmt import wall_clock_ms

app = typer.Typer(
    help="livetwin: living digital twins.", no_args_is_help=True, pretty_exceptions_enable=False
)
bench_app = typer.Typer(help="Benchmarks (print JSON with --json).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(token_app, name="token")
app.command("grafana-dashboard")(grafana_dashboard)
console = Console()

DATA = typer.Option(Path("livetwin-data"), "--data", help="Data directory (embedded store).")


def _serve(platform: Platform, host: str, port: int, auth: str | None = None, **oidc) -> None:
    """Run the API over `platform` until Ctrl-C; `auth` is open, tokens or oidc (docs/auth.md)."""
    import gc
    import sys

    import uvicorn

    # Threads parsing big ingest batches hold the GIL for the default 5 ms at a time; a shorter
    # switch interval keeps small reads (GET a twin) fast while ingest runs at full speed.
    sys.setswitchinterval(0.0005)
    # Ingest allocates many short-lived acyclic objects; collect cycles less often, and never
    # scan the long-lived state loaded at start.
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)

    from livetwin.api.app import create_app
    from livetwin.api.auth import default_mode, install_auth

    mode = auth or default_mode(host)
    api = create_app(platform, own_platform=True)
    try:
        install_auth(api, platform, mode, host=host, **oidc)  # after every route is added
    except LivetwinError as exc:
        platform.close()
        fail(exc)
    if mode == "open":
        console.print(
            f"[bold yellow]WARNING: authentication is off: anyone who can reach {host}:{port} "
            "can read and write every twin (use --auth tokens).[/]"
        )
    uvicorn.run(
        api,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=3,  # live streams (SSE) never end by themselves
    )


@app.command()
def serve(
    data: Path = DATA,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_body_mb: int = typer.Option(32, help="Largest request body accepted, in MiB."),
    auth: str = typer.Option(
        None, "--auth", help="open, tokens or oidc (default: open on localhost, tokens elsewhere)."
    ),
    jwks_url: str = typer.Option(None, "--jwks-url", envvar="LIVETWIN_JWKS_URL"),
    audience: str = typer.Option(None, "--audience", envvar="LIVETWIN_JWT_AUDIENCE"),
    issuer: str = typer.Option(None, "--issuer", envvar="LIVETWIN_JWT_ISSUER"),
    mqtt: str = typer.Option(
        None, "--mqtt", help="MQTT broker host:port for ingest subscriptions and commands."
    ),
    config: Path = typer.Option(
        None, "--config", help="YAML file with an mqtt: section (broker and subscriptions)."
    ),
):
    """Run the REST API (and the web UI) on the embedded store (or LIVETWIN_DATABASE_URL)."""
    configure_logging()
    settings = Settings(max_body_bytes=max_body_mb * 1024 * 1024)
    subscriptions: dict = {}
    try:
        if config is not None:
            settings.mqtt_host, settings.mqtt_port, subscriptions = load_mqtt_config(config)
        if mqtt:
            settings.mqtt_host, settings.mqtt_port = parse_address(mqtt)
    except LivetwinError as exc:
        fail(exc)
    platform = _open(data, settings)
    for name, body in subscriptions.items():
        try:
            platform.mqtt.put_subscription(name, body)
        except LivetwinError as exc:
            platform.close()
            fail(exc)
    console.print(f"livetwin serving {data} at [bold]http://{host}:{port}[/] (API docs: /docs)")
    _serve(platform, host, port, auth, jwks_url=jwks_url, audience=audience, issuer=issuer)


@app.command()
def demo(
    data: Path = DATA,
    host: str = "127.0.0.1",
    port: int = 8000,
    pumps: int = typer.Option(50, help="Pumps in the simulated fleet."),
    lines: int = typer.Option(10, help="Roller lines whose bearings wear."),
    homes: int = typer.Option(4, help="Homes with motion sensors (one occupant stops moving)."),
    interval: float = typer.Option(1.0, help="Seconds between telemetry rounds."),
    calibrate_every: float = typer.Option(15.0, help="Seconds between roller calibrations."),
    duration: float = typer.Option(0, help="Stop after this many seconds (0: run until Ctrl-C)."),
):
    """Serve livetwin with simulated pumps and roller lines streaming telemetry."""
    from livetwin.examples.home import run_home_demo, schedule_home_jobs
    from livetwin.examples.pumps import PumpFleet, declare
    from livetwin.examples.roller_demo import RollerDemo, coverage

    platform = _open(data, Settings())
    declare(platform)
    fleet = PumpFleet(pumps)
    if not platform.twins(type="pump", limit=1)["total"]:
        _backfill(platform, fleet, minutes=60, step_s=10)
    rollers = RollerDemo(platform, lines)
    rollers.run_until(wall_clock_ms())
    if homes and "home" not in {t["name"] for t in platform.list_types()}:
        with console.status("home fleet: four weeks of motion history, baselines, check ..."):
            run_home_demo(platform, homes=homes, now_ms=wall_clock_ms(), out=console.print)
    schedule_home_jobs(platform)  # nightly retraining, a check every 5 minutes
    stop = threading.Event()

    def stream() -> None:
        last_calibration = 0.0
        while not stop.wait(interval):
            now = wall_clock_ms()
            platform.ingest(fleet.tick(now))
            rollers.run_until(now)
            if time.monotonic() - last_calibration >= calibrate_every:
                last_calibration = time.monotonic()
                _show_calibration(rollers.calibrate(), coverage)

    threading.Thread(target=stream, name="demo-fleet", daemon=True).start()
    base = f"http://{host}:{port}"
    console.print(
        f"\n[bold green]livetwin demo[/]: {pumps} pumps in {len(fleet.stations)} stations and "
        f"{lines} roller lines stream telemetry into {data}/; the lines' bearing drags wear and "
        f"are calibrated every {calibrate_every:g} s; {homes} homes' activity baselines are "
        "registered models, retrained nightly and checked every 5 minutes.\n"
        f"  API docs   {base}/docs\n\nTry:\n"
        f"  curl {base}/api/types\n"
        f"  curl {base}/api/twins/pump-1\n"
        f"  curl '{base}/api/twins?type=pump&where=efficiency%20%3C%200.6&limit=5'\n"
        f"  curl '{base}/api/twins/pump-1/history?names=flow,flow_avg_10m&every=5m'\n"
        f"  curl {base}/api/twins/line-1/calibration\n"
        f"  curl '{base}/api/twins/line-1/history?names=b2,b2_lower,b2_upper&every=5s&agg=last'\n"
        f"  curl -N {base}/api/stream?twin=line-1\n"
        f"  curl '{base}/api/alarms?state=open'\n"
        f"  curl {base}/api/models/activity.home-{homes}/versions/1\n"
        f"  curl {base}/api/runs?limit=5\n"
        f"  curl -X POST {base}/api/ingest -H 'content-type: application/json' \\\n"
        f'       -d \'[{{"twin":"pump-1","type":"pump","values":{{"flow":99}}}}]\'\n',
        soft_wrap=True,
    )
    if duration:
        threading.Timer(duration, _interrupt).start()
    try:
        _serve(platform, host, port)
    finally:
        stop.set()


def _show_calibration(rows: list[tuple], coverage) -> None:
    """Print true vs calibrated drag b2 of a few lines."""
    from rich.table import Table

    table = Table(
        title=f"bearing drag b2: truth vs calibration (95 % band covers "
        f"{coverage(rows):.0%} of lines)"
    )
    for column in ("line", "true b2", "calibrated b2", "95 % band"):
        table.add_column(column)
    for twin, true, value, lower, upper in rows[:5]:
        band = "-" if lower is None else f"{lower:.4f} .. {upper:.4f}"
        shown = "-" if value is None else f"{value:.4f}"
        table.add_row(twin, f"{true:.4f}", shown, band)
    console.print(table)


def _interrupt() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGINT)


def _backfill(platform: Platform, fleet, *, minutes: int, step_s: int) -> None:
    now = wall_clock_ms()
    steps = minutes * 60 // step_s
    with _progress() as progress:
        task = progress.add_task("backfilling an hour of history", total=steps)
        for k in range(steps, 0, -1):
            platform.ingest(fleet.tick(now - k * step_s * 1000))
            progress.advance(task)


@app.command()
def replay(data: Path = DATA):
    """Rebuild all twin state from the journal alone (ignores snapshots), then snapshot it."""
    platform = _open(data, Settings())
    try:
        total = platform.stats()["journal_observations"]
        with _progress() as progress:
            task = progress.add_task("replaying the journal", total=total or 1)
            result = platform.rebuild(progress=lambda n: progress.advance(task, n))
        console.print_json(data=result)
    finally:
        platform.close()


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
    "webhooks": "Webhook deliveries/s and latency: one dead endpoint among ten live ones.",
    "replay": "Replay throughput from the journal.",
    "calibrate": "Batched UKF speed (vs FilterPy twin by twin), band coverage and RMSE.",
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


@app.command()
def calibrate(
    type_name: str = typer.Argument(..., metavar="TYPE", help="The twin type to calibrate."),
    twin: list[str] = typer.Option(None, "--twin", help="Only these twins (repeatable)."),
    data: Path = DATA,
):
    """Calibrate a type's twins on their new measurements and print the run record."""
    platform = _open(data, Settings())
    try:
        with console.status(f"calibrating {type_name} ..."):
            record = platform.calibrate(type_name, twin or None)
        console.print_json(data=record)
    except LivetwinError as exc:
        fail(exc)
    finally:
        platform.close()


def _benchmark(name: str):
    """Benchmarks live in the source checkout's benchmarks/ folder."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"bench_{name}.py"
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


def _open(data: Path, settings: Settings) -> Platform:
    started = time.perf_counter()
    try:
        platform = Platform(data, settings=settings)
    except LivetwinError as exc:  # e.g. an unreachable LIVETWIN_DATABASE_URL: no stack trace
        fail(exc)
    info = platform.recovered
    if info["replayed_observations"] or info["snapshot_seq"]:
        console.print(
            f"recovered {platform.engine.twin_count()} twins: snapshot at seq "
            f"{info['snapshot_seq']} + {info['replayed_observations']} observations "
            f"replayed in {time.perf_counter() - started:.2f} s"
        )
    return platform


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


if __name__ == "__main__":
    app()
