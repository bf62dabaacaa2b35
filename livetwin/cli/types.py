"""`livetwin types import FILE`: declare the types a DTDL or AAS file describes."""

from __future__ import annotations

from pathlib import Path

import typer

from livetwin.api.body import parse_body
from livetwin.cli.common import DATA, console, fail, open_platform, print_json
from livetwin.cli.files import TOKEN, URL
from livetwin.cli.twins import on_platform
from livetwin.errors import LivetwinError
from livetwin.interop.importer import declare, is_package, parse_models
from livetwin.platform import Settings

types_app = typer.Typer(
    help="Twin types: import DTDL and AAS models, delete types.", no_args_is_help=True
)


@types_app.command("delete")
def delete_type(
    name: str = typer.Argument(..., metavar="NAME"),
    cascade: bool = typer.Option(False, "--cascade", help="Also delete the type's twins."),
    purge: bool = typer.Option(False, "--purge", help="With --cascade: their history too."),
    data: Path = DATA,
    url: str = URL,
    token: str = TOKEN,
):
    """Delete a type (refused while it has twins, unless --cascade)."""
    on_platform(data, url, token, lambda p: p.delete_type(name, cascade=cascade, purge=purge))


@types_app.command("import")
def import_types(
    file: Path = typer.Argument(
        ..., metavar="FILE", help="A DTDL document (.json), an AAS environment (.json) or .aasx."
    ),
    format: str = typer.Option(None, "--format", help="dtdl or aas (default: read from FILE)."),
    collections: str = typer.Option(
        "flatten", "--collections", help="AAS collections: flatten (Motor_Speed) or children."
    ),
    prefix: str = typer.Option("", "--prefix", help="Put this before every new type's name."),
    data: Path = DATA,
):
    """Declare the types FILE describes (all or none) and print what was imported and what was
    skipped (JSON on stdout). A type imported before from the same model gets a new version."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        fail(
            LivetwinError(
                f"cannot read {file}: {exc.strerror or exc}",
                field="file",
                fix="pass a DTDL or AAS file that exists",
            )
        )
    platform = open_platform(data, Settings(run_schedules=False))
    try:
        document = raw if is_package(raw) else parse_body(raw, "application/json")
        parsed = parse_models(document, format=format, collections=collections)
        result = declare(parsed, platform.query.compiled_types(), platform.put_type, prefix=prefix)
    except LivetwinError as exc:
        fail(exc)
    finally:
        platform.close()
    for skipped in result["skipped"]:
        console.print(f"skipped {skipped['path']}: {skipped['reason']}", soft_wrap=True)
    print_json(result)
