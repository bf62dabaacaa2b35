"""The embedded store: SQLite in WAL mode, fsync on commit (durable before ack).

Two database files, so that history flushes never hold the journal's write lock:
`livetwin.db` (journal, idempotency keys, type versions, extractors) and `history.db`.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from livetwin.store.base import JournalEntry
from livetwin.store.buffer import Chunk, decode_chunk, trimmed
from livetwin.store.keys import journaled_keys, scoped_key
from livetwin.store.rollup import ROLLUP_PERIOD
from livetwin.timefmt import parse_ts


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction on `conn` that holds the write lock from its start (BEGIN IMMEDIATE),
    committed at the end or rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, kind TEXT NOT NULL, type TEXT NOT NULL,
    count INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS types (
    name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL, created INTEGER NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS extractors (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS config (
    kind TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL, updated INTEGER NOT NULL,
    PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS calibration_state (
    type TEXT PRIMARY KEY, state BLOB NOT NULL, updated INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS calibration_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL, started INTEGER NOT NULL,
    record TEXT NOT NULL);
"""

HISTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    uid INTEGER NOT NULL, ts_min INTEGER NOT NULL, ts_max INTEGER NOT NULL,
    seq_min INTEGER NOT NULL, seq_max INTEGER NOT NULL, version INTEGER NOT NULL,
    n INTEGER NOT NULL, ts BLOB NOT NULL, seqs BLOB NOT NULL, vals BLOB NOT NULL,
    PRIMARY KEY (uid, ts_min, seq_min)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS history_seq_max ON history (seq_max);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rollups (
    uid INTEGER NOT NULL, bucket INTEGER NOT NULL, period INTEGER NOT NULL,
    version INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (uid, bucket, period)) WITHOUT ROWID;
"""

DATABASES = {"main": "livetwin", "history": "history"}  # the two files of a data directory
KEYS_SCOPED = 1  # livetwin.db's user_version once its idempotency keys are scoped by twin
UIDS_PER_TRANSACTION = 64  # retention deletes: twins per write transaction
ENTRIES_PER_TRANSACTION = 1_000  # journal compaction: entries per write transaction


class SqliteStore:
    """Journal, history, idempotency keys, type versions and extractors in `<dir>/livetwin.db`."""

    def __init__(self, directory: str | Path | None, *, cache_mb: int = 64):
        if directory is None:  # in memory: shared by this store's connections, gone on close
            name = f"livetwin-{uuid.uuid4().hex}"
            self.paths = {db: f"file:{name}-{db}?mode=memory&cache=shared" for db in DATABASES}
        else:
            directory = Path(directory)
            directory.mkdir(parents=True, exist_ok=True)
            self.paths = {db: str(directory / f"{file}.db") for db, file in DATABASES.items()}
        self._cache_kib = cache_mb * 1024
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._conn().executescript(SCHEMA)
        self._conn("history").executescript(HISTORY_SCHEMA)
        self._scope_keys()

    def _scope_keys(self) -> None:
        """Migrate in place a file from before keys were scoped by twin (see store/keys.py)."""
        conn = self._conn()
        if conn.execute("PRAGMA user_version").fetchone()[0] >= KEYS_SCOPED:
            return
        with immediate(conn):
            if conn.execute("PRAGMA user_version").fetchone()[0] >= KEYS_SCOPED:
                return  # another process did it while this one waited for the lock
            entries = conn.execute(
                "SELECT seq, body FROM journal WHERE kind = 'obs'"
                " AND seq IN (SELECT seq FROM idempotency) ORDER BY seq"
            )
            rows = [(scoped_key(t, k), seq) for t, k, seq in journaled_keys(entries)]
            conn.execute("DELETE FROM idempotency")
            conn.executemany("INSERT INTO idempotency VALUES (?,?)", rows)
            conn.execute(f"PRAGMA user_version = {KEYS_SCOPED}")

    @classmethod
    def in_memory(cls) -> SqliteStore:
        """A store that lives in this process only (a sandbox core's)."""
        return cls(None)

    def _conn(self, db: str = "main") -> sqlite3.Connection:
        """One connection per thread and database (connections are not shared across threads)."""
        conn = getattr(self._local, db, None)
        if conn is None:
            conn = sqlite3.connect(
                self.paths[db], isolation_level=None, check_same_thread=False, uri=True
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA cache_size=-{self._cache_kib}")
            conn.execute("PRAGMA busy_timeout=10000")
            setattr(self._local, db, conn)
            with self._all_lock:
                self._all.append(conn)
        return conn

    def last_seq(self) -> int:
        row = self._conn().execute("SELECT max(seq) FROM journal").fetchone()
        return row[0] or 0

    def commit(self, entries, keys, types) -> None:
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO journal VALUES (?,?,?,?,?,?)",
                [(e.seq, e.at, e.kind, e.type, e.count, e.body) for e in entries],
            )
            if keys:
                conn.executemany("INSERT INTO idempotency VALUES (?,?)", keys)
            if types:
                conn.executemany("INSERT INTO types VALUES (?,?,?,?)", types)

    def write_history(self, rows: list[tuple], flushed_seq: int) -> None:
        with self._transaction("history") as conn:
            conn.executemany("INSERT INTO history VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            conn.execute(
                "INSERT INTO meta VALUES ('history_seq', ?) ON CONFLICT(key)"
                " DO UPDATE SET value = excluded.value",
                (flushed_seq,),
            )

    def history_seq(self) -> int:
        row = (
            self._conn("history")
            .execute("SELECT value FROM meta WHERE key = 'history_seq'")
            .fetchone()
        )
        return row[0] if row else 0

    def _transaction(self, db: str = "main"):
        return immediate(self._conn(db))

    def known_keys(self, keys: list[str]) -> set[str]:
        conn = self._conn()
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0]
                for r in conn.execute(f"SELECT key FROM idempotency WHERE key IN ({marks})", chunk)
            )
        return found

    def journal(self, after: int = 0) -> Iterator[JournalEntry]:
        cursor = self._conn().execute(
            "SELECT seq, at, kind, type, count, body FROM journal WHERE seq > ? ORDER BY seq",
            (after,),
        )
        cursor.arraysize = 256
        while rows := cursor.fetchmany():
            for row in rows:
                yield JournalEntry(*row)

    def journal_size(self, after: int = 0) -> tuple[int, int]:
        row = (
            self._conn()
            .execute(
                "SELECT count(*), coalesce(sum(count), 0) FROM journal WHERE seq > ?", (after,)
            )
            .fetchone()
        )
        return row[0], row[1]

    def history(self, uid: int, start: int, end: int, max_seq: int) -> list[Chunk]:
        rows = self._conn("history").execute(
            "SELECT uid, version, n, ts, seqs, vals FROM history WHERE uid = ? AND ts_min < ?"
            " AND ts_max >= ? AND seq_min <= ? ORDER BY ts_min",
            (int(uid), int(end), int(start), int(max_seq)),  # never a NumPy int: SQLite
            # would bind it as a blob, which compares greater than every integer
        )
        return [decode_chunk(*row) for row in rows]

    def recent(self, uid: int, before: int, max_seq: int) -> Iterator[tuple[int, Chunk]]:
        rows = self._conn("history").execute(
            "SELECT ts_max, uid, version, n, ts, seqs, vals FROM history WHERE uid = ?"
            " AND ts_min < ? AND seq_min <= ? ORDER BY ts_min DESC",
            (int(uid), int(before), int(max_seq)),
        )
        for ts_max, *chunk in rows:
            yield ts_max, decode_chunk(*chunk)

    # ---- retention (store/rollup.py, journal/compaction.py) --------------------------------

    def touched(self, after_seq: int) -> dict[int, int]:
        rows = self._conn("history").execute(
            "SELECT uid, min(ts_min) FROM history WHERE seq_max > ? GROUP BY uid", (after_seq,)
        )
        return dict(rows.fetchall())

    def replace_history(self, old: list[tuple[int, int, int]], rows: list[tuple]) -> None:
        with self._transaction("history") as conn:
            conn.executemany(
                "DELETE FROM history WHERE uid = ? AND ts_min = ? AND seq_min = ?", old
            )
            conn.executemany("INSERT INTO history VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def put_rollups(self, rows: list[tuple]) -> None:
        with self._transaction("history") as conn:
            conn.executemany("INSERT OR REPLACE INTO rollups VALUES (?,?,?,?,?)", rows)

    def rollups(self, uid: int, bucket: int, start: int, end: int) -> list[tuple]:
        span = bucket * ROLLUP_PERIOD
        rows = self._conn("history").execute(
            "SELECT period, version, data FROM rollups WHERE uid = ? AND bucket = ?"
            " AND period < ? AND period > ? ORDER BY period",
            (int(uid), int(bucket), int(end), int(start) - span),
        )
        return rows.fetchall()

    def delete_history(self, uids: list[int], before: int) -> int:
        deleted = 0
        for start in range(0, len(uids), UIDS_PER_TRANSACTION):  # short write locks
            with self._transaction("history") as conn:
                for uid in uids[start : start + UIDS_PER_TRANSACTION]:
                    deleted += self._delete_history(conn, int(uid), before)
        return deleted

    @staticmethod
    def _delete_history(conn: sqlite3.Connection, uid: int, before: int) -> int:
        straddling = conn.execute(
            "SELECT ts_min, seq_min, uid, version, n, ts, seqs, vals FROM history"
            " WHERE uid = ? AND ts_min < ? AND ts_max >= ?",
            (uid, before, before),
        ).fetchall()
        for ts_min, seq_min, *chunk in straddling:
            conn.execute(
                "DELETE FROM history WHERE uid = ? AND ts_min = ? AND seq_min = ?",
                (uid, ts_min, seq_min),
            )
            rows = trimmed(decode_chunk(*chunk), before)
            conn.executemany("INSERT INTO history VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        older = conn.execute("DELETE FROM history WHERE uid = ? AND ts_max < ?", (uid, before))
        return len(straddling) + older.rowcount

    def delete_rollups(self, uids: list[int], bucket: int, before: int) -> int:
        span = bucket * ROLLUP_PERIOD
        deleted = 0
        for start in range(0, len(uids), UIDS_PER_TRANSACTION):
            with self._transaction("history") as conn:
                deleted += sum(
                    conn.execute(
                        "DELETE FROM rollups WHERE uid = ? AND bucket = ? AND period + ? <= ?",
                        (int(uid), bucket, span, before),
                    ).rowcount
                    for uid in uids[start : start + UIDS_PER_TRANSACTION]
                )
        return deleted

    def compact_journal(self, upto: int) -> int:
        """In ranges of entries, each one short transaction (ingest waits on the write lock):
        the idempotency keys of each range, read from its entries, then the entries."""
        conn = self._conn()
        deleted = 0
        first = conn.execute("SELECT min(seq) FROM journal").fetchone()[0] or upto + 1
        for low in range(first, upto + 1, ENTRIES_PER_TRANSACTION):
            high = min(low + ENTRIES_PER_TRANSACTION - 1, upto)
            entries = conn.execute(
                "SELECT seq, body FROM journal WHERE kind = 'obs' AND seq BETWEEN ? AND ?",
                (low, high),
            ).fetchall()
            keys = [(scoped_key(t, k),) for t, k, _ in journaled_keys(entries)]
            with self._transaction() as tx:
                tx.executemany("DELETE FROM idempotency WHERE key = ?", keys)
                gone = tx.execute("DELETE FROM journal WHERE seq BETWEEN ? AND ?", (low, high))
                deleted += gone.rowcount
        return deleted

    def put_base_snapshot(self, seq: int, data: bytes, at: int) -> None:
        """Base snapshots are files beside this database (journal/compaction.py)."""

    def base_snapshot(self) -> tuple[int, bytes] | None:
        return None

    def type_versions(self, name: str) -> list[tuple[int, str, int]]:
        return (
            self._conn()
            .execute(
                "SELECT version, spec, created FROM types WHERE name = ? ORDER BY version", (name,)
            )
            .fetchall()
        )

    def put_extractor(self, name: str, spec: str, at: int) -> None:
        self._conn().execute(
            "INSERT INTO extractors VALUES (?,?,?) ON CONFLICT(name) DO UPDATE"
            " SET spec = excluded.spec, updated = excluded.updated",
            (name, spec, at),
        )

    def extractors(self) -> dict[str, str]:
        return dict(self._conn().execute("SELECT name, spec FROM extractors").fetchall())

    def delete_extractor(self, name: str) -> bool:
        cursor = self._conn().execute("DELETE FROM extractors WHERE name = ?", (name,))
        return cursor.rowcount > 0

    def put_snapshot(self, seq: int, data: bytes, at: int) -> None:
        """Snapshots are files beside this database, in the same data directory: nothing to do."""

    def newest_snapshot(self) -> tuple[int, bytes] | None:
        return None

    def put_config(self, kind: str, name: str, spec: str, at: int) -> None:
        self._conn().execute(
            "INSERT INTO config VALUES (?,?,?,?) ON CONFLICT(kind, name) DO UPDATE"
            " SET spec = excluded.spec, updated = excluded.updated",
            (kind, name, spec, at),
        )

    def delete_config(self, kind: str, name: str) -> bool:
        cursor = self._conn().execute(
            "DELETE FROM config WHERE kind = ? AND name = ?", (kind, name)
        )
        return cursor.rowcount > 0

    def configs(self, kind: str) -> dict[str, str]:
        rows = self._conn().execute("SELECT name, spec FROM config WHERE kind = ?", (kind,))
        return dict(rows.fetchall())

    def save_calibration(self, type_name: str, state: bytes, record: dict, at: int) -> int:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO calibration_state VALUES (?,?,?) ON CONFLICT(type) DO UPDATE"
                " SET state = excluded.state, updated = excluded.updated",
                (type_name, state, at),
            )
            return self._add_run(conn, type_name, record)

    def add_calibration_run(self, type_name: str, record: dict) -> int:
        with self._transaction() as conn:
            return self._add_run(conn, type_name, record)

    @staticmethod
    def _add_run(conn: sqlite3.Connection, type_name: str, record: dict) -> int:
        cursor = conn.execute(
            "INSERT INTO calibration_runs (type, started, record) VALUES (?,?,?)",
            (type_name, parse_ts(record["started"]), orjson.dumps(record).decode()),
        )
        return cursor.lastrowid

    def calibration_state(self, type_name: str) -> bytes | None:
        row = (
            self._conn()
            .execute("SELECT state FROM calibration_state WHERE type = ?", (type_name,))
            .fetchone()
        )
        return row[0] if row else None

    def calibration_runs(self, type_name: str, limit: int) -> list[dict]:
        rows = self._conn().execute(
            "SELECT id, record FROM calibration_runs WHERE type = ? ORDER BY id DESC LIMIT ?",
            (type_name, limit),
        )
        return [{"id": run_id, **orjson.loads(record)} for run_id, record in rows]

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    pass  # closed already, or owned by a finished thread
            self._all.clear()
        self._local = threading.local()
