"""What the `livetwin` commands share: the consoles, the --data option, opening a platform, and
reporting a user error without a stack trace.

Results (JSON, tables, tokens) go to stdout; status lines, progress and errors go to stderr,
so `livetwin calibrate pump | jq` reads only JSON.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from livetwin.errors import LivetwinError
from livetwin.platform import Platform, Settings

console = Console(stderr=True)  # status, progress, errors
results = Console()  # what a command answers (tables)

DATA = typer.Option(Path("livetwin-data"), "--data", help="Data directory (embedded store).")
STORE_FILE = "livetwin.db"  # what makes a directory a livetwin data directory (SQLite store)


def fail(exc: LivetwinError) -> NoReturn:
    """Print a user error's message and fix, and exit with status 2 (no stack trace)."""
    console.print(
        f"[red]{exc.message}[/]" + (f"\n  fix: {exc.fix}" if exc.fix else ""), soft_wrap=True
    )
    raise typer.Exit(2)


def print_json(data) -> None:
    """A command's JSON answer, alone on stdout."""
    typer.echo(json.dumps(data, indent=2, default=str))


def print_records(records: list[dict], columns: tuple[str, ...], *, as_json: bool) -> None:
    """A list command's answer: JSON, or a table of `columns` whose first column (the id that
    other commands take) is never cut."""
    if as_json:
        print_json(records)
        return
    table = Table(*columns)
    table.columns[0].no_wrap = True
    table.columns[0].min_width = max((len(r[columns[0]]) for r in records), default=2)
    for record in records:
        table.add_row(*(str(record[c]) if record[c] is not None else "-" for c in columns))
    results.print(table)


def require_data(data: Path) -> None:
    """Refuse a --data that holds no livetwin data (commands that work on existing state);
    with PostgreSQL configured the state is in the database, so any directory will do."""
    if Settings.from_env().database_url or (data / STORE_FILE).is_file():
        return
    fail(
        LivetwinError(
            f"no livetwin data directory at {data}",
            field="data",
            fix="pass --data with the directory `livetwin serve` uses (it holds livetwin.db)",
        )
    )


def open_platform(data: Path, settings: Settings) -> Platform:
    """The platform on `data`, saying what it recovered; a LivetwinError exits with its fix."""
    started = time.perf_counter()
    try:
        platform = Platform(data, settings=settings)
    except LivetwinError as exc:  # e.g. an unreachable LIVETWIN_DATABASE_URL: no stack trace
        fail(exc)
    except OSError as exc:  # e.g. --data under /proc or under a file
        fail(
            LivetwinError(
                f"cannot use {data} as a data directory: {exc.strerror or exc}"
                + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(data) else ""),
                field="data",
                fix="pass --data with a directory you can write (it is created if missing)",
            )
        )
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
