"""Model adapters: vectorised Python/ODE models described by names and resolved by name.

See `livetwin.models.base` for the interface, `livetwin.models.ode` for the integrators.
"""

from livetwin.models.base import Model, model, resolve_model
from livetwin.models.ode import rk4, rk4_linear, solve_stiff
from livetwin.models.simulate import FleetSimulator, Sample

__all__ = [
    "FleetSimulator",
    "Model",
    "Sample",
    "model",
    "resolve_model",
    "rk4",
    "rk4_linear",
    "solve_stiff",
]
