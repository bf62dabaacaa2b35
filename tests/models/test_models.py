"""The model interface, name resolution, the ODE helpers and the synthetic fleets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import expm

from livetwin.errors import InvalidInput
from livetwin.examples.rollers import ROLLER_LINE, roller_fleet
from livetwin.examples.thermal import ROOM, room, thermal_fleet
from livetwin.models import Model, model, resolve_model, rk4, rk4_linear, solve_stiff
from livetwin.models.chain import TRUE_PARAMS, _system, chain3, chain3_loop


@model(params=["k"], inputs=["x"], outputs=["y"])
def gain(params, inputs, dt):
    return params[:, :1] * inputs[:, :1]


def not_a_model(params, inputs, dt):
    return params


def test_resolve_by_name_callable_and_model():
    m = resolve_model(ROOM)
    assert m.name == ROOM and m.params == ("UA", "C") and m.states == ("t_in",)
    assert m.transient and m.bounds["UA"] == (0.0, None)
    assert resolve_model(room).params == ("UA", "C")
    assert resolve_model(m) is m
    g = resolve_model(gain)
    assert not g.transient
    states, y = g.step(np.zeros((3, 0)), np.full((3, 1), 2.0), np.arange(3.0)[:, None], 1.0)
    assert states.shape == (3, 0) and y[:, 0].tolist() == [0.0, 2.0, 4.0]


@pytest.mark.parametrize(
    "ref, words",
    [
        ("livetwin.nowhere:fn", "cannot be imported"),
        ("livetwin.examples.thermal:nothing", "no attribute"),
        ("livetwin.examples.thermal", "module:function"),
        ("tests.models.test_models:not_a_model", "does not declare"),
        (42, "must be a 'module:function'"),
    ],
)
def test_resolve_errors_name_the_problem(ref, words):
    with pytest.raises(InvalidInput) as err:
        resolve_model(ref)
    assert words in err.value.message and err.value.field == "model" and err.value.fix


def test_index_rejects_unknown_names():
    with pytest.raises(InvalidInput, match="no output 'nope'"):
        resolve_model(ROOM).index("outputs", ["nope"])


def test_rk4_matches_exponential_decay():
    x = rk4(lambda x, p, u: -p * x, np.ones((2, 1)), np.array([[1.0], [2.0]]), None, 1.0, 50)
    assert np.allclose(x[:, 0], np.exp([-1.0, -2.0]), rtol=1e-8)


def test_rk4_linear_equals_the_substep_loop_and_the_exact_solution():
    rng = np.random.default_rng(0)
    p = TRUE_PARAMS * np.exp(rng.uniform(-0.3, 0.3, (7, 9)))
    x = rng.normal(0, 0.1, (7, 6))
    u = rng.normal(0, 1, (7, 1))
    fast, y_fast = chain3(x, p, u, 0.05)
    slow, y_slow = chain3_loop(x, p, u, 0.05)
    assert np.allclose(fast, slow, rtol=0, atol=1e-12)
    assert np.allclose(y_fast, y_slow, rtol=0, atol=1e-10)
    a, b = _system(p)
    aug = np.zeros((7, 7))
    aug[:6, :6], aug[:6, 6:] = a[0], b[0]
    exact = expm(aug * 0.05) @ np.concatenate([x[0], u[0]])
    assert np.allclose(exact[:6], fast[0], atol=1e-10)
    # odd and power-of-two substep counts take both branches of the powering
    for k in (1, 7, 64):
        loop = rk4(
            lambda s, _p, _u: (a @ s[..., None] + b @ _u[..., None])[..., 0], x, None, u, 0.05, k
        )
        assert np.allclose(rk4_linear(a, b, x, u, 0.05, k), loop, atol=1e-12)


def test_solve_stiff_handles_a_stiff_system():
    def f(x, p, u):
        return np.stack([-1000.0 * (x[:, 0] - np.cos(x[:, 1])), np.ones(len(x))], axis=1)

    x = solve_stiff(f, np.array([[0.0, 0.0], [1.0, 0.0]]), np.zeros((2, 0)), np.zeros((2, 0)), 1.0)
    assert np.allclose(x[:, 1], 1.0) and np.allclose(x[:, 0], np.cos(1.0), atol=1e-3)


def test_fleets_are_reproducible_and_drift():
    a, b = roller_fleet(5, seed=3), roller_fleet(5, seed=3)
    ra, rb = a.run(30), b.run(30)
    assert np.array_equal(ra.z, rb.z) and ra.z.shape == (30, 5, 4)
    assert np.all(ra.params[-1, :, :4] > ra.params[0, :, :4] * 0.9)  # drags wear upwards
    assert np.all(ra.params[:, :, 4:] == ra.params[0, :, 4:])  # geometry is fixed
    assert np.all(ra.outputs[..., 4:7] > 50) and np.all(np.isfinite(ra.outputs))  # taut web
    th = thermal_fleet(4, seed=1).run(96)
    assert th.z.shape == (96, 4, 1) and np.all(np.abs(th.z) < 60)


def test_model_dataclass_is_usable_directly():
    m = Model("m", gain, ("k",), ("x",), ("y",))
    assert resolve_model(m).outputs == ("y",)
    assert resolve_model(ROLLER_LINE).outputs[-1] == "slip3"


def test_a_type_resolves_its_model_through_the_lookup_it_is_given():
    """spec/ knows model names only: the caller hands compile_type the resolver."""
    from livetwin.spec.types import TwinTypeSpec, compile_type

    spec = TwinTypeSpec.model_validate(
        {
            "name": "amp",
            "properties": {"x": {}, "y": {}},
            "parameters": {"k": {"value": 1.0, "calibrate": True}},
            "model": {"ref": "amp:gain"},
        }
    )
    asked = []

    def lookup(ref: str) -> Model:
        asked.append(ref)
        return resolve_model(gain)

    ctype = compile_type(spec, 1, resolve_model=lookup)
    assert asked == ["amp:gain"] and ctype.calibration.model.params == ("k",)
    assert "k_std" in ctype.columns
    with pytest.raises(TypeError, match="resolve_model"):
        compile_type(spec, 1)
