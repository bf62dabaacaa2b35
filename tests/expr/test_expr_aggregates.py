"""Aggregates over children: the syntax, its errors, the grouped reductions, the type checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from livetwin.errors import InvalidInput
from livetwin.expr import AggregateSpec, ExpressionError, compile_expression, reduce_groups
from livetwin.spec.aggregates import check_aggregates
from livetwin.spec.types import TwinTypeSpec, compile_type

CHILDREN = ["pump", "valve"]


def aggregates(source: str) -> list[AggregateSpec]:
    return list(compile_expression(source, ["level"], child_types=CHILDREN).aggregates)


@pytest.mark.parametrize(
    "source, want",
    [
        ("sum(children.flow)", ("sum", None, "flow", None)),
        ("avg(children.pump.temp)", ("avg", "pump", "temp", None)),
        ("count(children)", ("count", None, None, None)),
        ("count(children.pump)", ("count", "pump", None, None)),
        ("count(children.flow)", ("count", None, "flow", None)),
        ("count(children.where(flow > 5))", ("count", None, None, "flow > 5")),
        ("max(children.valve.where(open == 1).flow)", ("max", "valve", "flow", "open == 1")),
        ("sum(children.pump)", ("sum", None, "pump", None)),  # a value named like a child type
    ],
)
def test_the_forms_of_an_aggregate(source, want):
    [spec] = aggregates(source)
    assert (spec.func, spec.child_type, spec.name, spec.where) == want
    assert spec.key == source


def test_an_expression_reads_its_aggregates_by_key_and_repeats_share_one():
    compiled = compile_expression(
        "sum(children.flow) / max(1, count(children)) + sum(children.flow) * level",
        ["level"],
        child_types=CHILDREN,
    )
    assert [a.key for a in compiled.aggregates] == ["sum(children.flow)", "count(children)"]
    env = {"level": np.array([1.0, 2.0]), "sum(children.flow)": np.array([10.0, np.nan])}
    env["count(children)"] = np.array([4.0, 0.0])
    out = compiled.evaluate(env)
    np.testing.assert_array_equal(out, [12.5, np.nan])


@pytest.mark.parametrize(
    "source, problem",
    [
        ("children.flow", "only allowed as the argument of an aggregate"),
        ("children", "only allowed as the argument of an aggregate"),
        ("sum(children)", "sum needs a value"),
        ("abs(children.flow)", "abs() cannot aggregate children"),
        ("sum(children.pumpp.flow)", "'pumpp' is not a child type"),
        ("count(children.pump.where(flow > 1, 2))", "'.where(...)' is not allowed"),
        ("count(children.sort(flow))", "'.sort(...)' is not allowed"),
        ("sum(children.where(a > 1).flow.x)", "unexpected '.x'"),
        ("avg(level + sum(children.flow), '1h')", "cannot take an aggregate of children"),
        ("sum(children._secret)", "names starting with '_'"),
    ],
)
def test_a_bad_aggregate_says_what_is_wrong_and_what_is_allowed(source, problem):
    with pytest.raises(ExpressionError) as info:
        compile_expression(source, ["level"], child_types=CHILDREN, field="derived.x.expr")
    assert problem in str(info.value)
    assert info.value.field == "derived.x.expr" and info.value.fix


def test_aggregates_need_a_type_with_children():
    with pytest.raises(ExpressionError, match="declares children"):
        compile_expression("sum(children.flow)", ["level"])


groups_and_values = st.integers(1, 6).flatmap(
    lambda n: st.tuples(
        st.just(n),
        hnp.arrays(np.int64, st.integers(0, 40), elements=st.integers(0, n - 1)),
    )
)


@settings(max_examples=60, deadline=None)
@given(groups_and_values, st.randoms(use_true_random=False))
def test_grouped_reductions_equal_a_loop_over_groups(data, rnd):
    n, groups = data
    groups = np.sort(groups)
    values = np.array([rnd.choice([np.nan, rnd.uniform(-5, 5)]) for _ in groups])
    valid = np.array([rnd.random() < 0.8 for _ in groups], dtype=bool)
    for func in ("sum", "avg", "min", "max", "count"):
        got = reduce_groups(func, values, valid, groups, n).result(func)
        for g in range(n):
            known = values[(groups == g) & valid & ~np.isnan(values)]
            if func == "count":
                assert got[g] == len(known)
            elif len(known) == 0:
                assert np.isnan(got[g])
            else:
                want = {"sum": np.sum, "avg": np.mean, "min": np.min, "max": np.max}[func](known)
                assert got[g] == pytest.approx(want)
    counted = reduce_groups("count", None, valid, groups, n).result("count")
    np.testing.assert_array_equal(counted, np.bincount(groups[valid], minlength=n))


# ---- type checks -------------------------------------------------------------------------


def ctype(name: str, spec: dict, version: int = 1):
    return compile_type(TwinTypeSpec.model_validate({**spec, "name": name}), version)


PUMP = {"properties": {"flow": {}}, "derived": {"flow_h": "flow * 2"}}
STATION = {
    "properties": {"level": {}},
    "children": ["pump"],
    "derived": {"t": "sum(children.flow)"},
}


def test_an_unknown_child_value_is_refused_naming_the_field():
    pump = ctype("pump", PUMP)
    station = ctype("station", {**STATION, "derived": {"t": "sum(children.flw)"}})
    with pytest.raises(InvalidInput) as info:
        check_aggregates(station, {"pump": pump})
    assert info.value.field == "derived.t.expr"
    assert "'pump' has no 'flw'" in str(info.value) and "flow" in str(info.value)


def test_a_child_type_not_declared_yet_is_checked_when_it_is():
    station = ctype("station", {**STATION, "derived": {"t": "sum(children.flw)"}})
    check_aggregates(station, {})  # pump comes later
    with pytest.raises(InvalidInput) as info:
        check_aggregates(ctype("pump", PUMP), {"station": station})
    assert "station" in str(info.value) and "flw" in str(info.value)


def test_a_where_condition_that_does_not_fit_the_children_is_refused():
    station = ctype("station", {**STATION, "derived": {"t": "count(children.where(speed > 1))"}})
    with pytest.raises(InvalidInput, match="where condition does not fit 'pump'"):
        check_aggregates(station, {"pump": ctype("pump", PUMP)})


def test_a_new_child_version_cannot_drop_what_a_parent_aggregates():
    station = ctype("station", STATION)
    check_aggregates(ctype("pump", PUMP), {"station": station})
    with pytest.raises(InvalidInput) as info:
        check_aggregates(ctype("pump", {"properties": {"speed": {}}}, 2), {"station": station})
    assert "'station' aggregates its 'pump' children" in str(info.value)
    assert info.value.field == "properties" and "first change 'station'" in info.value.fix


def test_aggregates_that_depend_on_themselves_through_children_are_refused():
    zone = {
        "properties": {"area": {}},
        "children": ["zone"],
        "derived": {"total": "area + sum(children.total)"},
    }
    with pytest.raises(InvalidInput, match=r"zone.total -> zone.total") as info:
        check_aggregates(ctype("zone", zone), {})
    assert info.value.field == "derived.total.expr"
    a = {"properties": {"x": {}}, "children": ["b"], "derived": {"s": "sum(children.t)"}}
    b = {"properties": {"y": {}}, "children": ["a"], "derived": {"t": "max(children.s)"}}
    check_aggregates(ctype("a", a), {})
    with pytest.raises(InvalidInput, match="depend on themselves through children"):
        check_aggregates(ctype("b", b), {"a": ctype("a", a)})
    nested = {"properties": {"area": {}}, "children": ["zone"], "derived": {"n": "count(children)"}}
    check_aggregates(ctype("zone", nested), {})  # a tree of one type without a cycle is fine


def test_a_derived_value_over_an_aggregate_cannot_use_windows():
    spec = {**STATION, "derived": {"t": "sum(children.flow)", "w": "t + avg(level, '1h')"}}
    with pytest.raises(InvalidInput) as info:
        ctype("station", spec)
    assert info.value.field == "derived.w.expr" and "avg(level, '1h')" in info.value.fix


def test_children_cannot_name_a_value_of_a_type_with_children():
    with pytest.raises(InvalidInput) as info:
        ctype("station", {**STATION, "properties": {"children": {}}})
    assert info.value.field == "properties.children"
