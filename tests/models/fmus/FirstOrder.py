"""Test FMU (pythonfmu, FMI 2.0 co-simulation): dx/dt = (K*u - x)/tau, x(0) = x0, output x.

Each `do_step` uses the exact solution, so results do not depend on the step size. A step
longer than `max_step` is refused (fmi2Discard), to test the adapter's step-halving retry.
"""

import math

from pythonfmu import Fmi2Causality, Fmi2Slave, Fmi2Variability, Real


class FirstOrder(Fmi2Slave):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.description = "first-order lag"
        self.K = 2.0
        self.tau = 1.0
        self.x0 = 0.0
        self.max_step = 1e9
        self.u = 1.0
        self.x = 0.0
        for name in ("K", "tau", "x0", "max_step"):
            self.register_variable(
                Real(name, causality=Fmi2Causality.parameter, variability=Fmi2Variability.tunable)
            )
        self.register_variable(Real("u", causality=Fmi2Causality.input))
        self.register_variable(Real("x", causality=Fmi2Causality.output))

    def exit_initialization_mode(self):
        self.x = self.x0

    def do_step(self, current_time, step_size):
        if step_size > self.max_step:
            return False
        target = self.K * self.u
        self.x = target + (self.x - target) * math.exp(-step_size / self.tau)
        return True
