"""The FMU adapter on real FMUs built at test time (fixtures in tests/fmu_support.py):
pythonfmu (FMI 2.0 co-simulation), pythonfmu3 (FMI 3.0 co-simulation and model exchange) and a
C FMU compiled with gcc (FMI 2.0 model exchange).
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from livetwin.errors import InvalidInput

fmpy = pytest.importorskip("fmpy", reason="FMU tests need FMPy: pip install 'livetwin[fmu]'")

from livetwin.calibrate import BatchUKF, CalibrationSpec  # noqa: E402
from livetwin.models import fmu as fmu_mod  # noqa: E402
from livetwin.models.fmu import fmu_model, resolve_fmu_ref  # noqa: E402

SOURCES = Path(__file__).parent / "fmus"


def exact(k, tau, x0, u, dt):
    """x(dt) of dx/dt = (K u - x)/tau from x0."""
    return k * u + (x0 - k * u) * np.exp(-dt / tau)


def random_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "K": rng.uniform(0.5, 3.0, n),
        "tau": rng.uniform(0.3, 2.0, n),
        "x0": rng.uniform(-1.0, 1.0, n),
        "max_step": np.full(n, 1e9),
        "u": rng.uniform(0.0, 2.0, n),
    }


def run(model, rows: dict[str, np.ndarray], dt: float) -> np.ndarray:
    params = np.column_stack([rows[p] for p in model.params])
    inputs = np.column_stack([rows[u] for u in model.inputs])
    return model.fn(params, inputs, dt)


def test_cosimulation_rows_equal_the_analytic_solution(fo2):
    model = fmu_model(fo2)
    assert (model.params, model.inputs, model.outputs) == (
        ("K", "tau", "x0", "max_step"),
        ("u",),
        ("x",),
    )
    assert not model.transient and model.doc == "first-order lag"
    r = random_rows(300)
    want = exact(r["K"], r["tau"], r["x0"], r["u"], 0.7)
    np.testing.assert_allclose(run(model, r, 0.7)[:, 0], want, rtol=1e-12, atol=1e-12)
    fine = fmu_model(fo2, step=0.1)  # 7 communication steps per row
    np.testing.assert_allclose(run(fine, r, 0.7)[:, 0], want, rtol=1e-12, atol=1e-12)


def test_names_are_mapped_and_unmapped_parameters_keep_their_start_values(fo2):
    model = fmu_model(
        fo2, params={"gain": "K", "lag": "tau"}, inputs={"flow": "u"}, outputs={"level": "x"}
    )
    assert (model.params, model.inputs, model.outputs) == (("gain", "lag"), ("flow",), ("level",))
    params = np.array([[3.0, 0.5], [1.0, 2.0]])
    y = model.fn(params, np.array([[1.0], [2.0]]), 1.0)
    np.testing.assert_allclose(y[:, 0], exact(params[:, 0], params[:, 1], 0.0, [1.0, 2.0], 1.0))
    swapped = fmu_model(fo2, params=["tau", "K"])  # a list keeps the FMU's names, in its order
    assert swapped.params == ("tau", "K")
    y = swapped.fn(np.array([[0.5, 3.0]]), np.array([[1.0]]), 1.0)
    np.testing.assert_allclose(y[0, 0], exact(3.0, 0.5, 0.0, 1.0, 1.0))


def test_a_failed_step_is_retried_with_half_the_step_then_the_row_is_nan(fo2):
    model = fmu_model(fo2)  # one step of dt; the FMU refuses steps above max_step
    r = random_rows(4, seed=1)
    r["max_step"] = np.array([1e9, 0.3, 0.05, 1e9])  # 0.3 needs 2 halvings, 0.05 needs 5
    y = run(model, r, 1.0)[:, 0]
    want = exact(r["K"], r["tau"], r["x0"], r["u"], 1.0)
    np.testing.assert_allclose(y[[0, 1, 3]], want[[0, 1, 3]], rtol=1e-12)
    assert np.isnan(y[2])
    assert np.isnan(run(fmu_model(fo2, retries=1), r, 1.0)[1, 0])  # 1 halving is not enough
    y = run(fmu_model(fo2, retries=5), r, 1.0)[:, 0]
    np.testing.assert_allclose(y, want, rtol=1e-12)
    r["K"][0] = np.nan  # a NaN row (a broken sigma point) is not run and stays NaN
    assert np.isnan(run(model, r, 1.0)[0, 0])


def test_steady_state_runs_until_the_outputs_settle(fo2):
    r = random_rows(5, seed=2)
    y = run(fmu_model(fo2, steady=True, step=0.5, tol=1e-8), r, 1.0)[:, 0]
    np.testing.assert_allclose(y, r["K"] * r["u"], atol=1e-6)
    assert np.isnan(run(fmu_model(fo2, steady=True, step=0.5, max_steps=3), r, 1.0)).all()


def test_transient_model_carries_the_state_through_a_start_parameter(fo2):
    model = fmu_model(fo2, states={"x": ("x0", "x")})
    assert model.transient and model.states == ("x",) and "x0" not in model.params
    r = random_rows(50, seed=3)
    x = np.zeros((50, 1))
    params = np.column_stack([r[p] for p in model.params])
    want = np.zeros(50)
    for _ in range(3):
        x, y = model.step(x, params, r["u"][:, None], 0.4)
        want = exact(r["K"], r["tau"], want, r["u"], 0.4)
    np.testing.assert_allclose(x[:, 0], want, rtol=1e-12)
    np.testing.assert_allclose(y[:, 0], want, rtol=1e-12)


def test_the_fmu_is_extracted_and_instantiated_once(fo2, tmp_path, monkeypatch):
    from fmpy.fmi2 import FMU2Slave

    path = tmp_path / "copy.fmu"  # a new file: nothing cached for it yet
    shutil.copy(fo2, path)
    calls = {"extract": 0, "instantiate": 0}
    extract, instantiate = fmpy.extract, FMU2Slave.instantiate

    def counting_extract(*args, **kwargs):
        calls["extract"] += 1
        return extract(*args, **kwargs)

    def counting_instantiate(self, *args, **kwargs):
        calls["instantiate"] += 1
        return instantiate(self, *args, **kwargs)

    monkeypatch.setattr(fmpy, "extract", counting_extract)
    monkeypatch.setattr(FMU2Slave, "instantiate", counting_instantiate)
    model = fmu_model(path)
    r = random_rows(20)
    for _ in range(3):
        run(model, r, 0.5)
    same = resolve_fmu_ref(f"fmu:{path}")
    assert resolve_fmu_ref(f"fmu:{path}") is same
    run(same, r, 0.5)
    run(fmu_model(path, params=["K", "tau"]), r, 0.5)  # other names: one more instance
    assert calls == {"extract": 1, "instantiate": 2}


def test_pooled_rows_equal_serial_rows(fo2):
    serial, pooled = fmu_model(fo2), fmu_model(fo2, workers=2)
    r = random_rows(64, seed=4)
    r["max_step"][::7] = 0.01  # some rows fail in the workers as they do here
    try:
        a = run(pooled, r, 0.8)
        b = run(pooled, r, 0.8)  # the pool is kept between calls
    finally:
        pooled.fn.close()
    want = run(serial, r, 0.8)
    np.testing.assert_array_equal(a, want)
    np.testing.assert_array_equal(b, want)
    assert np.isnan(want[::7]).all() and np.isfinite(np.delete(want, np.s_[::7])).all()


def test_model_exchange_fmi2_c_fmu(me2):
    model = fmu_model(me2)  # the FMU only has model exchange: CVode over its derivatives
    assert model.params == ("K", "tau", "x0") and model.bounds == {"tau": (0.0, None)}
    r = random_rows(40, seed=5)
    want = exact(r["K"], r["tau"], r["x0"], r["u"], 0.5)
    np.testing.assert_allclose(run(model, r, 0.5)[:, 0], want, rtol=1e-4, atol=2e-5)
    tight = fmu_model(me2, rtol=1e-10)
    np.testing.assert_allclose(run(tight, r, 0.5)[:, 0], want, rtol=1e-7, atol=1e-8)
    rk4 = fmu_model(me2, solver="rk4")
    np.testing.assert_allclose(run(rk4, r, 0.5)[:, 0], want, rtol=1e-5, atol=1e-6)
    fine = fmu_model(me2, solver="rk4", step=0.005)
    np.testing.assert_allclose(run(fine, r, 0.5)[:, 0], want, rtol=1e-9, atol=1e-10)
    r["tau"][3] = 0.0  # the FMU's getDerivatives fails: that row only is NaN
    y = run(model, r, 0.5)[:, 0]
    assert np.isnan(y[3]) and np.isfinite(np.delete(y, 3)).all()
    steady = fmu_model(me2, steady=True, step=0.05, tol=1e-9, rtol=1e-10)
    np.testing.assert_allclose(run(steady, r, 1.0)[[0, 1], 0], (r["K"] * r["u"])[:2], atol=1e-7)
    with pytest.raises(InvalidInput, match="does not support mode 'cs'") as err:
        fmu_model(me2, mode="cs")
    assert err.value.field == "mode"
    with pytest.raises(InvalidInput, match="unknown solver 'euler'") as err:
        fmu_model(me2, solver="euler")
    assert err.value.field == "solver" and "cvode" in err.value.fix


@pytest.mark.parametrize("mode", ["cs", "me"])
def test_fmi3_fmu_in_both_modes(fo3, mode):
    model = fmu_model(fo3, mode=mode)
    assert (model.params, model.inputs, model.outputs) == (("K", "tau", "x0"), ("u",), ("x",))
    r = random_rows(10, seed=6)
    want = exact(r["K"], r["tau"], r["x0"], r["u"], 0.6)
    np.testing.assert_allclose(run(model, r, 0.6)[:, 0], want, rtol=1e-4, atol=2e-5)


def test_errors_name_the_field_and_the_fix(fo2, tmp_path, monkeypatch):
    with pytest.raises(InvalidInput, match="no variable 'gain'") as err:
        fmu_model(fo2, params=["K", "gain"])
    assert err.value.field == "params" and "tau" in err.value.fix
    with pytest.raises(InvalidInput, match="did you mean 'x'") as err:
        fmu_model(fo2, outputs={"level": "X"})
    assert err.value.field == "outputs"
    with pytest.raises(InvalidInput, match="cannot be set") as err:
        fmu_model(fo2, inputs={"u": "x"})
    assert err.value.field == "inputs"
    bad = tmp_path / "corrupt.fmu"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(InvalidInput, match="cannot extract FMU") as err:
        fmu_model(bad)
    assert err.value.field == "model" and "FMI 2.0 or 3.0" in err.value.fix
    no_binary = tmp_path / "nobinary.fmu"
    with zipfile.ZipFile(no_binary, "w") as z:
        z.write(SOURCES / "FirstOrderME.xml", "modelDescription.xml")
    with pytest.raises(InvalidInput, match="cannot load FMU") as err:
        fmu_model(no_binary)
    with pytest.raises(InvalidInput, match="does not exist") as err:
        resolve_fmu_ref("fmu:missing.fmu", base=tmp_path)
    with pytest.raises(InvalidInput, match="unknown FMU option 'out'"):
        resolve_fmu_ref(f"fmu:{fo2}?out=x")
    with pytest.raises(InvalidInput) as err:
        fmu_model(fo2, retries=-1)
    assert err.value.field == "retries"
    monkeypatch.setitem(sys.modules, "fmpy", None)  # as if FMPy were not installed
    with pytest.raises(InvalidInput, match="FMPy") as err:
        fmu_model(fo2)
    assert "livetwin[fmu]" in err.value.fix


def test_resolve_fmu_ref_relative_path_and_options(fo2, tmp_path):
    shutil.copy(fo2, tmp_path / "lag.fmu")
    model = resolve_fmu_ref("fmu:lag.fmu?steady=true&step=0.5&params=K,tau", base=tmp_path)
    assert model.name == "fmu:lag.fmu?steady=true&step=0.5&params=K,tau"
    assert model.params == ("K", "tau") and model.outputs == ("x",)
    y = model.fn(np.array([[3.0, 1.0]]), np.array([[2.0]]), 1.0)
    np.testing.assert_allclose(y, [[6.0]], atol=1e-5)


def test_batch_ukf_calibrates_the_gain_of_an_fmu_fleet(fo2):
    model = fmu_model(fo2)
    true_k = np.array([1.2, 1.8, 2.4, 3.0, 2.1])
    n, dt, noise = len(true_k), 0.5, 0.02
    spec = CalibrationSpec(
        model=model,
        measured=["x"],
        prior={"K": (2.0, 1.0)},
        fixed={"tau": 1.0, "x0": 0.0, "max_step": 1e9},
        meas_noise={"x": noise},
    )
    rng = np.random.default_rng(7)
    flt = BatchUKF(spec, n)
    state = flt.init()
    for _ in range(30):
        u = rng.uniform(0.5, 1.5, (n, 1))
        z = exact(true_k, 1.0, 0.0, u[:, 0], dt)[:, None] + noise * rng.standard_normal((n, 1))
        state, res = flt.step(state, u, z, dt)
    k = res.param("K")
    assert ((k["lower"] <= true_k) & (true_k <= k["upper"])).all()
    assert np.abs(k["mean"] - true_k).max() < 0.05 and not res.reset.any()


def test_a_twin_whose_fmu_always_fails_is_reset_and_the_fleet_goes_on(fo2):
    spec = CalibrationSpec(
        model=fmu_model(fo2, retries=1),
        measured=["x"],
        prior={"K": (2.0, 0.5)},
        fixed={"tau": 1.0, "x0": 0.0, "max_step": [1e9, 1e-3, 1e9]},  # twin 1 never steps
        meas_noise={"x": 0.02},
    )
    flt = BatchUKF(spec, 3)
    state, res = flt.step(flt.init(), np.ones((3, 1)), np.full((3, 1), 0.8), 0.5)
    assert res.reset.tolist() == [False, True, False] and state.failed.tolist() == [0, 1, 0]
    assert np.isfinite(res.param("K")["mean"]).all()


def test_the_fmu_benchmark_reports_filter_steps_per_second(fo2):
    from benchmarks.bench_calibrate import fmu_steps

    out = fmu_steps(fo2, n_twins=3, steps=2)
    assert out["scenario"] == "fmu-serial" and out["n_twins"] == 3
    assert out["filter_steps_per_s"] > 0 and out["us_per_filter_step"] > 0


def test_instances_are_cached_per_configuration(fo2):
    a, b = fmu_model(fo2), fmu_model(fo2)
    assert a.fn.cfg == b.fn.cfg and fmu_mod._instance(a.fn.cfg) is fmu_mod._instance(b.fn.cfg)


def test_a_type_ref_resolves_inside_the_fmu_folders_only(fo2, tmp_path):
    from livetwin.models.base import ModelRefs

    folder = tmp_path / "fmus"
    folder.mkdir()
    shutil.copy(fo2, folder / "lag.fmu")
    refs = ModelRefs(fmu_dirs=(folder,))
    assert refs("fmu:lag.fmu").outputs == ("x",)  # relative: taken from the first folder
    assert refs(f"fmu:{folder / 'lag.fmu'}").outputs == ("x",)
    errors = set()
    for ref in (f"fmu:{fo2}", f"fmu:{tmp_path / 'nope.fmu'}", "fmu:nope.fmu"):
        with pytest.raises(InvalidInput) as err:  # outside (it exists) or missing: one answer
            refs(ref)
        errors.add((err.value.message.replace(ref[4:], "<path>"), err.value.field, err.value.fix))
    assert len(errors) == 1, errors
