"""The calibration job tells when a model stops fitting: rooms that get an unmodelled heat gain
half-way raise the built-in alarm `model_no_longer_fits` (calibration.model_fit_alarm), the
others do not; `nis` and `model_fit` are published per twin, publication can be thinned
(`publish_every`), and the run record and GET calibration show the noise the filter used."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import T0

from livetwin.errors import InvalidInput
from livetwin.examples.thermal import DT, thermal_fleet
from livetwin.platform import Platform

N, STEPS, SWITCHED, EVERY = 12, 240, 3, 4
ROOM = {
    "properties": {"t_out": {"unit": "degC"}, "heat": {"unit": "W"}, "t_in": {"unit": "degC"}},
    "parameters": {
        "UA": {"value": 250.0, "min": 0, "calibrate": True, "unit": "W/K"},
        "C": {"value": 1.2e7, "min": 0, "calibrate": True, "unit": "J/K"},
    },
    "model": {"ref": "livetwin.examples.thermal:room", "dt": "15m"},
    "calibration": {
        "process_noise": {"t_in": 0.02},  # unmodelled gains, as in the simulated rooms
        "model_fit_alarm": True,
        "publish_every": EVERY,
    },
}


def test_rooms_whose_model_changed_raise_the_builtin_alarm(tmp_path, clock):
    sim = thermal_fleet(N, seed=21)
    rng = np.random.default_rng(2)
    sim.params[:] = np.c_[rng.uniform(200, 300, N), rng.uniform(0.9e7, 1.5e7, N)]
    ids = [f"room-{i}" for i in range(N)]
    extra = np.zeros(N)
    weather = sim.inputs

    def plant_inputs(s):
        u = weather(s).copy()
        u[:, 1] += extra
        return u

    sim.inputs = plant_inputs
    rows = []
    for k in range(STEPS):
        if k == STEPS // 2:
            extra[:SWITCHED] = 1500.0  # W the model is not told about
        sample = sim.step()
        told = sample.inputs[:, 1] - extra
        for i, twin in enumerate(ids):
            values = {"t_out": sample.inputs[i, 0], "heat": told[i], "t_in": sample.z[i, 0]}
            values = {k: float(v) for k, v in values.items()}
            ts = T0 + int(k * DT * 1000)
            rows.append({"twin": twin, "type": "room", "ts": ts, "values": values})
    clock.now = T0 + int(STEPS * DT * 1000) + 10**6
    with Platform(tmp_path / "d", clock=clock) as platform:
        platform.put_type("room", ROOM)
        assert platform.ingest(rows).accepted == len(rows)
        record = platform.calibrate("room")
        assert record["status"] == "succeeded", record
        assert record["warnings"] == []  # heating and weather excite UA and C
        assert record["noise"]["t_in"]["source"] == "innovations"
        assert 0.05 < record["noise"]["t_in"]["std_median"] < 0.2  # the rooms' 0.1 K
        platform.alarms.sync()
        alarms = platform.alarms.list(limit=1000)["items"]
        fired = {a["twin"] for a in alarms if a["rule"] == "model_no_longer_fits"}
        assert fired >= set(ids[:SWITCHED]), fired
        assert len(fired - set(ids[:SWITCHED])) <= 1, fired  # measured: none
        view = platform.calibration(ids[0])["filter"]
        assert view["model_fit"] == 0.0 and view["nis"] > 0  # here flagged by its whiteness
        assert platform.calibration(ids[-1])["filter"]["model_fit"] == 1.0
        assert view["noise"]["t_in"]["source"] == "innovations"
        series = platform.history(ids[-1], ["UA", "nis", "model_fit"])["series"]
        published = [v for v in series["UA"] if v is not None]
        assert len(published) == STEPS // EVERY  # thinned: every 4th step
        assert [v for v in series["model_fit"] if v is not None][-1] == 1.0


def test_model_fit_settings_are_checked(platform):
    clash = {**ROOM, "rules": {"model_no_longer_fits": {"when": "t_in > 30"}}}
    with pytest.raises(InvalidInput) as err:
        platform.put_type("room", clash)
    assert err.value.field == "rules.model_no_longer_fits"
    bad = {**ROOM, "calibration": {**ROOM["calibration"], "publish_every": 0}}
    with pytest.raises(InvalidInput) as err:
        platform.put_type("room", bad)
    assert "publish_every" in err.value.field
    taken = {**ROOM, "properties": {**ROOM["properties"], "nis": {}}}
    with pytest.raises(InvalidInput, match="published by calibration"):
        platform.put_type("room", taken)


def test_parameters_the_data_cannot_tell_are_reported(tmp_path, clock):
    """Rooms at rest (no heating, outdoor temperature steady): t_in never moves with UA or C,
    so after 200+ updates both bands are still their priors, and the run says so."""
    rng = np.random.default_rng(4)
    ids = [f"still-{i}" for i in range(4)]
    rows = [
        {
            "twin": twin,
            "type": "room",
            "ts": T0 + int(k * DT * 1000),
            "values": {"t_out": 10.0, "heat": 0.0, "t_in": 10.0 + 0.1 * rng.standard_normal()},
        }
        for k in range(220)
        for twin in ids
    ]
    clock.now = T0 + int(220 * DT * 1000) + 10**6
    with Platform(tmp_path / "d", clock=clock) as platform:
        platform.put_type("room", ROOM)
        assert platform.ingest(rows).accepted == len(rows)
        record = platform.calibrate("room")
    assert record["status"] == "succeeded", record
    text = " ".join(record["warnings"])
    assert "parameter 'UA' is not identifiable from this data for still-0" in text, text
    assert "parameter 'C' is not identifiable" in text


def test_a_filter_state_saved_before_noise_learning_and_model_fit_resumes(tmp_path, clock):
    """A stored state without the learned-noise sums and the model-fit window (saved by an
    older version) resumes: both start afresh, the run succeeds and fills them."""
    from livetwin.jobs.calibration import TypeCalibration

    sim = thermal_fleet(4, seed=8)
    sim.params[:] = [[250.0, 1.2e7]] * 4
    ids = [f"old-{i}" for i in range(4)]

    def rows(start: int, steps: int) -> list[dict]:
        out = []
        for k in range(start, start + steps):
            sample = sim.step()
            for i, twin in enumerate(ids):
                values = {"t_out": sample.inputs[i, 0], "heat": sample.inputs[i, 1]}
                values = {**values, "t_in": sample.z[i, 0]}
                out.append(
                    {
                        "twin": twin,
                        "type": "room",
                        "ts": T0 + int(k * DT * 1000),
                        "values": {n: float(v) for n, v in values.items()},
                    }
                )
        return out

    clock.now = T0 + int(200 * DT * 1000)
    with Platform(tmp_path / "d", clock=clock) as platform:
        platform.put_type("room", ROOM)
        platform.ingest(rows(0, 60))
        first = platform.calibrate("room")
        assert first["status"] == "succeeded"
        store = platform.core.store
        saved = TypeCalibration.from_bytes(store.calibration_state("room"))
        for name in ("noise_sum", "noise_weight", "fit_nis", "fit_dof", "fit_e", "fit_count"):
            setattr(saved.state, name, None)  # as an older version stored it
        store.save_calibration("room", saved.to_bytes(), first, clock.now)
        platform.ingest(rows(60, 60))
        record = platform.calibrate("room")
        assert record["status"] == "succeeded" and record["calibrated"] == 4, record
        assert record["noise"]["t_in"]["source"] == "innovations"
        view = platform.calibration(ids[0])["filter"]
        assert view["model_fit"] == 1.0  # a full window (30) again after 60 new steps
