"""The server store: the `Store` contract on PostgreSQL (LIVETWIN_DATABASE_URL=postgresql://...).

A commit is one transaction; bulk rows go in with binary COPY. History chunks are PostgreSQL arrays,
so Grafana reads them with plain SQL through the `livetwin_samples` view (migrations/0002).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from livetwin.engine.batch import decode_batch
from livetwin.errors import Unavailable
from livetwin.store.base import JournalEntry
from livetwin.store.buffer import Chunk, trimmed
from livetwin.store.keys import journaled_keys, scoped_key
from livetwin.store.rollup import ROLLUP_PERIOD
from livetwin.timefmt import parse_ts

log = logging.getLogger(__name__)

T = TypeVar("T")
_LOST = (psycopg.OperationalError, PoolTimeout)  # the server went away or cannot be reached
ENTRIES_PER_TRANSACTION = 1_000  # journal compaction: entries per transaction
_FIX_URL = (
    "check host, port, user, password and database in LIVETWIN_DATABASE_URL "
    "(e.g. postgresql://postgres@127.0.0.1:5432/livetwin) and that the server is running"
)

# ---- binary COPY and array wire format (https://www.postgresql.org/docs/current/sql-copy.html)

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_HISTORY_ROW = struct.Struct(">h" + "iq" * 5 + "ii" * 2)  # 10 fields: 5 bigint, 2 integer, ...
_INT8_OID, _FLOAT8_OID = 20, 701


def _cells(blobs: list[bytes], kind: str) -> bytes:
    """Little-endian 8-byte numbers as array elements: (int32 length 8, big-endian value)."""
    flat = np.frombuffer(b"".join(blobs), dtype="<" + kind)
    cells = np.empty(len(flat), dtype=[("length", ">i4"), ("value", ">" + kind)])
    cells["length"] = 8
    cells["value"] = flat
    return cells.tobytes()


def _array_field(cells: memoryview, oid: int, dims: tuple[int, ...]) -> list:
    """One array-typed COPY field: its length, the array header, then its elements."""
    if 0 in dims:
        dims = ()
    header = struct.pack(
        f">iiI{2 * len(dims)}i", len(dims), 0, oid, *[x for d in dims for x in (d, 1)]
    )
    return [struct.pack(">i", len(header) + len(cells)), header, cells]


def history_copy_data(rows: list[tuple]) -> bytes:
    """`buffer.chunk_rows` rows as one binary COPY stream into `history`."""
    ts = memoryview(_cells([r[7] for r in rows], "i8"))
    seqs = memoryview(_cells([r[8] for r in rows], "i8"))
    vals = memoryview(_cells([r[9] for r in rows], "f8"))
    parts: list = [_COPY_HEADER]
    at = value_at = 0
    for uid, ts_min, ts_max, seq_min, seq_max, version, n, _, _, vals_blob in rows:
        width = len(vals_blob) // (8 * n)
        parts.append(
            _HISTORY_ROW.pack(
                10, 8, uid, 8, ts_min, 8, ts_max, 8, seq_min, 8, seq_max, 4, version, 4, n
            )
        )
        parts += _array_field(ts[at : at + 12 * n], _INT8_OID, (n,))
        parts += _array_field(seqs[at : at + 12 * n], _INT8_OID, (n,))
        size = 12 * n * width
        parts += _array_field(vals[value_at : value_at + size], _FLOAT8_OID, (n, width))
        at += 12 * n
        value_at += size
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


def _from_array(data: bytes, kind: str) -> np.ndarray:
    """An `array_send` value (no NULLs) of 8-byte numbers as a flat NumPy array."""
    ndim = int.from_bytes(data[:4], "big")
    cells = np.frombuffer(
        data, dtype=[("length", ">i4"), ("value", ">" + kind)], offset=12 + 8 * ndim
    )
    return cells["value"].astype(kind)


def _chunk(uid: int, version: int, n: int, ts: bytes, seqs: bytes, vals: bytes) -> Chunk:
    return Chunk(
        uid,
        version,
        _from_array(ts, "i8"),
        _from_array(seqs, "i8"),
        _from_array(vals, "f8").reshape(n, -1),
    )


_CHUNK_COLUMNS = "uid, version, n, array_send(ts), array_send(seqs), array_send(vals)"

# ---- the URL, as users may see it ----------------------------------------------------------


def safe_url(url: str) -> str:
    """The database URL without its password, fit for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.scheme and parts.netloc:
            host = parts.netloc.rsplit("@", 1)[-1]
            user = parts.username
            netloc = (
                f"{user}:***@{host}" if parts.password else (f"{user}@{host}" if user else host)
            )
            return urlunsplit(parts._replace(netloc=netloc))
        params = conninfo_to_dict(url)
    except (ValueError, psycopg.ProgrammingError):
        return "<unparsable database URL>"
    return " ".join(f"{k}={'***' if k == 'password' else v}" for k, v in params.items())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ---- migrations ----------------------------------------------------------------------------


Migration = tuple[int, str, str | Callable[[psycopg.Connection], None]]


def _scope_idempotency_keys(conn: psycopg.Connection) -> None:
    """Scope the keys stored before by their twin, read from their journal entries."""
    with conn.cursor(name="livetwin_scope_keys", binary=True) as entries:
        entries.execute(
            "SELECT seq, body FROM journal WHERE kind = 'obs'"
            " AND seq IN (SELECT seq FROM idempotency) ORDER BY seq"
        )
        found = [(key, scoped_key(twin, key)) for twin, key, _ in journaled_keys(entries)]
    conn.execute(
        "UPDATE idempotency SET key = m.scoped"
        " FROM unnest(%s::text[], %s::text[]) AS m(old, scoped) WHERE idempotency.key = m.old",
        ([old for old, _ in found], [new for _, new in found]),
    )


# migrations that need Python (e.g. to decode journal bodies), beside the SQL files
_CODE_MIGRATIONS: list[Migration] = [(4, "scoped_idempotency_keys", _scope_idempotency_keys)]


def available_migrations() -> list[Migration]:
    """(version, name, SQL or a function of a connection) of the migrations livetwin ships:
    the SQL files in livetwin/store/migrations and the code migrations, in order."""
    found: list[Migration] = list(_CODE_MIGRATIONS)
    for item in resources.files("livetwin.store").joinpath("migrations").iterdir():
        if item.name.endswith(".sql"):
            number, _, name = item.name[:-4].partition("_")
            found.append((int(number), name, item.read_text()))
    return sorted(found, key=lambda m: m[0])


def migrate(conn: psycopg.Connection, migrations: list[Migration]) -> list[int]:
    """Apply the migrations the database lacks, each in its own transaction; the versions applied.

    A migration that fails is rolled back whole and raises `Unavailable` naming it.
    """
    with conn.transaction():
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
    applied: list[int] = []
    conn.execute("SELECT pg_advisory_lock(hashtext(current_schema() || '.livetwin_migrations'))")
    try:
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        known = {v for v, _, _ in migrations}
        if done - known:
            raise Unavailable(
                f"the database schema has migration {max(done - known)}, newer than this "
                f"livetwin knows (up to {max(known)})",
                field="database",
                fix="upgrade livetwin, or point LIVETWIN_DATABASE_URL at another database",
            )
        for version, name, step in migrations:
            if version in done:
                continue
            try:
                with conn.transaction():
                    if callable(step):
                        step(conn)
                    else:
                        conn.execute(step)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (version, name),
                    )
            except psycopg.Error as exc:
                raise Unavailable(
                    f"database migration {version:04d}_{name} failed and was rolled back: "
                    f"{_first_line(exc)}",
                    field="database",
                    fix="fix the cause (the user needs CREATE rights on the schema), then "
                    "restart; schema_migrations lists the migrations applied so far",
                ) from None
            log.info("applied database migration %04d_%s", version, name)
            applied.append(version)
    finally:
        conn.execute(
            "SELECT pg_advisory_unlock(hashtext(current_schema() || '.livetwin_migrations'))"
        )
    return applied


# ---- the store -----------------------------------------------------------------------------


class PostgresStore:
    """Journal, history and metadata in one PostgreSQL schema (the URL's search_path, or public).

    `timeout_s` bounds the wait for a connection; reads that recovery depends on retry for up to
    `retry_s` while the server is away. A failed commit raises, so nothing unstored is acknowledged.
    """

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 8,
        timeout_s: float = 5.0,
        retry_s: float = 30.0,
        migrations: list[Migration] | None = None,
    ):
        self.url = url
        self.safe_url = safe_url(url)
        self.timeout_s, self.retry_s = timeout_s, retry_s
        connect_args = {"application_name": "livetwin", "connect_timeout": max(1, round(timeout_s))}
        try:
            with psycopg.connect(url, autocommit=True, **connect_args) as conn:
                self.schema = _ensure_schema(conn)
                migrate(conn, available_migrations() if migrations is None else migrations)
                known = conn.execute("SELECT coalesce(max(uid), 0) FROM twins").fetchone()[0]
                self._known_uids = np.zeros(max(1024, 2 * known + 1), dtype=bool)
                for (uids,) in conn.execute("SELECT array_agg(uid) FROM twins"):
                    if uids:
                        self._known_uids[np.asarray(uids, dtype=np.int64)] = True
        except psycopg.ProgrammingError as exc:  # a malformed URL
            raise Unavailable(
                f"LIVETWIN_DATABASE_URL is not a valid PostgreSQL URL ({self.safe_url}): "
                f"{_first_line(exc)}",
                field="LIVETWIN_DATABASE_URL",
                fix=_FIX_URL,
            ) from None
        except psycopg.OperationalError as exc:
            raise Unavailable(
                f"cannot connect to PostgreSQL at {self.safe_url}: {_first_line(exc)}",
                field="LIVETWIN_DATABASE_URL",
                fix=_FIX_URL,
            ) from None
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={**connect_args, "autocommit": True},
            name="livetwin",
            open=False,
        )
        try:
            self.pool.open(wait=True, timeout=timeout_s)
        except PoolTimeout:
            self.pool.close()
            raise Unavailable(
                f"cannot open a connection pool to PostgreSQL at {self.safe_url}",
                field="LIVETWIN_DATABASE_URL",
                fix=_FIX_URL,
            ) from None

    # ---- connections -----------------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> Unavailable:
        return Unavailable(
            f"PostgreSQL at {self.safe_url} is unreachable: {_first_line(exc)}",
            field="database",
            fix="check the database server; livetwin reconnects by itself once it is back",
        )

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection (autocommit); a lost server becomes `Unavailable`. The pool drops
        a broken connection when it comes back, so a later call reconnects."""
        try:
            with self.pool.connection(timeout=self.timeout_s) as conn:
                yield conn
        except _LOST as exc:
            raise self._unavailable(exc) from None

    def _begin(self) -> tuple[psycopg.Connection, str]:
        """A connection inside a new transaction, and the transaction's id (one round trip).
        A pooled connection found dead (the server restarted) is replaced once."""
        for attempt in (1, 2):
            conn = self.pool.getconn(timeout=self.timeout_s)
            try:
                cur = conn.execute("BEGIN; SELECT pg_current_xact_id()::text")
                cur.nextset()  # the SELECT's result follows the BEGIN's
                return conn, cur.fetchone()[0]
            except psycopg.OperationalError:
                self.pool.putconn(conn)  # broken: the pool discards it
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor]:
        """One transaction. If the connection is lost while committing, the transaction's
        status decides: committed returns normally, anything else raises `Unavailable`."""
        xid = None
        try:
            conn, xid = self._begin()
            try:
                cur = conn.cursor()
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                if not conn.broken:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self.pool.putconn(conn)
        except _LOST as exc:
            if xid is not None and self._committed(xid):
                return
            raise self._unavailable(exc) from None

    def _committed(self, xid: str) -> bool:
        try:
            with self.pool.connection(timeout=self.timeout_s) as conn:
                row = conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
                return row[0] == "committed"
        except (*_LOST, psycopg.Error):
            return False  # unknown: report failure, the caller does not acknowledge

    def _read(self, query: str, params: tuple = (), *, retry: bool = False) -> list[tuple]:
        """All rows of a query. A lost connection is retried once at once (the pool reconnects);
        with `retry`, a lost server is waited out for up to `retry_s`."""

        def run() -> list[tuple]:
            with self._connection() as conn:
                return conn.cursor(binary=True).execute(query, params).fetchall()

        return self._retrying(run, self.retry_s if retry else 0.0)

    def _retrying(self, action: Callable[[], T], seconds: float) -> T:
        deadline = time.monotonic() + seconds
        delay = 0.0
        while True:
            try:
                return action()
            except Unavailable:
                if delay and time.monotonic() + delay > deadline:
                    raise
                if delay:
                    log.warning("PostgreSQL at %s unreachable; retrying", self.safe_url)
                time.sleep(delay)
                delay = min(max(delay * 2, 0.05), 2.0)

    def _write(self, query: str, params: tuple) -> int:
        """One statement in its own transaction; the rows it changed."""
        with self._connection() as conn:
            return conn.execute(query, params).rowcount

    # ---- journal ---------------------------------------------------------------------------

    def last_seq(self) -> int:
        return self._read("SELECT coalesce(max(seq), 0) FROM journal", retry=True)[0][0]

    def commit(self, entries, keys, types) -> None:
        twins = self._new_twins(entries)
        with self._transaction() as cur:
            with cur.copy(
                "COPY journal (seq, at, kind, type, count, body) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "int8", "text", "text", "int4", "bytea"])
                for e in entries:
                    copy.write_row((e.seq, e.at, e.kind, e.type, e.count, e.body))
            if keys:
                with cur.copy("COPY idempotency (key, seq) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["text", "int8"])
                    for row in keys:
                        copy.write_row(row)
            if types:
                cur.executemany(
                    "INSERT INTO types (name, version, spec, created, columns)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    [(*t, _columns(*t[:3])) for t in types],
                )
            if twins[0]:
                cur.execute(
                    "INSERT INTO twins SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[])"
                    " ON CONFLICT (uid) DO NOTHING",
                    twins,
                )
        if twins[0]:
            self._known_uids[np.asarray(twins[0], dtype=np.int64)] = True

    def _new_twins(self, entries: list[JournalEntry]) -> tuple[list, list, list]:
        """(uids, ids, types) of the twins these entries create, for the samples view."""
        uids: list[int] = []
        ids: list[str] = []
        kinds: list[str] = []
        for e in entries:
            if e.kind != "obs":
                continue
            batch = decode_batch(e.body)
            if batch.uids is None:
                continue
            top = int(batch.uids.max()) + 1
            if top > len(self._known_uids):
                grown = np.zeros(2 * top, dtype=bool)
                grown[: len(self._known_uids)] = self._known_uids
                self._known_uids = grown
            fresh = np.flatnonzero(~self._known_uids[batch.uids])
            seen = set(uids)
            for i in fresh.tolist():
                uid = int(batch.uids[i])
                if uid not in seen:
                    seen.add(uid)
                    uids.append(uid)
                    ids.append(batch.twins[i])
                    kinds.append(batch.type)
        return uids, ids, kinds

    def known_keys(self, keys: list[str]) -> set[str]:
        rows = self._read("SELECT key FROM idempotency WHERE key = ANY(%s)", (keys,))
        return {r[0] for r in rows}

    def journal(self, after: int = 0) -> Iterator[JournalEntry]:
        """Streams entries through a server-side cursor (the journal may not fit in memory)."""
        with self._connection() as conn, conn.transaction():
            cur = conn.cursor(name="livetwin_journal", binary=True)
            cur.itersize = 256
            cur.execute(
                "SELECT seq, at, kind, type, count, body FROM journal WHERE seq > %s ORDER BY seq",
                (after,),
            )
            for row in cur:
                yield JournalEntry(*row)

    def journal_size(self, after: int = 0) -> tuple[int, int]:
        row = self._read(
            "SELECT count(*), coalesce(sum(count), 0) FROM journal WHERE seq > %s", (after,)
        )[0]
        return int(row[0]), int(row[1])

    # ---- snapshots -------------------------------------------------------------------------

    def put_snapshot(self, seq: int, data: bytes, at: int) -> None:
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO snapshots VALUES (%s, %s, %s) ON CONFLICT (seq) DO NOTHING",
                (seq, data, at),
            )
            cur.execute(
                "DELETE FROM snapshots WHERE seq < (SELECT min(seq) FROM "
                "(SELECT seq FROM snapshots ORDER BY seq DESC LIMIT 2) AS newest)"
            )

    def newest_snapshot(self) -> tuple[int, bytes] | None:
        rows = self._read("SELECT seq, data FROM snapshots ORDER BY seq DESC LIMIT 1")
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    # ---- history ---------------------------------------------------------------------------

    def write_history(self, rows: list[tuple], flushed_seq: int) -> None:
        with self._transaction() as cur:
            stored = cur.execute(
                "SELECT value FROM meta WHERE key = 'history_seq' FOR UPDATE"
            ).fetchone()
            if rows and stored and stored[0] >= min(r[3] for r in rows):
                # A flush whose commit was reported lost did commit: its chunks are a subset of
                # these (the buffer kept them), so replace them rather than store rows twice.
                cur.execute(
                    "DELETE FROM history WHERE seq_min >= %s AND seq_max <= %s",
                    (min(r[3] for r in rows), stored[0]),
                )
            if rows:
                with cur.copy("COPY history FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(history_copy_data(rows))
            cur.execute(
                "INSERT INTO meta VALUES ('history_seq', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (flushed_seq,),
            )

    def history_seq(self) -> int:
        rows = self._read("SELECT value FROM meta WHERE key = 'history_seq'", retry=True)
        return rows[0][0] if rows else 0

    def history(self, uid: int, start: int, end: int, max_seq: int) -> list[Chunk]:
        rows = self._read(
            f"SELECT {_CHUNK_COLUMNS} FROM history WHERE uid = %s AND ts_min < %s"
            " AND ts_max >= %s AND seq_min <= %s ORDER BY ts_min",
            (int(uid), int(end), int(start), int(max_seq)),
        )
        return [_chunk(*row) for row in rows]

    def recent(self, uid: int, before: int, max_seq: int) -> Iterator[tuple[int, Chunk]]:
        """Pages of 32 chunks, newest first; no connection is held between pages."""
        after: tuple[int, int] | None = None
        while True:
            page = self._read(
                f"SELECT ts_max, ts_min, seq_min, {_CHUNK_COLUMNS} FROM history WHERE uid = %s"
                " AND ts_min < %s AND seq_min <= %s AND (ts_min, seq_min) < (%s, %s)"
                " ORDER BY ts_min DESC, seq_min DESC LIMIT 32",
                (int(uid), int(before), int(max_seq), *(after or (2**62, 2**62))),
            )
            for ts_max, _, _, *chunk in page:
                yield ts_max, _chunk(*chunk)
            if len(page) < 32:
                return
            after = (page[-1][1], page[-1][2])

    # ---- retention (store/rollup.py, journal/compaction.py) --------------------------------

    def touched(self, after_seq: int) -> dict[int, int]:
        rows = self._read(
            "SELECT uid, min(ts_min) FROM history WHERE seq_max > %s GROUP BY uid", (after_seq,)
        )
        return {int(uid): int(ts) for uid, ts in rows}

    def replace_history(self, old: list[tuple[int, int, int]], rows: list[tuple]) -> None:
        with self._transaction() as cur:
            cur.execute(
                "DELETE FROM history h USING unnest(%s::bigint[], %s::bigint[], %s::bigint[])"
                " AS o(uid, ts_min, seq_min)"
                " WHERE h.uid = o.uid AND h.ts_min = o.ts_min AND h.seq_min = o.seq_min",
                tuple(list(column) for column in zip(*old, strict=True)),
            )
            if rows:
                with cur.copy("COPY history FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(history_copy_data(rows))

    def put_rollups(self, rows: list[tuple]) -> None:
        with self._transaction() as cur:
            cur.executemany(
                "INSERT INTO rollups VALUES (%s, %s, %s, %s, %s) ON CONFLICT (uid, bucket, period)"
                " DO UPDATE SET version = excluded.version, data = excluded.data",
                rows,
            )

    def rollups(self, uid: int, bucket: int, start: int, end: int) -> list[tuple]:
        rows = self._read(
            "SELECT period, version, data FROM rollups WHERE uid = %s AND bucket = %s"
            " AND period < %s AND period > %s ORDER BY period",
            (int(uid), int(bucket), int(end), int(start) - bucket * ROLLUP_PERIOD),
        )
        return [(int(p), int(v), bytes(d)) for p, v, d in rows]

    def delete_history(self, uids: list[int], before: int) -> int:
        uids = [int(u) for u in uids]
        with self._transaction() as cur:
            straddling = cur.execute(
                f"DELETE FROM history WHERE uid = ANY(%s) AND ts_min < %s AND ts_max >= %s"
                f" RETURNING {_CHUNK_COLUMNS}",
                (uids, before, before),
                binary=True,
            ).fetchall()
            rows = [r for chunk in straddling for r in trimmed(_chunk(*chunk), before)]
            if rows:
                with cur.copy("COPY history FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(history_copy_data(rows))
            older = cur.execute(
                "DELETE FROM history WHERE uid = ANY(%s) AND ts_max < %s", (uids, before)
            )
            return len(straddling) + older.rowcount

    def delete_rollups(self, uids: list[int], bucket: int, before: int) -> int:
        return self._write(
            "DELETE FROM rollups WHERE uid = ANY(%s) AND bucket = %s AND period + %s <= %s",
            ([int(u) for u in uids], bucket, bucket * ROLLUP_PERIOD, before),
        )

    def compact_journal(self, upto: int) -> int:
        """In ranges of entries: the idempotency keys of each range, read from its entries
        (idempotency has no index on seq: ingest would pay for one), then the entries."""
        deleted = 0
        first = self._read("SELECT min(seq) FROM journal")[0][0] or upto + 1
        for low in range(first, upto + 1, ENTRIES_PER_TRANSACTION):
            high = min(low + ENTRIES_PER_TRANSACTION - 1, upto)
            entries = self._read(
                "SELECT seq, body FROM journal WHERE kind = 'obs' AND seq BETWEEN %s AND %s",
                (low, high),
            )
            keys = [scoped_key(t, k) for t, k, _ in journaled_keys(entries)]
            with self._transaction() as cur:
                cur.execute("DELETE FROM idempotency WHERE key = ANY(%s)", (keys,))
                gone = cur.execute("DELETE FROM journal WHERE seq BETWEEN %s AND %s", (low, high))
                deleted += gone.rowcount
        return deleted

    def put_base_snapshot(self, seq: int, data: bytes, at: int) -> None:
        self._write(
            "INSERT INTO base_snapshot VALUES (1, %s, %s, %s) ON CONFLICT (id) DO UPDATE"
            " SET seq = excluded.seq, data = excluded.data, created = excluded.created",
            (seq, data, at),
        )

    def base_snapshot(self) -> tuple[int, bytes] | None:
        rows = self._read("SELECT seq, data FROM base_snapshot")
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    # ---- metadata --------------------------------------------------------------------------

    def type_versions(self, name: str) -> list[tuple[int, str, int]]:
        return [
            tuple(r)
            for r in self._read(
                "SELECT version, spec, created FROM types WHERE name = %s ORDER BY version",
                (name,),
            )
        ]

    def put_extractor(self, name: str, spec: str, at: int) -> None:
        self._write(
            "INSERT INTO extractors VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE"
            " SET spec = excluded.spec, updated = excluded.updated",
            (name, spec, at),
        )

    def extractors(self) -> dict[str, str]:
        return dict(self._read("SELECT name, spec FROM extractors"))

    def delete_extractor(self, name: str) -> bool:
        return self._write("DELETE FROM extractors WHERE name = %s", (name,)) > 0

    def put_config(self, kind: str, name: str, spec: str, at: int) -> None:
        self._write(
            "INSERT INTO config VALUES (%s, %s, %s, %s) ON CONFLICT (kind, name) DO UPDATE"
            " SET spec = excluded.spec, updated = excluded.updated",
            (kind, name, spec, at),
        )

    def delete_config(self, kind: str, name: str) -> bool:
        return self._write("DELETE FROM config WHERE kind = %s AND name = %s", (kind, name)) > 0

    def configs(self, kind: str) -> dict[str, str]:
        return dict(self._read("SELECT name, spec FROM config WHERE kind = %s", (kind,)))

    def save_calibration(self, type_name: str, state: bytes, record: dict, at: int) -> int:
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO calibration_state VALUES (%s, %s, %s) ON CONFLICT (type) DO UPDATE"
                " SET state = excluded.state, updated = excluded.updated",
                (type_name, state, at),
            )
            return _add_run(cur, type_name, record)

    def add_calibration_run(self, type_name: str, record: dict) -> int:
        with self._transaction() as cur:
            return _add_run(cur, type_name, record)

    def calibration_state(self, type_name: str) -> bytes | None:
        rows = self._read("SELECT state FROM calibration_state WHERE type = %s", (type_name,))
        return bytes(rows[0][0]) if rows else None

    def calibration_runs(self, type_name: str, limit: int) -> list[dict]:
        rows = self._read(
            "SELECT id, record::text FROM calibration_runs WHERE type = %s"
            " ORDER BY id DESC LIMIT %s",
            (type_name, limit),
        )
        return [{"id": run_id, **orjson.loads(record)} for run_id, record in rows]

    def close(self) -> None:
        self.pool.close()


def _add_run(cur: psycopg.Cursor, type_name: str, record: dict) -> int:
    return cur.execute(
        "INSERT INTO calibration_runs (type, started, record) VALUES (%s, %s, %s::jsonb)"
        " RETURNING id",
        (type_name, parse_ts(record["started"]), orjson.dumps(record).decode()),
    ).fetchone()[0]


def _columns(name: str, version: int, spec_json: str) -> list[str]:
    """The value columns of a type version, in the order its history chunks store them."""
    from livetwin.models.base import resolve_model
    from livetwin.spec.types import TwinTypeSpec, compile_type

    spec = TwinTypeSpec.model_validate({**orjson.loads(spec_json), "name": name})
    return list(compile_type(spec, version, resolve_model=resolve_model).columns)


def _ensure_schema(conn: psycopg.Connection) -> str:
    """The schema livetwin's tables live in: the first of the URL's search_path, created if
    missing (so `?options=-csearch_path%3Dname` gives each deployment its own schema)."""
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    if schema is None:
        path = conn.execute("SHOW search_path").fetchone()[0]
        schema = path.split(",")[0].strip().strip('"')
        try:
            with conn.transaction():  # a savepoint when a transaction is open
                create = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}")
                conn.execute(create.format(sql.Identifier(schema)))
        except psycopg.errors.UniqueViolation:
            pass  # another process created it at the same moment (IF NOT EXISTS can collide)
    return schema
