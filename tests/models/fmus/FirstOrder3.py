"""Test FMU (pythonfmu3, FMI 3.0 model exchange and co-simulation): dx/dt = (K*u - x)/tau,
x(0) = x0, output x. Co-simulation steps use the exact solution.
"""

import math

from pythonfmu3 import (
    CoSimulation,
    Float64,
    Fmi3Causality,
    Fmi3SlaveBase,
    Fmi3Variability,
    ModelExchange,
)


class FirstOrder3(Fmi3SlaveBase, ModelExchange, CoSimulation):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.description = "first-order lag (FMI 3.0)"
        self.time = 0.0
        self.K = 2.0
        self.tau = 1.0
        self.x0 = 0.0
        self.u = 1.0
        self.x = 0.0
        self.der_x = 0.0
        continuous = Fmi3Variability.continuous
        self.register_variable(Float64("time", causality=Fmi3Causality.independent))
        tunable = Fmi3Variability.tunable
        for name in ("K", "tau", "x0"):
            self.register_variable(
                Float64(name, causality=Fmi3Causality.parameter, variability=tunable)
            )
        self.register_variable(Float64("u", causality=Fmi3Causality.input))
        self.register_variable(Float64("x", causality=Fmi3Causality.output, variability=continuous))
        x_vr = len(self.vars) - 1  # value references count from 0 in registration order
        self.register_variable(
            Float64("der_x", causality=Fmi3Causality.local, variability=continuous, derivative=x_vr)
        )

    def exit_initialization_mode(self):
        self.x = self.x0

    def get_continuous_state_derivatives(self):
        self.der_x = (self.K * self.u - self.x) / self.tau
        return [self.der_x]

    def do_step(self, current_time, step_size):
        target = self.K * self.u
        self.x = target + (self.x - target) * math.exp(-step_size / self.tau)
        self.time = current_time + step_size
        return True
