"""`livetwin backup` and `livetwin restore`: online copies of a data directory (see
livetwin/backup.py and docs/backup.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from livetwin.cli.common import DATA, console, fail, print_json
from livetwin.errors import LivetwinError
from livetwin.settings import Settings

DATABASE = typer.Option(
    None, "--database-url", help="PostgreSQL URL (default: LIVETWIN_DATABASE_URL; unset: SQLite)."
)


def _copy(action: str, source, target, database_url: str | None) -> dict:
    """Run `livetwin.backup.backup` or `.restore` from `source` to `target` with the
    configured database and S3 endpoint; a LivetwinError exits with its fix."""
    from livetwin import backup as backups
    from livetwin.outbound import OutboundPolicy
    from livetwin.registry.artifacts import S3Config, s3_client

    settings = Settings.from_env(Settings(database_url=database_url))

    def s3(bucket: str):
        config = S3Config.from_env({**(settings.artifacts or {}), "LIVETWIN_S3_BUCKET": bucket})
        return s3_client(config, OutboundPolicy(settings.outbound_allow or ()))

    try:
        return getattr(backups, action)(
            source, target, database_url=settings.database_url or "", s3=s3
        )
    except LivetwinError as exc:
        fail(exc)


def backup(
    to: str = typer.Option(..., "--to", help="A new folder, or s3://bucket/prefix."),
    data: Path = DATA,
    database_url: str = DATABASE,
):
    """Copy a data directory (and its PostgreSQL schemas) while livetwin runs; prints the
    manifest."""
    manifest = _copy("backup", data, to, database_url)
    console.print(f"backed up {len(manifest['files'])} files to {to}")
    print_json(manifest)


def restore(
    source: str = typer.Argument(..., help="A backup folder, or s3://bucket/prefix."),
    data: Path = typer.Option(..., "--data", help="A new or empty data directory."),
    database_url: str = DATABASE,
):
    """Restore a backup into a new data directory (and PostgreSQL database)."""
    manifest = _copy("restore", source, data, database_url)
    console.print(f"restored {len(manifest['files'])} files into {data}")
