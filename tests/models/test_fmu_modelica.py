"""An FMU shaped like a Modelica export (dotted names, model exchange and a one-step Euler
co-simulation): the names map to livetwin names, model exchange runs on CVode, a co-simulation
step that moves nothing is called out, states carry over, and a fleet calibrates through the
documented `fmu:` reference with default settings."""

from __future__ import annotations

import numpy as np
import pytest
from fmu_support import calibrate_msd_fleet
from scipy.integrate import solve_ivp

from livetwin.errors import InvalidInput

pytest.importorskip("fmpy", reason="FMU tests need FMPy: pip install 'livetwin[fmu]'")

from livetwin.models.fmu import fmu_model, livetwin_name, resolve_fmu_ref  # noqa: E402


def reference(m, c, d, force, s0, v0, dt):
    """(s, v) at dt of m v' = F - c s - d v, s' = v, row by row (SciPy, tight tolerances)."""
    out = []
    for args in zip(m, c, d, force, s0, v0, strict=True):
        mi, ci, di, fi, si, vi = args
        sol = solve_ivp(
            lambda t, x, mi=mi, ci=ci, di=di, fi=fi: [x[1], (fi - ci * x[0] - di * x[1]) / mi],
            (0.0, dt),
            [si, vi],
            rtol=1e-11,
            atol=1e-12,
        )
        out.append(sol.y[:, -1])
    return np.array(out)


def test_names_a_modelica_tool_writes_become_livetwin_names(msd):
    assert [livetwin_name(n) for n in ("damper.d", "der(mass.s)", "1x", "a..b")] == [
        "damper_d",
        "der_mass_s",
        "v_1x",
        "a_b",
    ]
    model = fmu_model(msd)
    assert model.params == ("mass_m", "spring_c", "damper_d") and model.inputs == ("F",)
    assert model.outputs == ("y",) and model.bounds["damper_d"] == (0.0, None)
    renamed = resolve_fmu_ref(f"fmu:{msd}?params=damper.d:d,spring.c:c")
    assert renamed.params == ("d", "c")  # mass.m keeps its start value (1)
    listed = fmu_model(msd, params=["spring.c"], outputs={"position": "y"})
    assert listed.params == ("spring_c",) and listed.outputs == ("position",)


def test_auto_mode_prefers_model_exchange_on_cvode_and_matches_the_ode(msd):
    model = fmu_model(msd)  # the FMU has both: model exchange wins
    assert model.fn.cfg.kind == "me" and model.fn.cfg.solver == "cvode"
    rng = np.random.default_rng(3)
    n = 12
    m, c, d = rng.uniform(0.5, 2, n), rng.uniform(1, 8, n), rng.uniform(0.1, 2, n)
    force = rng.uniform(-2, 2, n)
    y = model.fn(np.c_[m, c, d], force[:, None], 0.7)[:, 0]
    want = reference(m, c, d, force, np.zeros(n), np.zeros(n), 0.7)[:, 0]
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    assert np.ptp(y) > 0.05  # the output moves and depends on the parameters


def test_a_co_simulation_step_that_moves_nothing_is_called_out(msd):
    model = fmu_model(msd, mode="cs")  # one explicit Euler step from rest: y stays 0
    params = np.array([[1.0, 4.0, 0.5], [1.5, 2.0, 0.9], [0.8, 6.0, 0.2]])
    with pytest.warns(UserWarning, match="left the outputs y the same for all 3 rows"):
        y = model.fn(params, np.ones((3, 1)), 0.5)
    assert (y == 0).all()
    moving = fmu_model(msd, mode="cs", step=0.01)  # many small steps do move it
    with warnings_as_errors():
        assert np.ptp(moving.fn(params, np.ones((3, 1)), 0.5)) > 0.01


def test_states_carry_over_through_the_continuous_state_vector(msd):
    model = resolve_fmu_ref(f"fmu:{msd}?params=damper.d:d,spring.c:c&states=mass.s:s,mass.v:v")
    assert model.states == ("s", "v") and model.params == ("d", "c")
    rng = np.random.default_rng(4)
    n = 8
    s0, v0 = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    d, c, force = rng.uniform(0.1, 2, n), rng.uniform(1, 8, n), rng.uniform(-2, 2, n)
    x, y = model.fn(np.c_[s0, v0], np.c_[d, c], force[:, None], 0.4)
    want = reference(np.ones(n), c, d, force, s0, v0, 0.4)
    np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y[:, 0], want[:, 0], rtol=1e-4, atol=1e-5)


def test_states_and_names_that_cannot_be_used_are_refused_with_a_fix(msd):
    with pytest.raises(InvalidInput, match="cannot be set") as err:
        fmu_model(msd, states={"y": "y"})  # an output: neither a continuous state nor settable
    assert err.value.field == "states"
    with pytest.raises(InvalidInput, match="distinct") as err:
        fmu_model(msd, params=["spring.c", "spring_c"])
    assert "fmu.variable:name" in err.value.fix
    with pytest.raises(InvalidInput, match="rtol"):
        fmu_model(msd, rtol=2)


def test_a_fleet_calibrates_through_the_documented_reference(msd, tmp_path, clock):
    """A type whose model is the dotted-name FMU through an `fmu:` reference, default prior and
    measurement noise, inputs that change every step and known true damping and stiffness per
    twin: the 95 % bands cover the truth and the errors are within the bands' spread."""
    n, prior = 12, {"d": 0.8, "c": 4.0}
    truth, _, _, _, views = calibrate_msd_fleet(
        msd, tmp_path / "d", clock, n=n, steps=60, dt_ms=200, noise=0.005, seed=11, prior=prior
    )
    got = [v["parameters"] for v in views]
    inside, error, spread = [], [], []
    for i, params in enumerate(got):
        for j, name in enumerate(("d", "c")):
            q = params[name]
            inside.append(q["lower"] <= truth[i, j] <= q["upper"])
            error.append(abs(q["value"] - truth[i, j]))
            spread.append(q["std"])
    assert np.mean(inside) >= 0.9
    assert np.median(error) <= 1.5 * np.median(spread)
    assert np.median(np.array(error) / truth.T.ravel(order="F")) < 0.05


class warnings_as_errors:
    """Context manager: any warning inside fails the test."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
