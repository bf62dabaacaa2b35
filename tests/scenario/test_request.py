"""A scenario request's inputs as values per model step: every kind, checked against NumPy
written out by hand, and the shape errors that name the field."""

from __future__ import annotations

import numpy as np
import pytest

from livetwin.errors import InvalidInput
from livetwin.scenario.request import input_grid, parse_request, recorded_grid

DT = 100  # ms
NOW = np.array([10.0, 20.0])


def grid(spec: dict, steps: int = 10) -> np.ndarray:
    request = parse_request({"twins": ["a"], "horizon": "1s", "inputs": {"x": spec}})
    return input_grid(request.inputs["x"], NOW, steps, DT, "inputs.x")


def test_constant_step_and_ramp():
    assert (grid({"kind": "constant", "value": 3}) == 3).all()
    step = grid({"kind": "step", "at": "300ms", "factor": 1.5})
    assert step[:3].tolist() == [[10, 20]] * 3 and step[3:].tolist() == [[15, 30]] * 7
    assert (grid({"kind": "step", "at": 0.5, "by": -1})[5:] == NOW - 1).all()
    ramp = grid({"kind": "ramp", "at": "200ms", "over": "400ms", "to": 0})
    expected = NOW * np.clip(1 - (np.arange(10) * DT - 200) / 400, 0, 1)[:, None]
    np.testing.assert_allclose(ramp, np.where(np.arange(10)[:, None] < 2, NOW, expected))


def test_schedule_and_series():
    points = [["200ms", 1.0], ["500ms", 3.0]]
    held = grid({"kind": "schedule", "points": points})
    assert held[:, 0].tolist() == [10, 10, 1, 1, 1, 3, 3, 3, 3, 3]
    linear = grid({"kind": "schedule", "points": points, "interpolate": "linear"})
    np.testing.assert_allclose(linear[2:6, 1], [1, 1 + 2 / 3, 1 + 4 / 3, 3])
    series = grid({"kind": "series", "values": [5, 6, 7], "every": "200ms"})
    assert series[:, 1].tolist() == [5, 5, 6, 6, 7, 7, 7, 7, 7, 7]
    with pytest.raises(InvalidInput) as err:
        grid({"kind": "schedule", "points": [["1s", 1], ["0s", 2]]})
    assert err.value.field == "inputs.x.points"


def test_recorded_aligns_like_calibration():
    # epoch steps of 100 ms from 1000: rows at 1010, 1050 (same step: the last wins), 1230
    ts = np.array([1010, 1050, 1230])
    out = recorded_grid(ts, np.array([1.0, 2.0, 3.0]), 1000, 5, DT)
    assert out.tolist() == [2.0, 2.0, 3.0, 3.0, 3.0]
    assert recorded_grid(np.array([], dtype=np.int64), np.array([]), 0, 5, DT) is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"twins": [], "horizon": "1m"}, "twins"),
        ({"twins": ["a"]}, "horizon"),
        ({"twins": ["a"], "horizon": "1m", "inputs": {"x": {"kind": "wave"}}}, "inputs.x"),
        (
            {"twins": ["a"], "horizon": "1m", "inputs": {"x": {"kind": "step", "at": 1}}},
            "inputs.x.step",
        ),
        ({"twins": ["a"], "horizon": "1m", "extra": 1}, "extra"),
    ],
)
def test_shape_errors_name_the_field(body, field):
    with pytest.raises(InvalidInput) as err:
        parse_request(body)
    assert err.value.field == field, err.value.to_dict()
