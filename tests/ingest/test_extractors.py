"""Extractor specs: spec validation, payload -> observation mapping, fast path == jsonpath-ng."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from livetwin.errors import InvalidInput
from livetwin.ingest.extract import ExtractResult, extract
from livetwin.spec.extractor import ExtractorSpec, compile_path

FLOW = {"flow": "@.flow"}


def spec(**fields) -> ExtractorSpec:
    body = {"twin": "$.id", "type": "pump", "values": {"flow": "$.flow"}}
    body.update(fields)
    return ExtractorSpec.from_data({k: v for k, v in body.items() if v is not None})


def spec_error(**fields) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        spec(**fields)
    return caught.value


# --- mapping -------------------------------------------------------------------------------------


def test_nested_payload_gives_one_observation():
    s = spec(
        twin="$.device.id",
        ts="$.meta.time",
        values={"flow": "$.data.hydraulics.flow", "pressure": "$.data.p[0]"},
        key="$.meta.msg",
        parent="$.site",
    )
    payload = {
        "device": {"id": "pump-1"},
        "meta": {"time": "2026-11-22T10:00:00Z", "msg": "m-1"},
        "data": {"hydraulics": {"flow": 1.2}, "p": [3.4, 9.9]},
        "site": "plant-a",
    }
    result = extract(s, payload)
    assert isinstance(result, ExtractResult)
    assert result.errors == []
    assert result.observations == [
        {
            "twin": "pump-1",
            "type": "pump",
            "ts": "2026-11-22T10:00:00Z",
            "values": {"flow": 1.2, "pressure": 3.4},
            "key": "m-1",
            "parent": "plant-a",
        }
    ]


def test_fan_out_with_relative_and_absolute_paths_keeps_payload_order():
    s = spec(
        foreach="$.readings[*]",
        twin="@.device_id",
        ts="@.time",
        ts_format="epoch_ms",
        values={"flow": "@.data.flow", "pressure": "@.data.p", "site_temp": "$.weather.t"},
        key="@.msg_id",
        parent="$.site",
    )
    payload = {
        "site": "plant-a",
        "weather": {"t": 21.5},
        "readings": [
            {"device_id": "p2", "time": 1000, "data": {"flow": 2.0, "p": 5}, "msg_id": 7},
            {"device_id": "p1", "time": 2000, "data": {"flow": 1.0, "p": 4}, "msg_id": "x"},
        ],
    }
    result = extract(s, payload)
    assert result.errors == []
    assert result.observations == [
        {
            "twin": "p2",
            "type": "pump",
            "ts": 1000,
            "values": {"flow": 2.0, "pressure": 5, "site_temp": 21.5},
            "key": "7",
            "parent": "plant-a",
        },
        {
            "twin": "p1",
            "type": "pump",
            "ts": 2000,
            "values": {"flow": 1.0, "pressure": 4, "site_temp": 21.5},
            "key": "x",
            "parent": "plant-a",
        },
    ]


def test_fan_out_over_a_top_level_array_and_over_object_members():
    array_spec = spec(foreach="$[*]", twin="@.id", values={"flow": "@.flow"})
    result = extract(array_spec, [{"id": "a", "flow": 1}, {"id": "b", "flow": 2}])
    assert [o["twin"] for o in result.observations] == ["a", "b"]

    members = spec(foreach="$.devices.*", twin="@.id", values={"flow": "@.flow"})
    result = extract(members, {"devices": {"x": {"id": "a", "flow": 1}, "y": {"id": "b"}}})
    assert [o["twin"] for o in result.observations] == ["a"]
    assert result.errors == [
        {
            "index": 1,
            "field": "values",
            "error": "no value path matched",
            "fix": result.errors[0]["fix"],
        }
    ]


def test_numeric_twin_ids_become_strings_and_the_prefix_is_prepended():
    s = spec(foreach="$.r[*]", twin="@.id", twin_prefix="line-", values={"flow": "@.f"})
    result = extract(s, {"r": [{"id": 7, "f": 1}, {"id": "b", "f": 2}]})
    assert [o["twin"] for o in result.observations] == ["line-7", "line-b"]


def test_type_path_reads_the_type_per_element_or_from_the_payload():
    per_element = spec(foreach="$.r[*]", twin="@.id", type=None, type_path="@.kind", values=FLOW)
    from_root = spec(foreach="$.r[*]", twin="@.id", type=None, type_path="$.kind", values=FLOW)
    payload = {
        "kind": "valve",
        "r": [{"id": "a", "kind": "pump", "flow": 1}, {"id": "b", "kind": "fan", "flow": 2}],
    }
    assert [o["type"] for o in extract(per_element, payload).observations] == ["pump", "fan"]
    assert [o["type"] for o in extract(from_root, payload).observations] == ["valve", "valve"]

    payload["r"][1].pop("kind")
    payload["r"][0]["kind"] = 3
    result = extract(per_element, payload)
    assert result.observations == []
    assert [(e["index"], e["field"]) for e in result.errors] == [
        (0, "type_path"),
        (1, "type_path"),
    ]
    assert "got 3" in result.errors[0]["error"]
    assert "got nothing" in result.errors[1]["error"]


@pytest.mark.parametrize(
    ("ts_format", "raw", "expected"),
    [
        ("iso", "2026-11-22T10:00:00Z", "2026-11-22T10:00:00Z"),
        ("iso", "2026-11-22T10:00:00.123+01:00", "2026-11-22T10:00:00.123+01:00"),
        ("epoch_ms", 1_795_000_000_123, 1_795_000_000_123),
        ("epoch_ms", 1_795_000_000_123.4, 1_795_000_000_123),
        ("epoch_ms", "1795000000123", 1_795_000_000_123),
        ("epoch_s", 1_795_000_000, 1_795_000_000_000),
        ("epoch_s", 1_795_000_000.123, 1_795_000_000_123),
        ("epoch_s", "1795000000.5", 1_795_000_000_500),
        ("epoch_us", 1_795_000_000_123_456, 1_795_000_000_123),
        ("epoch_us", 1_795_000_000_123_500, 1_795_000_000_124),
        ("epoch_us", 1_795_000_000_123_456.0, 1_795_000_000_123),
    ],
)
def test_every_ts_format(ts_format, raw, expected):
    s = spec(ts="$.t", ts_format=ts_format)
    result = extract(s, {"id": "a", "t": raw, "flow": 1})
    assert result.errors == []
    (observation,) = result.observations
    assert observation["ts"] == expected
    assert type(observation["ts"]) is type(expected)


@pytest.mark.parametrize(
    ("ts_format", "raw", "in_message", "in_fix"),
    [
        ("iso", 1_795_000_000_000, "expected an ISO 8601 string", "epoch_ms"),
        ("epoch_s", "yesterday", "'yesterday' is not a number", "seconds"),
        ("epoch_ms", True, "a boolean", "milliseconds"),
        ("epoch_us", {"v": 1}, "an object", "microseconds"),
        ("epoch_s", "nan", "not a finite number", "seconds"),
    ],
)
def test_bad_timestamps_are_reported_with_the_format(ts_format, raw, in_message, in_fix):
    result = extract(spec(ts="$.t", ts_format=ts_format), {"id": "a", "t": raw, "flow": 1})
    assert result.observations == []
    (error,) = result.errors
    assert error["field"] == "ts"
    assert in_message in error["error"]
    assert in_fix in error["fix"]


def test_missing_optional_parts_are_left_out():
    s = spec(
        foreach="$.r[*]",
        twin="@.id",
        ts="@.t",
        values={"flow": "@.flow", "pressure": "@.p"},
        key="@.k",
        parent="@.parent",
    )
    result = extract(s, {"r": [{"id": "a", "flow": 1.5, "p": None}]})
    assert result.errors == []
    assert result.observations == [{"twin": "a", "type": "pump", "values": {"flow": 1.5}}]


def test_values_pass_through_as_they_are():
    s = spec(values={"on": "$.on", "mode": "$.mode", "n": "$.n"})
    (observation,) = extract(s, {"id": "a", "on": True, "mode": "auto", "n": 3}).observations
    assert observation["values"] == {"on": True, "mode": "auto", "n": 3}


def test_partial_failures_keep_the_good_elements():
    s = spec(
        foreach="$.r[*]",
        twin="@.id",
        values={"flow": "@.flow", "pressure": "@.p"},
        key="@.k",
    )
    payload = {
        "r": [
            {"id": "good-0", "flow": 1},
            {"flow": 2},  # no twin id
            {"id": "bad-2", "flow": {"value": 3}},  # not a scalar
            {"id": "bad-3", "flow": 4, "p": [1, 2]},  # an array for a scalar
            {"id": "good-4", "p": 5},
            {"id": "bad-5"},  # no value at all
            {"id": True, "flow": 6},  # not an id
            {"id": "bad-7", "flow": 7, "k": 1.5},  # key of the wrong kind
            {"id": None, "flow": 8},  # null id
        ]
    }
    result = extract(s, payload)
    assert result.observations == [
        {"twin": "good-0", "type": "pump", "values": {"flow": 1}},
        {"twin": "good-4", "type": "pump", "values": {"pressure": 5}},
    ]
    assert [(e["index"], e["field"]) for e in result.errors] == [
        (1, "twin"),
        (2, "values.flow"),
        (3, "values.pressure"),
        (5, "values"),
        (6, "twin"),
        (7, "key"),
        (8, "twin"),
    ]
    for error in result.errors:
        assert set(error) == {"index", "field", "error", "fix"}
        assert error["error"] and error["fix"]
    assert "matched nothing" in result.errors[0]["error"]
    assert "@.flow" in result.errors[1]["error"]
    assert "a boolean" in result.errors[4]["error"]
    assert "null" in result.errors[6]["error"]


def test_several_matches_for_a_scalar_field_is_an_error_naming_the_field():
    s = spec(foreach="$.r[*]", twin="@.ids[*]", values={"flow": "@..flow"})
    payload = {"r": [{"ids": ["a", "b"], "flow": 1}, {"ids": ["c"], "x": {"flow": 1}, "flow": 2}]}
    result = extract(s, payload)
    assert result.observations == []
    assert [(e["index"], e["field"]) for e in result.errors] == [(0, "twin"), (1, "values.flow")]
    assert "matched 2 nodes" in result.errors[0]["error"]
    assert "@.ids[*]" in result.errors[0]["error"]


def test_foreach_that_matches_nothing_is_reported():
    s = spec(foreach="$.readings[*]", twin="@.id", values={"flow": "@.flow"})
    for payload in ({"other": 1}, {"readings": []}, [], "text"):
        result = extract(s, payload)
        assert result.observations == []
        assert [(e["index"], e["field"]) for e in result.errors] == [(0, "foreach")]


def test_an_element_that_is_not_an_object_is_an_element_error():
    s = spec(foreach="$.r[*]", twin="@.id", values={"flow": "@.flow"})
    result = extract(s, {"r": [5, {"id": "a", "flow": 1}, "x"]})
    assert [o["twin"] for o in result.observations] == ["a"]
    # Every problem of an element is reported, not just the first.
    assert [(e["index"], e["field"]) for e in result.errors] == [
        (0, "twin"),
        (0, "values"),
        (2, "twin"),
        (2, "values"),
    ]


def test_twin_prefix_placeholders_come_from_topic_vars():
    s = spec(twin_prefix="{site}/{1}-")
    result = extract(s, {"id": "p1", "flow": 1}, topic_vars={"site": "north", "1": "l3"})
    assert result.observations[0]["twin"] == "north/l3-p1"

    result = extract(s, {"id": "p1", "flow": 1}, topic_vars={"site": "north"})
    assert result.observations == []
    assert [(e["index"], e["field"]) for e in result.errors] == [(0, "twin_prefix")]
    assert "{1}" in result.errors[0]["error"]

    # A substituted value is not itself expanded.
    result = extract(s, {"id": "p1", "flow": 1}, topic_vars={"site": "{1}", "1": "x"})
    assert result.observations[0]["twin"] == "{1}/x-p1"


def test_a_failing_jsonpath_evaluation_is_reported_for_that_element(monkeypatch):
    s = spec(foreach="$.r[*]", twin="@.id", values={"flow": "@.flow", "p": "@.v[?(@.x > 1)].x"})
    path = s.paths["values.p"]
    assert not path.fast

    def broken(data):
        raise TypeError("cannot compare")

    monkeypatch.setattr(path, "find", broken)
    result = extract(s, {"r": [{"id": "a", "flow": 1}]})
    assert result.observations == []
    assert result.errors[0]["field"] == "values.p"
    assert "cannot compare" in result.errors[0]["error"]


def test_filters_and_recursive_descent_go_through_jsonpath_ng():
    s = spec(
        foreach="$.r[?(@.active == true)]",
        twin="@.id",
        values={"flow": "@..flow", "last": "@.hist[-1]", "first_big": "@.hist[?(@ > 5)]"},
    )
    assert not s.paths["foreach"].fast and not s.paths["values.flow"].fast
    assert s.paths["values.last"].fast
    payload = {
        "r": [
            {"id": "a", "active": True, "deep": {"x": {"flow": 1}}, "hist": [1, 2, 9]},
            {"id": "b", "active": False, "flow": 2},
            {"id": "c", "active": True, "flow": 3, "hist": [7]},
        ]
    }
    result = extract(s, payload)
    assert result.errors == []
    assert result.observations == [
        {"twin": "a", "type": "pump", "values": {"flow": 1, "last": 9, "first_big": 9}},
        {"twin": "c", "type": "pump", "values": {"flow": 3, "last": 7, "first_big": 7}},
    ]


def test_a_large_fan_out_uses_only_fast_paths():
    s = spec(
        foreach="$.readings[*]",
        twin="@.device_id",
        ts="@.time",
        ts_format="epoch_s",
        values={"flow": "@.data.flow", "pressure": "@.data.p", "temp": "@.data.t[0]"},
        key="@.msg_id",
        parent="$.site",
    )
    assert all(path.fast for path in s.paths.values())
    readings = [
        {"device_id": f"p{i}", "time": 1.7e9 + i, "data": {"flow": i, "p": 3.0, "t": [20.0]}}
        for i in range(1000)
    ]
    result = extract(s, {"site": "s1", "readings": readings})
    assert result.errors == []
    assert len(result.observations) == 1000
    assert result.observations[999] == {
        "twin": "p999",
        "type": "pump",
        "ts": 1_700_000_999_000,
        "values": {"flow": 999, "pressure": 3.0, "temp": 20.0},
        "parent": "s1",
    }


# --- spec validation ----------------------------------------------------------------------------


def test_invalid_jsonpath_names_the_field_and_quotes_the_path():
    error = spec_error(values={"flow": "$.data.flow", "pressure": "$.data[?(@.p >"})
    assert error.field == "values.pressure"
    assert "'$.data[?(@.p >'" in error.message
    assert "does not parse" in error.message
    assert "$.data.flow" in error.fix and "@.flow" in error.fix
    assert error.to_dict()["field"] == "values.pressure"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"twin": "$.a b"}, "twin"),
        ({"ts": "$.t["}, "ts"),
        ({"key": "$..", "ts": "$.t"}, "key"),
        ({"parent": "$.p)"}, "parent"),
        ({"foreach": "$.r[*", "twin": "@.id"}, "foreach"),
        ({"type": None, "type_path": "$.k +"}, "type_path"),
    ],
)
def test_every_path_field_is_checked(fields, field):
    assert spec_error(**fields).field == field


def test_paths_must_start_with_dollar_or_at():
    error = spec_error(values={"flow": "data.flow"})
    assert error.field == "values.flow"
    assert "must start with $" in error.message
    assert spec_error(twin="").field == "twin"


def test_relative_paths_need_foreach():
    error = spec_error(values={"flow": "@.flow"})
    assert error.field == "values.flow"
    assert "no foreach" in error.message
    assert "$.flow" in error.fix and "foreach" in error.fix
    assert spec_error(twin="@.id").field == "twin"


def test_foreach_must_be_absolute():
    error = spec_error(foreach="@.r[*]", twin="@.id")
    assert error.field == "foreach"


def test_exactly_one_of_type_and_type_path():
    assert spec_error(type_path="$.kind").field == "type"
    assert spec_error(type=None).field == "type"
    assert spec_error(type=" ").field == "type"


def test_values_must_be_non_empty_with_identifier_names():
    assert spec_error(values={}).field == "values"
    for name in ("1flow", "flow-rate", "", "class", "a b"):
        error = spec_error(values={name: "$.x"})
        assert error.field == f"values.{name}"
        assert "identifier" in error.message


def test_unknown_field_is_a_clear_error():
    with pytest.raises(InvalidInput) as caught:
        ExtractorSpec.from_data({"twin": "$.id", "type": "pump", "valus": {"flow": "$.f"}})
    error = caught.value
    assert error.field == "valus"
    assert "unknown field 'valus'" in error.message
    assert "did you mean 'values'?" in error.fix

    with pytest.raises(ValidationError, match="valus"):
        ExtractorSpec(twin="$.id", type="pump", values={"f": "$.f"}, valus={})


@pytest.mark.parametrize(
    ("body", "field", "in_message"),
    [
        ({"type": "pump", "values": {"f": "$.f"}}, "twin", "missing field 'twin'"),
        ({"twin": "$.id", "type": "pump"}, "values", "missing field 'values'"),
        ({"twin": 5, "type": "pump", "values": {"f": "$.f"}}, "twin", "got a number"),
        ({"twin": "$.id", "type": "pump", "values": ["$.f"]}, "values", "an object"),
        ({"twin": "$.id", "type": "pump", "values": {"f": 1}}, "values.f", "must be a string"),
        (
            {"twin": "$.id", "type": "p", "values": {"f": "$.f"}, "ts": "$.t", "ts_format": "unix"},
            "ts_format",
            "'unix' is not known",
        ),
    ],
)
def test_shape_errors_become_invalid_input(body, field, in_message):
    with pytest.raises(InvalidInput) as caught:
        ExtractorSpec.from_data(body)
    assert caught.value.field == field
    assert in_message in caught.value.message
    assert caught.value.fix


def test_ts_format_without_ts_is_an_error():
    error = spec_error(ts_format="epoch_s")
    assert error.field == "ts_format"
    assert spec(ts_format="iso").ts is None  # the default, harmless


def test_twin_prefix_braces_must_be_placeholders():
    assert spec(twin_prefix="{site}-").prefix_vars == ("site",)
    for prefix in ("{", "a}", "{a-b}", "{}"):
        assert spec_error(twin_prefix=prefix).field == "twin_prefix"


def test_name_from_the_url():
    s = ExtractorSpec.from_data({"twin": "$.id", "type": "p", "values": {"f": "$.f"}}, name="acme")
    assert s.name == "acme"
    same = {"name": "acme", "twin": "$.id", "type": "p", "values": {"f": "$.f"}}
    assert ExtractorSpec.from_data(same, name="acme").name == "acme"
    with pytest.raises(InvalidInput) as caught:
        ExtractorSpec.from_data(same, name="other")
    assert caught.value.field == "name"
    with pytest.raises(InvalidInput) as caught:
        ExtractorSpec.from_data({"twin": "$.id", "type": "p", "values": {"f": "$.f"}}, name="a b")
    assert caught.value.field == "name"


def test_a_spec_must_be_an_object():
    with pytest.raises(InvalidInput, match="an array"):
        ExtractorSpec.from_data([1, 2])


def test_from_yaml_and_json_text():
    text = """
foreach: "$.readings[*]"
twin: "@.device_id"
type: pump
ts: "@.time"
ts_format: epoch_s
values:
  flow: "@.data.flow"
  pressure: "@.data.p"
key: "@.msg_id"
parent: "$.site"
"""
    from_yaml = ExtractorSpec.from_yaml(text, name="acme-gateway")
    from_json = ExtractorSpec.from_yaml(json.dumps(from_yaml.model_dump()))
    assert from_yaml == from_json
    assert from_yaml.name == "acme-gateway"
    payload = {"site": "s", "readings": [{"device_id": "p", "time": 1, "data": {"flow": 2}}]}
    assert extract(from_yaml, payload).observations == [
        {"twin": "p", "type": "pump", "ts": 1000, "values": {"flow": 2}, "parent": "s"}
    ]
    with pytest.raises(InvalidInput, match="not valid YAML"):
        ExtractorSpec.from_yaml("twin: [unclosed")


def test_a_spec_is_immutable():
    s = spec()
    with pytest.raises(ValidationError):
        s.twin = "$.other"


# --- fast path == jsonpath-ng ---------------------------------------------------------------------

PAYLOADS = [
    {"a": {"b": [1, {"c": 2}, [3, 4]], "c": None}, "d": "text", "e": [], "0": "zero"},
    {"a": [{"b": 1}, {"b": [2, 3]}, {"x": 4}], "d": {"0": 1, "1": [True, False]}},
    [{"a": 1}, {"a": {"b": 2}}, 3, "s", None],
    {"a": {"b": {"c": {"d": 1}}}, "a b": 5, "a-b": 6},
    "scalar",
    None,
    42,
]

PATHS = [
    "$",
    "$.a",
    "$.a.b",
    "$.a.b[0]",
    "$.a.b[1].c",
    "$.a.b[-1]",
    "$.a.b[-4]",
    "$.a.b[2][1]",
    "$.a.b[7]",
    "$.a.c",
    "$.a[0].b",
    "$.a[*].b",
    "$.a[*].b[*]",
    "$.a.*",
    "$.*",
    "$[*]",
    "$[*].a",
    "$[1].a.b",
    "$[0]",
    "$.d.0",
    '$.d."1"[0]',
    '$."0"',
    '$."a b"',
    '$."a-b"',
    "$.d.length",
    "$.e[0]",
    "$.e[*]",
    "$.a.b.c.d",
    "$.x.y",
    "@.a.b",
    "@[2]",
]


@pytest.mark.parametrize("text", PATHS)
def test_fast_path_equals_jsonpath_ng(text):
    path = compile_path(text, "values.x")
    assert path.fast, f"{text} should take the fast path"
    for payload in PAYLOADS:
        assert path.find(payload) == path.find_slow(payload), (text, payload)


@pytest.mark.parametrize("text", ["$..b", "$.a[0:2]", "$.a[?(@.b)]", "$.a,d", "$.a[0,1]"])
def test_other_paths_use_jsonpath_ng(text):
    path = compile_path(text, "values.x")
    assert not path.fast
    for payload in PAYLOADS:
        assert path.find(payload) == path.find_slow(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["a", "b", "0"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "b", "c", "0"]), children, max_size=4)
    ),
    max_leaves=20,
)
steps = st.sampled_from([".a", ".b", ".c", '."0"', "[0]", "[1]", "[-1]", "[*]", ".*"])


@settings(max_examples=300, deadline=None)
@given(payload=json_values, path_steps=st.lists(steps, max_size=4), root=st.sampled_from("$@"))
def test_fast_path_equals_jsonpath_ng_on_random_json(payload, path_steps, root):
    path = compile_path(root + "".join(path_steps), "values.x")
    assert path.fast
    assert path.find(payload) == path.find_slow(payload)
