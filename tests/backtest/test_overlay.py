"""The overlay candidate: which outputs it evaluates again (change sets), and that a back-test
through it reports exactly what a second engine fed the same journal reports."""

from __future__ import annotations

import pytest
from backtest_support import END, OVEN, START, record

from livetwin.backtest.candidate import compile_candidate, merge_patch
from livetwin.backtest.lockstep import LockStep, NeedsEngines, Window
from livetwin.backtest.overlay import change_set
from livetwin.models.base import resolve_model
from livetwin.spec.types import compile_type, parse_type_spec

RECORDED = compile_type(parse_type_spec(OVEN, "oven"), 1)


def candidate(patch: dict):
    return compile_type(parse_type_spec(merge_patch(OVEN, patch), "oven"), 0)


@pytest.mark.parametrize(
    ("patch", "derived", "rules"),
    [
        ({}, (), ()),
        ({"derived": {"temp_avg": "avg(temp, '30m')"}}, ("temp_avg",), ()),
        # a value reading a changed one changes too, through any depth; so does a rule
        (
            {
                "derived": {"temp_avg": "avg(temp, '30m')", "x": "temp_avg * 2", "y": "x + 1"},
                "rules": {"warm": {"when": "y > 100"}, "cool": {"when": "power < 3"}},
            },
            ("temp_avg", "x", "y"),
            ("warm", "cool"),  # added rules are the candidate's alone
        ),
        ({"rules": {"fan_stuck": {"when": "fan > 9.5", "for": "3m"}}}, (), ("fan_stuck",)),
        (
            {"rules": {"fan_stuck": {"when": "fan > 9.5", "for": "2m", "severity": "critical"}}},
            (),
            (),
        ),
        ({"derived": {"power": None}, "rules": {"fan_stuck": None}}, (), ()),
    ],
)
def test_the_change_set_holds_what_differs_and_what_reads_it(patch, derived, rules):
    changes = change_set(RECORDED, candidate(patch))
    assert changes is not None
    assert (changes.derived, changes.rules) == (derived, rules)


@pytest.mark.parametrize(
    "patch",
    [
        {"properties": {"pressure": {}}},  # another input
        {"parameters": {"k": {"value": 1.0}}},
        {"attributes": {"mode": {"type": "string"}}},
    ],
)
def test_a_candidate_with_other_inputs_cannot_share_the_state(patch):
    assert change_set(RECORDED, candidate(patch)) is None


def test_the_same_inputs_in_another_order_share_the_state():
    reordered = {**OVEN, "properties": dict(reversed(list(OVEN["properties"].items())))}
    cand = compile_type(parse_type_spec(reordered, "oven"), 0)
    assert cand.inputs != RECORDED.inputs
    assert change_set(RECORDED, cand) == change_set(RECORDED, RECORDED)


CANDIDATES = [
    {"patch": {}},
    {"patch": {"derived": {"temp_avg": "avg(temp, '30m')"}}},
    {
        "patch": {
            "derived": {
                "temp_avg": "max(temp, '20m')",
                "per_valve": "temp / valve",
                "x": "power * 2",
            },
            "rules": {
                "hot": {"when": "temp_avg > 85", "for": "5m"},
                "fan_stuck": {"when": "fan > 9", "for": "1m", "clear": "fan < 2"},
            },
        }
    },
    {"patch": {"derived": {"power": "fan + temp_avg"}, "rules": {"fan_stuck": None}}},
    {  # the inputs in another order, and the window changed
        "spec": {
            **OVEN,
            "properties": dict(reversed(list(OVEN["properties"].items()))),
            "derived": {**OVEN["derived"], "temp_avg": "avg(temp, '20m')"},
        }
    },
    {"patch": {"properties": {"pressure": {}}, "derived": {"p2": "pressure * 2"}}},  # engines
]


@pytest.mark.parametrize("body", CANDIDATES)
def test_the_overlay_reports_what_a_second_engine_reports(platform, body):
    record(platform)
    cand = compile_candidate("oven", parse_type_spec(OVEN, "oven"), body, resolve_model)
    window = Window(START, END, 20 * 60_000)
    reports = {}
    for overlay in (True, False):
        step = LockStep("oven", cand, window, recorded=RECORDED, overlay=overlay, watch=[1, 5])
        step.feed(platform.core.store.journal())
        reports[overlay] = step.report()
        if overlay:
            shared = change_set(RECORDED, cand) is not None
            assert (step.overlay is not None) == shared and (step.cand is None) == shared
    modes = {k: r.pop("candidate_run") for k, r in reports.items()}
    assert modes == {True: "overlay" if shared else "second engine", False: "second engine"}
    assert reports[True] == reports[False]
    assert reports[True]["observations"]["compared"] > 0


def test_a_type_redefined_in_the_window_needs_a_second_engine(platform):
    record(platform)
    platform.put_type("oven", {**OVEN, "derived": {**OVEN["derived"], "z": "temp + 1"}})
    cand = candidate({"derived": {"temp_avg": "avg(temp, '30m')"}})
    step = LockStep("oven", cand, Window(START, END + 10**9), recorded=RECORDED)
    with pytest.raises(NeedsEngines):
        step.feed(platform.core.store.journal())
    # the service replays again with two engines: the report is complete
    plan = platform.backtests.plan(
        {
            "type": "oven",
            "candidate": {"patch": {"derived": {"temp_avg": "avg(temp, '30m')"}}},
            "from": START,
            "to": END,
        }
    )
    platform.backtests.run(plan, "run_test_redefined")
    report = platform.backtests.report("run_test_redefined")
    assert [o["name"] for o in report["outputs"]] == ["temp_avg"]
    assert report["observations"]["compared"] == 12 * 90


def test_an_added_rule_on_a_text_attribute_reads_it_through_the_overlay(platform):
    valve = {
        "properties": {"flow": {}},
        "attributes": {"mode": {"type": "enum", "values": ["auto", "manual"]}},
    }
    platform.put_type("valve", valve)
    t0, rows = START - 30 * 60_000, []
    for m in range(120):
        for i in range(4):
            values = {"flow": float((m + i) % 10)}
            if m % 20 == 0:
                values["mode"] = "manual" if (m // 20 + i) % 2 else "auto"
            rows.append({"twin": f"v{i}", "type": "valve", "ts": t0 + m * 60_000, "values": values})
    assert platform.ingest(rows).accepted == len(rows)
    recorded = platform.core.engine.states["valve"].ctype
    patch = {"patch": {"rules": {"manual_flow": {"when": "mode == 'manual' and flow > 5"}}}}
    cand = compile_candidate("valve", recorded.spec, patch, resolve_model)
    reports = {}
    for overlay in (True, False):
        step = LockStep("valve", cand, Window(START, END), recorded=recorded, overlay=overlay)
        step.feed(platform.core.store.journal())
        reports[overlay] = step.report()
    assert [r.pop("candidate_run") for r in reports.values()] == ["overlay", "second engine"]
    assert reports[True] == reports[False]
    assert reports[True]["rules"][0]["candidate_alarms"] > 0
