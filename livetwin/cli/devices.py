"""`livetwin devices create|list|revoke|export-mosquitto`: device credentials and the Mosquitto
password file and ACL made from them (docs/devices.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from livetwin.cli.common import DATA, console, fail, print_records
from livetwin.errors import InvalidInput, LivetwinError
from livetwin.settings import Settings

devices_app = typer.Typer(
    help="Device credentials: each may send observations of its own twins only "
    "(HTTP and MQTT; see docs/devices.md).",
    no_args_is_help=True,
)


def _store(data: Path):
    """The devices of `data` (or of the configured PostgreSQL): a running server sees changes."""
    from livetwin.auth.devices import DeviceStore

    return DeviceStore.in_directory(data, database_url=Settings.from_env().database_url)


@devices_app.command("create")
def devices_create(
    twins: str = typer.Option(
        ...,
        "--twins",
        help="A twin id or pattern: '*' any characters but '/', '**' any, '?' one; "
        "e.g. plant-a/pump-7 or 'plant-a/line-1/**'.",
    ),
    name: str = typer.Option(..., "--name", help="What the device is, e.g. 'pump-7 gateway'."),
    data: Path = DATA,
):
    """Issue a device credential and print it (the only time it is shown)."""
    try:
        with _store(data) as store:
            created = store.create(name=name, twins=twins)
    except LivetwinError as exc:
        fail(exc)
    console.print(
        f"device {created['id']} ({created['name']}: twins {created['twins']}); MQTT user name "
        f"{created['mqtt_username']}, topics {created['mqtt_topic']}...; store the credential "
        "now, it is not shown again:"
    )
    typer.echo(created["credential"])


@devices_app.command("list")
def devices_list(
    data: Path = DATA,
    json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """List devices (never their credentials)."""
    try:
        with _store(data) as store:
            devices = store.list()
    except LivetwinError as exc:
        fail(exc)
    print_records(devices, ("id", "name", "twins", "namespace", "created", "revoked"), as_json=json)


@devices_app.command("revoke")
def devices_revoke(device_id: str = typer.Argument(..., metavar="ID"), data: Path = DATA):
    """Revoke a device: HTTP refuses it at once, the MQTT bridge within seconds; run
    export-mosquitto again (and reload the broker) to lock it out of the broker too."""
    try:
        with _store(data) as store:
            revoked = store.revoke(device_id.strip())
    except LivetwinError as exc:
        fail(exc)
    console.print(
        f"device {revoked['id']} ({revoked['name']}) revoked at {revoked['revoked']}; "
        "for MQTT run `livetwin devices export-mosquitto` again and reload the broker"
    )


@devices_app.command("export-mosquitto")
def devices_export_mosquitto(
    passwords: Path = typer.Option(
        ..., "--passwords", help="Write Mosquitto's password_file here."
    ),
    acl: Path = typer.Option(..., "--acl", help="Write Mosquitto's acl_file here."),
    bridge_user: str = typer.Option(
        None, "--bridge-user", help="livetwin's own broker user (reads and writes every topic)."
    ),
    bridge_password_file: Path = typer.Option(
        None, "--bridge-password-file", help="A file holding --bridge-user's password."
    ),
    data: Path = DATA,
):
    """Write a password file (mosquitto_passwd's $7$ PBKDF2-SHA512 lines, user name = device id)
    and an ACL giving each device devices/<id>/# only; revoked devices are left out. Reload the
    broker afterwards (kill -HUP its pid, or restart it)."""
    try:
        password = None
        if bridge_password_file is not None:
            if bridge_user is None:
                raise InvalidInput(
                    "--bridge-password-file needs --bridge-user",
                    field="bridge_user",
                    fix="give --bridge-user livetwin (the user livetwin serve connects as)",
                )
            try:
                password = bridge_password_file.read_text().strip()
            except OSError as exc:
                raise InvalidInput(
                    f"cannot read {bridge_password_file}: {exc.strerror}",
                    field="bridge_password_file",
                    fix="give a readable file holding the password",
                ) from None
        with _store(data) as store:
            count = store.export_mosquitto(
                passwords, acl, bridge_user=bridge_user, bridge_password=password
            )
    except LivetwinError as exc:
        fail(exc)
    console.print(
        f"wrote {passwords} and {acl}: {count} device(s)"
        + (f" and the bridge user {bridge_user}" if bridge_user else "")
        + "; reload Mosquitto to apply them"
    )
