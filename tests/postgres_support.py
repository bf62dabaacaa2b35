"""PostgreSQL for the tests: a fresh schema per test on 127.0.0.1:5432, a platform on it, and a TCP
proxy that can make the server "go away" and come back.

Without a server the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_URL = os.environ.get("LIVETWIN_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def require_postgres() -> None:
    """Skip (or fail under CI=true) when the test server is not there."""
    import psycopg

    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        reason = f"PostgreSQL at {PG_URL} is not reachable: {str(exc).strip().splitlines()[0]}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (required under CI=true)")
        pytest.skip(reason)


def schema_url(schema: str, url: str = PG_URL) -> str:
    """`url` with `schema` as its search_path (the store creates the schema if missing)."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A URL whose schema is new and empty; the schema is dropped afterwards."""
    import psycopg

    require_postgres()
    schema = f"lt_test_{uuid.uuid4().hex[:12]}"
    try:
        yield schema_url(schema)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            services = conn.execute(  # the services' own schemas: <schema>_alarms, ...
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (schema + "\\_%",)
            ).fetchall()
            for (name,) in services:
                conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def postgres_platform(
    monkeypatch, path: Path, url: str, *, store_options: dict | None = None, **platform_options
):
    """A `Platform(path, **platform_options)` whose store is `PostgresStore(url, **store_options)`.

    The core module's `open_store` is replaced for the duration of the test.
    """
    import livetwin.core as core_module
    from livetwin.platform import Platform
    from livetwin.store.postgres import PostgresStore

    def make(*_args, **_kwargs):
        return PostgresStore(url, **(store_options or {}))

    monkeypatch.setattr(core_module, "open_store", make)
    return Platform(path, **platform_options)


class Proxy:
    """A TCP proxy on loopback in front of PostgreSQL; `down()` drops every connection and
    refuses new ones, `up()` accepts again on the same port."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)):
        self.target = target
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def url(self, schema: str) -> str:
        return schema_url(schema, f"postgresql://postgres@127.0.0.1:{self.port}/test")

    def up(self) -> Proxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        with self._lock:
            if self._listener is not None:
                try:  # wakes the blocked accept(); close() alone leaves the port listening
                    self._listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._listener.close()
                self._listener = None
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            server = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    for s in (source, sink):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
