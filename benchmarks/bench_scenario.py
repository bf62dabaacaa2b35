"""What-if scenario benchmark: the forward run of a fork with bands (the calibration's UKF with no
measurements), and how honest its bands are on synthetic roller lines whose truth is known.

``livetwin bench scenario [--json] [--quick]`` prints one JSON line per scenario:

* ``forward``: 1,000 roller lines x 1,000 model steps from a calibrated state, each step 23 sigma
  points per line through the RK4 x 20 model (what one side of a scenario costs; a scenario runs
  its baseline beside it), bands included. The compiled (jax) backend in float64 and float32:
  ``compile_s`` is the one-off compile of the forecast's shape, ``seconds`` the run after it
  (the target's figure), ``cpu_s`` the processor time it took on all cores together (on a
  shared machine the wall time says more about the neighbours than about the code). NumPy,
  the reference, runs 100 steps and is scaled to 1,000 (``extrapolated``); ``--quick`` does
  that for every backend;
* ``coverage``: 24 lines calibrated over 300 steps, then forecast over the 300 steps that really
  followed, with the inputs that were recorded: the share of later measured speeds inside the
  95 % band, for drags that drift as the calibration assumes and for the demo's systematic wear
  (which the random-walk model does not know); on NumPy and on jax in float32 (the fast
  precision must stay as honest).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from common import Report  # noqa: E402

from livetwin.calibrate import jax_installed, make_filter  # noqa: E402
from livetwin.examples.rollers import DT, roller_fleet, roller_spec  # noqa: E402
from livetwin.scenario.forecast import Columns, forward, measurement_var  # noqa: E402

TARGET_S = 10.0  # 1,000 lines x 1,000 steps with bands


def calibrated(n: int, steps: int, *, seed: int = 1, backend: str = "numpy", **options):
    """A fleet, its filter (`backend`, `precision` in `options`) and the state after `steps`
    calibrated steps; other `options` go to `roller_fleet`."""
    precision = options.pop("precision", "float64")
    sim = roller_fleet(n, seed=seed, **options)
    warm = sim.run(steps)
    filt = make_filter(roller_spec(warm.z[0]), n, backend=backend, precision=precision)
    state, _ = filt.run(filt.init(), warm.inputs, warm.z, DT)
    return sim, filt, state


def time_forward(n: int, steps: int, backend: str, precision: str) -> dict:
    """Seconds to forecast `n` lines `steps` steps with bands; for jax the compile of the
    forecast's shape is done (and timed) first."""
    sim, filt, state = calibrated(n, 20, backend=backend, precision=precision)
    inputs = np.repeat(sim.step().inputs[None], steps, axis=0)
    columns = Columns(filt.plan.model.outputs[:4], filt.plan.model.outputs[4:], filt.plan.params)
    meas_var = measurement_var(filt, state)
    compile_s = 0.0
    if backend == "jax":
        started = time.perf_counter()
        list(forward(filt, state, inputs[:1], DT))
        compile_s = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    for _, results in forward(filt, state, inputs, DT):
        bands = columns.bands(results, meas_var)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert np.isfinite(bands).all()
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "compile_s": compile_s,
        "twin_steps_per_s": n * steps / seconds,
    }


def coverage(wear: float, drift: float, n: int = 24, steps: int = 300, **backend) -> float:
    sim, filt, state = calibrated(n, 300, seed=3, wear=wear, drift=drift, **backend)
    later = sim.run(steps)
    meas_var = measurement_var(filt, state)
    columns = Columns(filt.plan.model.outputs[:4], (), ())
    inside = []
    for first, results in forward(filt, state, later.inputs, DT):
        bands = columns.bands(results, meas_var)  # [steps, N, 4, 3]
        z = later.z[first : first + len(bands)]
        inside.append((bands[..., 1] <= z) & (z <= bands[..., 2]))
    return float(np.mean(np.concatenate(inside)))


def main(json_only: bool = False, quick: bool = False) -> None:
    report = Report(json_only, quick)
    n = 1000
    runs = [("numpy", "float64")]
    runs += [("jax", "float64"), ("jax", "float32")] if jax_installed() else []
    for backend, precision in runs:
        steps = 100 if quick or backend == "numpy" else 1000
        report.note(f"forward: {n} lines x {steps} steps, {backend} {precision}")
        row = time_forward(n, steps, backend, precision)
        full = row["seconds"] * 1000 / steps
        report.emit(
            f"forward-rollers-{n}x1000-{backend}-{precision}",
            values_per_s=None,
            observations_per_s=None,
            target=f"< {TARGET_S:g} s for 1,000 x 1,000 steps (compile not included)",
            meets_target=full < TARGET_S,
            twins=n,
            steps=steps,
            seconds=round(row["seconds"], 2),
            seconds_1000_steps=round(full, 1),
            extrapolated=steps != 1000,
            compile_s=round(row["compile_s"], 2),
            cpu_s=round(row["cpu_s"], 2),  # all cores together
            twin_steps_per_s=round(row["twin_steps_per_s"]),
            backend=backend,
            precision=precision,
        )
    fast = {"backend": "jax", "precision": "float32"} if jax_installed() else None
    for label, wear, drift in (("drift-as-assumed", 0.0, 2e-3), ("demo-wear", 2e-4, 1e-3)):
        for options in ({}, fast) if label == "drift-as-assumed" and fast else ({},):
            name = "-".join(["coverage", label, "24x300", *options.values()])
            report.note(name)
            share = coverage(wear, drift, **options)
            report.emit(
                name,
                values_per_s=None,
                observations_per_s=None,
                target="90-99 % of later measured speeds in the 95 % band",
                meets_target=0.90 <= share <= 0.99,
                coverage_95=round(share, 4),
                wear_per_step=wear,
                drift_per_step=drift,
                backend=options.get("backend", "numpy"),
                precision=options.get("precision", "float64"),
            )
    report.table("what-if scenarios")


if __name__ == "__main__":
    main(json_only="--json" in sys.argv, quick="--quick" in sys.argv)
