"""Calibration benchmark: filter-steps per second of the batched UKF on the demo models (NumPy
and the compiled JAX backend, with their ratio), the ratio to FilterPy run twin by twin (when
installed: ``pip install 'livetwin[bench]'``), and accuracy on synthetic fleets.

``livetwin bench calibrate [--json] [--quick]`` prints one JSON line per scenario. A
"filter-step" is one twin advanced by one predict + update.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from common import load_avg  # noqa: E402
from synthetic import coverage, model_change, rmse, run_synthetic, true_calibrated  # noqa: E402

from livetwin.calibrate import jax_installed, make_filter  # noqa: E402
from livetwin.calibrate.batch import chunk_pool  # noqa: E402
from livetwin.calibrate.spec import CalibrationSpec  # noqa: E402
from livetwin.calibrate.ukf import BatchUKF  # noqa: E402
from livetwin.examples.rollers import TENSIONS, roller_fleet, roller_spec  # noqa: E402
from livetwin.models.chain import PARAMS, STATES, TRUE_PARAMS, chain_fleet  # noqa: E402
from livetwin.models.simulate import FleetSimulator  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    name: str
    fleet: Callable[[int], FleetSimulator]
    spec: Callable[[FleetSimulator], CalibrationSpec]


def _roller_spec(sim: FleetSimulator) -> CalibrationSpec:
    return roller_spec(sim.step().z)


def _chain_spec(model: str) -> Callable[[FleetSimulator], CalibrationSpec]:
    def spec(sim: FleetSimulator) -> CalibrationSpec:
        prior = {p: (v, 0.4 * v) for p, v in zip(PARAMS, TRUE_PARAMS, strict=True)}
        prior.update({s: (0.0, 0.05) for s in STATES})
        return CalibrationSpec(
            model=model,
            measured=("x1", "x2", "x3"),
            prior=prior,
            process_noise={p: 1e-4 for p in PARAMS},
            meas_noise={x: 1e-3 for x in ("x1", "x2", "x3")},
        )

    return spec


ROLLERS = Scenario("rollers-4-drags-rk4x20", lambda n: roller_fleet(n, seed=1), _roller_spec)
CHAIN = Scenario(
    "chain-9-params-rk4x200",
    lambda n: chain_fleet(n, seed=1),
    _chain_spec("livetwin.models.chain:chain3"),
)
CHAIN_LOOP = Scenario(
    "chain-9-params-rk4x200-substep-loop",
    lambda n: chain_fleet(n, seed=1),
    _chain_spec("livetwin.models.chain:chain3_loop"),
)


def time_steps(
    scenario: Scenario,
    n: int,
    steps: int,
    *,
    workers: int = 0,
    chunk_size: int | None = None,
    backend: str = "numpy",
    precision: str = "float64",
) -> dict:
    """Median wall time of `steps` UKF steps of `n` twins (simulation and compiling not timed)."""
    sim = scenario.fleet(n)
    spec = scenario.spec(sim)
    samples = [sim.step() for _ in range(steps + 1)]
    options = {} if chunk_size is None else {"chunk_size": chunk_size}
    with chunk_pool(workers) as pool:
        flt = make_filter(spec, n, backend=backend, precision=precision, executor=pool, **options)
        state = flt.init()
        state, _ = flt.step(state, samples[0].inputs, samples[0].z, sim.dt)  # warm-up, compile
        times = []
        for s in samples[1:]:
            t0 = time.perf_counter()
            state, _ = flt.step(state, s.inputs, s.z, sim.dt)
            times.append(time.perf_counter() - t0)
    per_step = float(np.median(times))
    suffix = "" if backend == "numpy" else f"-{backend}"
    suffix += "-float32" if precision == "float32" else ""
    row = {
        "scenario": scenario.name + suffix + (f"-{workers}-workers" if workers else ""),
        "n_twins": n,
        "filter_steps_per_s": round(n / per_step, 1),
        "us_per_filter_step": round(per_step / n * 1e6, 2),
        "filter_vars": len(flt.names),
        "chunk_size": flt.chunk_size,
        "backend": backend,
        "load_avg": load_avg(),  # other work on the machine while this was timed
    }
    if backend == "jax":
        row["precision"] = precision
        row["compile_s"] = round(sum(flt.compile_seconds.values()), 2)
    return row


def float32_cost(scenario: Scenario, n: int, steps: int) -> dict:
    """The accuracy cost of float32 on the jax backend: relative difference of the parameter
    means (and stds) from float64 after `steps` steps on the same data."""
    sim = scenario.fleet(n)
    spec = scenario.spec(sim)
    f64 = make_filter(spec, n, backend="jax")
    f32 = make_filter(spec, n, backend="jax", precision="float32")
    a, b = f64.init(), f32.init()
    for _ in range(steps):
        s = sim.step()
        a, ra = f64.step(a, s.inputs, s.z, sim.dt)
        b, rb = f32.step(b, s.inputs, s.z, sim.dt)
    ok = ~(a.failed | b.failed)
    mean_err = np.abs(rb.param_mean[ok] / ra.param_mean[ok] - 1)
    std_err = np.abs(rb.param_std[ok] / ra.param_std[ok] - 1)
    return {
        "scenario": scenario.name + "-jax-float32-accuracy",
        "n_twins": n,
        "steps": steps,
        "param_mean_rel_diff_median": float(f"{np.median(mean_err):.3g}"),
        "param_mean_rel_diff_max": float(f"{np.max(mean_err):.3g}"),
        "param_std_rel_diff_median": float(f"{np.median(std_err):.3g}"),
        "failed_twins_float32": int(b.failed.sum()),
        "failed_twins_float64": int(a.failed.sum()),
    }


def jax_rows(quick: bool = False) -> list[dict]:
    """The compiled backend beside NumPy in the same run: the roller line and the chain with its
    explicit 200-substep loop at N = 1,000, float64 and float32, with the ratio to NumPy."""
    if not jax_installed():
        return [{"scenario": "jax", "skipped": "JAX is not installed: pip install 'livetwin[jax]'"}]
    rows = []
    for scenario, numpy_steps, jax_steps in ((ROLLERS, 5, 10), (CHAIN_LOOP, 2, 5)):
        base = time_steps(scenario, 1000, numpy_steps)
        base["coverage_95"] = base["rmse"] = None
        rows.append(base)
        for precision in ("float64",) if quick else ("float64", "float32"):
            row = time_steps(scenario, 1000, jax_steps, backend="jax", precision=precision)
            row["ratio_to_numpy"] = round(row["filter_steps_per_s"] / base["filter_steps_per_s"], 1)
            rows.append(row)
    if not quick:
        rows.append(float32_cost(CHAIN_LOOP, 200, 100))
    return rows


def filterpy_steps_per_s(scenario: Scenario, twins: int = 2, steps: int = 3) -> float | None:
    """FilterPy's UnscentedKalmanFilter, twin by twin, on the same model and noise; None when
    FilterPy is not installed."""
    try:
        from filterpy.kalman import MerweScaledSigmaPoints, UnscentedKalmanFilter
    except ImportError:
        return None
    sim = scenario.fleet(twins)
    flt = BatchUKF(scenario.spec(sim), twins)  # only for its compiled plan
    plan = flt.plan
    n, p = plan.n, plan.n_params
    samples = [sim.step() for _ in range(steps)]
    spent = 0.0
    for i in range(twins):
        u_now = {"u": samples[0].inputs[i : i + 1]}

        def fx(x, dt, u_now=u_now, i=i):
            params = np.empty((1, len(plan.model.params)))
            params[:, plan.cal_idx] = plan.tf.to_param(x[None, :p])
            params[:, plan.fixed_idx] = plan.fixed[i]
            new, _ = plan.model.step(x[None, p:], params, u_now["u"], dt)
            return np.concatenate([x[:p], new[0]])

        def hx(x):  # in these models the measured outputs are the first dynamic states
            return x[p + plan.meas_idx]

        ukf = UnscentedKalmanFilter(
            dim_x=n,
            dim_z=len(plan.meas_idx),
            dt=sim.dt,
            fx=fx,
            hx=hx,
            points=MerweScaledSigmaPoints(n, alpha=1.0, beta=2.0, kappa=0.0),
        )
        ukf.x, ukf.P = plan.prior_mean[i].copy(), plan.prior_cov[i].copy()
        ukf.Q = plan.q[i] if plan.q is not None else np.zeros((n, n))
        ukf.R = plan.r[i]
        t0 = time.perf_counter()
        for s in samples:
            u_now["u"] = s.inputs[i : i + 1]
            ukf.predict()
            ukf.update(s.z[i])
        spent += time.perf_counter() - t0
    return twins * steps / spent


def accuracy(scenario: Scenario, n: int, steps: int, outputs: tuple[str, ...]) -> dict:
    """Coverage of the 95 % parameter bands (mean over the last 10 % of steps) and the RMSE of
    the named virtual sensors at the end, on a synthetic fleet with known truth."""
    sim = scenario.fleet(n)
    flt = BatchUKF(scenario.spec(sim), n)
    result = run_synthetic(flt, sim, steps)
    tail = max(1, steps // 10)
    return {
        "scenario": scenario.name + "-accuracy",
        "n_twins": n,
        "steps": steps,
        "filter_steps_per_s": round(n * steps / result.filter_seconds, 1),
        "us_per_filter_step": round(result.filter_seconds / (n * steps) * 1e6, 2),
        "coverage_95": round(float(np.mean(result.coverage[-tail:])), 4),
        "coverage_95_final": round(coverage(result.result, true_calibrated(flt, result.truth)), 4),
        "rmse": round(rmse(result.result, result.truth, outputs), 4) if outputs else None,
        "rmse_of": list(outputs),
        "failed_twins": int(result.state.failed.sum()),
        "filterpy_ratio": None,
        "load_avg": load_avg(),
    }


def run(quick: bool = False) -> list[dict]:
    """All scenarios; `quick` skips the 10,000-twin runs and shortens the accuracy runs."""
    sizes = (1, 1000) if quick else (1, 1000, 10_000)
    rows: list[dict] = []
    for scenario in (ROLLERS, CHAIN):
        ratio_base = filterpy_steps_per_s(scenario)
        for n in sizes:
            row = time_steps(scenario, n, steps={1: 50, 1000: 5, 10_000: 2}[n])
            row["filterpy_ratio"] = (
                None if ratio_base is None else round(row["filter_steps_per_s"] / ratio_base, 1)
            )
            row["coverage_95"] = row["rmse"] = None
            rows.append(row)
        if not quick:
            rows.append(_with_ratio(time_steps(scenario, 10_000, 2, workers=2), ratio_base))
    if not _has_filterpy():
        rows.append({"scenario": "filterpy", "skipped": FILTERPY_MISSING})
    rows += jax_rows(quick)
    rows.append(accuracy(ROLLERS, 200, 200 if quick else 400, TENSIONS))
    rows.append(accuracy(CHAIN, 100, 150 if quick else 300, ("f1", "f2", "f3")))
    rows += fmu_rows(steps=10 if quick else 40)
    rows.append(model_fit_row(200 if quick else 1000, 480 if quick else 1920))
    return rows


def model_fit_row(n: int, steps: int) -> dict:
    """The model-fit check (`livetwin.calibrate.fit`) on `n` rooms over `steps` 15-minute steps,
    a tenth of them given an unmodelled heat gain half-way: detection delay and false alarms."""
    run = model_change(n, steps, n // 10)
    delays = run["delays"]
    found = delays[delays >= 0]
    return {
        "scenario": "model-fit check, rooms with an unmodelled 1.5 kW gain half-way",
        "n_twins": n,
        "steps": steps,
        "detected": float(np.mean(delays >= 0)),
        "detect_steps_median": float(np.median(found)) if len(found) else None,
        "detect_steps_max": int(found.max()) if len(found) else None,
        "flagged_at_end": run["flagged_at_end"],
        "false_alarms_per_twin_day": round(run["false_alarms_per_twin_day"], 4),
    }


def fmu_rows(steps: int) -> list[dict]:
    """FMU filter-steps/s, serial vs a 2-process pool, on the test suite's first-order FMU
    (FMI 2.0 co-simulation, built here with pythonfmu)."""
    import subprocess
    import tempfile

    try:
        import fmpy  # noqa: F401
    except ImportError:
        return [{"scenario": "fmu", "skipped": "install livetwin[fmu] and pythonfmu"}]
    source = Path(__file__).resolve().parent.parent / "tests" / "fmus" / "FirstOrder.py"
    with tempfile.TemporaryDirectory() as tmp:
        build = [sys.executable, "-m", "pythonfmu", "build", "-f", str(source), "-d", tmp]
        done = subprocess.run(build, capture_output=True, text=True)
        if done.returncode != 0:
            return [{"scenario": "fmu", "skipped": f"pythonfmu build failed: {done.stderr[-200:]}"}]
        path = next(Path(tmp).glob("*.fmu"))
        return [fmu_steps(path, n_twins=20, steps=steps, workers=w) for w in (0, 2)]


def fmu_steps(
    path: str,
    *,
    n_twins: int = 20,
    steps: int = 20,
    workers: int = 0,
    dt: float = 1.0,
    seed: int = 0,
) -> dict:
    """Filter-steps per second of a `BatchUKF` calibrating the FMU's first parameter for
    `n_twins` twins (measured: its first output; other parameters fixed at their start values),
    with the FMU's rows run serially (``workers=0``) or over `workers` processes.
    """
    from fmpy import read_model_description

    from livetwin.models.fmu import fmu_model

    model = fmu_model(path, workers=workers)
    start = {v.name: _number(v.start) for v in read_model_description(str(path)).modelVariables}
    rng = np.random.default_rng(seed)
    p0 = np.array([start.get(p) or 1.0 for p in model.params])
    truth = np.repeat(p0[None, :], n_twins, axis=0)
    truth[:, 0] *= 1.0 + 0.2 * rng.standard_normal(n_twins)
    u0 = np.array([start.get(u) or 1.0 for u in model.inputs])
    spec = CalibrationSpec(
        model=model,
        measured=[model.outputs[0]],
        prior={model.params[0]: (p0[0], 0.3 * abs(p0[0]) or 1.0)},
        fixed={p: p0[j] for j, p in enumerate(model.params) if j},
        meas_noise={model.outputs[0]: 0.01},
    )
    times = []
    try:
        flt = BatchUKF(spec, n_twins)
        state = flt.init()
        for k in range(steps + 1):
            u = u0 * rng.uniform(0.5, 1.5, size=(n_twins, len(u0)))
            z = model.fn(truth, u, dt)[:, :1] + 0.01 * rng.standard_normal((n_twins, 1))
            t0 = time.perf_counter()
            state, _ = flt.step(state, u, z, dt)
            if k:  # the first step starts the FMU's pool
                times.append(time.perf_counter() - t0)
    finally:
        model.fn.close()
    per_step = float(np.median(times))
    return {
        "scenario": "fmu-pooled" if workers else "fmu-serial",
        "n_twins": n_twins,
        "workers": workers,
        "rows_per_step": n_twins * 3,
        "filter_steps_per_s": n_twins / per_step,
        "us_per_filter_step": per_step / n_twins * 1e6,
        "load_avg": load_avg(),
    }


FILTERPY_MISSING = (
    "filterpy_ratio is null: FilterPy is not installed; pip install 'livetwin[bench]' "
    "(or `make bench`) for the comparison"
)


def _has_filterpy() -> bool:
    import importlib.util

    return importlib.util.find_spec("filterpy") is not None


def _number(value: object) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _with_ratio(row: dict, base: float | None) -> dict:
    row["filterpy_ratio"] = None if base is None else round(row["filter_steps_per_s"] / base, 1)
    row["coverage_95"] = row["rmse"] = None
    return row


def main(json_only: bool = False, quick: bool = False) -> None:
    """Print one JSON line per scenario (the `livetwin bench calibrate` entry point)."""
    rows = run(quick=quick)
    for row in rows:
        print(json.dumps(row), flush=True)
    if not json_only:
        for row in rows:
            print(table_line(row, _has_filterpy()), file=sys.stderr)
        if not _has_filterpy():
            print(FILTERPY_MISSING, file=sys.stderr)


def table_line(row: dict, filterpy: bool) -> str:
    """One row of the table printed after the JSON lines (`filterpy`: whether it is installed)."""
    if "skipped" in row:
        return f"{row['scenario']:<52} skipped: {row['skipped']}"
    if "false_alarms_per_twin_day" in row:
        return (
            f"{row['scenario']:<52} N={row['n_twins']!s:>6} detected={row['detected']} "
            f"median {row['detect_steps_median']} steps, false alarms/twin-day "
            f"{row['false_alarms_per_twin_day']}"
        )
    rate = row.get("filter_steps_per_s")
    if "ratio_to_numpy" in row:
        versus = f"numpy x{row['ratio_to_numpy']} (compile {row['compile_s']} s)"
    elif row.get("filterpy_ratio") is not None:
        versus = f"filterpy x{row['filterpy_ratio']}"
    elif "filterpy_ratio" in row and not filterpy:
        versus = "filterpy: not installed (pip install 'livetwin[bench]')"
    else:
        versus = ""
    shown = "-" if rate is None else round(rate)
    load = f" load {row['load_avg'][0]}" if row.get("load_avg") else ""
    return (
        f"{row['scenario']:<52} N={row.get('n_twins')!s:>6} steps/s={shown!s:>8} "
        f"{versus} coverage={row.get('coverage_95')}{load}"
    )


if __name__ == "__main__":
    main(json_only="--json" in sys.argv, quick="--quick" in sys.argv)
