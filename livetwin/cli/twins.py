"""`livetwin twins create|update|delete` and the shared way CLI lifecycle commands run: on a
data directory, printing the answer as JSON (docs/twins.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from livetwin.cli.common import DATA, fail, open_platform, print_json, require_data
from livetwin.cli.files import TOKEN, URL
from livetwin.errors import InvalidInput, LivetwinError
from livetwin.platform import Settings

twins_app = typer.Typer(
    help="Twins: create before first telemetry, set attributes and parent, delete.",
    no_args_is_help=True,
)
ATTR = typer.Option(None, "--attr", help="A text attribute as NAME=VALUE (repeatable).")
PARENT = typer.Option(None, "--parent", help="The parent twin's id.")


def on_platform(data: Path, url: str | None, token: str | None, action: Callable[[Any], dict]):
    """Run `action` on the platform of `data`, or on the server at `url` (a `Client`: the same
    methods), and print its answer (JSON on stdout); a LivetwinError exits with its fix."""
    if url:
        from livetwin.client import Client

        target: Any = Client(url, token=token)
    else:
        require_data(data)
        target = open_platform(data, Settings(run_schedules=False))
    try:
        print_json(action(target))
    except LivetwinError as exc:
        fail(exc)
    finally:
        target.close()


def parse_attributes(pairs: list[str] | None) -> dict | None:
    """`--attr serial=A-17 --attr mode=auto` as {"serial": "A-17", "mode": "auto"}."""
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(
                InvalidInput(
                    f"--attr {pair!r} is not NAME=VALUE",
                    field="attr",
                    fix="write e.g. --attr serial=A-17",
                )
            )
        out[name] = value
    return out


@twins_app.command("create")
def create(
    twin: str = typer.Argument(..., metavar="ID"),
    type_name: str = typer.Option(..., "--type", help="The twin's type."),
    attr: list[str] = ATTR,
    parent: str = PARENT,
    data: Path = DATA,
    url: str = URL,
    token: str = TOKEN,
):
    """Create a twin before its first telemetry (an error if it exists)."""
    attributes = parse_attributes(attr)

    def action(p):
        return p.create_twin(twin, type_name, attributes=attributes, parent=parent)

    on_platform(data, url, token, action)


@twins_app.command("update")
def update(
    twin: str = typer.Argument(..., metavar="ID"),
    attr: list[str] = ATTR,
    parent: str = PARENT,
    data: Path = DATA,
    url: str = URL,
    token: str = TOKEN,
):
    """Set a twin's text attributes and/or its parent."""
    attributes = parse_attributes(attr)
    on_platform(
        data, url, token, lambda p: p.update_twin(twin, attributes=attributes, parent=parent)
    )


@twins_app.command("delete")
def delete(
    twin: str = typer.Argument(..., metavar="ID"),
    purge: bool = typer.Option(False, "--purge", help="Also delete its stored history."),
    data: Path = DATA,
    url: str = URL,
    token: str = TOKEN,
):
    """Delete a twin (journaled); its history is kept unless --purge."""
    on_platform(data, url, token, lambda p: p.delete_twin(twin, purge=purge))
