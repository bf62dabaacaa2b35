"""`livetwin import` and `livetwin export`: files in and out of a data directory (or, with
--url, of a running server)."""

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

URL = typer.Option(None, "--url", help="A running server (http://host:8000) instead of --data.")
TOKEN = typer.Option(None, "--token", envvar="LIVETWIN_TOKEN", help="Its API token.")


def import_file(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="CSV, JSONL, XLSX or Parquet."
    ),
    mapping: str = typer.Option(
        ..., "--mapping", "-m", help="A mapping file (YAML/JSON) or a stored mapping's name."
    ),
    data: Path = DATA,
    url: str = URL,
    token: str = TOKEN,
):
    """Import a file through ingest under a mapping; prints the report (accepted, duplicates,
    rejected rows with reasons). Importing the same file again stores nothing twice."""
    spec = _mapping(mapping)
    try:
        if url:
            from livetwin.client import Client

            with Client(url, token=token) as client, console.status(f"importing {file} ..."):
                report = client.import_file(file, spec)
        else:
            require_data(data)
            platform = open_platform(data, Settings(run_schedules=False, webhooks=False))
            try:
                with progress_bar() as bar:
                    task = bar.add_task(f"importing {file.name}", total=100)
                    report = platform.import_file(
                        file,
                        spec,
                        progress=lambda f, rows: bar.update(task, completed=round(f * 100)),
                    )
            finally:
                platform.close()
    except LivetwinError as exc:
        fail(exc)
    print_json(report)
    if report["rejected_total"] and not report["accepted"] and not report["duplicates"]:
        raise typer.Exit(1)


def export(
    type_name: str = typer.Argument(..., metavar="TYPE", help="The twin type to export."),
    out: Path = typer.Option(..., "--output", "-o", help="The Parquet file to write."),
    start: str = typer.Option(None, "--from", help="ISO 8601 or epoch ms (default: the start)."),
    end: str = typer.Option(None, "--to", help="ISO 8601 or epoch ms, exclusive (default: now)."),
    names: str = typer.Option(None, "--names", help="Comma-separated names (default: all)."),
    data: Path = DATA,
    url: str = URL,
    token: str = TOKEN,
):
    """Write a type's history within [--from, --to) as Parquet (twin, ts, one column per name)."""
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
    try:
        if url:
            from livetwin.client import Client

            with Client(url, token=token) as client:
                written = client.export(type_name, out, start=start, end=end, names=wanted)
        else:
            require_data(data)
            platform = open_platform(data, Settings(run_schedules=False, webhooks=False))
            try:
                written = platform.export(type_name, out, start=start, end=end, names=wanted)
            finally:
                platform.close()
    except LivetwinError as exc:
        fail(exc)
    print_json({**written, "file": str(out)})


def _mapping(text: str) -> str | dict:
    """A mapping file's content, or the name of a stored mapping."""
    path = Path(text)
    if not path.is_file():
        if path.suffix.lower() in (".yaml", ".yml", ".json"):
            fail(LivetwinError(f"no mapping file {text}", field="mapping", fix="check the path"))
        return text
    from livetwin.spec.safe_yaml import load_yaml

    try:
        body = load_yaml(path.read_bytes())
    except LivetwinError as exc:
        fail(exc)
    if not isinstance(body, dict):
        fail(
            LivetwinError(
                f"{text} holds no mapping object", field="mapping", fix="see docs/import.md"
            )
        )
    return body
