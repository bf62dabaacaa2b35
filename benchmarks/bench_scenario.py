"""What-if scenario benchmark: the forward run of a fork with bands (the calibration's UKF with no
measurements), and how honest its bands are on synthetic roller lines whose truth is known.

``livetwin bench scenario [--json] [--quick]`` prints one JSON line per scenario:

* ``forward``: 1,000 roller lines x 1,000 model steps (``--quick``: 100 steps, the 1,000-step
  time extrapolated from it) from a calibrated state, each step 23 sigma points per line through
  the RK4 x 20 model (what one side of a scenario costs; a scenario runs its baseline beside it);
  with 2 worker processes too when not quick;
* ``coverage``: 24 lines calibrated over 300 steps, then forecast over the 300 steps that really
  followed, with the inputs that were recorded: the share of later measured speeds inside the
  95 % band, for drags that drift as the calibration assumes and for the demo's systematic wear
  (which the random-walk model does not know).
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

from livetwin.calibrate import chunk_pool, jax_installed, make_filter  # noqa: E402
from livetwin.examples.rollers import DT, roller_fleet, roller_spec  # noqa: E402
from livetwin.scenario.forecast import Columns, forward, measurement_var  # noqa: E402

TARGET_S = 10.0  # 1,000 lines x 1,000 steps with bands


def calibrated(n: int, steps: int, *, seed: int = 1, backend: str = "numpy", **fleet):
    """A fleet, its filter (on `backend`) and the state after `steps` calibrated steps."""
    sim = roller_fleet(n, seed=seed, **fleet)
    warm = sim.run(steps)
    filt = make_filter(roller_spec(warm.z[0]), n, backend=backend)
    state, _ = filt.run(filt.init(), warm.inputs, warm.z, DT)
    return sim, filt, state


def time_forward(n: int, steps: int, workers: int, backend: str = "numpy") -> dict:
    sim, filt, state = calibrated(n, 20, backend=backend)
    inputs = np.repeat(sim.step().inputs[None], steps, axis=0)
    columns = Columns(filt.plan.model.outputs[:4], filt.plan.model.outputs[4:], filt.plan.params)
    meas_var = measurement_var(filt, state)
    with chunk_pool(workers) as pool:
        filt.executor = pool
        if backend == "jax":  # compile outside the timing (reported by the calibration rows)
            list(forward(filt, state, inputs[:1], DT))
        started = time.perf_counter()
        for _, results in forward(filt, state, inputs, DT):
            bands = columns.bands(results, meas_var)
        seconds = time.perf_counter() - started
    assert np.isfinite(bands).all()
    return {"seconds": seconds, "twin_steps_per_s": n * steps / seconds}


def coverage(wear: float, drift: float, n: int = 24, steps: int = 300) -> float:
    sim, filt, state = calibrated(n, 300, seed=3, wear=wear, drift=drift)
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
    n, steps = 1000, 100 if quick else 1000
    runs = [("numpy", w) for w in ((0,) if quick else (0, 2))]
    runs += [("jax", 0)] if jax_installed() else []
    for backend, workers in runs:
        report.note(f"forward: {n} lines x {steps} steps, {backend}, {workers or 1} process(es)")
        row = time_forward(n, steps, workers, backend)
        full = row["seconds"] * 1000 / steps
        report.emit(
            f"forward-rollers-{n}x1000-{backend}-{workers or 1}proc",
            values_per_s=None,
            observations_per_s=None,
            target=f"< {TARGET_S:g} s for 1,000 x 1,000 steps",
            meets_target=full < TARGET_S,
            twins=n,
            steps=steps,
            seconds=round(row["seconds"], 2),
            seconds_1000_steps=round(full, 1),
            extrapolated=steps != 1000,
            twin_steps_per_s=round(row["twin_steps_per_s"]),
            workers=workers,
            backend=backend,
        )
    for label, wear, drift in (("drift-as-assumed", 0.0, 2e-3), ("demo-wear", 2e-4, 1e-3)):
        report.note(f"coverage: {label}")
        share = coverage(wear, drift)
        report.emit(
            f"coverage-{label}-24x300",
            values_per_s=None,
            observations_per_s=None,
            target="90-99 % of later measured speeds in the 95 % band",
            meets_target=0.90 <= share <= 0.99,
            coverage_95=round(share, 4),
            wear_per_step=wear,
            drift_per_step=drift,
        )
    report.table("what-if scenarios")


if __name__ == "__main__":
    main(json_only="--json" in sys.argv, quick="--quick" in sys.argv)
