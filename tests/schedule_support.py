"""Test helper for the scheduler tests: a fresh Scheduler on a platform, replacing the
platform's own one if it has one (one scheduler at a time may own `schedule.db`)."""

from __future__ import annotations

from typing import Any

from livetwin.schedule import Scheduler


def new_scheduler(platform: Any, **options) -> Scheduler:
    """A new, not yet started Scheduler with `options` that replaces the platform's own."""
    platform.scheduler.stop()
    platform.scheduler = Scheduler(platform, **options)
    return platform.scheduler
