"""What-if scenarios end to end on synthetic roller lines whose truth is known: forecasts from
the calibrated state cover what was measured later, reproduce the filter's own predictions over
recorded inputs, raise the alarms a change would cause, and never touch live state."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from calibration_support import STEP_MS, feed
from conftest import T0, FakeClock

from livetwin.examples.rollers import ROLLER_TYPE, SPEEDS, observations, roller_fleet
from livetwin.platform import Platform, Settings
from livetwin.timefmt import parse_ts

N_LINES, WARM, AHEAD = 24, 300, 300
SLOW_RULE = {"slow": {"when": "w4 < 30", "for": "1s", "severity": "warning"}}


def run(platform: Platform, body: dict) -> dict:
    record = platform.scenarios.submit(body)
    assert platform.scheduler.wait(record["run"], timeout_s=120)["state"] == "succeeded"
    return platform.scenarios.get(record["id"], body.get("twins"))


@pytest.fixture(scope="module")
def forecast(tmp_path_factory):
    """24 lines whose drags drift as the calibration assumes (a random walk of 2e-3 per step in
    log b, no systematic wear): 300 steps measured and calibrated; then the inputs of the next
    300 steps are recorded, and a scenario replays them from the calibrated state. Afterwards
    five measured steps arrive and calibration runs over the same 300 steps with no
    measurements: its published values are its predictions over the recorded inputs."""
    clock = FakeClock(T0 + 10**8)
    settings = Settings(run_schedules=True, webhooks=False)
    with Platform(tmp_path_factory.mktemp("s") / "d", clock=clock, settings=settings) as p:
        p.put_type("roller_line", ROLLER_TYPE)
        sim = roller_fleet(N_LINES, seed=3, wear=0.0, drift=2e-3)
        ids = [f"line-{i}" for i in range(N_LINES)]
        feed(p, sim, ids, WARM, 0)
        assert p.calibrate("roller_line")["status"] == "succeeded"
        later, rows = [], []
        for k in range(AHEAD):
            sample = sim.step()
            later.append(sample.z)
            for row in observations(sample, ids, T0 + (WARM + k) * STEP_MS):
                row["values"] = {u: row["values"][u] for u in ("brake_torque", "motor_torque")}
                rows.append(row)
        assert p.ingest(rows).accepted == len(rows)
        window = {"from": T0 + WARM * STEP_MS, "to": T0 + (WARM + AHEAD) * STEP_MS}
        body = {
            "twins": ids,
            "horizon": AHEAD * STEP_MS / 1000,
            "inputs": {u: {"kind": "recorded", **window} for u in ("brake_torque", "motor_torque")},
        }
        result = run(p, body)
        feed(p, sim, ids, 5, WARM + AHEAD)
        assert p.calibrate("roller_line")["steps"] == AHEAD + 5
        names = ["T1", "T1_lower", "T1_upper", "b2", "b2_lower", "b2_upper"]
        published = p.history(ids[0], names, start=window["from"], end=window["to"])["series"]
        yield (
            result,
            np.array(later),
            {k: [v for v in vs if v is not None] for k, vs in published.items()},
        )


def test_bands_cover_the_speeds_measured_later(forecast):
    result, later, _ = forecast
    assert result["status"] == "succeeded" and result["progress"] == 1
    inside = []
    for i in range(N_LINES):
        series = result["series"][f"line-{i}"]
        assert series["ts"][0] == T0 + (WARM + 1) * STEP_MS  # the end of the first step
        for j, w in enumerate(SPEEDS):
            band = series["scenario"][w]
            lower, upper = np.array(band["lower"]), np.array(band["upper"])
            inside.append((lower <= later[:, i, j]) & (later[:, i, j] <= upper))
    coverage = float(np.mean(inside))
    assert 0.90 <= coverage <= 0.99, coverage


def test_recorded_inputs_reproduce_the_filter_predictions(forecast):
    result, _, published = forecast
    scenario = result["series"]["line-0"]["scenario"]
    for name, stat in (("T1", "mean"), ("b2", "mean")):
        for suffix, key in (("", stat), ("_lower", "lower"), ("_upper", "upper")):
            recorded = np.array(published[name + suffix])
            assert len(recorded) == AHEAD
            np.testing.assert_allclose(scenario[name][key], recorded, rtol=1e-9, atol=1e-12)


def live_view(platform: Platform, ids: list[str]) -> bytes:
    """Everything live a scenario must leave alone, as bytes."""
    view = {
        "twins": [platform.twin(t) for t in ids],
        "history": [platform.history(t) for t in ids],
        "observations": [platform.observations(t, limit=1000) for t in ids],
        "alarms": platform.alarms.list(limit=1000),
        "journal": platform.stats()["journal_observations"],
    }
    return orjson.dumps(view, option=orjson.OPT_SERIALIZE_NUMPY)


@pytest.mark.platform_services("schedules")
def test_a_brake_change_raises_alarms_and_leaves_live_state_alone(platform, clock):
    clock.now = T0 + 10**8
    platform.put_type("roller_line", {**ROLLER_TYPE, "rules": SLOW_RULE})
    ids = [f"line-{i}" for i in range(4)]
    feed(platform, roller_fleet(4, seed=5), ids, 100, 0)
    platform.calibrate("roller_line")
    platform.snapshot()
    before = live_view(platform, ids)
    result = run(
        platform,
        {
            "twins": ids,
            "horizon": "20s",
            "step": "1s",
            "inputs": {"brake_torque": {"kind": "step", "at": "2s", "factor": 1.3}},
        },
    )
    assert live_view(platform, ids) == before
    summary = result["summary"]
    for side in ("scenario", "baseline"):  # an alarm where the forecast mean falls below 30
        slowed = {t for t in ids if result["series"][t][side]["w4"]["mean"][-1] < 29}
        assert {a["twin"] for a in summary["alarms"][side]} == slowed
    raised = summary["alarms"]["only_in_scenario"]
    assert len(raised) >= 2 and not summary["alarms"]["only_in_baseline"]
    for alarm in raised:
        assert alarm["rule"] == "slow" and alarm["values"]["w4"] < 30
        assert parse_ts(alarm["raised"]) - parse_ts(alarm["since"]) == 1000
        w4 = result["series"][alarm["twin"]]["scenario"]["w4"]["mean"]
        first_slow = result["series"][alarm["twin"]]["ts"][int(np.argmax(np.array(w4) < 30))]
        assert parse_ts(alarm["since"]) <= first_slow < parse_ts(alarm["since"]) + 1000
    for twin in summary["twins"]:
        assert twin["difference"]["w4"]["max_abs"] > 5  # rad/s slower than the baseline
        assert twin["difference"]["brake_torque"]["final"] > 0
    series = result["series"]["line-0"]
    assert len(series["ts"]) == 20
    assert series["baseline"]["line_speed"]["lower"] is None  # derived: the mean's value
    w4 = series["scenario"]["w4"]
    assert all(lo < m < hi for lo, m, hi in zip(w4["lower"], w4["mean"], w4["upper"], strict=True))
    node = platform.lineage.node(result["run"])
    assert node["inputs"]["scenario"] == result["id"] and node["kind"] == "run"
