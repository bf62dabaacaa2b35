"""The expression language: results against NumPy references, NaN rules, names and errors."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livetwin.errors import InvalidInput
from livetwin.expr import Compiled, EvalContext, ExpressionError, compile_expression

NAMES = ["x", "y", "z", "flow", "pressure", "efficiency"]
RNG = np.random.default_rng(7)
M = 200


def columns() -> dict[str, np.ndarray]:
    env = {name: RNG.normal(0, 3, M) for name in NAMES}
    env["x"][:10] = 0.0  # exercise division by zero, log(0), comparisons at equality
    env["y"][:5] = 0.0
    env["y"][5:15] = env["x"][5:15]
    return env


def run(source: str, env: dict[str, np.ndarray]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # evaluation must not warn (e.g. on 1/0)
        out = compile_expression(source, NAMES).evaluate(env)
    assert out.dtype == np.float64 and out.shape == (M,)
    return out


def f(boolean: np.ndarray) -> np.ndarray:
    return boolean.astype(np.float64)


CASES = {
    "flow * pressure / 36 / efficiency": lambda e: e["flow"] * e["pressure"] / 36 / e["efficiency"],
    "x + y * z - 2": lambda e: e["x"] + e["y"] * e["z"] - 2,
    "(x + y) * z": lambda e: (e["x"] + e["y"]) * e["z"],
    "x / y": lambda e: e["x"] / e["y"],
    "1 / x": lambda e: 1 / e["x"],
    "x % 3": lambda e: np.mod(e["x"], 3),
    "x % y": lambda e: np.mod(e["x"], e["y"]),
    "x ** 2": lambda e: e["x"] ** 2,
    "x ** -2": lambda e: e["x"] ** -2.0,
    "abs(x) ** 0.5": lambda e: np.abs(e["x"]) ** 0.5,
    "-x ** 2": lambda e: -(e["x"] ** 2),
    "(2 ** 3) ** 2": lambda e: np.full(M, 64.0),
    "+x - -y": lambda e: e["x"] + e["y"],
    "x < y": lambda e: f(e["x"] < e["y"]),
    "x <= y": lambda e: f(e["x"] <= e["y"]),
    "x > y": lambda e: f(e["x"] > e["y"]),
    "x >= y": lambda e: f(e["x"] >= e["y"]),
    "x == y": lambda e: f(e["x"] == e["y"]),
    "x != y": lambda e: f(e["x"] != e["y"]),
    "-1 < x < 1": lambda e: f((-1 < e["x"]) & (e["x"] < 1)),
    "x < y <= z != 0": lambda e: f((e["x"] < e["y"]) & (e["y"] <= e["z"]) & (e["z"] != 0)),
    "x > 0 and y > 0": lambda e: f((e["x"] > 0) & (e["y"] > 0)),
    "x > 0 or y > 0 or z > 0": lambda e: f((e["x"] > 0) | (e["y"] > 0) | (e["z"] > 0)),
    "not x > 0": lambda e: f(~(e["x"] > 0)),
    "not x": lambda e: f(e["x"] == 0),
    "x and y": lambda e: f((e["x"] != 0) & (e["y"] != 0)),
    "1 if x > 1 else 0": lambda e: f(e["x"] > 1),
    "x if x > y else y * 2": lambda e: np.where(e["x"] > e["y"], e["x"], e["y"] * 2),
    "abs(x)": lambda e: np.abs(e["x"]),
    "sqrt(x)": lambda e: np.sqrt(e["x"]),
    "exp(x)": lambda e: np.exp(e["x"]),
    "log(x)": lambda e: np.log(e["x"]),
    "log10(abs(x))": lambda e: np.log10(np.abs(e["x"])),
    "sin(x) + cos(y) + tan(z)": lambda e: np.sin(e["x"]) + np.cos(e["y"]) + np.tan(e["z"]),
    "floor(x) + ceil(y)": lambda e: np.floor(e["x"]) + np.ceil(e["y"]),
    "round(x)": lambda e: np.round(e["x"]),
    "round(x, 2)": lambda e: np.round(e["x"], 2),
    "round(x * 1000, -2)": lambda e: np.round(e["x"] * 1000, -2),
    "clip(x, -1, y)": lambda e: np.clip(e["x"], -1, e["y"]),
    "min(x, y)": lambda e: np.minimum(e["x"], e["y"]),
    "max(x, y, z, 1)": lambda e: np.maximum(np.maximum(np.maximum(e["x"], e["y"]), e["z"]), 1),
    "isnan(sqrt(x))": lambda e: f(np.isnan(np.sqrt(e["x"]))),
    "True + False": lambda e: np.ones(M),
    "1e300 * 1e300": lambda e: np.full(M, np.inf),
}


@pytest.mark.parametrize("source", CASES)
def test_matches_numpy(source):
    env = columns()
    with np.errstate(all="ignore"):
        expected = np.broadcast_to(CASES[source](env), (M,))
    np.testing.assert_allclose(run(source, env), expected, rtol=1e-12, equal_nan=True)


def test_division_by_zero_gives_inf_and_nan_without_warnings():
    env = {"x": np.array([1.0, -1.0, 0.0]), "y": np.zeros(3)}
    out = compile_expression("x / y", ["x", "y"]).evaluate(env)
    np.testing.assert_array_equal(out, [np.inf, -np.inf, np.nan])
    assert compile_expression("1 / 0", []).evaluate({}, size=2).tolist() == [np.inf, np.inf]
    assert np.isnan(compile_expression("0 % 0", []).evaluate({}, size=1)).all()


NAN = np.nan


@pytest.mark.parametrize(
    ("source", "x", "expected"),
    [
        ("x > 1", [NAN, 2, 0], [NAN, 1, 0]),
        ("x == x", [NAN, 2, 0], [NAN, 1, 1]),
        ("not x", [NAN, 2, 0], [NAN, 0, 1]),
        ("x > 1 and 0", [NAN, 2, 0], [0, 0, 0]),
        ("x > 1 and 1", [NAN, 2, 0], [NAN, 1, 0]),
        ("x > 1 or 1", [NAN, 2, 0], [1, 1, 1]),
        ("x > 1 or 0", [NAN, 2, 0], [NAN, 1, 0]),
        ("x > 1 or isnan(x)", [NAN, 2, 0], [1, 1, 0]),
        ("5 if x else 6", [NAN, 2, 0], [NAN, 5, 6]),
        ("0 if isnan(x) else x", [NAN, 2, 0], [0, 2, 0]),
        ("min(x, 1)", [NAN, 2, 0], [NAN, 1, 0]),
    ],
)
def test_nan_is_unknown_as_in_sql(source, x, expected):
    out = compile_expression(source, ["x"]).evaluate({"x": np.array(x, dtype=float)})
    np.testing.assert_array_equal(out, expected)


def test_scalars_broadcast_and_results_are_fresh_arrays():
    assert compile_expression("1 + 2", []).evaluate({}, size=3).tolist() == [3.0, 3.0, 3.0]
    x = np.arange(3.0)
    out = compile_expression("x", ["x"]).evaluate({"x": x})
    out[0] = 99
    assert x[0] == 0  # the caller's column is never handed back
    assert compile_expression("2", ["x"]).evaluate({"x": x}).tolist() == [2.0, 2.0, 2.0]
    empty = compile_expression("x + 1", ["x"]).evaluate({"x": np.array([])})
    assert empty.shape == (0,)
    with pytest.raises(ValueError, match="size"):
        compile_expression("1 + 2", []).evaluate({})


def test_integer_columns_are_converted_and_bad_columns_rejected():
    c = compile_expression("x / 2", ["x"])
    assert c.evaluate({"x": np.array([1, 3])}).tolist() == [0.5, 1.5]
    with pytest.raises(KeyError, match="x"):
        c.evaluate({"y": np.zeros(2)}, size=2)
    with pytest.raises(ValueError, match="shape"):
        c.evaluate({"x": np.zeros((2, 2))})


def test_names_and_windows_are_listed():
    c = compile_expression(
        "a + avg(b * ewma(c, 0.5), '10m') + time_in(d > 1, '1h')", ["a", "b", "c", "d", "e"]
    )
    assert c.names == {"a", "b", "c", "d"}
    assert [w.func for w in c.windows] == ["ewma", "avg", "time_in"]  # inner before outer
    assert c.windows[1].names == {"b", "c"}
    assert (
        c.windows[1].duration_ms == 600_000
        and c.windows[1].source == "avg(b * ewma(c, 0.5), '10m')"
    )
    assert c.windows[0].alpha == 0.5 and c.windows[2].duration_ms == 3_600_000
    assert isinstance(c, Compiled) and compile_expression("1", []).windows == ()


def test_function_names_can_also_be_property_names():
    c = compile_expression("min(min, max) + max(min, '1m') * 0", ["min", "max"])
    assert c.names == {"min", "max"} and [w.func for w in c.windows] == ["max"]


def test_windows_need_a_context_with_one_state_each():
    c = compile_expression("avg(x, '1m')", ["x"])
    with pytest.raises(ValueError, match="EvalContext"):
        c.evaluate({"x": np.zeros(1)})
    ctx = EvalContext(np.zeros(1, np.int64), np.zeros(1, np.int64), {"x": np.ones(1, bool)}, [])
    with pytest.raises(ValueError, match="1 window states"):
        c.evaluate({"x": np.zeros(1)}, ctx)
    ctx.states = c.new_states(1)
    ctx.present = {}
    with pytest.raises(KeyError, match="present"):
        c.evaluate({"x": np.zeros(1)}, ctx)


def test_error_is_an_invalid_input_with_field_position_and_fix():
    with pytest.raises(ExpressionError) as info:
        compile_expression("flow * presure", NAMES, field="derived.power.expr")
    e = info.value
    assert isinstance(e, InvalidInput) and e.status == 422
    assert (e.line, e.col, e.field) == (1, 8, "derived.power.expr")
    assert "'flow * presure'" in e.message and "line 1, col 8" in e.message
    assert "did you mean 'pressure'" in e.message.lower()
    assert e.to_dict()["field"] == "derived.power.expr" and e.to_dict()["fix"]


def test_positions_count_characters_and_survive_leading_white_space():
    with pytest.raises(ExpressionError) as info:
        compile_expression("température + débit.x", ["température", "débit"])
    assert (info.value.line, info.value.col) == (1, 15)
    with pytest.raises(ExpressionError) as info:
        compile_expression("\n  (x +\n  y.z)", ["x", "y"])
    assert (info.value.line, info.value.col) == (3, 3)
    with pytest.raises(ExpressionError) as info:
        compile_expression("   x + $", ["x"])
    assert (info.value.line, info.value.col) == (1, 8)
    assert compile_expression("  x + 1\n", ["x"]).evaluate({"x": np.ones(1)}).tolist() == [2.0]


def test_unknown_name_lists_a_few_known_names():
    known = [f"sensor_{i:02d}" for i in range(30)]
    with pytest.raises(ExpressionError) as info:
        compile_expression("sensor_7", known)
    message = info.value.message
    assert "sensor_00, sensor_01" in message and "(and 20 more)" in message
    assert "Did you mean" in message


def test_windows_are_refused_in_filters_but_math_is_fine():
    where = compile_expression("flow > 3 and min(pressure, 2) < 2", NAMES, allow_windows=False)
    assert where.windows == ()
    with pytest.raises(ExpressionError, match="window functions are not allowed in filters"):
        compile_expression("avg(flow, '10m') > 3", NAMES, allow_windows=False, field="where")


# -- property: precedence and associativity agree with Python on + - * / and parentheses -------

_leaf = st.sampled_from(["x", "y", "z", "2", "0.5", "3"])


def _combine(children):
    binary = st.tuples(children, st.sampled_from(["+", "-", "*", "/"]), children).map(" ".join)
    return binary | children.map(lambda s: f"({s})") | children.map(lambda s: f"-{s}")


@settings(max_examples=200, deadline=None)
@given(st.recursive(_leaf, _combine, max_leaves=12))
def test_arithmetic_agrees_with_python_precedence(source):
    env = {"x": np.array([1.5, -2.0, 0.0]), "y": np.array([3.0, 0.25, -1.0]), "z": np.ones(3)}
    try:
        compiled = compile_expression(source, env)
    except ExpressionError as e:
        assert "too deeply nested" in e.message
        return
    with np.errstate(all="ignore"):
        # constants as NumPy floats, so 2 / (2 - 2) is inf as in livetwin, not ZeroDivisionError
        reference = re.sub(r"\d+(\.\d+)?", lambda m: f"f({m.group(0)})", source)
        scope = {**env, "f": np.float64}
        expected = np.broadcast_to(eval(reference, {}, scope), (3,))  # test-generated source
    np.testing.assert_allclose(compiled.evaluate(env), expected, rtol=1e-12, equal_nan=True)
