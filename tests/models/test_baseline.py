"""Seasonal baselines: local-time cells across DST, known rhythms recovered, quantiles, activity
features, serialisation, serving, and the emergency rule on the home demo fleet."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from scipy import stats

from livetwin.engine.events import Notice
from livetwin.errors import InvalidInput
from livetwin.examples.home import (
    PERSONAS,
    ROOMS,
    expected_visits,
    home_fleet,
    run_home_demo,
)
from livetwin.models.baseline import (
    HOUR_MS,
    ActivityBaseline,
    BaselinePredictor,
    SeasonalBaseline,
    baseline_metadata,
    emergency_check,
    fit,
    fit_activity,
    hourly_counts,
    inactivity,
    load_baseline,
    load_seasonal,
    visits,
    week_cells,
)
from livetwin.timefmt import parse_ts

MONDAY = parse_ts("2025-01-05T23:00:00Z")  # Monday 2025-01-06 00:00 in Berlin
TZ = "Europe/Berlin"


@pytest.mark.parametrize(
    "tz", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "UTC"]
)
def test_week_cells_match_zoneinfo_across_dst(tz):
    rng = np.random.default_rng(3)
    ts = rng.integers(parse_ts("2024-01-01"), parse_ts("2026-12-31"), 3000)
    # and the instants around this zone's 2025 transitions
    edges = [parse_ts("2025-03-30T01:00:00Z"), parse_ts("2025-10-26T01:00:00Z")]
    ts = np.concatenate([ts, *[np.arange(e - 7_200_000, e + 7_200_000, 599_999) for e in edges]])
    cells = week_cells(ts, tz)
    zone = ZoneInfo(tz)
    for ms, cell in zip(ts.tolist(), cells.tolist(), strict=True):
        local = datetime.fromtimestamp(ms / 1000, zone)
        assert cell == local.weekday() * 24 + local.hour, (tz, ms)


def test_fit_recovers_a_known_rhythm_of_counts():
    """Hourly Poisson counts with a known weekday x hour rate over 200 weeks (with DST)."""
    rng = np.random.default_rng(11)
    rate = expected_visits("worker").sum(axis=2)  # (7, 24) true visits per hour
    hours = np.arange(MONDAY, MONDAY + 200 * 7 * 24 * HOUR_MS, HOUR_MS)
    counts = rng.poisson(rate.ravel()[week_cells(hours, TZ)])
    model = fit(hours, counts, TZ, unit="visits/h")
    assert model.samples == hours.size
    assert model.start_ms == MONDAY and model.end_ms == int(hours[-1]) + 1
    assert (model.count >= 199).all() and (model.count <= 201).all()  # DST shifts an hour
    se = np.sqrt(np.maximum(rate, 0.05) / model.count)
    assert (np.abs(model.mean - rate) < 4.5 * se).all()
    np.testing.assert_allclose(model.std, np.sqrt(rate), atol=0.35)
    # each fitted quantile is a plausible quantile of the true (discrete) distribution: the
    # true CDF there is within 4 standard errors of an empirical CDF of `count` samples
    for level in (0.5, 0.9, 0.99):
        slack = 4 * np.sqrt(level * (1 - level) / model.count)
        q = model.quantile(level)
        assert (stats.poisson.cdf(np.floor(q), rate) >= level - slack).all(), level
        assert (stats.poisson.cdf(np.ceil(q) - 1, rate) <= level + slack).all(), level
    assert (model.quantile(0.5) <= model.quantile(0.9)).all()
    assert (model.quantile(0.9) <= model.quantile(0.99)).all()


def test_fit_recovers_continuous_quantiles_and_matches_numpy():
    rng = np.random.default_rng(5)
    ts = rng.integers(MONDAY, MONDAY + 20 * 7 * 86_400_000, 200_000)
    cells = week_cells(ts, TZ)
    mu = 5 + 3 * np.sin(np.arange(168) / 24 * 2 * np.pi)  # a daily wave of minutes per visit
    sigma = 1 + (np.arange(168) // 24) / 6  # more spread later in the week
    values = rng.normal(mu[cells], sigma[cells])
    model = fit(ts, values, TZ)
    for level in (0.5, 0.9, 0.99):
        truth = (mu + stats.norm.ppf(level) * sigma).reshape(7, 24)
        tolerance = 0.08 if level < 0.99 else 0.2
        assert np.abs(model.quantile(level) - truth).max() < tolerance * sigma.max() * 3
    for cell in (0, 40, 167):  # exact agreement with np.quantile / np.std in a cell
        inside = values[cells == cell]
        w, h = divmod(cell, 24)
        assert model.quantile(0.99)[w, h] == pytest.approx(np.quantile(inside, 0.99))
        assert model.std[w, h] == pytest.approx(np.std(inside, ddof=1))
    assert (model.quantile(0.5) <= model.quantile(0.9)).all()
    assert (model.quantile(0.9) <= model.quantile(0.99)).all()


def test_empty_cells_window_and_nan_values():
    ts = np.array([MONDAY, MONDAY + 1000, MONDAY + 2000, MONDAY + HOUR_MS])
    model = fit(ts, [1.0, np.nan, 3.0, 10.0], TZ, start_ms=MONDAY, end_ms=MONDAY + HOUR_MS)
    assert model.count[0, 0] == 2 and model.samples == 2  # NaN and the row at `end` left out
    assert model.mean[0, 0] == 2.0 and model.quantile(0.5)[0, 0] == 2.0
    assert np.isnan(model.mean[0, 1]) and np.isnan(model.std[3, 5])
    single = fit([MONDAY], [4.0], TZ)
    assert single.mean[0, 0] == 4.0 and np.isnan(single.std[0, 0])
    with pytest.raises(InvalidInput) as info:
        fit([MONDAY], [1.0, 2.0], TZ)
    assert info.value.field == "values"
    with pytest.raises(InvalidInput) as info:
        fit([MONDAY], [1.0], "Mars/Olympus")
    assert info.value.field == "tz"


def test_activity_features_from_motion_reports():
    t = MONDAY
    minute = 60_000
    ts = np.array(
        [t + 5 * minute, t + 15 * minute, t + 70 * minute, t + 80 * minute, t + 200 * minute]
    )
    motion = np.array([1, 0, 1, 0, 1])  # two closed visits, one still open at the end
    starts, durations = visits(ts[::-1], motion[::-1])  # order of input does not matter
    assert starts.tolist() == [t + 5 * minute, t + 70 * minute]
    assert durations.tolist() == [10 * minute, 10 * minute]
    hours, counts = hourly_counts(starts, t, t + 3 * HOUR_MS)
    assert hours.tolist() == [t, t + HOUR_MS, t + 2 * HOUR_MS] and counts.tolist() == [1, 1, 0]
    at, quiet = inactivity(ts, t, t + 90 * minute, step_ms=30 * minute)
    assert at.tolist() == [t + 30 * minute, t + 60 * minute]  # t itself precedes any event
    assert quiet.tolist() == [15 * minute, 45 * minute]


def test_serialisation_round_trip():
    fleet = home_fleet(2, weeks=2, emergency_home=None)
    room = fleet.twin == "home-2/kitchen"
    model = fit_activity(fleet.ts[room], fleet.motion[room], TZ)
    back = load_baseline(model.to_bytes())
    assert isinstance(back, ActivityBaseline)
    for name, part in model.parts().items():
        again = back.parts()[name]
        assert again.tz == part.tz and again.unit == part.unit
        assert (again.start_ms, again.end_ms) == (part.start_ms, part.end_ms)
        np.testing.assert_array_equal(again.count, part.count)
        for attr in ("mean", "std", "quantiles"):
            np.testing.assert_array_equal(getattr(again, attr), getattr(part, attr))
    single = model.visits
    assert isinstance(SeasonalBaseline.from_bytes(single.to_bytes()), SeasonalBaseline)
    with pytest.raises(InvalidInput):
        SeasonalBaseline.from_bytes(model.to_bytes())
    for blob in (b"not json", b'{"kind": "fmu"}', b'{"kind": "seasonal-baseline", "format": 9}'):
        with pytest.raises(InvalidInput) as info:
            load_baseline(blob)
        assert info.value.field == "artifact"
    meta = baseline_metadata(model)
    assert meta["flavor"] == "seasonal-baseline" and meta["hyperparameters"]["tz"] == TZ
    assert meta["hyperparameters"]["samples"]["visits"] == model.visits.samples > 0


def test_predictor_serves_cells_and_the_emergency_verdict():
    hours = np.arange(MONDAY, MONDAY + 4 * 7 * 24 * HOUR_MS, HOUR_MS)
    model = fit(hours, (week_cells(hours, TZ) % 24).astype(float), TZ)  # value = local hour
    predictor = BaselinePredictor.from_bytes(model.to_bytes())
    out = predictor.predict({"ts": ["2026-07-01T10:30:00Z", 1782900000000]})
    assert out["value"]["mean"][0] == 12.0  # 10:30Z is 12:30 in Berlin in summer
    assert out["value"]["p99"][0] == 12.0 and out["value"]["count"][0] == 4
    with pytest.raises(InvalidInput) as info:
        predictor.predict({"ts": "half past ten"})
    assert info.value.field == "ts"
    with pytest.raises(InvalidInput):
        predictor.predict({})

    minutes = np.full(hours.size, 30.0)  # 30 minutes of inactivity is normal at any hour
    quiet = fit(hours, minutes, TZ)
    activity = ActivityBaseline(model, model, quiet)
    served = BaselinePredictor(activity).predict(
        {"now": "2026-07-01T10:00:00Z", "last_activity": "2026-07-01T08:00:00Z"}
    )
    assert served["emergency"]["emergency"] is True
    assert (
        served["emergency"]["threshold_min"] == 45.0 and served["emergency"]["inactive_min"] == 120
    )


def test_emergency_check_rule_and_evidence():
    hours = np.arange(MONDAY, MONDAY + 4 * 7 * 24 * HOUR_MS, HOUR_MS)
    quiet = fit(hours, np.full(hours.size, 40.0), TZ)
    now = parse_ts("2025-03-05T14:00:00Z")  # Wednesday 15:00 in Berlin
    last = {"calm": now - 50 * 60_000, "still": now - 61 * 60_000, "new": None, "odd": now}
    verdicts = emergency_check(now, last, {"calm": quiet, "still": quiet, "new": quiet})
    by_twin = {v["twin"]: v for v in verdicts}
    assert verdicts[0]["twin"] == "still"  # emergencies first
    assert by_twin["still"]["emergency"] and not by_twin["calm"]["emergency"]
    assert by_twin["still"]["threshold_min"] == 60.0 and by_twin["still"]["p99_min"] == 40.0
    assert (by_twin["still"]["weekday"], by_twin["still"]["hour"]) == ("Wed", 15)
    assert by_twin["still"]["cell_samples"] == 4
    assert by_twin["new"]["reason"] == "no activity recorded"
    assert by_twin["odd"]["reason"] == "no baseline for this twin"
    with pytest.raises(InvalidInput):
        emergency_check(now, last, {}, factor=0)


def test_home_demo_finds_the_stopped_occupant(platform):
    notices = []
    platform.bus.subscribe(lambda e: notices.append(e) if isinstance(e, Notice) else None)
    result = run_home_demo(platform, out=None)
    fleet = result["fleet"]
    assert fleet.emergency_home == "home-4"
    assert result["emergencies"] == ["home-4"]
    verdict = result["homes"][0]
    assert verdict["twin"] == "home-4" and verdict["emergency"]
    assert verdict["inactive_min"] >= 299 and verdict["inactive_min"] > verdict["threshold_min"]
    for normal in result["homes"][1:]:
        assert not normal["emergency"] and normal["inactive_min"] < normal["threshold_min"]
    rooms = {v["twin"] for v in result["rooms"] if v["emergency"]}
    assert rooms and all(r.startswith("home-4/") for r in rooms)
    # the verdicts went back in through ingest, and one alarm notice was announced
    assert platform.twin("home-4")["properties"]["emergency"] == 1.0
    assert platform.twin("home-1")["properties"]["emergency"] == 0.0
    assert platform.twin("home-4/kitchen")["parent"] == "home-4"
    assert [n.data["twin"] for n in notices] == ["home-4"] and notices[0].kind == "alarm"
    assert [a["twin"] for a in result["alarms"]] == ["home-4"]  # raised by the home type's rule
    (alarm,) = platform.alarms.list(state="open")["items"]
    assert (
        alarm["twin"] == "home-4"
        and alarm["rule"] == "inactivity"
        and alarm["severity"] == "critical"
    )
    # the baselines were trained up to last midnight, from the stored history
    model = result["baselines"]["home-4"]
    assert model.end_ms == parse_ts("2026-04-07T22:00:00Z")  # midnight in Berlin (summer time)
    assert model.visits.samples == (model.end_ms - model.start_ms) // HOUR_MS
    # each home's baseline is a registered model version with its training period, and serves
    version = platform.registry.get("activity.home-4", 1)
    assert result["models"]["home-4"]["version"] == 1 == version["version"]
    assert version["flavor"] == "seasonal-baseline" and version["kind"] == "inductive"
    assert parse_ts(version["training"]["end"]) == model.end_ms
    served = platform.registry.predict("activity.home-4", {"ts": "2026-04-08T08:00:00Z"})
    expected = model.visits.predict(parse_ts("2026-04-08T08:00:00Z"))["mean"][0]
    assert served["version"] == 1 and served["visits"]["mean"][0] == pytest.approx(expected)


def test_home_baseline_recovers_the_generated_rhythm(platform):
    result = run_home_demo(platform, homes=2, weeks=8, emergency_home=None, out=None)
    for home, persona in zip(result["fleet"].homes, result["fleet"].personas, strict=True):
        truth = PERSONAS[persona][0]  # (7, 24) presence intervals per hour, all rooms
        fitted = result["baselines"][home].visits.mean
        # 8 weeks = 8 samples per cell, and a daily "mood" factor moves whole days together
        assert np.corrcoef(truth.ravel(), fitted.ravel())[0, 1] > 0.93
        assert fitted.mean() == pytest.approx(truth.mean(), rel=0.12)
        busy = truth > 2
        assert np.abs(fitted[busy] / truth[busy] - 1).mean() < 0.2
        for r, room in enumerate(ROOMS):
            room_truth = expected_visits(persona)[:, :, r]
            room_fit = result["baselines"][f"{home}/{room}"].visits.mean
            assert np.corrcoef(room_truth.ravel(), room_fit.ravel())[0, 1] > 0.75


def test_registry_loader_reads_the_artifact():
    hours = np.arange(MONDAY, MONDAY + 7 * 24 * HOUR_MS, HOUR_MS)
    blob = fit(hours, np.ones(hours.size), TZ).to_bytes()

    class Artifacts:
        def read(self, filename):
            assert filename == "baseline.json"
            return blob

    predictor = load_seasonal({"name": "kitchen", "version": 1}, Artifacts())
    assert predictor.predict({"ts": int(MONDAY)})["value"]["mean"] == [1.0]
