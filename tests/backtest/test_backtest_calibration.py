"""Back-testing calibration settings on a synthetic roller fleet with known truth: the batched
filter re-run under the recorded and the candidate settings, scored on the recorded data; an
unchanged calibration gives no section; nothing live changes; bad settings are 422s."""

from __future__ import annotations

import csv
import io
import itertools

import pytest
from calibration_support import STEP_MS, feed
from conftest import T0

from livetwin.backtest.candidate import merge_patch
from livetwin.backtest.report import summary, to_csv
from livetwin.errors import InvalidInput
from livetwin.examples.rollers import DRAGS, ROLLER_TYPE, SPEEDS, roller_fleet
from livetwin.journal import snapshot

N_LINES = 8
STEPS = 200
IDS = [f"line-{i}" for i in range(N_LINES)]
NUMPY = {**ROLLER_TYPE["calibration"], "backend": "numpy"}  # the reference backend
_ids = itertools.count()


def roller_type(**calibration) -> dict:
    return {**ROLLER_TYPE, "calibration": {**NUMPY, **calibration}}


@pytest.fixture
def rollers(platform, clock):
    """A roller fleet of known drags, recorded for `STEPS` steps; its true final drags."""
    clock.now = T0 + 10**8
    platform.put_type("roller_line", roller_type())
    samples = feed(platform, roller_fleet(N_LINES, seed=5), IDS, STEPS, 0)
    return samples[-1].params[:, : len(DRAGS)]


def backtest(platform, patch: dict, start: int = T0, end: int = T0 + STEPS * STEP_MS) -> dict:
    plan = platform.backtests.plan(
        {"type": "roller_line", "candidate": {"patch": patch}, "from": start, "to": end}
    )
    run_id = f"run_cal_{next(_ids)}"
    platform.backtests.run(plan, run_id)
    return platform.backtests.report(run_id)


def by_name(items: list[dict]) -> dict:
    return {i["name"]: i for i in items}


def test_a_candidate_that_calibrates_as_recorded_has_no_calibration_section(platform, rollers):
    neutral = {"every": "10m", "publish_every": 10, "continuous": True}  # when, not what
    for patch in ({}, {"derived": {"line_speed": "w4 * r * 2"}}, {"calibration": neutral}):
        assert backtest(platform, patch)["calibration"] is None, patch


def test_a_much_larger_measurement_noise_widens_bands_and_changes_coverage(platform, rollers):
    report = backtest(platform, {"calibration": {"measurement_noise": {w: 1.0 for w in SPEEDS}}})
    section = report["calibration"]
    assert section["changes"] == ["calibration.measurement_noise"]
    assert section["twins"] == N_LINES and section["steps"] == STEPS
    assert section["truncated"] is False
    assert section["start"] == "prior (no persisted filter state)"
    drags = by_name(section["parameters"])
    for b in DRAGS:
        assert drags[b]["twins_affected"] == N_LINES
        assert drags[b]["band_width_ratio"] > 2.0  # much less evidence per measurement
    for w in SPEEDS:
        out = by_name(section["outputs"])[w]
        base, cand = out["baseline"], out["candidate"]
        assert base["predictions"] == cand["predictions"] == N_LINES * STEPS
        assert cand["coverage_95"] == 1.0 > base["coverage_95"]  # bands far wider than the noise
    assert report["identical"] is False
    assert section["candidate"]["filter_steps_per_s"] > 0 and section["baseline"]["obs_per_s"] > 0
    gist = summary(report)["calibration"]
    assert gist["outputs"]["w1"]["coverage_95"][1] == 1.0
    rows = list(csv.reader(io.StringIO(to_csv(report))))
    assert {r[1] for r in rows if r[0] == "calibration_output"} == set(SPEEDS)
    assert {r[1] for r in rows if r[0] == "calibration_parameter"} == set(DRAGS)


def test_settings_that_follow_the_truth_predict_the_recorded_data_better(platform, rollers):
    """The recorded type pins the drags at a wrong value (a tiny prior and random walk); the
    candidate lets them learn: its drags are nearer the truth and its predictions of the
    measured speeds are better. Swapping the sides swaps the verdict."""
    pinned = {"prior_std": {b: 1e-6 for b in DRAGS}, "process_noise": {b: 1e-7 for b in DRAGS}}
    platform.put_type("roller_line", merge_patch(roller_type(), {"calibration": pinned}))
    free = {k: NUMPY[k] for k in ("prior_std", "process_noise")}
    section = backtest(platform, {"calibration": free})["calibration"]
    outputs = by_name(section["outputs"])
    assert all(outputs[w]["better"] == "candidate" for w in SPEEDS), outputs
    drags = by_name(section["parameters"])
    for j, b in enumerate(DRAGS):
        worst = drags[b]["worst_twins"]
        assert worst
        for w in worst:
            i = IDS.index(w["twin"])
            assert abs(w["candidate"]["mean"] - rollers[i, j]) < abs(
                w["baseline"]["mean"] - rollers[i, j]
            )
    platform.put_type("roller_line", roller_type())
    swapped = backtest(platform, {"calibration": pinned})["calibration"]
    assert all(o["better"] == "baseline" for o in swapped["outputs"])


def fingerprint(platform) -> dict:
    """Everything live a calibration back-test must leave byte-identical."""
    with platform.core.lock:
        state = snapshot.encode(*snapshot.capture(platform.core.engine, 0))
    store = platform.core.store
    return {
        "state": state,
        "history": {t: platform.history(t, None, start=T0, end=T0 + 10**7) for t in IDS},
        "filter": store.calibration_state("roller_line"),
        "runs": store.calibration_runs("roller_line", 100),
        "journal": store.journal_size(),
        "last_seq": store.last_seq(),
        "alarms": platform.alarms.list(limit=1000),
    }


def test_live_state_filter_state_and_history_stay_byte_identical(platform, clock, rollers):
    platform.calibrate("roller_line")  # live filter state and published values to keep
    before = fingerprint(platform)
    report = backtest(platform, {"calibration": {"measurement_noise": {w: 0.1 for w in SPEEDS}}})
    assert report["calibration"]["start"] == "prior (the persisted filter state is newer than from)"
    platform.alarms.sync()
    assert fingerprint(platform) == before


def test_a_window_after_the_last_calibration_starts_from_the_persisted_state(platform, clock):
    clock.now = T0 + 10**8
    platform.put_type("roller_line", roller_type())
    sim = roller_fleet(N_LINES, seed=5)
    feed(platform, sim, IDS, 100, 0)
    platform.calibrate("roller_line")
    feed(platform, sim, IDS, 100, 100)
    before = fingerprint(platform)
    patch = {"calibration": {"measurement_noise": {w: 0.1 for w in SPEEDS}}}
    section = backtest(platform, patch, start=T0 + 100 * STEP_MS)["calibration"]
    assert section["start"].startswith("persisted filter state (calibrated until ")
    assert section["steps"] == 100
    assert fingerprint(platform) == before


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"calibration": {"measurement_noise": {"w1": -1}}}, "calibration.measurement_noise.w1"),
        ({"calibration": {"prior_std": {"nope": 0.1}}}, "calibration.prior_std"),
        ({"calibration": {"estimator": "magic"}}, "calibration.estimator"),
        ({"calibration": {"bogus": 1}}, "calibration.bogus"),
        ({"model": {"ref": "livetwin.examples.thermal:room"}}, "model"),
        ({"model": {"virtual": ["T1"]}}, "model"),
        ({"model": {"dt": "soon"}}, "model.dt"),
    ],
)
def test_a_calibration_patch_that_does_not_validate_is_refused(platform, rollers, patch, field):
    with pytest.raises(InvalidInput) as caught:
        platform.backtests.plan(
            {"type": "roller_line", "candidate": {"patch": patch}, "from": T0, "to": T0 + 10**6}
        )
    assert caught.value.field == f"candidate.patch.{field}"


def test_the_api_answers_a_bad_calibration_patch_with_422_naming_the_field(client, rollers):
    body = {
        "type": "roller_line",
        "candidate": {"patch": {"calibration": {"measurement_noise": {"w1": 0}}}},
        "from": T0,
        "to": T0 + 10**6,
    }
    r = client.post("/api/backtests", json=body)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "candidate.patch.calibration.measurement_noise.w1"


def test_a_candidate_may_change_the_model_step(platform, rollers):
    section = backtest(platform, {"model": {"dt": "200ms"}})["calibration"]
    assert section["changes"] == ["model.dt"]
    assert section["baseline"]["steps"] == STEPS and section["candidate"]["steps"] == STEPS // 2
    assert all(o["candidate"]["predictions"] == N_LINES * STEPS // 2 for o in section["outputs"])


def test_merge_patch_replaces_only_the_calibration_fields_given():
    merged = merge_patch(ROLLER_TYPE, {"calibration": {"estimator": "enkf"}})
    assert merged["calibration"] == {**ROLLER_TYPE["calibration"], "estimator": "enkf"}


def test_a_window_longer_than_a_calibration_run_is_truncated_and_says_so(
    platform, rollers, monkeypatch
):
    monkeypatch.setattr("livetwin.jobs.backtest_calibration.MAX_STEPS", 50)
    section = backtest(platform, {"calibration": {"measurement_noise": {w: 0.1 for w in SPEEDS}}})
    calibration = section["calibration"]
    assert calibration["steps"] == 50 and calibration["truncated"] is True
