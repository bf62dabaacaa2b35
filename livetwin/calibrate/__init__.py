"""Calibration: batched filters (UKF, EnKF) that estimate model parameters and states of whole
fleets of twins from measurements, with honest uncertainty. Pure computation, no I/O.
"""

from livetwin.calibrate.backends import BACKENDS, choose_backend, jax_installed, make_filter
from livetwin.calibrate.batch import chunk_pool
from livetwin.calibrate.enkf import BatchEnKF
from livetwin.calibrate.noise import rolling_noise_variance
from livetwin.calibrate.results import StepResult
from livetwin.calibrate.spec import CalibrationSpec
from livetwin.calibrate.state import FAILURE_REASONS, FilterState
from livetwin.calibrate.transforms import Transforms
from livetwin.calibrate.ukf import BatchUKF, SigmaWeights

__all__ = [
    "BACKENDS",
    "FAILURE_REASONS",
    "BatchEnKF",
    "BatchUKF",
    "CalibrationSpec",
    "FilterState",
    "SigmaWeights",
    "StepResult",
    "Transforms",
    "choose_backend",
    "chunk_pool",
    "jax_installed",
    "make_filter",
    "rolling_noise_variance",
]
