"""Calibration test helpers: roller lines simulated and ingested step by step."""

from __future__ import annotations

from conftest import T0

from livetwin.examples.rollers import observations
from livetwin.platform import Platform

STEP_MS = 100


def feed(platform: Platform, sim, ids: list[str], steps: int, start: int) -> list:
    """Simulate `steps` steps and ingest them; returns the true samples."""
    samples, rows = [], []
    for k in range(steps):
        sample = sim.step()
        samples.append(sample)
        rows += observations(sample, ids, T0 + (start + k) * STEP_MS)
    result = platform.ingest(rows)
    assert result.accepted == len(rows), result.rejected[:3]
    return samples
