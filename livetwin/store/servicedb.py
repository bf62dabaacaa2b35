"""A service's own database (alarms, registry, lineage, ...): a SQLite file in the data directory
by default, or a PostgreSQL schema of its own when LIVETWIN_DATABASE_URL is set (see open.py).

Services write SQLite-flavoured SQL that both run: `?` placeholders, `INSERT ... ON CONFLICT`,
`RETURNING`. The few differences left are translated here and nowhere else: placeholders, and in
schemas (types in upper case) INTEGER (64-bit), INTEGER PRIMARY KEY [AUTOINCREMENT] (identity),
REAL (8 bytes), BLOB, TEXT (byte order, as SQLite sorts), WITHOUT ROWID; PRAGMAs are dropped.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Protocol

from livetwin.errors import Unavailable
from livetwin.store.open import configured_url
from livetwin.store.sqlite import immediate

TIMEOUT_S = 5.0  # the longest wait for a PostgreSQL connection
IDLE_S = 60.0  # seconds a pooled service connection may sit unused before it is closed


class Connection(Protocol):
    """What a service may do with a connection (`sqlite3.Connection` is one)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any: ...


class ServiceDB(Protocol):
    """A service's database: `read()` runs statements on their own (autocommit; inside this
    thread's `write()` they join it), `write()` is one transaction that excludes other writers
    of the same database, as SQLite's BEGIN IMMEDIATE does."""

    dialect: str

    def read(self) -> Connection: ...

    def write(self) -> Any: ...  # a context manager yielding a Connection

    def json_text(self, column: str, key: str) -> str: ...

    def close(self) -> None: ...


def open_service_db(
    directory: str | Path,
    name: str,
    schema: str,
    *,
    database_url: str | None = None,
    sqlite_migrate: Callable[[sqlite3.Connection], None] | None = None,
    sqlite_file: str | None = None,
    sqlite_synchronous: str = "FULL",
) -> ServiceDB:
    """The database of service `name`: `<directory>/<name>.db`, or (PostgreSQL configured) the
    schema `<schema of the URL>_<name>` (`livetwin_<name>` when that is public).

    `schema` is applied on open (CREATE ... IF NOT EXISTS). `sqlite_migrate(conn)` brings an
    older SQLite file up to date first; a PostgreSQL schema is always created by this version.
    `sqlite_file` names a file that predates the `<name>.db` rule; `sqlite_synchronous="NORMAL"`
    suits data that can be rebuilt after a power loss (a commit still survives a process crash).
    """
    url = configured_url(database_url)
    if not url:
        path = Path(directory) / (sqlite_file or f"{name}.db")
        return SqliteFile(path, schema, sqlite_migrate, synchronous=sqlite_synchronous)
    return PostgresServiceDB(url, name, schema)


def service_db_opener(directory: str | Path, database_url: str | None = None) -> Callable:
    """An `OpenServiceDB` port for a data directory (`database_url` None reads the environment):
    for tools and tests that open a service's store without a platform."""
    return partial(open_service_db, directory, database_url=database_url)


# ---- SQLite ------------------------------------------------------------------------------------


class SqliteFile:
    """One SQLite file in WAL mode with `schema` applied; a connection per thread.

    `migrate(conn)`, if given, runs first in a write transaction: it brings an older file up to
    the schema (the schema's CREATE ... IF NOT EXISTS statements then add what is missing)."""

    dialect = "sqlite"

    def __init__(
        self,
        path: Path,
        schema: str,
        migrate: Callable[[sqlite3.Connection], None] | None = None,
        *,
        synchronous: str = "FULL",
    ):
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.synchronous = synchronous
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        # writers of this process queue here, woken at once; SQLite's busy handler (for other
        # processes) sleeps in steps of milliseconds
        self._writer = threading.RLock()
        if migrate is not None:
            with self.write() as conn:
                migrate(conn)
        self.read().executescript(schema)

    def read(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; reads see the last committed state)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA busy_timeout=10000")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the write lock from its start (BEGIN IMMEDIATE)."""
        with self._writer, immediate(self.read()) as conn:
            yield conn

    @staticmethod
    def json_text(column: str, key: str) -> str:
        """SQL for the text of top-level `key` of the JSON object in `column`."""
        return f"json_extract({column}, '$.{_checked_key(key)}')"

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    pass  # owned by a finished thread
            self._all.clear()
        self._local = threading.local()


# ---- PostgreSQL --------------------------------------------------------------------------------

_QUERY_TOKENS = re.compile(r"'(?:[^']|'')*'|\?|%")
_DDL = (
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?\b", re.I),
     "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),  # epoch milliseconds need 64 bits
    (re.compile(r"\bBLOB\b", re.I), "BYTEA"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),  # SQLite's REAL has 8 bytes, not 4
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),  # the type (upper case): SQLite's byte order
    (re.compile(r"\)\s*WITHOUT\s+ROWID", re.I), ")"),
    (re.compile(r"^\s*PRAGMA\b[^;]*;", re.I | re.M), ""),
)  # fmt: skip


@lru_cache(maxsize=1024)
def pg_query(sql: str) -> str:
    """A statement with `?` placeholders as psycopg takes it (`%s`, and `%` doubled)."""

    def swap(match: re.Match) -> str:
        token = match[0]
        return "%s" if token == "?" else "%%" if token == "%" else token.replace("%", "%%")

    return _QUERY_TOKENS.sub(swap, sql)


def pg_schema(script: str) -> str:
    """A SQLite schema script in PostgreSQL's words."""
    for pattern, replacement in _DDL:
        script = pattern.sub(replacement, script)
    return script


def _checked_key(key: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise ValueError(f"not a plain JSON key: {key!r}")
    return key


class _Rows:
    """A finished statement's rows, read like a sqlite3 cursor."""

    def __init__(self, rows: list[tuple], rowcount: int):
        self._rows, self.rowcount = rows, rowcount

    def fetchone(self) -> tuple | None:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[tuple]:
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.fetchall())


class _PgConnection:
    """A psycopg connection that takes `?` statements and returns `_Rows`."""

    def __init__(self, conn):
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _Rows:
        cur = self._conn.execute(pg_query(sql), tuple(parameters))
        return _Rows(cur.fetchall() if cur.description else [], cur.rowcount)

    def executemany(self, sql: str, seq_of_parameters: Any) -> None:
        rows = [tuple(p) for p in seq_of_parameters]
        if rows:
            with self._conn.cursor() as cur:
                cur.executemany(pg_query(sql), rows)


class _PooledReads:
    """`read()` outside a transaction: each statement on a pooled connection of its own."""

    def __init__(self, db: PostgresServiceDB):
        self._db = db

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _Rows:
        return self._db._run(lambda conn: conn.execute(sql, parameters))

    def executemany(self, sql: str, seq_of_parameters: Any) -> None:
        self._db._run(lambda conn: conn.executemany(sql, seq_of_parameters))


class PostgresServiceDB:
    """A service's tables in a PostgreSQL schema of their own, through a small connection pool.
    `write()` takes a transaction-scoped advisory lock on the schema, so writers run one at a
    time as on SQLite (read-then-insert numbering stays monotonic across processes)."""

    dialect = "postgres"

    _LOCK = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.writer'))"

    def __init__(
        self,
        url: str,
        name: str,
        schema: str,
        *,
        max_connections: int = 4,
        timeout_s: float | None = None,
    ):
        import psycopg
        from psycopg import sql
        from psycopg_pool import ConnectionPool, PoolTimeout

        from livetwin.store.postgres import _ensure_schema, _first_line, safe_url

        self.safe_url, self.timeout_s = safe_url(url), timeout_s or TIMEOUT_S
        self._lost = (psycopg.OperationalError, PoolTimeout)
        self._broken = psycopg.OperationalError
        self._first_line = _first_line
        self._local = threading.local()
        connect = {"application_name": f"livetwin-{name}", "connect_timeout": round(self.timeout_s)}
        try:
            with psycopg.connect(url, autocommit=True, **connect) as conn:
                base = _ensure_schema(conn)
                self.schema = f"{'livetwin' if base == 'public' else base}_{name}"
                use = sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema))
                create = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}")
                with conn.transaction():  # concurrent CREATE IF NOT EXISTS can collide
                    conn.execute(  # the service schema's writer lock, as `_LOCK` takes it
                        "SELECT pg_advisory_xact_lock(hashtext(%s || '.writer'))", (self.schema,)
                    )
                    conn.execute(create.format(sql.Identifier(self.schema)))
                    conn.execute(use)  # a SET in a committed transaction stays for the session
                    conn.execute(pg_schema(schema))
        except (psycopg.ProgrammingError, psycopg.OperationalError) as exc:
            raise Unavailable(
                f"cannot open the {name} database in PostgreSQL at {self.safe_url}: "
                f"{_first_line(exc)}",
                field="LIVETWIN_DATABASE_URL",
                fix="check LIVETWIN_DATABASE_URL and that the server is running (the user needs "
                "CREATE rights on the database), or unset it to use SQLite",
            ) from None
        self.pool = ConnectionPool(
            url,
            min_size=0,  # connect on demand: a server that is back is used at once
            max_size=max_connections,
            kwargs={**connect, "autocommit": True},
            configure=lambda conn: conn.execute(use),
            reconnect_timeout=self.timeout_s,  # a caller's next call tries afresh, no long backoff
            max_idle=IDLE_S,  # a burst's extra connections go back soon: many services share
            name=f"livetwin-{name}",
            open=False,
        )
        try:
            self.pool.open(wait=True, timeout=self.timeout_s)
        except PoolTimeout as exc:
            self.pool.close()
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: BaseException) -> Unavailable:
        return Unavailable(
            f"PostgreSQL at {self.safe_url} is unreachable: {self._first_line(exc)}",
            field="database",
            fix="check the database server; livetwin reconnects by itself once it is back",
        )

    def _attempts(self) -> range:
        """After a server restart every pooled connection is dead: each is tried, and dropped."""
        return range(self.pool.max_size + 1)

    def _run(self, action: Callable[[_PgConnection], Any]) -> Any:
        """`action` (one statement) on a pooled connection; a dead connection is replaced."""
        for attempt in self._attempts():
            try:
                with self.pool.connection(timeout=self.timeout_s) as conn:
                    return action(_PgConnection(conn))
            except self._lost as exc:
                if attempt == self._attempts()[-1] or not isinstance(exc, self._broken):
                    raise self._unavailable(exc) from None
        raise AssertionError("unreachable")

    def _begin(self):
        """A pooled connection in a new transaction that holds the schema's writer lock."""
        for attempt in self._attempts():
            conn = self.pool.getconn(timeout=self.timeout_s)
            try:
                conn.execute(f"BEGIN; {self._LOCK}")
                return conn
            except self._broken:
                self.pool.putconn(conn)  # broken: the pool drops it
                if attempt == self._attempts()[-1]:
                    raise
        raise AssertionError("unreachable")

    def read(self) -> _PgConnection | _PooledReads:
        """This thread's open write transaction, else statements on pooled connections."""
        return getattr(self._local, "tx", None) or _PooledReads(self)

    @contextmanager
    def write(self) -> Iterator[_PgConnection]:
        """One transaction, writers of this schema one at a time; Unavailable if the server is
        lost (then the transaction may or may not have committed)."""
        if getattr(self._local, "tx", None) is not None:
            raise RuntimeError("write() inside write() on one thread")
        try:
            conn = self._begin()
            try:
                self._local.tx = _PgConnection(conn)
                yield self._local.tx
                conn.execute("COMMIT")
            except BaseException:
                if not conn.broken:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._local.tx = None
                self.pool.putconn(conn)
        except self._lost as exc:
            raise self._unavailable(exc) from None

    @staticmethod
    def json_text(column: str, key: str) -> str:
        """SQL for the text of top-level `key` of the JSON object in `column`."""
        return f"({column}::jsonb ->> '{_checked_key(key)}')"

    def close(self) -> None:
        self.pool.close()
