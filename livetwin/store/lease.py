"""A leader lease on PostgreSQL: one process at a time holds it, another takes it over when the
holder is lost.

The lease is a session-level advisory lock (`pg_try_advisory_lock`) on a connection of its own,
keyed by a name inside a schema. The server drops the lock with the session, so a holder that
dies, or whose connection breaks, loses the lease at once; followers try again every `retry_s`
and the first to succeed leads. A holder checks its connection every `retry_s` too, and learns
it lost the lease within one interval. No home-made consensus: PostgreSQL decides.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from livetwin.errors import Unavailable

log = logging.getLogger(__name__)

__all__ = ["Lease", "holder_name"]

# The holder of an advisory lock on one bigint key (classid: high 32 bits, objid: low 32 bits).
_HOLDER = (
    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext(%s)::bigint"
)


def holder_name() -> str:
    """How this process names itself to PostgreSQL (host and pid): who holds a lease."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """The lease `key` (e.g. "<schema>.scheduler") on the server at `url`.

    `try_acquire()` tries once; `start()` keeps trying (and, once held, checking) on a thread of
    its own, calling `on_acquired()` when this process becomes the leader and `on_lost()` when it
    stops being one. `holder()` names the process that leads now. `close()` lets it go.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        retry_s: float = 1.0,
        timeout_s: float = 5.0,
        on_acquired: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
    ):
        self.url, self.key, self.retry_s, self.timeout_s = url, key, retry_s, timeout_s
        self.on_acquired, self.on_lost = on_acquired, on_lost
        self._conn = None  # the session holding the lock, while held
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    @property
    def held(self) -> bool:
        return self._conn is not None

    def _connect(self):
        import psycopg

        return psycopg.connect(
            self.url,
            autocommit=True,
            application_name=f"livetwin-lease {holder_name()}",
            connect_timeout=max(1, round(self.timeout_s)),
        )

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; True if this process holds it now. Unavailable
        when the server cannot be reached."""
        import psycopg

        with self._mutex:
            if self._conn is not None:
                return True
            try:
                conn = self._connect()
                (held,) = conn.execute(
                    "SELECT pg_try_advisory_lock(hashtext(%s))", (self.key,)
                ).fetchone()
            except psycopg.OperationalError as exc:
                raise self._unreachable(exc) from None
            if not held:
                conn.close()
                return False
            self._conn = conn
            return True

    def holder(self) -> str | None:
        """The process (host:pid) that holds the lease now, None if nobody does; Unavailable
        when the server cannot be reached (or takes no more connections)."""
        import psycopg

        try:
            with self._connect() as conn:
                row = conn.execute(_HOLDER, (self.key,)).fetchone()
        except psycopg.OperationalError as exc:
            raise self._unreachable(exc) from None
        return row[0].removeprefix("livetwin-lease ") if row else None

    def _unreachable(self, exc: Exception) -> Unavailable:
        return Unavailable(
            f"cannot reach PostgreSQL for the lease {self.key}: {exc}".strip(),
            field="LIVETWIN_DATABASE_URL",
            fix="check the database server; the lease is tried again by itself",
        )

    def _alive(self) -> bool:
        """Whether the session that holds the lock still answers."""
        try:
            self._conn.execute("SELECT 1")
            return True
        except Exception:
            return False

    def release(self) -> None:
        """Let the lease go but keep trying to take it again (`on_lost` is not called)."""
        with self._mutex:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _lose(self) -> None:
        self.release()
        log.warning("lost the lease %s", self.key)
        if self.on_lost is not None:
            self.on_lost()

    def _loop(self) -> None:
        while not self._stop.wait(self.retry_s):
            try:
                if self.held:
                    if not self._alive():
                        self._lose()
                elif self.try_acquire():
                    log.info("took the lease %s", self.key)
                    if self.on_acquired is not None:
                        self.on_acquired()
            except Unavailable as exc:
                log.debug("the lease %s: %s", self.key, exc.message)
            except Exception:
                log.exception("the lease %s: unexpected error", self.key)

    def start(self) -> Lease:
        """Keep trying to take the lease (and checking it once held) every `retry_s`."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name=f"livetwin-lease-{self.key}", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop trying and let the lease go (another process may take it at once)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.timeout_s + self.retry_s)
        with self._mutex:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
