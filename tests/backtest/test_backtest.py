"""Back-test mechanics on a recorded fleet: a new rule finds exactly the recorded pattern, an
unchanged candidate gives an empty diff, a changed window matches a NumPy reference computed
from the raw history, failing expressions are reported, and nothing live changes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from backtest_support import (
    END,
    MINUTE,
    START,
    TWINS,
    expected_hot_alarms,
    live_fingerprint,
    record,
)

from livetwin.backtest.lockstep import Cancelled, LockStep, Window


def backtest(platform, candidate: dict, **extra) -> dict:
    """Check and run a back-test of the oven type over the window; its kept report."""
    plan = platform.backtests.plan(
        {"type": "oven", "candidate": candidate, "from": START, "to": END, **extra}
    )
    run_id = f"run_test_{next(_ids)}"
    platform.backtests.run(plan, run_id)
    return platform.backtests.report(run_id)


_ids = itertools.count()


@pytest.fixture
def fleet(platform):
    return record(platform)


def test_a_new_rule_lists_exactly_the_recorded_hot_spells(platform, fleet):
    report = backtest(platform, {"patch": {"rules": {"hot": {"when": "temp > 80", "for": "5m"}}}})
    [hot] = [r for r in report["rules"] if r["rule"] == "hot"]
    assert hot["status"] == "added"
    found = {(a["twin"], a["since"], a["raised"], a["cleared"]) for a in hot["would_raise_alarms"]}
    from livetwin.timefmt import format_ts

    expected = {
        (twin, format_ts(since), format_ts(raised), format_ts(cleared))
        for twin, since, raised, cleared in expected_hot_alarms()
    }
    assert expected and found == expected
    assert hot["candidate_alarms"] == len(expected)
    assert hot["precision"] is None  # no recorded alarms of a new rule
    assert not report["outputs"]  # derived values unchanged


def test_a_candidate_changing_nothing_gives_an_empty_diff(platform, fleet):
    for candidate in ({"patch": {}}, {"spec": platform.get_type("oven")["spec"]}):
        report = backtest(platform, candidate)
        assert report["identical"] is True
        assert report["outputs"] == [] and report["new_outputs"] == []
        assert set(report["unchanged_outputs"]) == {"temp_avg", "power"}
        [stuck] = report["rules"]
        assert stuck["baseline_alarms"] == stuck["candidate_alarms"] == stuck["matched"] > 0
        assert stuck["precision"] == stuck["recall"] == 1.0
        assert report["observations"]["compared"] == len(TWINS) * 90


def _bucket_avg(ts: np.ndarray, x: np.ndarray, duration_ms: int) -> np.ndarray:
    """avg(x, d) after each sample: the mean of the samples so far whose 12th-of-d bucket lies
    in the 12 buckets ending at the sample's own (the engine's documented window)."""
    bucket = ts * 12 // duration_ms
    out = np.empty(len(ts))
    for k in range(len(ts)):
        inside = (bucket[: k + 1] > bucket[k] - 12) & (bucket[: k + 1] <= bucket[k])
        out[k] = x[: k + 1][inside].mean()
    return out


def test_a_changed_window_length_matches_numpy_on_the_raw_history(platform, fleet):
    report = backtest(platform, {"patch": {"derived": {"temp_avg": "avg(temp, '30m')"}}})
    assert report["window"]["warmup_ms"] == 30 * MINUTE  # the candidate starts warm
    [diff] = report["outputs"]
    gaps, worst, first = [], {}, None
    for twin in TWINS:
        raw = platform.history(twin, ["temp"])
        ts, temp = np.array(raw["ts"]), np.array(raw["series"]["temp"], dtype=float)
        delta = _bucket_avg(ts, temp, 30 * MINUTE) - _bucket_avg(ts, temp, 10 * MINUTE)
        inside = (ts >= START) & (ts < END)
        d = np.abs(delta[inside])
        gaps.append(d)
        worst[twin] = d.max()
        at = ts[inside][d > 0]
        if len(at) and (first is None or at.min() < first[0]):
            first = (int(at.min()), twin)
    gaps = np.concatenate(gaps)
    assert diff["name"] == "temp_avg"
    assert diff["compared"] == len(gaps) and diff["differing"] == int((gaps > 0).sum())
    assert diff["max_abs_diff"] == pytest.approx(gaps.max(), rel=1e-9)
    assert diff["rms_diff"] == pytest.approx(np.sqrt(np.mean(gaps**2)), rel=1e-9)
    from livetwin.timefmt import format_ts

    assert diff["first_divergence"]["ts"] == format_ts(first[0])
    assert diff["first_divergence"]["twin"] == first[1]
    ranked = sorted(worst, key=lambda t: -worst[t])
    assert [w["twin"] for w in diff["worst_twins"]] == ranked[:10]
    for w in diff["worst_twins"]:
        assert w["max_abs_diff"] == pytest.approx(worst[w["twin"]], rel=1e-9)
    # the report keeps baseline and candidate series of the worst twins for the plot
    series = report["series"][ranked[0]]
    assert len(series["ts"]) == 90
    assert series["outputs"]["temp_avg"]["baseline"] != series["outputs"]["temp_avg"]["candidate"]


def test_expressions_failing_on_recorded_data_are_reported_not_raised(platform, fleet):
    candidate = {"patch": {"derived": {"per_valve": "temp / valve", "wet": "humidity * 2"}}}
    report = backtest(platform, candidate)
    failures = {f["name"]: f for f in report["failures"]}
    assert failures["per_valve"]["infinite"] > 0 and failures["per_valve"]["unknown"] == 0
    example = failures["per_valve"]["examples"][0]
    assert example["problem"] == "infinite" and example["inputs"]["valve"] == 0
    assert example["twin"] in TWINS and example["ts"].startswith("2026-11-22")
    assert failures["wet"]["unknown"] == len(TWINS) * 90
    assert failures["wet"]["examples"][0]["missing"] == ["humidity"]
    new = {d["name"]: d for d in report["new_outputs"]}
    assert new["wet"]["known"] == 0 and new["per_valve"]["count"] == len(TWINS) * 90


def test_a_back_test_leaves_live_state_history_and_alarms_byte_identical(platform, fleet):
    before = live_fingerprint(platform)
    backtest(
        platform,
        {
            "patch": {
                "derived": {"temp_avg": "avg(temp, '30m')", "x": "temp * 2"},
                "rules": {"hot": {"when": "temp > 80", "for": "5m"}, "fan_stuck": None},
            }
        },
    )
    platform.alarms.sync()
    after = live_fingerprint(platform)
    assert after == before


def test_the_twin_filter_restricts_the_comparison(platform, fleet):
    report = backtest(
        platform,
        {"patch": {"derived": {"temp_avg": "avg(temp, '30m')"}}},
        twins={"ids": ["oven-1", "oven-4"]},
    )
    assert report["observations"]["twins"] == 2
    assert {w["twin"] for w in report["outputs"][0]["worst_twins"]} == {"oven-1", "oven-4"}


def test_a_cancelled_back_test_stops(platform, fleet):
    plan = platform.backtests.plan(
        {"type": "oven", "candidate": {"patch": {}}, "from": START, "to": END}
    )
    step = LockStep("oven", plan.candidate, Window(START, END), cancelled=lambda: True)
    with pytest.raises(Cancelled):
        step.feed(platform.core.store.journal())


def test_a_parent_type_back_tests_its_aggregates_over_its_children(platform):
    """The children's entries replay too, so the parent's aggregates are current in both
    engines: a changed aggregate differs, a new one has the children's values, and a rule over
    an aggregate fires on the children's batches."""
    from backtest_support import OVEN, T0

    platform.put_type("oven", OVEN)
    line = {
        "properties": {"speed": {}},
        "children": ["oven"],
        "derived": {"hot": "max(children.temp)"},
    }
    platform.put_type("line", line)
    ovens = [f"oven-{i}" for i in range(4)]
    for m in range(180):
        rows = [{"twin": "line-1", "type": "line", "ts": T0 + m * MINUTE, "values": {"speed": 1}}]
        rows += [
            {
                "twin": oven,
                "type": "oven",
                "ts": T0 + m * MINUTE + 1 + i,
                "parent": "line-1",
                "values": {"temp": 50.0 + i + (40.0 if m == 100 and i == 2 else 0.0)},
            }
            for i, oven in enumerate(ovens)
        ]
        assert platform.ingest(rows).accepted == 5
    plan = platform.backtests.plan(
        {
            "type": "line",
            "from": START,
            "to": END,
            "candidate": {
                "patch": {
                    "derived": {"hot": "avg(children.temp)", "ovens": "count(children)"},
                    "rules": {"overheat": {"when": "hot > 60"}},
                }
            },
        }
    )
    platform.backtests.run(plan, "run_test_aggregates")
    report = platform.backtests.report("run_test_aggregates")
    [hot] = report["outputs"]
    assert hot["name"] == "hot" and hot["differing"] == hot["compared"] == 90
    # the line's minute-101 observation sees oven-2's 92 of minute 100: max 92, mean 61.5
    assert hot["max_abs_diff"] == pytest.approx(92 - 61.5)
    [ovens_out] = report["new_outputs"]
    assert ovens_out["name"] == "ovens" and ovens_out["min"] == ovens_out["max"] == 4
    [overheat] = report["rules"]
    assert overheat["candidate_alarms"] == 1  # minute 100: oven-2 at 92 lifts the mean to 61.5
