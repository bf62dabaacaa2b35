"""Filter state persistence: save after 20 steps, restore, 20 more == 40 steps straight."""

from __future__ import annotations

import numpy as np
import pytest

from livetwin.calibrate import BatchEnKF, BatchUKF, FilterState
from livetwin.errors import InvalidInput
from livetwin.examples.rollers import roller_fleet, roller_spec


@pytest.mark.parametrize("cls", [BatchUKF, BatchEnKF])
@pytest.mark.parametrize("meas_noise", [0.01, None])
def test_round_trip_continues_exactly(tmp_path, cls, meas_noise):
    n = 12
    sim = roller_fleet(n, seed=51)
    first = sim.step()
    samples = [sim.step() for _ in range(40)]
    flt = cls(roller_spec(first.z, meas_noise=meas_noise), n, chunk_size=5)

    def run(state, part):
        for s in part:
            state, res = flt.step(state, s.inputs, s.z, sim.dt)
        return state, res

    straight, res_straight = run(flt.init(t=0.0, type_version=3), samples)
    half, _ = run(flt.init(t=0.0, type_version=3), samples[:20])
    np.savez(tmp_path / "state.npz", **half.to_arrays())
    with np.load(tmp_path / "state.npz", allow_pickle=False) as data:
        restored = FilterState.from_arrays(data)
    assert restored.model == "livetwin.examples.rollers:roller_line" and restored.steps == 20
    assert restored.type_version == 3 and restored.names == flt.names
    resumed, res_resumed = run(restored, samples[20:])
    assert resumed.steps == 40 and resumed.t == pytest.approx(straight.t)
    for name in ("mean", "cov", "failed", "rejects", "noise_var", "ensemble"):
        a, b = getattr(straight, name), getattr(resumed, name)
        assert (a is None and b is None) or np.array_equal(a, b), name
    assert np.array_equal(res_straight.output_mean, res_resumed.output_mean)


def test_unknown_format_is_refused():
    with pytest.raises(InvalidInput, match="format"):
        FilterState.from_arrays({"format": np.array(99)})
