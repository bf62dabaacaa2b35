"""The calibration job end to end: roller lines whose drags wear, calibrated from their speeds
through the platform; bands cover the truth; state resumes after a restart; one bad twin alone
fails."""

from __future__ import annotations

import numpy as np
import pytest
from calibration_support import STEP_MS, feed
from conftest import T0

from livetwin.calibrate import jax_installed
from livetwin.examples.rollers import DRAGS, ROLLER_TYPE, observations, roller_fleet
from livetwin.platform import Platform

N_LINES = 24


@pytest.fixture
def fleet():
    sim = roller_fleet(N_LINES, seed=3)
    return sim, [f"line-{i}" for i in range(N_LINES)]


def coverage(platform: Platform, ids: list[str], truth: np.ndarray) -> float:
    inside = []
    for i, twin in enumerate(ids):
        params = platform.calibration(twin)["parameters"]
        for j, b in enumerate(DRAGS):
            inside.append(params[b]["lower"] <= truth[i, j] <= params[b]["upper"])
    return float(np.mean(inside))


def test_calibration_follows_wearing_bearings_and_resumes(tmp_path, clock, fleet):
    sim, ids = fleet
    clock.now = T0 + 10**8
    with Platform(tmp_path / "d", clock=clock) as platform:
        platform.put_type("roller_line", ROLLER_TYPE)
        samples = feed(platform, sim, ids, 300, 0)
        record = platform.calibrate("roller_line")
        assert record["status"] == "succeeded", record
        assert record["steps"] == 300 and record["calibrated"] == N_LINES
        assert record["backend"] == ("jax" if jax_installed() else "numpy")
        truth = samples[-1].params[:, : len(DRAGS)]
        assert 0.8 <= coverage(platform, ids, truth) <= 1.0
        estimate = np.array([[platform.twin(t)["parameters"][b] for b in DRAGS] for t in ids])
        assert np.median(np.abs(estimate / truth - 1)) < 0.1
        # virtual sensors were published as time series with bands
        series = platform.history(ids[0], ["T1", "T1_lower", "T1_upper"])["series"]
        history = {k: [v for v in vs if v is not None] for k, vs in series.items()}
        assert len(history["T1"]) == 300  # one published row per step, beside the measured rows
        true_t1 = np.array([s.outputs[0, 4] for s in samples])  # outputs: w1..w4, T1..
        error = np.array(history["T1"][100:]) - true_t1[100:]
        assert np.sqrt(np.mean(error**2)) < 3.0  # N, on tensions of about 100 N
        assert all(
            lo <= v <= hi
            for lo, v, hi in zip(
                history["T1_lower"], history["T1"], history["T1_upper"], strict=True
            )
        )

    # a new process resumes from the stored filter state: only the new rows are filtered
    with Platform(tmp_path / "d", clock=clock) as platform:
        samples = feed(platform, sim, ids, 100, 300)
        platform.snapshot()  # the new rows now come from stored history, not the buffer
        record = platform.calibrate("roller_line")
        assert record["status"] == "succeeded" and record["steps"] == 100
        assert 0.8 <= coverage(platform, ids, samples[-1].params[:, : len(DRAGS)]) <= 1.0
        again = platform.calibrate("roller_line")
        assert again["status"] == "no-data" and again["calibrated"] == 0
        info = platform.calibration(ids[1])
        assert info["filter"]["failed"] is False
        assert [r["status"] for r in info["runs"][:3]] == ["no-data", "succeeded", "succeeded"]


def test_a_twin_with_garbage_fails_alone(tmp_path, clock, fleet):
    sim, ids = fleet
    clock.now = T0 + 10**8
    with Platform(tmp_path / "d", clock=clock) as platform:
        calibration = {**ROLLER_TYPE["calibration"], "backend": "numpy"}  # the reference
        platform.put_type("roller_line", {**ROLLER_TYPE, "calibration": calibration})
        rows = []
        for k in range(120):
            batch = observations(sim.step(), ids, T0 + k * STEP_MS)
            if k > 30:
                batch[0]["values"]["w2"] = 1e4 * (k % 2)  # a broken encoder
            rows += batch
        platform.ingest(rows)
        record = platform.calibrate("roller_line")
        assert record["status"] == "partial" and record["backend"] == "numpy"
        assert list(record["failed"]) == ["line-0"]
        assert "outliers" in record["failed"]["line-0"]
        assert record["calibrated"] == N_LINES - 1


def test_calibration_api_and_bad_input(client, platform, clock, fleet):
    sim, ids = fleet
    clock.now = T0 + 10**8
    assert client.put("/api/types/roller_line", json=ROLLER_TYPE).status_code == 200
    feed(platform, sim, ids, 3, 0)
    record = client.post("/api/twins/line-1/calibrate").json()
    assert record["status"] == "no-data"
    assert record["skipped"]["line-1"].startswith("too little data: 3 aligned rows")
    feed(platform, sim, ids, 20, 3)
    record = client.post("/api/types/roller_line/calibrate").json()
    assert record["status"] == "succeeded" and record["twins"] == N_LINES
    info = client.get("/api/twins/line-1/calibration").json()
    assert set(info["parameters"]) == set(DRAGS)
    assert set(info["virtual_sensors"]) >= {"T1", "slip1"}
    assert info["parameters"]["b1"]["lower"] < info["parameters"]["b1"]["upper"]
    assert len(client.get("/api/types/roller_line/calibration").json()) == 2

    client.put("/api/types/plain", json={"properties": {"x": {}}})
    client.post("/api/ingest", json=[{"twin": "p", "type": "plain", "values": {"x": 1}}])
    r = client.post("/api/types/plain/calibrate")
    assert r.status_code == 422 and r.json()["error"]["field"] == "model"
    assert client.post("/api/twins/nobody/calibrate").status_code == 404


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"model": {"ref": "livetwin.examples.no_such:fn"}}, "model.ref", "cannot be imported"),
        ({"model": {"ref": "no.such.module:fn"}}, "model.ref", "not in a configured model package"),
        ({"model": {"ref": "livetwin.examples.rollers:nothing"}}, "model.ref", "no attribute"),
        (
            {"calibration": {**ROLLER_TYPE["calibration"], "parameters": ["b9"]}},
            "calibration.parameters",
            "b9",
        ),
        (
            {"calibration": {**ROLLER_TYPE["calibration"], "state_prior": {}}},
            "calibration.state_prior.T1",
            "initial guess",
        ),
        (
            {"calibration": {**ROLLER_TYPE["calibration"], "process_noise": {"b1": -1}}},
            "calibration.process_noise.b1",
            "not positive",
        ),
        (
            {"calibration": {**ROLLER_TYPE["calibration"], "estimator": "enkf", "backend": "jax"}},
            "calibration.backend",
            "UKF only",
        ),
        (
            {"calibration": {**ROLLER_TYPE["calibration"], "backend": "cuda"}},
            "calibration.backend",
            "",
        ),
        (
            {
                "calibration": {
                    **ROLLER_TYPE["calibration"],
                    "backend": "numpy",
                    "precision": "float32",
                }
            },
            "calibration.precision",
            "needs the jax backend",
        ),
        (
            {
                "parameters": {
                    **ROLLER_TYPE["parameters"],
                    "b1": {"value": 0.02, "min": 0.05, "max": 0.01},
                }
            },
            "parameters.b1",
            "inverted",
        ),
    ],
)
def test_bad_model_specs(client, change, field, words):
    r = client.put("/api/types/roller_line", json={**ROLLER_TYPE, **change})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"].startswith(field) and words in error["message"], error


def test_types_calibrate_on_their_interval(tmp_path, clock, fleet):
    import time

    sim, ids = fleet
    clock.now = T0 + 10**8
    spec = {**ROLLER_TYPE, "calibration": {**ROLLER_TYPE["calibration"], "every": "1s"}}
    with Platform(tmp_path / "d", clock=clock) as platform:
        platform.put_type("roller_line", spec)
        feed(platform, sim, ids, 20, 0)
        deadline = time.monotonic() + 15
        while not platform.core.store.calibration_runs("roller_line", 1):
            assert time.monotonic() < deadline, "no scheduled calibration ran"
            clock.now += 200  # the scheduler runs on the platform's clock
            time.sleep(0.1)
        record = platform.core.store.calibration_runs("roller_line", 1)[0]
        assert record["status"] == "succeeded"
        # a system schedule of the one scheduler: listed, and its run is the record's run
        (schedule,) = platform.scheduler.schedules(namespace="system")
        assert schedule["id"] == "calibrate.every.roller_line"
        assert schedule["trigger"] == {"kind": "interval", "every": 1000, "start": None}
        run = platform.scheduler.wait(record["run"])
        assert run["schedule"] == schedule["id"] and run["state"] == "succeeded"
        assert run["result"]["run"] == record["run"] == record["lineage"]
    bad = {**ROLLER_TYPE, "calibration": {**ROLLER_TYPE["calibration"], "every": "often"}}
    with Platform(tmp_path / "e", clock=clock) as platform, pytest.raises(Exception) as info:
        platform.put_type("roller_line", bad)
    assert info.value.field == "calibration.every"


def test_continuous_calibration_follows_new_data(tmp_path, clock, fleet):
    import time

    sim, ids = fleet
    clock.now = T0 + 10**8
    spec = {**ROLLER_TYPE, "calibration": {**ROLLER_TYPE["calibration"], "continuous": True}}
    with Platform(tmp_path / "d", clock=clock) as platform:
        platform.put_type("roller_line", spec)
        for round_ in range(2):
            feed(platform, sim, ids, 20, 20 * round_)
            deadline = time.monotonic() + 15
            while len(platform.core.store.calibration_runs("roller_line", 5)) <= round_:
                assert time.monotonic() < deadline, "new data did not start a calibration"
                time.sleep(0.05)
        time.sleep(2.5)  # its own published results do not start another run
        runs = platform.core.store.calibration_runs("roller_line", 5)
        assert [r["status"] for r in runs] == ["succeeded", "succeeded"]


def test_one_execution_has_one_id_for_run_record_and_lineage(tmp_path, clock, fleet):
    sim, ids = fleet
    clock.now = T0 + 10**8
    with Platform(tmp_path / "d", clock=clock) as platform:
        platform.put_type("roller_line", ROLLER_TYPE)
        feed(platform, sim, ids, 50, 0)
        scheduler = platform.scheduler
        body = {"kind": "builtin", "job": "calibrate", "args": {"type": "roller_line"}}
        scheduler.define_function("recalibrate", body)
        run = scheduler.wait(scheduler.run_function("recalibrate")["id"], 60)
        assert run["state"] == "succeeded", run
        (record,) = platform.core.store.calibration_runs("roller_line", 1)
        node = platform.lineage.node(run["id"])
        assert record["run"] == run["result"]["run"] == record["lineage"] == node["id"] == run["id"]
        assert node["inputs"]["job"] == "calibrate" and node["outputs"]["status"] == "succeeded"
        feed(platform, sim, ids, 20, 50)
        direct = platform.calibrate("roller_line")  # on demand: one new id, shared the same way
        assert direct["run"] == direct["lineage"] != run["id"]
        assert platform.lineage.node(direct["run"])["parents"][-1] == run["id"]  # it resumed


@pytest.mark.platform_services("schedules")
def test_a_redeclared_interval_moves_its_system_schedule(platform):
    def every() -> list:
        platform.scheduler.tick()  # queued behind the type's bus event
        return [s["trigger"]["every"] for s in platform.scheduler.schedules(namespace="system")]

    calibration = ROLLER_TYPE["calibration"]
    platform.put_type("roller_line", {**ROLLER_TYPE, "calibration": {**calibration, "every": "1s"}})
    assert every() == [1000]
    platform.put_type("roller_line", {**ROLLER_TYPE, "calibration": {**calibration, "every": "1m"}})
    assert every() == [60_000]
    platform.put_type("roller_line", ROLLER_TYPE)
    assert every() == []
