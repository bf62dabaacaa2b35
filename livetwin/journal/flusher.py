"""The flusher: writes buffered history and snapshot files on its own thread.

The writer hands it work and goes on committing; history lives in its own database file, so a
flush never holds the journal's write lock. A snapshot is written only after history is flushed
up to the snapshot's seq, so a snapshot never covers history that is not stored.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from livetwin.journal import snapshot
from livetwin.store.base import Store
from livetwin.store.buffer import HistoryBuffer, chunk_rows

log = logging.getLogger(__name__)

_FLUSH = "flush"
_STOP = "stop"


class Flusher:
    """History flushes and snapshot writes, off the writer's thread."""

    def __init__(
        self,
        store: Store,
        lock: threading.RLock,
        history: Callable[[], HistoryBuffer],
        committed_seq: Callable[[], int],
        snapshot_dir: Path,
        interval_s: float,
        snapshot_seq: int = 0,
    ):
        self.store, self.lock = store, lock
        self.history, self.committed_seq = history, committed_seq
        self.snapshot_dir, self.interval_s = snapshot_dir, interval_s
        self.snapshot_seq = snapshot_seq  # the newest snapshot on disk
        self.busy = threading.Lock()  # held while flushing; recovery takes it to pause flushes
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="livetwin-flusher", daemon=True)
        self._thread.start()

    def request(self) -> Future:
        """Flush soon; the future resolves when the rows committed by now are stored."""
        future: Future = Future()
        self._queue.put((_FLUSH, future))
        return future

    def snapshot(self, meta: dict, arrays: dict) -> Future:
        """Flush history, then write this captured snapshot; the future gives its path."""
        future: Future = Future()
        self._queue.put((meta, arrays, future))
        return future

    @property
    def queue_depth(self) -> int:
        """Flushes and snapshots waiting for the flusher thread."""
        return self._queue.qsize()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Finish queued work, flush once more and stop."""
        self._queue.put((_STOP, None))
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.interval_s)
            except queue.Empty:
                self._guarded(self.flush)
                continue
            if item[0] == _STOP:
                self._guarded(self.flush)
                return
            if item[0] == _FLUSH:
                _settle(item[1], self.flush)
            else:
                meta, arrays, future = item
                _settle(future, lambda m=meta, a=arrays: self._write_snapshot(m, a))

    def flush(self) -> None:
        """Store every committed buffered row as one chunk per twin (raises on failure)."""
        with self.busy:
            with self.lock:
                buffer = self.history()
                upto = self.committed_seq()
                segments = [s for s in buffer.segments if s.seqs[-1] <= upto]
            if upto <= buffer.flushed_seq and not segments:
                return
            self.store.write_history(chunk_rows(segments), upto)
            with self.lock:
                buffer.drop(segments, upto)

    def _write_snapshot(self, meta: dict, arrays: dict) -> Path:
        self.flush()
        data = snapshot.encode(meta, arrays)
        path = snapshot.write(self.snapshot_dir, meta["seq"], data)
        self.store.put_snapshot(meta["seq"], data, time.time_ns() // 1_000_000)
        self.snapshot_seq = meta["seq"]
        return path

    @staticmethod
    def _guarded(action: Callable) -> None:
        try:
            action()
        except Exception:
            log.exception("history flush failed; rows stay buffered and are retried")


def _settle(future: Future, action: Callable) -> None:
    try:
        future.set_result(action())
    except Exception as exc:
        log.exception("flusher work failed")
        future.set_exception(exc)
