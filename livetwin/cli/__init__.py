"""The `livetwin` command (typer): serve, demo, replay, calibrate, backtest, bench, token, devices,
grafana-dashboard, types, twins, namespaces, import, export, backup, restore, opcua. Each module
holds a group of commands; this one puts them together."""

from __future__ import annotations

import typer

from livetwin.cli.admin import grafana_dashboard, token_app
from livetwin.cli.backtest import backtest
from livetwin.cli.backup import backup, restore
from livetwin.cli.bench import bench_app
from livetwin.cli.demo import demo
from livetwin.cli.devices import devices_app
from livetwin.cli.files import export, import_file
from livetwin.cli.namespaces import namespaces_app
from livetwin.cli.opcua import opcua_app
from livetwin.cli.serve import serve
from livetwin.cli.state import calibrate, replay
from livetwin.cli.twins import twins_app
from livetwin.cli.types import types_app

app = typer.Typer(
    help="livetwin: living digital twins.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.command()(serve)
app.command()(demo)
app.command()(replay)
app.add_typer(bench_app, name="bench")
app.command()(calibrate)
app.command()(backtest)
app.add_typer(token_app, name="token")
app.add_typer(devices_app, name="devices")
app.command("grafana-dashboard")(grafana_dashboard)
app.add_typer(types_app, name="types")
app.add_typer(twins_app, name="twins")
app.add_typer(namespaces_app, name="namespaces")
app.command("import")(import_file)
app.command()(export)
app.command()(backup)
app.command()(restore)
app.add_typer(opcua_app, name="opcua")

__all__ = ["app"]
