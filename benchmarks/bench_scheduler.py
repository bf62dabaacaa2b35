"""Scheduler benchmarks: joined events dispatched per second in-process, and the latency of time
triggers on the real clock.

Run with `livetwin bench scheduler [--json] [--quick]`; each scenario prints one JSON line.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from common import Report, percentile_ms, temp_dir  # noqa: E402

from livetwin.platform import Platform, Settings  # noqa: E402
from livetwin.schedule import Scheduler  # noqa: E402

JOIN_TARGET = 10_000  # joined events per second
LATENCY_TARGET_MS = 50.0  # p99
BATCH = 500  # events per post_events call
POSTERS = 8  # threads posting one event per call


def main(json_only: bool = False, quick: bool = False) -> None:
    report = Report(json_only, quick)
    with temp_dir("livetwin-bench-scheduler-") as tmp:
        joins_batched(report, tmp / "batched", 20_000 if quick else 100_000)
        joins_single(report, tmp / "single", 4_000 if quick else 20_000)
        trigger_latency(report, tmp / "latency", 100 if quick else 500)
    report.table("livetwin bench scheduler" + (" (--quick)" if quick else ""))


def _services(path: Path, concurrency: int) -> tuple[Platform, Scheduler, list]:
    platform = Platform(path, settings=Settings(run_schedules=False))
    scheduler = platform.scheduler  # not started: run_schedules=False
    done: list = []
    scheduler.register(
        "joined", lambda ctx: done.append(1), events=["data", "model"], concurrency=concurrency
    )
    return platform, scheduler.start(), done


def _pairs(n_events: int, offset: int = 0) -> list[dict]:
    """n_events/2 keyed pairs: each key's two events join into one run."""
    return [
        {"name": name, "key": f"k{i}", "data": {"i": i}}
        for i in range(offset, offset + n_events // 2)
        for name in ("data", "model")
    ]


def joins_batched(report: Report, path: Path, n_events: int) -> None:
    """Events posted in batches of BATCH (one transaction each) into a 2-event keyed join."""
    report.note(f"posting {n_events:,} events in batches of {BATCH} ...")
    platform, scheduler, done = _services(path, concurrency=4)
    try:
        bodies = _pairs(n_events)
        batches = [bodies[k : k + BATCH] for k in range(0, len(bodies), BATCH)]
        scheduler.post_events(_pairs(2 * BATCH, offset=10**9))  # warm-up, not timed
        scheduler.wait_idle(120)
        done.clear()
        started = time.perf_counter()
        for batch in batches:
            scheduler.post_events(batch)
        dispatched = time.perf_counter() - started
        scheduler.wait_idle(600)
        completed = time.perf_counter() - started
        _emit_joins(report, "joins_batched", n_events, dispatched, completed, len(done), 1, True)
    finally:
        scheduler.stop()
        platform.close()


def joins_single(report: Report, path: Path, n_events: int) -> None:
    """One event per call from POSTERS threads (what HTTP clients do): group commit at work."""
    report.note(f"posting {n_events:,} events one per call from {POSTERS} threads ...")
    platform, scheduler, done = _services(path, concurrency=4)
    try:
        bodies = _pairs(n_events)
        shares = [bodies[k::POSTERS] for k in range(POSTERS)]  # a pair may span threads

        def post(share: list[dict]) -> None:
            for body in share:
                scheduler.post_events([body])

        threads = [threading.Thread(target=post, args=(s,)) for s in shares]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dispatched = time.perf_counter() - started
        scheduler.wait_idle(600)
        completed = time.perf_counter() - started
        _emit_joins(report, "joins_single_posts", n_events, dispatched, completed, len(done),
                    POSTERS, False)  # fmt: skip
    finally:
        scheduler.stop()
        platform.close()


def _emit_joins(
    report: Report,
    scenario: str,
    n_events: int,
    dispatched_s: float,
    completed_s: float,
    runs: int,
    threads: int,
    targeted: bool,
) -> None:
    """One JSON line; the target applies to batched posts (one fsync per call bounds the rest)."""
    rate = n_events / dispatched_s
    report.emit(
        scenario,
        values_per_s=None,
        observations_per_s=None,
        target=f">= {JOIN_TARGET:,} joined events/s dispatched" if targeted else None,
        meets_target=rate >= JOIN_TARGET if targeted else None,
        valid=runs == n_events // 2,
        n=n_events,
        seconds=round(dispatched_s, 3),
        joined_events_per_s=round(rate),
        runs=runs,
        runs_completed_per_s=round(runs / completed_s),
        events_completed_per_s=round(n_events / completed_s),
        threads=threads,
    )


def trigger_latency(report: Report, path: Path, n: int) -> None:
    """Once-triggers due at staggered instants: the delay from due to the function starting."""
    report.note(f"{n} once-triggers on the real clock ...")
    platform = Platform(path, settings=Settings(run_schedules=False))
    scheduler = platform.scheduler  # not started: run_schedules=False
    late_ms: list[float] = []
    scheduler.register(
        "timed",
        lambda ctx: late_ms.append(time.time() * 1000 - ctx.trigger["scheduled_for"]),
        concurrency=8,
    )
    scheduler.start()
    try:
        spacing_ms = 7  # a trigger every 7 ms, off any tick grid
        start = platform.clock() + 2000 + 10 * n  # after all are created (8 threads adding)

        def add(indices: range) -> None:
            for i in indices:
                at = start + i * spacing_ms
                scheduler.add_schedule({"function": "timed", "trigger": {"kind": "once", "at": at}})

        threads = [threading.Thread(target=add, args=(range(k, n, 8),)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if platform.clock() >= start:
            report.note("creating the triggers took longer than planned: latencies are too high")
        deadline = time.monotonic() + 60 + n * spacing_ms / 1000
        while len(late_ms) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        scheduler.wait_idle(60)
    finally:
        scheduler.stop()
        platform.close()
    samples = [max(0.0, x) / 1000 for x in late_ms]
    p99 = percentile_ms(samples, 99)
    report.emit(
        "trigger_latency",
        values_per_s=None,
        observations_per_s=None,
        p99_ms=p99,
        p50_ms=round(percentile_ms(samples, 50), 2) if samples else None,
        max_ms=round(max(late_ms), 2) if late_ms else None,
        target=f"p99 < {LATENCY_TARGET_MS:g} ms",
        meets_target=p99 is not None and p99 < LATENCY_TARGET_MS,
        valid=len(late_ms) == n,
        triggers=n,
    )


if __name__ == "__main__":
    main(json_only="--json" in sys.argv, quick="--quick" in sys.argv)
