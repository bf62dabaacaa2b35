"""`livetwin replay` and `livetwin calibrate`: work on a data directory's twin state."""

from __future__ import annotations

from pathlib import Path

import typer

from livetwin.cli.common import (
    DATA,
    console,
    fail,
    open_platform,
    print_json,
    progress_bar,
    require_data,
)
from livetwin.errors import LivetwinError
from livetwin.platform import Settings


def replay(data: Path = DATA):
    """Rebuild all twin state from the journal alone (ignores snapshots), then snapshot it."""
    require_data(data)
    platform = open_platform(data, Settings())
    try:
        total = platform.stats()["journal_observations"]
        with progress_bar() as progress:
            task = progress.add_task("replaying the journal", total=total or 1)
            result = platform.rebuild(progress=lambda n: progress.advance(task, n))
        print_json(result)
    finally:
        platform.close()


def calibrate(
    type_name: str = typer.Argument(..., metavar="TYPE", help="The twin type to calibrate."),
    twin: list[str] = typer.Option(None, "--twin", help="Only these twins (repeatable)."),
    data: Path = DATA,
):
    """Calibrate a type's twins on their new measurements and print the run record (JSON on
    stdout; status on stderr)."""
    require_data(data)
    platform = open_platform(data, Settings())
    try:
        with console.status(f"calibrating {type_name} ..."):
            record = platform.calibrate(type_name, twin or None)
        print_json(record)
    except LivetwinError as exc:
        fail(exc)
    finally:
        platform.close()
