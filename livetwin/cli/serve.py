"""`livetwin serve`: the REST API and the web UI over a data directory (or PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import typer

from livetwin.api.ops import configure_logging
from livetwin.cli.common import DATA, console, fail, open_platform
from livetwin.errors import LivetwinError
from livetwin.ingest.mqtt import load_mqtt_config, parse_address
from livetwin.platform import Platform, Settings


def run_server(platform: Platform, host: str, port: int) -> None:
    """Run the API over `platform` until Ctrl-C, with the auth mode of its settings (open,
    tokens or oidc; unset: open on localhost, tokens elsewhere; docs/auth.md)."""
    import gc
    import sys

    import uvicorn

    # Threads parsing big ingest batches hold the GIL for the default 5 ms at a time; a shorter
    # switch interval keeps small reads (GET a twin) fast while ingest runs at full speed.
    sys.setswitchinterval(0.0005)
    # Ingest allocates many short-lived acyclic objects; collect cycles less often, and never
    # scan the long-lived state loaded at start.
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)

    from livetwin.api.app import create_app
    from livetwin.api.auth import default_mode, install_auth
    from livetwin.api.server import server_options

    settings = platform.settings
    mode = settings.auth or default_mode(host)
    api = create_app(platform, own_platform=True)
    try:
        install_auth(  # after every route is added
            api,
            platform,
            mode,
            host=host,
            jwks_url=settings.jwks_url,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
    except LivetwinError as exc:
        platform.close()
        fail(exc)
    if mode == "open":
        console.print(
            f"[bold yellow]WARNING: authentication is off: anyone who can reach {host}:{port} "
            "can read and write every twin (use --auth tokens).[/]"
        )
    uvicorn.run(
        api,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=3,  # live streams (SSE) never end by themselves
        **server_options(),  # request heads capped at 64 KiB, refusals in JSON
    )


def serve(
    data: Path = DATA,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_body_mb: int = typer.Option(32, help="Largest request body accepted, in MiB."),
    auth: str = typer.Option(
        None, "--auth", help="open, tokens or oidc (default: open on localhost, tokens elsewhere)."
    ),
    jwks_url: str = typer.Option(None, "--jwks-url", help="Default: LIVETWIN_JWKS_URL."),
    audience: str = typer.Option(None, "--audience", help="Default: LIVETWIN_JWT_AUDIENCE."),
    issuer: str = typer.Option(None, "--issuer", help="Default: LIVETWIN_JWT_ISSUER."),
    mqtt: str = typer.Option(
        None, "--mqtt", help="MQTT broker host:port for ingest subscriptions and commands."
    ),
    config: Path = typer.Option(
        None, "--config", help="YAML file with an mqtt: section (broker and subscriptions)."
    ),
):
    """Run the REST API (and the web UI) on the embedded store (or LIVETWIN_DATABASE_URL)."""
    options = Settings(
        max_body_bytes=max_body_mb * 1024 * 1024,
        auth=auth,
        jwks_url=jwks_url,
        jwt_audience=audience,
        jwt_issuer=issuer,
    )
    settings = Settings.from_env(options)  # options given on the command line win
    subscriptions: dict = {}
    try:
        configure_logging(log_format=settings.log_format)
        if config is not None:
            settings.mqtt_host, settings.mqtt_port, subscriptions = load_mqtt_config(config)
        if mqtt:
            settings.mqtt_host, settings.mqtt_port = parse_address(mqtt)
    except LivetwinError as exc:
        fail(exc)
    platform = open_platform(data, settings)
    for name, body in subscriptions.items():
        try:
            platform.mqtt.put_subscription(name, body)
        except LivetwinError as exc:
            platform.close()
            fail(exc)
    console.print(f"livetwin serving {data} at [bold]http://{host}:{port}[/] (API docs: /docs)")
    run_server(platform, host, port)
