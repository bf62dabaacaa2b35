"""Admin commands: `livetwin token create|list|revoke` and `livetwin grafana-dashboard TYPE`."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path

import typer

from livetwin.cli.common import DATA, console, fail, print_records
from livetwin.errors import LivetwinError
from livetwin.settings import Settings

token_app = typer.Typer(
    help="API tokens (scopes read, write, admin per namespace; see docs/auth.md).",
    no_args_is_help=True,
)


def _store(data: Path):
    """The tokens of `data` (or of the configured PostgreSQL): a running server sees changes."""
    from livetwin.auth import TokenStore

    return TokenStore.in_directory(data, database_url=Settings.from_env().database_url)


@token_app.command("create")
def token_create(
    name: str = typer.Option(..., "--name", help="Who or what uses it, e.g. ci."),
    scope: str = typer.Option("read", "--scope", help="read, write or admin."),
    namespace: str = typer.Option("*", "--namespace", help="A namespace, or '*' for all."),
    expires: str = typer.Option(None, "--expires", help="Lifetime, e.g. 90d (default: never)."),
    data: Path = DATA,
):
    """Create a token and print it (the only time it is shown)."""
    try:
        with _store(data) as store:
            created = store.create(name=name, scope=scope, namespace=namespace, expires=expires)
    except LivetwinError as exc:
        fail(exc)
    console.print(
        f"token {created['id']} ({created['scope']} on {created['namespace']}"
        + (f", expires {created['expires']}" if created["expires"] else "")
        + "); store it now, it is not shown again:"
    )
    typer.echo(created["token"])


@token_app.command("list")
def token_list(
    data: Path = DATA,
    json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """List tokens (never their secrets)."""
    try:
        with _store(data) as store:
            tokens = store.list()
    except LivetwinError as exc:
        fail(exc)
    print_records(
        tokens,
        ("id", "name", "scope", "namespace", "created", "expires", "revoked"),
        as_json=json,
    )


@token_app.command("revoke")
def token_revoke(token_id: str = typer.Argument(..., metavar="ID"), data: Path = DATA):
    """Revoke a token from now on (a running server refuses it at once). ID is the id that
    `token list` shows, or its start when no other token's id starts the same."""
    try:
        with _store(data) as store:
            revoked = store.revoke(_full_id(store, token_id))
    except LivetwinError as exc:
        fail(exc)
    console.print(f"token {revoked['id']} ({revoked['name']}) revoked at {revoked['revoked']}")


def _full_id(store, token_id: str) -> str:
    """The id of the one token whose id starts with `token_id` (else `token_id` itself)."""
    prefix = token_id.strip().rstrip("…")
    matches = [t["id"] for t in store.list() if prefix and t["id"].startswith(prefix)]
    if len(matches) > 1:
        raise LivetwinError(
            f"'{token_id}' starts {len(matches)} token ids: {', '.join(matches)}",
            field="id",
            fix="give more of the id (see `livetwin token list`)",
        )
    return matches[0] if matches else token_id


def grafana_dashboard(
    type_name: str = typer.Argument(..., metavar="TYPE", help="The twin type."),
    datasource_uid: str = typer.Option(
        None, "--datasource-uid", help="UID of Grafana's PostgreSQL data source (default: ask)."
    ),
    output: Path = typer.Option(None, "-o", "--output", help="Write here (default: stdout)."),
    url: str = typer.Option(
        None, "--url", help="Read the type from a running server, e.g. http://127.0.0.1:8000."
    ),
    token: str = typer.Option(
        None, "--token", envvar="LIVETWIN_TOKEN", help="Bearer token for --url."
    ),
    data: Path = DATA,
):
    """Write a Grafana dashboard (JSON) for a twin type: parameters and predictions with their
    bands, measurements, and alarms, over PostgreSQL (see docs/grafana.md)."""
    from livetwin.api.grafana import dashboard

    try:
        type_info = _type_from_server(url, type_name, token) if url else _type_from(data, type_name)
        body = jsonlib.dumps(dashboard(type_info, datasource_uid=datasource_uid), indent=2)
    except LivetwinError as exc:
        fail(exc)
    if output is None:
        typer.echo(body)
    else:
        output.write_text(body + "\n")
        console.print(f"wrote {output} (import it in Grafana: Dashboards > New > Import)")


def _type_from(data: Path, type_name: str) -> dict:
    from livetwin.platform import Platform

    with Platform(data, settings=Settings(run_schedules=False)) as platform:
        return platform.get_type(type_name)


def _type_from_server(url: str, type_name: str, token: str | None) -> dict:
    import httpx

    from livetwin.errors import Unavailable

    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(
            f"{url.rstrip('/')}/api/types/{type_name}", headers=headers, timeout=10
        )
    except httpx.HTTPError as exc:
        raise Unavailable(
            f"cannot reach {url}: {exc}", field="url", fix="check the server's address"
        ) from None
    if response.status_code != 200:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            error = {"message": response.text[:200], "fix": None}
        failure = LivetwinError(
            f"{url} answered {response.status_code}: {error.get('message')}", fix=error.get("fix")
        )
        raise failure
    return response.json()
