"""The service database `auth` (`<data>/auth.db`, or the PostgreSQL schema `<schema>_auth`) that
API tokens and device credentials live in: opening, closing and one-statement reads and writes.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from pathlib import Path
from typing import Self

from livetwin.ports import Clock, OpenServiceDB
from livetwin.store.servicedb import ServiceDB, open_service_db
from livetwin.timefmt import wall_clock_ms

DB_NAME = "auth"  # the file auth.db, the PostgreSQL schema <schema>_auth


def digest(secret: str) -> bytes:
    """What is stored of a random secret: its SHA-256 (32 random bytes need no slow hash)."""
    return hashlib.sha256(secret.encode()).digest()


class AuthStore:
    """A store of credentials in the `auth` database; subclasses give their table's `SCHEMA`.

    `open_db` opens the service database (the deployment's storage choice, see ports.py); the
    database is opened on first use and closed by `stop`.
    """

    SCHEMA = ""

    def __init__(self, open_db: OpenServiceDB, *, clock: Clock = wall_clock_ms):
        self.open_db, self.clock = open_db, clock
        self._db: ServiceDB | None = None
        self._opening = threading.Lock()

    @classmethod
    def in_directory(
        cls, directory: str | Path, *, database_url: str | None = None, clock: Clock = wall_clock_ms
    ) -> Self:
        """The store of a data directory without a running platform (the CLI's)."""
        open_db = functools.partial(open_service_db, directory, database_url=database_url)
        return cls(open_db, clock=clock)

    def start(self) -> Self:
        with self._opening:
            if self._db is None:
                self._db = self.open_db(DB_NAME, self.SCHEMA)
        return self

    def stop(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _opened(self) -> ServiceDB:
        return self._db or self.start()._db

    def _read(self, query: str, args: tuple = ()) -> list[tuple]:
        return self._opened().read().execute(query, args).fetchall()

    def _write(self, query: str, args: tuple) -> None:
        with self._opened().write() as conn:
            conn.execute(query, args)
