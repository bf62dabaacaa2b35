"""A type's derived values and rules over a forecast: the forecast's mean fed to an engine of
its own (pure: nothing live is touched), step by step, as observations.

Each twin first gets one observation of its current values at the fork time, then one per model
step: the inputs, the measured outputs' means and what calibration would publish (parameters and
virtual sensors with std and band). Windows start at the fork. Rule transitions are collected as
alarm stories (raised, cleared, with the values that raised them).
"""

from __future__ import annotations

import numpy as np

from livetwin.calibrate.results import StepResult
from livetwin.engine import rules
from livetwin.engine.batch import Batch
from livetwin.engine.engine import Engine
from livetwin.spec.types import CompiledType


class Outcome:
    """Derived values and alarms of N twins of `ctype` over a forecast, fed in chunks of steps."""

    def __init__(
        self,
        ctype: CompiledType,
        twins: list[str],
        start: np.ndarray,
        current: dict[str, np.ndarray],
        dt_ms: int,
    ):
        self.ctype, self.twins, self.start, self.dt_ms = ctype, list(twins), start, dt_ms
        self.engine = Engine()
        self.engine.define_type(ctype)
        self.rule_state = rules.RuleState()
        self._alarms = rules.AlarmStories()
        names = tuple(n for n in ctype.inputs if n in current)
        values = np.array([current[n] for n in names]).reshape(len(names), len(twins))
        self._apply(Batch(ctype.name, self.twins, start.astype(np.int64), names, values))

    @property
    def alarms(self) -> list[dict]:
        """The alarms the forecast raised (and cleared), in the order they were raised."""
        return self._alarms.stories

    @property
    def derived(self) -> tuple[str, ...]:
        return self.ctype.derived_order

    def feed(self, first: int, results: StepResult, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Apply steps ``first ..`` of a forecast (`inputs`: name -> ``[steps, N]``); returns the
        derived values after each step, ``[steps, N, derived]``."""
        plan = self.ctype.calibration
        steps, n = results.output_mean.shape[:2]
        columns: dict[str, np.ndarray] = dict(inputs)
        outputs = list(results.outputs)
        for name in plan.measured:
            columns[name] = results.output_mean[..., outputs.index(name)]
        for name in plan.parameters:
            for suffix, stat in zip(("", "_std", "_lower", "_upper"), _STATS, strict=True):
                columns[name + suffix] = results.param(name)[stat]
        for name in plan.virtual:
            for suffix, stat in zip(("", "_std", "_lower", "_upper"), _STATS, strict=True):
                columns[name + suffix] = results.output(name)[stat]
        names = tuple(name for name in columns if name in self.ctype.inputs)
        values = np.stack([np.asarray(columns[name], float).reshape(steps * n) for name in names])
        ends = self.start[None, :] + (first + 1 + np.arange(steps))[:, None] * self.dt_ms
        batch = Batch(
            self.ctype.name,
            self.twins * steps,
            ends.reshape(-1).astype(np.int64),
            names,
            np.where(np.isfinite(values), values, np.nan),
        )
        applied = self._apply(batch)
        index = self.ctype.column_index()
        derived = [index[d] for d in self.derived]
        return applied.values[:, derived].reshape(steps, n, len(derived))

    def _apply(self, batch: Batch):
        applied = self.engine.apply(batch)
        for t in rules.evaluate(self.rule_state, self.ctype, applied, _nothing_known):
            self._alarms.add(t)
        return applied


_STATS = ("mean", "std", "lower", "upper")


def _nothing_known(type_name: str, uids: np.ndarray, names: list[str]) -> None:
    """Rule evaluation's reader of twins it has not seen: every twin here starts in this engine
    with its first observation, so there is nothing else to read."""
    return None
