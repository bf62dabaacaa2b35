"""The one place that chooses the storage backend: SQLite by default, PostgreSQL when configured.

`LIVETWIN_DATABASE_URL=postgresql://user@host:5432/db` (or `database_url=`) selects PostgreSQL.
"""

from __future__ import annotations

import os
from pathlib import Path

from livetwin.errors import Unavailable
from livetwin.settings import DATABASE_URL_ENV
from livetwin.store.base import Store


def configured_url(explicit: str | None = None) -> str:
    """The configured PostgreSQL URL ('' for the embedded SQLite store)."""
    url = explicit if explicit is not None else os.environ.get(DATABASE_URL_ENV, "")
    return url.strip()


def open_store(path: str | Path, *, database_url: str | None = None, cache_mb: int = 64) -> Store:
    """The store for a platform whose data directory is `path`.

    `database_url` None reads LIVETWIN_DATABASE_URL; empty means the embedded SQLite store in
    `path`. Raises `Unavailable` (one line, URL without password, a fix) when PostgreSQL is
    configured but cannot be used.
    """
    url = configured_url(database_url)
    if not url:
        from livetwin.store.sqlite import SqliteStore

        return SqliteStore(path, cache_mb=cache_mb)
    if not url.startswith(("postgresql://", "postgres://")):
        raise Unavailable(
            f"{DATABASE_URL_ENV} must be a postgresql:// URL, not '{url.split('://')[0]}://...'",
            field=DATABASE_URL_ENV,
            fix="e.g. postgresql://postgres@127.0.0.1:5432/livetwin, or unset it for SQLite",
        )
    try:
        from livetwin.store.postgres import PostgresStore
    except ImportError as exc:
        raise Unavailable(
            f"{DATABASE_URL_ENV} is set but the PostgreSQL driver is missing ({exc.name})",
            field=DATABASE_URL_ENV,
            fix="pip install 'livetwin[postgres]', or unset it to use SQLite",
        ) from None
    return PostgresStore(url)
