"""Bad calibration input: every mistake is an InvalidInput that names the field and the fix."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from livetwin.calibrate import BatchEnKF, BatchUKF, rolling_noise_variance
from livetwin.errors import InvalidInput
from livetwin.examples.thermal import thermal_spec

SPEC = thermal_spec(20.0)


def _fails(fld: str, words: str, **changes) -> None:
    with pytest.raises(InvalidInput) as err:
        BatchUKF(replace(SPEC, **changes), 5)
    assert words in err.value.message, err.value.message
    assert err.value.field == fld and err.value.fix


@pytest.mark.parametrize(
    "fld, words, changes",
    [
        ("model", "cannot be imported", {"model": "livetwin.nowhere:room"}),
        ("model", "no attribute", {"model": "livetwin.examples.thermal:nothing"}),
        ("outputs", "no output 'power'", {"measured": ("power",)}),
        ("measured", "no measured outputs", {"measured": ()}),
        ("prior.R", "no parameter or state 'R'", {"prior": {**SPEC.prior, "R": (1, 1)}}),
        ("prior.C", "neither a prior nor", {"prior": {"UA": (1, 1), "t_in": (20, 1)}}),
        ("prior.t_in", "has no prior", {"prior": {"UA": (1, 1), "C": (1, 1)}}),
        ("prior.UA", "must be positive", {"prior": {**SPEC.prior, "UA": (200, 0)}}),
        ("prior.UA", "outside its bounds", {"prior": {**SPEC.prior, "UA": (-5, 1)}}),
        ("prior.UA", "one number per twin", {"prior": {**SPEC.prior, "UA": ([1, 2], 1)}}),
        ("bounds.UA", "inverted", {"bounds": {"UA": (500.0, 100.0)}}),
        ("bounds.UA", "inverted", {"bounds": {"UA": (100.0, 100.0)}}),
        ("bounds.t_in", "not a parameter", {"bounds": {"t_in": (0, 1)}}),
        ("meas_noise", "must be positive", {"meas_noise": {"t_in": 0.0}}),
        ("meas_noise.t_in", "missing", {"meas_noise": {}}),
        ("meas_noise", "positive definite", {"meas_noise": np.array([[-1.0]])}),
        ("process_noise", "non-negative", {"process_noise": {"UA": -0.1}}),
        ("process_noise.R", "not a filter variable", {"process_noise": {"R": 0.1}}),
        (
            "process_noise",
            "positive semi-definite",
            {"process_noise": np.array([[1.0, 2.0, 0], [2.0, 1.0, 0], [0, 0, 1.0]])},
        ),
        ("process_noise", "expected 3 values", {"process_noise": np.ones(4)}),
    ],
)
def test_bad_spec_is_named(fld, words, changes):
    _fails(fld, words, **changes)


def test_bad_step_arguments_are_named():
    flt = BatchUKF(SPEC, 5)
    state = flt.init()
    good_u, good_z = np.ones((5, 2)), np.full((5, 1), 20.0)
    cases = [
        ("inputs", {"inputs": np.ones((5, 3))}),
        ("z", {"z": np.ones((4, 1))}),
        ("z", {"z": np.full((5, 1), np.inf)}),
        ("inputs", {"inputs": np.full((5, 2), np.nan)}),
        ("dt", {"dt": 0.0}),
    ]
    for fld, change in cases:
        args = {"inputs": good_u, "z": good_z, "dt": 900.0, **change}
        with pytest.raises(InvalidInput) as err:
            flt.step(state, args["inputs"], args["z"], args["dt"])
        assert err.value.field == fld
    with pytest.raises(InvalidInput, match="does not match"):
        BatchEnKF(SPEC, 5).step(state, good_u, good_z, 900.0)


def test_bad_options_are_named():
    for kw, fld in (({"chunk_size": 0}, "chunk_size"), ({"gate": 2.0}, "gate")):
        with pytest.raises(InvalidInput) as err:
            BatchUKF(SPEC, 5, **kw)
        assert err.value.field == fld
    with pytest.raises(InvalidInput) as err:
        BatchEnKF(SPEC, 5, members=2)
    assert err.value.field == "members"


def test_too_few_samples_for_a_noise_estimate():
    with pytest.raises(InvalidInput, match="at least 3 samples") as err:
        rolling_noise_variance(np.ones((2, 4)))
    assert err.value.field == "z"
