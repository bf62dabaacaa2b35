"""`livetwin namespaces export|delete`: a namespace (a tenant) as a whole, on a data directory
or a running server (docs/tenants.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from livetwin.cli.common import DATA
from livetwin.cli.files import TOKEN, URL
from livetwin.cli.twins import on_platform

namespaces_app = typer.Typer(
    help="Namespaces (tenants): export everything one owns, delete it.", no_args_is_help=True
)
NAMESPACE = typer.Argument(..., metavar="NAMESPACE")


@namespaces_app.command("export")
def export_namespace(
    namespace: str = NAMESPACE, data: Path = DATA, url: str = URL, token: str = TOKEN
):
    """Print everything the namespace owns as one JSON document (a backup or hand-over)."""
    on_platform(data, url, token, lambda p: p.export_namespace(namespace))


@namespaces_app.command("delete")
def delete_namespace(
    namespace: str = NAMESPACE,
    confirm: str = typer.Option(None, "--confirm", help="The namespace's name again."),
    purge: bool = typer.Option(False, "--purge", help="Also delete its twins' history."),
    data: Path = DATA,
    url: str = URL,
    token: str = TOKEN,
):
    """Delete what the namespace owns (models are archived, never deleted). Export it first."""
    on_platform(
        data, url, token, lambda p: p.delete_namespace(namespace, confirm=confirm, purge=purge)
    )
