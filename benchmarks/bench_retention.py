"""Retention benchmark: disk per twin-day of raw history, 1m and 1h rollups and the journal,
measured on a sample of one-minute data and extrapolated to a year of 1,000 twins under
`retention: {raw: 30d, rollups: {1m: 1y, 1h: forever}}` with journal_retention 7d; and history
query times at each resolution.

Run with `livetwin bench retention [--json] [--quick]`; each scenario prints one JSON line.
The sample is ingested as live telemetry would be, a batch a minute with a history flush each (one
small chunk per twin and minute), then `compact` merges complete days into a chunk per twin and
day; `raw_before_merge` is what raw history took before.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from common import T0, Report, temp_dir  # noqa: E402

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
RETENTION = {"raw": "30d", "rollups": {"1m": "1y", "1h": "forever"}}
SPEC = {
    "properties": {"temp": {}, "humidity": {}, "power": {}},
    "derived": {"comfort": "temp - humidity / 10"},
    "retention": RETENTION,
}
KEEP_DAYS = {"raw": 30, "1m": 365, "1h": 365, "journal": 7}  # a year of data, journal_retention
FLEET = 1_000


def main(json_only: bool = False, quick: bool = False) -> None:
    report = Report(json_only, quick)
    n_twins, days = (20, 1) if quick else (200, 3)
    with temp_dir("livetwin-bench-retention-") as tmp:
        run(report, tmp / "data", n_twins, days)
    report.table("livetwin bench retention" + (" (--quick)" if quick else ""))


def run(report: Report, path: Path, n_twins: int, days: int) -> None:
    from livetwin.jobs.retention import compact_type
    from livetwin.platform import Platform, Settings

    end = T0 + days * DAY
    settings = Settings(run_schedules=False, webhooks=False)
    rng = np.random.default_rng(3)
    twins = [f"room-{k:04d}" for k in range(n_twins)]
    clock = [end]
    with Platform(path, settings=settings, clock=lambda: clock[0]) as platform:
        platform.put_type("room", SPEC)
        report.note(f"ingesting {days} days of one-minute data for {n_twins} twins ...")
        started = time.perf_counter()
        flush = platform.core.writer.flusher.request
        for minute in range(T0, end, MIN):  # as live: a batch a minute, one history flush each
            base = rng.normal(21, 2, n_twins)
            platform.ingest(
                [
                    {
                        "twin": twin,
                        "type": "room",
                        "ts": minute + k,
                        "values": {
                            "temp": round(float(base[k]), 2),
                            "humidity": round(float(rng.uniform(30, 60)), 1),
                            "power": round(float(rng.gamma(2, 50)), 1),
                        },
                    }
                    for k, twin in enumerate(twins)
                ]
            )
            flush()
        ingest_s = time.perf_counter() - started
        platform.snapshot()
        live_raw = table_bytes(path)["history"]
        started = time.perf_counter()
        compacted = compact_type(platform.query, "room", end + HOUR)  # every day is complete
        compact_s = time.perf_counter() - started
        twin_days = n_twins * days
        n_obs = twin_days * 1440
        report.emit(
            "retention: compact (rollups 1m + 1h)",
            values_per_s=3 * n_obs / compact_s,
            observations_per_s=n_obs / compact_s,
            n=n_obs,
            seconds=round(compact_s, 3),
            twins=n_twins,
            ingest_seconds=round(ingest_s, 3),
            rows_written={k: v["rows_written"] for k, v in compacted["rollups"].items()},
            merged_chunks=compacted["merged_chunks"],
        )
        sizes = table_bytes(path)  # before the query benchmark adds a year of rollups
        queries(report, platform, twins[0], end, days, clock)
    per_twin_day = {
        "raw": sizes["history"] / twin_days,
        "raw_before_merge": live_raw / twin_days,
        "1m": sizes["rollups_1m"] / twin_days,
        "1h": sizes["rollups_1h"] / twin_days,
        "journal": sizes["journal"] / twin_days,
    }
    year = {k: per_twin_day[k] * KEEP_DAYS[k] * FLEET for k in KEEP_DAYS}
    total = sum(year.values())
    target_gb = 16.0
    report.emit(
        "retention: disk, a year of 1-minute data for 1,000 twins (extrapolated)",
        values_per_s=None,
        observations_per_s=None,
        target=f"<= {target_gb:g} GB",
        meets_target=total / 1e9 <= target_gb,
        retention=RETENTION,
        journal_retention="7d",
        measured_twin_days=twin_days,
        bytes_per_twin_day={k: round(v) for k, v in per_twin_day.items()},
        kept_days=KEEP_DAYS,
        fleet_twins=FLEET,
        year_gb={k: round(v / 1e9, 3) for k, v in year.items()},
        total_gb=round(total / 1e9, 2),
        raw_year_gb_without_retention=round(per_twin_day["raw"] * 365 * FLEET / 1e9, 2),
    )


def queries(report: Report, platform, twin: str, end: int, days: int, clock: list) -> None:
    """Median time of history queries at each resolution, on the sample's first twin. For the
    rollup queries its stored rollup rows are repeated to fill a whole year before `end`, and
    the clock moves on so that the ranges lie past the raw (and 1m) retention."""
    from livetwin.store.rollup import ROLLUP_PERIOD, decode, encode

    store = platform.core.store
    uid = int(platform.query.selection("room", ids=[twin])["uid"][0])
    for bucket in (MIN, HOUR):
        span = bucket * ROLLUP_PERIOD
        rows = store.rollups(uid, bucket, end - days * DAY, end)
        first = min(p for p, _, _ in rows)
        if bucket == HOUR:  # one row spans 60 days: fill all of it with the sample's days
            grid = decode(rows[0][2])
            filled = grid[:, :, grid[0].sum(axis=0) > 0]
            reps = -(-ROLLUP_PERIOD // filled.shape[2])
            rows = [(first, rows[0][1], encode(np.tile(filled, reps)[:, :, :ROLLUP_PERIOD]))]
        copies = [
            (uid, bucket, period, rows[k % len(rows)][1], rows[k % len(rows)][2])
            for k, period in enumerate(range(first, end - 366 * DAY - span, -span))
        ]
        store.put_rollups(copies)
    cases = [
        ("raw, last hour", end, {"start": end - HOUR}),
        ("raw, last day at 5m", end, {"start": end - DAY, "every": "5m"}),
        ("1m rollups, a day", end + 60 * DAY, {"start": end - DAY, "every": "1m"}),
        ("1m rollups, 300 days at 30m", end + 60 * DAY, {"start": end - 300 * DAY, "every": "30m"}),
        ("1h rollups, a year at 1d", end + 500 * DAY, {"start": end - 365 * DAY, "every": "1d"}),
    ]
    for name, now, args in cases:
        clock[0] = now
        times = []
        for _ in range(5):
            started = time.perf_counter()
            answer = platform.history(twin, ["temp", "power"], end=end, **args)
            times.append(time.perf_counter() - started)
        report.emit(
            f"retention: history query, {name}",
            values_per_s=None,
            observations_per_s=None,
            p50_ms=round(1000 * float(np.median(times)), 2),
            points=len(answer["ts"]),
            resolution=answer["resolution"],
        )
    clock[0] = end


def table_bytes(path: Path) -> dict[str, int]:
    """Bytes of history, rollups per bucket and journal (+ idempotency) pages in the files."""
    with sqlite3.connect(path / "history.db") as conn:
        pages = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
        share = dict(
            conn.execute("SELECT bucket, sum(length(data)) FROM rollups GROUP BY bucket").fetchall()
        )
    rollups = pages.get("rollups", 0)
    stored = sum(share.values()) or 1
    with sqlite3.connect(path / "livetwin.db") as conn:
        journal = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
    return {
        "history": pages.get("history", 0) + pages.get("history_seq_max", 0),
        "rollups_1m": rollups * share.get(MIN, 0) // stored,
        "rollups_1h": rollups * share.get(HOUR, 0) // stored,
        "journal": journal.get("journal", 0) + journal.get("idempotency", 0),
    }
