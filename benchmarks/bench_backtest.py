"""Back-test benchmark: a candidate type replayed beside the recorded one over the same journal
as `bench replay` (100,000 twins x 10 observations, 3 derived values incl. a 10m window), and
the ratio to a plain replay of that journal; and a calibration candidate on a roller fleet
(the batched filter re-run under both settings), against a live calibration run of the same data.

Run with `livetwin bench backtest [--json] [--quick]`; each scenario prints one JSON line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from bench_replay import DERIVED, ROUNDS, STEP_MS, build_journal  # noqa: E402
from common import PROPS, T0, Report, temp_dir  # noqa: E402

REPEAT = 3
CANDIDATES = {
    # the window's length changes; the other two derived values are the recorded ones (the
    # overlay evaluates the changed window again, the others are computed once)
    "backtest_window_change": {"derived": {"a_avg_10m": "avg(a, '15m')"}},
    # every derived value changes, and a rule is added: the overlay evaluates all of them
    "backtest_all_changed": {
        "derived": {"s": "a + b + e", "r": "a * c / (d + 2)", "a_avg_10m": "avg(a, '15m')"},
        "rules": {"high": {"when": "a_avg_10m > 80", "for": "2m"}},
    },
    # the window change, plus a new property: other inputs cannot share the baseline's state,
    # so the candidate is a second engine fed the same batches (the slow path)
    "backtest_two_engines": {
        "properties": {"f": {}},
        "derived": {"a_avg_10m": "avg(a, '15m')"},
    },
}


def main(json_only: bool = False, quick: bool = False) -> None:
    from livetwin.platform import Platform

    report = Report(json_only, quick)
    n_twins = 10_000 if quick else 100_000
    with temp_dir("livetwin-bench-backtest-") as tmp:
        path = tmp / "data"
        report.note(f"building the replay benchmark's journal: {n_twins:,} twins x {ROUNDS} ...")
        build_journal(path, n_twins)
        with Platform(path) as platform:
            report.note("plain replay (Platform.rebuild) ...")
            replay = _median([_rebuild(platform) for _ in range(REPEAT)])
            for scenario, patch in CANDIDATES.items():
                report.note(f"{scenario} ...")
                runs = [_backtest(platform, patch) for _ in range(REPEAT)]
                run = runs[int(np.argsort([r["seconds"] for r in runs])[len(runs) // 2])]
                obs_per_s = run["observations"] / run["seconds"]
                report.emit(
                    scenario,
                    values_per_s=run["observations"] * len(PROPS) / run["seconds"],
                    observations_per_s=obs_per_s,
                    baseline_ratio=obs_per_s / replay["observations_per_s"],
                    target=">= 1000000 obs/s",
                    meets_target=obs_per_s >= 1_000_000,
                    valid=run["twins"] == n_twins and run["differing"] > 0,
                    n=run["observations"],
                    seconds=round(run["seconds"], 3),
                    seconds_all_runs=[round(r["seconds"], 3) for r in runs],
                    cpu_seconds=run["cpu_seconds"],
                    cpu_observations_per_s=round(run["observations"] / run["cpu_seconds"]),
                    seconds_with_series=round(run["seconds_total"], 3),
                    replay_observations_per_s=round(replay["observations_per_s"]),
                    replay_seconds=round(replay["seconds"], 3),
                    twins=run["twins"],
                    derived=list(DERIVED.values()),
                    candidate=patch,
                    overlay=run["overlay"],
                    note="BacktestService.run over the whole journal: read and decode once, "
                    "apply to the baseline (recorded version); the candidate as an overlay "
                    "(only what it changes evaluated again, in the baseline's waves) or, where "
                    "it cannot share the state, a second engine; compare per observation and "
                    "evaluate rules (as columns); median of 3. seconds is the lock-step pass "
                    "(the report's observations_per_s), cpu_seconds the CPU time of its "
                    "thread; seconds_with_series adds the snapshot load and the narrow second pass "
                    "that records the worst twins' series. baseline_ratio: back-test obs/s "
                    "over plain replay obs/s (Platform.rebuild, median of 3, same journal, "
                    "same run); load_avg: what else ran",
                )
        _calibration(report, tmp / "rollers", 200 if quick else 1000, 100 if quick else 300)
    report.table("livetwin bench backtest" + (" (--quick)" if quick else ""))


def _calibration(report: Report, path: Path, n_lines: int, steps: int) -> None:
    """A calibration candidate (other measurement noise) on `n_lines` roller lines x `steps`
    filter steps (numpy backend): the report's filter speed per side, and a live calibration
    of the same data for comparison."""
    from livetwin.examples.rollers import ROLLER_TYPE, SPEEDS, roller_fleet
    from livetwin.platform import Platform

    report.note(f"backtest_calibration: {n_lines:,} roller lines x {steps} steps ...")
    ids = [f"line-{i}" for i in range(n_lines)]
    sim = roller_fleet(n_lines, seed=1)
    with Platform(path) as platform:
        platform.put_type(
            "roller_line",
            {**ROLLER_TYPE, "calibration": {**ROLLER_TYPE["calibration"], "backend": "numpy"}},
        )
        for lo in range(0, steps, 50):
            rows = [r for k in range(lo, min(steps, lo + 50)) for r in _rows(sim, ids, k)]
            platform.ingest(rows)
        end = T0 + steps * 100
        patch = {"calibration": {"measurement_noise": {w: 0.05 for w in SPEEDS}}}
        plan = platform.backtests.plan(
            {"type": "roller_line", "candidate": {"patch": patch}, "from": T0, "to": end}
        )
        started = time.perf_counter()
        platform.backtests.run(plan, "run_bench_calibration")
        total = time.perf_counter() - started
        section = platform.backtests.report("run_bench_calibration")["calibration"]
        started = time.perf_counter()
        record = platform.calibrate("roller_line")
        live = time.perf_counter() - started
    side = section["candidate"]
    report.emit(
        "backtest_calibration",
        values_per_s=side["obs_per_s"],
        observations_per_s=side["filter_steps_per_s"],  # one recorded observation per step
        filter_steps_per_s=side["filter_steps_per_s"],
        obs_per_s=side["obs_per_s"],
        baseline_side=section["baseline"],
        candidate_side=side,
        valid=section["twins"] == n_lines and section["steps"] == steps,
        twins=section["twins"],
        steps=section["steps"],
        seconds_total=round(total, 3),
        live_calibration_filter_steps_per_s=round(record["steps"] * record["twins"] / live),
        live_calibration_seconds=round(live, 3),
        outputs={o["name"]: o["better"] for o in section["outputs"]},
        candidate=patch,
        note="BacktestService.run of a calibration candidate on livetwin.examples.rollers "
        "(4 measured speeds, 4 drags + 7 states per line, RK4 with 20 substeps): the batched "
        "UKF over all lines at once, once per side, from the prior. filter_steps_per_s = "
        "twin-steps per second of the candidate side (obs_per_s: measured values), "
        "seconds_total adds the engine replay and the other side; live_calibration_*: "
        "platform.calibrate on the same data (reads, filters and publishes)",
    )


def _rows(sim, ids: list[str], k: int) -> list[dict]:
    from livetwin.examples.rollers import observations

    return observations(sim.step(), ids, T0 + k * 100)


def _median(runs: list[dict]) -> dict:
    return runs[int(np.argsort([r["seconds"] for r in runs])[len(runs) // 2])]


def _rebuild(platform) -> dict:
    result = platform.rebuild()
    return {
        "seconds": result["observations"] / result["observations_per_s"],
        "observations_per_s": result["observations_per_s"],
    }


def _backtest(platform, patch: dict) -> dict:
    body = {
        "type": "bench",
        "candidate": {"patch": patch},
        "from": T0,
        "to": T0 + ROUNDS * STEP_MS,
        "warmup": 0,
    }
    plan = platform.backtests.plan(body)
    started = time.perf_counter()
    run_id = f"run_bench_{time.perf_counter_ns()}"
    platform.backtests.run(plan, run_id)
    total = time.perf_counter() - started
    report = platform.backtests.report(run_id)
    return {
        "observations": report["observations"]["replayed"],
        "seconds": report["seconds"],
        "seconds_total": total,
        "cpu_seconds": report["cpu_seconds"],
        "overlay": report["candidate_run"] == "overlay",
        "twins": report["observations"]["twins"],
        "differing": sum(o["differing"] for o in report["outputs"]),
    }


if __name__ == "__main__":
    main(json_only="--json" in sys.argv, quick="--quick" in sys.argv)
