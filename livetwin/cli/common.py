"""What the `livetwin` commands share: the console, the --data option, opening a platform, and
reporting a user error without a stack trace."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from livetwin.errors import LivetwinError
from livetwin.platform import Platform, Settings

console = Console()

DATA = typer.Option(Path("livetwin-data"), "--data", help="Data directory (embedded store).")


def fail(exc: LivetwinError) -> None:
    """Print a user error's message and fix, and exit with status 2 (no stack trace)."""
    console.print(f"[red]{exc.message}[/]" + (f"\n  fix: {exc.fix}" if exc.fix else ""))
    raise typer.Exit(2)


def open_platform(data: Path, settings: Settings) -> Platform:
    """The platform on `data`, saying what it recovered; a LivetwinError exits with its fix."""
    started = time.perf_counter()
    try:
        platform = Platform(data, settings=settings)
    except LivetwinError as exc:  # e.g. an unreachable LIVETWIN_DATABASE_URL: no stack trace
        fail(exc)
    info = platform.recovered
    if info["replayed_observations"] or info["snapshot_seq"]:
        console.print(
            f"recovered {platform.query.twin_count()} twins: snapshot at seq "
            f"{info['snapshot_seq']} + {info['replayed_observations']} observations "
            f"replayed in {time.perf_counter() - started:.2f} s"
        )
    return platform


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
