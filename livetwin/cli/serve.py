"""`livetwin serve`: the REST API and the web UI over a data directory (or PostgreSQL).

Everything a user can get wrong (port, auth mode, data directory, a port in use) is refused with
one line and a fix before the "serving" banner. SIGTERM (systemd, Kubernetes) stops the server
like Ctrl-C: ingest drained, history flushed, a final snapshot, exit status 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import typer

from livetwin.api.ops import configure_logging
from livetwin.cli.common import DATA, console, fail, open_platform
from livetwin.errors import InvalidInput, LivetwinError, Unavailable
from livetwin.ingest.mqtt import load_mqtt_config, parse_address
from livetwin.platform import Platform, Settings
from livetwin.settings import MqttConnection

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PORT = typer.Option(8000, min=1, max=65535, help="TCP port to listen on (1-65535).")


def check_port(host: str, port: int) -> None:
    """Exit with one clear line when `host:port` cannot be listened on (in use, no such
    address), before anything starts; uvicorn binds it the same way (SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            in_use = exc.errno == errno.EADDRINUSE
            fail(
                Unavailable(
                    f"cannot listen on {host}:{port}: "
                    + ("the port is in use" if in_use else str(exc.strerror or exc)),
                    field="port",
                    fix=f"stop the process that uses port {port}, or choose another --port"
                    if in_use
                    else "check --host (an address of this machine, e.g. 127.0.0.1 or 0.0.0.0)",
                )
            )


def check_auth_mode(mode: str) -> None:
    from livetwin.api.auth import MODES

    if mode not in MODES:
        fail(
            InvalidInput(
                f"unknown auth mode '{mode}'", field="auth", fix=f"use one of: {', '.join(MODES)}"
            )
        )


@dataclasses.dataclass(frozen=True)
class Https:
    """The server's certificate and key (PEM files) for HTTPS."""

    cert: str
    key: str


def check_https(https: Https | None, host: str, mode: str, insecure_http: bool) -> None:
    """Refuse, before anything starts, TLS files that cannot be used, and bearer tokens that
    would cross the network in clear text (plain HTTP on a non-loopback address)."""
    from livetwin.api.auth import LOOPBACK

    if https is not None:
        for name, path in (("tls-cert", https.cert), ("tls-key", https.key)):
            if not os.access(path, os.R_OK):
                fail(
                    InvalidInput(
                        f"the TLS file {path} is missing or unreadable",
                        field=name,
                        fix="give the path of a readable PEM file",
                    )
                )
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                https.cert, https.key
            )
        except ssl.SSLError as exc:
            fail(
                InvalidInput(
                    f"the TLS certificate and key cannot be used: {exc.reason or exc}",
                    field="tls-cert",
                    fix="give a PEM certificate (chain) and its matching private key",
                )
            )
    elif mode != "open" and host not in LOOPBACK and not insecure_http:
        fail(
            InvalidInput(
                f"bearer tokens would cross the network in clear text on http://{host}",
                field="tls-cert",
                fix="give --tls-cert and --tls-key, or --insecure-http when a proxy in front "
                "terminates TLS",
            )
        )


def load_config(path: Path) -> tuple[MqttConnection | None, dict[str, dict], dict[str, dict]]:
    """The sections of a `serve --config` file: the MQTT broker and its subscriptions (`mqtt:`;
    a file with neither section is read as one) and the OPC UA connectors (`opcua:`)."""
    import yaml

    from livetwin.ingest.opcua_spec import config_connectors

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(
            f"cannot read the config file {path}: {exc}", field="config", fix="pass a YAML file"
        ) from None
    has = data.keys() if isinstance(data, dict) else ()
    connection, subscriptions, connectors = None, {}, {}
    if "mqtt" in has or "opcua" not in has:
        connection, subscriptions = load_mqtt_config(path)
    if "opcua" in has:
        connectors = config_connectors(data["opcua"], path.parent)
    return connection, subscriptions, connectors


def run_server(
    platform: Platform,
    host: str,
    port: int,
    banner: str | None = None,
    *,
    https: Https | None = None,
    make_app=None,
    stopped: str = "ingest drained, history flushed, snapshot written",
) -> None:
    """Run the API over `platform` until Ctrl-C or SIGTERM, with the auth mode of its settings
    (open, tokens or oidc; unset: open on localhost, tokens elsewhere; docs/auth.md), over
    HTTPS with `https`. `banner` is printed once the app is ready to start. `make_app(platform)`
    builds the app (default: the single node's, which closes the platform at the end);
    `stopped` says what a stop signal left behind."""
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
    api = make_app(platform) if make_app else create_app(platform, own_platform=True)
    try:
        install_auth(  # after every route is added
            api,
            platform,
            mode,
            host=host,
            jwks_url=settings.jwks_url,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            oidc_client_id=settings.oidc_client_id,
            oidc_scopes=settings.oidc_scopes,
        )
    except LivetwinError as exc:
        platform.close()
        fail(exc)
    if banner:
        console.print(banner)
    if mode == "open":
        console.print(
            f"[bold yellow]WARNING: authentication is off: anyone who can reach {host}:{port} "
            "can read and write every twin (use --auth tokens).[/]"
        )
    with _stop_signals_end_quietly() as stopped_by:
        uvicorn.run(
            api,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=3,  # live streams (SSE) never end by themselves
            ssl_certfile=https.cert if https else None,
            ssl_keyfile=https.key if https else None,
            **server_options(),  # request heads capped at 64 KiB, refusals in JSON
        )
    if stopped_by:
        console.print(f"stopped on {signal.Signals(stopped_by[0]).name}: {stopped}")


@contextlib.contextmanager
def _stop_signals_end_quietly() -> Iterator[list[int]]:
    """uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the
    handler that was there before: make that handler note it (yielded), so the command ends
    with exit status 0 (not KeyboardInterrupt, not death by SIGTERM)."""
    stopped_by: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, lambda sig, _frame: stopped_by.append(sig))
    try:
        yield stopped_by
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(
    data: Path = DATA,
    host: str = "127.0.0.1",
    port: int = PORT,
    max_body_mb: int = typer.Option(32, help="Largest request body accepted, in MiB."),
    auth: str = typer.Option(
        None, "--auth", help="open, tokens or oidc (default: open on localhost, tokens elsewhere)."
    ),
    jwks_url: str = typer.Option(None, "--jwks-url", help="Default: LIVETWIN_JWKS_URL."),
    audience: str = typer.Option(None, "--audience", help="Default: LIVETWIN_JWT_AUDIENCE."),
    issuer: str = typer.Option(None, "--issuer", help="Default: LIVETWIN_JWT_ISSUER."),
    oidc_client_id: str = typer.Option(
        None,
        "--oidc-client-id",
        help="The dashboard's public OIDC client id ('Sign in with OIDC' against --issuer). "
        "Default: LIVETWIN_OIDC_CLIENT_ID.",
    ),
    oidc_scopes: str = typer.Option(
        None,
        "--oidc-scopes",
        help="Scopes the dashboard asks for, space-separated. Default: LIVETWIN_OIDC_SCOPES, "
        "else 'openid'.",
    ),
    mqtt: str = typer.Option(
        None, "--mqtt", help="MQTT broker host:port for ingest subscriptions and commands."
    ),
    mqtt_client_id: str = typer.Option(
        None,
        "--mqtt-client-id",
        help="A fixed MQTT client id: a persistent session, so the broker keeps QoS 1 messages "
        "while livetwin is down. Default: LIVETWIN_MQTT_CLIENT_ID, else a clean session.",
    ),
    mqtt_username: str = typer.Option(
        None,
        "--mqtt-username",
        help="MQTT user name (password: LIVETWIN_MQTT_PASSWORD or the config file's "
        "password_file).",
    ),
    mqtt_share_group: str = typer.Option(
        None,
        "--mqtt-share-group",
        help="Subscribe as a member of this MQTT shared-subscription group ($share/NAME/topic): "
        "servers in one group split each topic's messages. Default: LIVETWIN_MQTT_SHARE_GROUP.",
    ),
    mqtt_tls: bool = typer.Option(False, "--mqtt-tls", help="TLS to the broker (system CAs)."),
    mqtt_tls_ca: Path = typer.Option(None, "--mqtt-tls-ca", help="CA bundle for the broker."),
    mqtt_tls_cert: Path = typer.Option(None, "--mqtt-tls-cert", help="MQTT client certificate."),
    mqtt_tls_key: Path = typer.Option(None, "--mqtt-tls-key", help="MQTT client key."),
    config: Path = typer.Option(
        None,
        "--config",
        help="YAML file with an mqtt: section (broker and subscriptions) and/or an opcua: "
        "section (connectors).",
    ),
    tls_cert: Path = typer.Option(None, "--tls-cert", help="Serve HTTPS with this certificate."),
    tls_key: Path = typer.Option(None, "--tls-key", help="The HTTPS certificate's private key."),
    insecure_http: bool = typer.Option(
        False,
        "--insecure-http",
        help="Allow bearer tokens over plain HTTP on a non-loopback address (behind a proxy "
        "that terminates TLS).",
    ),
    cluster: str = typer.Option(
        None,
        "--cluster",
        help="Cluster mode: serve as a stateless front end of the Ray cluster at auto, "
        "ray://head:10001 or head:6379; the shards run as Ray actors (docs/cluster.md).",
    ),
    shards: int = typer.Option(
        None,
        "--shards",
        min=1,
        help="With --cluster: the shard count of a new cluster (fixed for its life; a running "
        "cluster's count is read from the database).",
    ),
    placement: str = typer.Option(
        None,
        "--placement",
        help="With --cluster: how a new cluster places twins on shards: twin (by id, the "
        "default) or root (by the id's first segment: a tree of twins such as home-1, "
        "home-1/kitchen stays on one shard, so parents aggregate their children). Fixed for "
        "the cluster's life.",
    ),
    database: str = typer.Option(
        None,
        "--database",
        help="PostgreSQL URL (postgresql://user@host:5432/db). Default: LIVETWIN_DATABASE_URL.",
    ),
    cluster_name: str = typer.Option(
        "livetwin",
        "--cluster-name",
        help="With --cluster: the cluster's name in the database (its schemas start with it).",
    ),
):
    """Run the REST API (and the web UI) on the embedded store (or LIVETWIN_DATABASE_URL)."""
    options = Settings(
        database_url=database,
        max_body_bytes=max_body_mb * 1024 * 1024,
        auth=auth,
        jwks_url=jwks_url,
        jwt_audience=audience,
        jwt_issuer=issuer,
        oidc_client_id=oidc_client_id,
        oidc_scopes=oidc_scopes,
    )
    if (tls_cert is None) != (tls_key is None):
        fail(
            InvalidInput(
                "HTTPS needs both a certificate and its key",
                field="tls-key" if tls_key is None else "tls-cert",
                fix="give --tls-cert and --tls-key together",
            )
        )
    https = Https(str(tls_cert), str(tls_key)) if tls_cert else None
    subscriptions: dict = {}
    connectors: dict = {}
    connection: MqttConnection | None = None
    try:
        if config is not None:
            connection, subscriptions, connectors = load_config(config)
        if mqtt:
            host_port = parse_address(mqtt)
            connection = dataclasses.replace(
                connection or MqttConnection(*host_port), host=host_port[0], port=host_port[1]
            )
        flags = {
            "client_id": mqtt_client_id,
            "username": mqtt_username,
            "share_group": mqtt_share_group,
            "tls": mqtt_tls or None,
            "tls_ca": mqtt_tls_ca and str(mqtt_tls_ca),
            "tls_cert": mqtt_tls_cert and str(mqtt_tls_cert),
            "tls_key": mqtt_tls_key and str(mqtt_tls_key),
        }
        given = {k: v for k, v in flags.items() if v is not None}
        if given and connection is None:
            raise InvalidInput(
                f"--mqtt-{next(iter(given)).replace('_', '-')} needs a broker",
                field="mqtt",
                fix="give --mqtt host:port (or a --config file with an mqtt: section)",
            )
        if connection is not None:
            options.mqtt = dataclasses.replace(connection, **given)
        settings = Settings.from_env(options)  # options given on the command line win
        if settings.mqtt is not None:
            settings.mqtt.check()
        configure_logging(log_format=settings.log_format)
    except LivetwinError as exc:
        fail(exc)
    if settings.auth:
        check_auth_mode(settings.auth)
    from livetwin.api.auth import default_mode

    check_https(https, host, settings.auth or default_mode(host), insecure_http)
    check_port(host, port)
    if cluster is not None or shards is not None or placement is not None:
        frontend = cluster_frontend(
            cluster, shards, placement, cluster_name, data, settings, subscriptions, connectors
        )
        banner = f"livetwin cluster front end at [bold]{'https' if https else 'http'}://"
        banner += f"{host}:{port}[/] (API docs: /docs; shards: GET /api/cluster)"
        from livetwin.api.cluster import create_cluster_app

        run_server(
            frontend,
            host,
            port,
            banner,
            https=https,
            make_app=create_cluster_app,
            stopped="the shards keep running in the Ray cluster",
        )
        return
    platform = open_platform(data, settings)
    try:
        for name, body in subscriptions.items():
            platform.mqtt.put_subscription(name, body)
        for name, body in connectors.items():  # each tried once: a refusal stops the start
            platform.opcua.put_connector(name, body)
    except LivetwinError as exc:
        platform.close()
        fail(exc)
    scheme = "https" if https else "http"
    banner = f"livetwin serving {data} at [bold]{scheme}://{host}:{port}[/] (API docs: /docs)"
    run_server(platform, host, port, banner, https=https)


def cluster_frontend(
    cluster: str | None,
    shards: int | None,
    placement: str | None,
    name: str,
    data: Path,
    settings: Settings,
    subscriptions: dict[str, dict],
    connectors: dict[str, dict],
):
    """Open a cluster front end for `serve`, with MQTT ingest when a broker is configured
    (every refusal before anything serves)."""
    from livetwin.cluster.connect import open_frontend

    try:
        if cluster is None:
            option = "--shards" if shards is not None else "--placement"
            raise InvalidInput(
                f"{option} needs --cluster",
                field=option.lstrip("-"),
                fix="add --cluster auto (or an address)",
            )
        if connectors:
            raise InvalidInput(
                "a cluster's OPC UA connectors are declared through the API, not --config",
                field="config",
                fix="leave the opcua: section out of --config and PUT each connector to "
                "/api/opcua/connectors/{name} on the leading front end (docs/cluster.md)",
            )
        console.print(f"starting a cluster front end on the Ray cluster at {cluster} ...")
        frontend = open_frontend(
            cluster,
            settings.database_url,
            shards=shards,
            name=name,
            placement=placement,
            settings=settings,
            data_dir=str(data),
        )
        try:
            if settings.mqtt is not None:
                frontend.start_mqtt(settings.mqtt)
                for sub_name, body in subscriptions.items():
                    frontend.mqtt.put_subscription(sub_name, body)
        except BaseException:
            frontend.close()
            raise
        return frontend
    except LivetwinError as exc:
        fail(exc)
