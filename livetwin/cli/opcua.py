"""`livetwin opcua list|put|delete`: the OPC UA connectors of a data directory (or, with --url,
of a running server). See docs/opcua.md."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from livetwin.cli.common import DATA, fail, open_platform, print_json, require_data
from livetwin.cli.files import TOKEN, URL
from livetwin.errors import InvalidInput, LivetwinError
from livetwin.platform import Settings

opcua_app = typer.Typer(
    help="OPC UA connectors: list, create or replace, delete.", no_args_is_help=True
)


@opcua_app.command("list")
def list_connectors(data: Path = DATA, url: str = URL, token: str = TOKEN):
    """Every connector with its status (JSON).

    With --data the status is that of a fresh start; with --url, the running server's."""
    print_json(_run(data, url, token, lambda c: c.request("GET", "/api/opcua"), _listed))


@opcua_app.command("put")
def put_connector(
    name: str = typer.Argument(..., metavar="NAME", help="The connector's name."),
    file: Path = typer.Argument(
        ..., metavar="FILE", help="The connector spec (YAML or JSON; see docs/opcua.md)."
    ),
    data: Path = DATA,
    url: str = URL,
    token: str = TOKEN,
):
    """Create or replace a connector from a spec file (tried at once).

    A server that refuses its security policy, credentials or nodes changes nothing: the
    error names the fix."""
    body = _spec(file)
    print_json(
        _run(
            data,
            url,
            token,
            lambda c: c.request("PUT", f"/api/opcua/connectors/{name}", json=body),
            lambda p: p.opcua.put_connector(name, body),
        )
    )


@opcua_app.command("delete")
def delete_connector(
    name: str = typer.Argument(..., metavar="NAME", help="The connector's name."),
    data: Path = DATA,
    url: str = URL,
    token: str = TOKEN,
):
    """Stop and forget a connector."""
    _run(
        data,
        url,
        token,
        lambda c: c.request("DELETE", f"/api/opcua/connectors/{name}"),
        lambda p: p.opcua.delete_connector(name),
    )
    print_json({"deleted": name})


def _listed(platform) -> dict:
    from livetwin.ingest.opcua import asyncua_available

    return {"available": asyncua_available(), "connectors": platform.opcua.connectors()}


def _run(data: Path, url: str | None, token: str | None, remote: Callable, local: Callable) -> Any:
    """`remote(client)` against the server at `url`, else `local(platform)` on `data`."""
    try:
        if url:
            from livetwin.client import Client

            with Client(url, token=token) as client:
                return remote(client)
        require_data(data)
        platform = open_platform(data, Settings(run_schedules=False, webhooks=False))
        try:
            return local(platform)
        finally:
            platform.close()
    except LivetwinError as exc:
        fail(exc)


def _spec(file: Path) -> dict:
    """A connector spec file, its `password_file` (relative to it) read into `password`."""
    from livetwin.ingest.opcua_spec import with_password_file
    from livetwin.spec.safe_yaml import load_yaml

    try:
        body = load_yaml(file.read_bytes(), what=f"connector file {file}")
    except OSError as exc:
        fail(
            InvalidInput(
                f"cannot read {file}: {exc.strerror or exc}",
                field="file",
                fix="pass a connector spec file that exists",
            )
        )
    except LivetwinError as exc:
        fail(exc)
    if not isinstance(body, dict):
        fail(
            InvalidInput(
                f"{file} holds no connector object",
                field="file",
                fix="write the spec as a mapping: endpoint, type, nodes or browse",
            )
        )
    try:
        return with_password_file(body, file.parent, "file")
    except LivetwinError as exc:
        fail(exc)
