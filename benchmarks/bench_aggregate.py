"""Aggregates over children: time per child batch when 100,000 children under 1,000 parents
keep their parents' sums, averages, maxima and filtered counts current (engine only, no I/O),
against the same batches under parents without aggregates.

Run with `livetwin bench aggregate [--json] [--quick]`; each scenario prints one JSON line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from common import T0, Report  # noqa: E402

PARENT = {
    "name": "station",
    "properties": {"level": {}},
    "children": ["pump"],
    "derived": {
        "total_flow": "sum(children.flow)",
        "mean_temp": "avg(children.temperature)",
        "hottest": "max(children.temperature)",
        "busy": "count(children.where(flow > 5))",
        "per_level": "total_flow / level",
    },
}
CHILD = {"name": "pump", "properties": {"flow": {}, "temperature": {}}}
BATCHES = (1_000, 10_000, 100_000)
REPEAT = 20


def main(json_only: bool = False, quick: bool = False) -> None:
    report = Report(json_only, quick)
    n_parents, n_children = (100, 10_000) if quick else (1_000, 100_000)
    report.note(f"{n_children:,} children under {n_parents:,} parents ...")
    with_aggs, linking = fleet(PARENT, n_parents, n_children)
    plain, _ = fleet({**PARENT, "derived": {}}, n_parents, n_children)
    report.emit(
        "aggregate: link a new fleet",
        values_per_s=None,
        observations_per_s=n_children / linking,
        seconds=round(linking, 3),
        twins=n_children,
        parents=n_parents,
    )
    rng = np.random.default_rng(3)
    for size in (b for b in BATCHES if b <= n_children):
        times, base = [], []
        for k in range(REPEAT if size < n_children else 5):
            batch = child_batch(rng, n_children, size, T0 + 10_000 * (k + 2))
            base.append(timed(plain, batch))
            times.append(timed(with_aggs, batch))
        p50, p99 = (float(x) for x in np.percentile(times, [50, 99]) * 1000)
        median = float(np.median(times))
        report.emit(
            f"aggregate: child batch of {size:,}",
            values_per_s=2 * size / median,
            observations_per_s=size / median,
            p99_ms=p99,
            p50_ms=round(p50, 2),
            baseline_ratio=median / float(np.median(base)),
            plain_p50_ms=round(float(np.median(base)) * 1000, 2),
            twins=n_children,
            parents=n_parents,
        )
    report.table("livetwin bench aggregate" + (" (--quick)" if quick else ""))


def fleet(parent: dict, n_parents: int, n_children: int):
    """An engine holding the parents and their children (children spread evenly); the seconds
    the children's first batch took (creating them and linking them to their parents)."""
    from livetwin.engine.batch import Batch
    from livetwin.engine.engine import Engine
    from livetwin.spec.types import TwinTypeSpec, compile_type

    engine = Engine()
    for spec in (parent, CHILD):
        engine.define_type(compile_type(TwinTypeSpec.model_validate(spec), 1))
    parents = [f"s{k}" for k in range(n_parents)]
    levels = np.ones((1, n_parents))
    engine.apply(Batch("station", parents, np.full(n_parents, T0), ("level",), levels))
    twins = [f"p{k}" for k in range(n_children)]
    of = [parents[k % n_parents] for k in range(n_children)]
    values = np.vstack([np.full(n_children, 4.0), np.full(n_children, 20.0)])
    ts = np.full(n_children, T0 + 1)
    started = time.perf_counter()
    engine.apply(Batch("pump", twins, ts, ("flow", "temperature"), values, of))
    return engine, time.perf_counter() - started


def child_batch(rng, n_children: int, size: int, ts: int):
    from livetwin.engine.batch import Batch

    picked = rng.choice(n_children, size, replace=False)
    values = np.vstack([rng.uniform(0, 10, size), rng.uniform(10, 80, size)])
    return Batch(
        "pump", [f"p{k}" for k in picked], np.full(size, ts), ("flow", "temperature"), values
    )


def timed(engine, batch) -> float:
    started = time.perf_counter()
    engine.apply(batch)
    return time.perf_counter() - started


if __name__ == "__main__":
    main(json_only="--json" in sys.argv, quick="--quick" in sys.argv)
