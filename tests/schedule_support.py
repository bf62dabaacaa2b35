"""Test helpers for the scheduler tests: a fresh Scheduler on a platform, replacing the
platform's own one if it has one (one scheduler at a time may own `schedule.db`), and a database
whose next commits fail."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from livetwin.schedule import Scheduler


def new_scheduler(platform: Any, **options) -> Scheduler:
    """A new, not yet started Scheduler with `options` that replaces the platform's own."""
    platform.scheduler.stop()
    platform.scheduler = platform.new_scheduler(**options)
    return platform.scheduler


class FailingCommit:
    """Wraps a scheduler's database (`scheduler._store`): its next `failures` write
    transactions fail at their commit like a full disk would; the real `write()` then rolls
    each back, so nothing of them is stored."""

    def __init__(self, db: Any, failures: int = 1):
        self.db, self.failures = db, failures

    @contextmanager
    def write(self) -> Iterator[Any]:
        with self.db.write() as conn:
            yield conn
            if self.failures:
                self.failures -= 1
                raise OSError("disk full")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)
