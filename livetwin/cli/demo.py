"""`livetwin demo`: the API over simulated pumps, wearing roller lines and homes with motion
sensors, streaming telemetry into a data directory."""

from __future__ import annotations

import threading
from pathlib import Path

import typer

from livetwin.cli.common import DATA, console, open_platform, progress_bar
from livetwin.cli.serve import PORT, check_port, run_server
from livetwin.errors import Unavailable
from livetwin.platform import Platform, Settings
from livetwin.timefmt import wall_clock_ms


def demo(
    data: Path = DATA,
    host: str = "127.0.0.1",
    port: int = PORT,
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

    check_port(host, port)
    platform = open_platform(data, Settings())
    declare(platform)
    fleet = PumpFleet(pumps)
    if not platform.twins(type="pump", limit=1)["total"]:
        _backfill(platform, fleet, minutes=60, step_s=10)
    rollers = RollerDemo(platform, lines, every_s=calibrate_every)  # calibrated by the scheduler
    rollers.run_until(wall_clock_ms())
    if homes and "home" not in {t["name"] for t in platform.list_types()}:
        with console.status("home fleet: four weeks of motion history, baselines, check ..."):
            run_home_demo(platform, homes=homes, now_ms=wall_clock_ms(), out=console.print)
    schedule_home_jobs(platform)  # nightly retraining, a check every 5 minutes
    stop = threading.Event()

    calibrated = threading.Event()  # set by each finished calibration run (the `run` notice)

    def on_event(event) -> None:
        if getattr(event, "kind", None) == "run" and event.data.get("function") == "calibrate":
            calibrated.set()

    platform.bus.subscribe(on_event)

    def stream() -> None:
        try:
            while not stop.wait(interval):
                now = wall_clock_ms()
                platform.ingest(fleet.tick(now))
                rollers.run_until(now)
                if calibrated.is_set():
                    calibrated.clear()
                    rows = rollers.comparison()
                    if any(lower is not None for _, _, _, lower, _ in rows):  # a run published
                        _show_calibration(rows, coverage)
        except Unavailable:  # Ctrl-C: the server drains ingest and closes; the feed just ends
            return

    threading.Thread(target=stream, name="demo-fleet", daemon=True).start()
    base = f"http://{host}:{port}"
    console.print(
        f"\n[bold green]livetwin demo[/]: {pumps} pumps in {len(fleet.stations)} stations and "
        f"{lines} roller lines stream telemetry into {data}/; the lines' bearing drags wear and "
        f"are calibrated every {calibrate_every:g} s; {homes} homes' activity baselines are "
        "registered models, retrained nightly and checked every 5 minutes.\n"
        f"  dashboard  {base}/\n"
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
        f"  curl '{base}/api/runs?namespace=system&limit=5'   # the scheduled calibrations\n"
        f"  curl {base}/api/runs?limit=5\n"
        f"  curl -X POST {base}/api/ingest -H 'content-type: application/json' \\\n"
        f'       -d \'[{{"twin":"pump-1","type":"pump","values":{{"flow":99}}}}]\'\n',
        soft_wrap=True,
    )
    if duration:
        timer = threading.Timer(duration, _interrupt)
        timer.daemon = True  # Ctrl-C before it fires must not wait for it
        timer.start()
    try:
        run_server(platform, host, port)
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
    with progress_bar() as progress:
        task = progress.add_task("backfilling an hour of history", total=steps)
        for k in range(steps, 0, -1):
            platform.ingest(fleet.tick(now - k * step_s * 1000))
            progress.advance(task)
