"""What a filter step reports per twin: parameters, states and outputs with std and 95 % bands."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from livetwin.calibrate.transforms import Z95


@dataclass
class StepResult:
    """Arrays with one row per twin (a leading time axis after `stack`).

    Parameters (in their own units, see `Transforms.describe`): ``param_mean``/``param_std`` are
    the posterior mean and std; ``param_lower``/``param_upper`` the 2.5 %/97.5 % quantiles (the
    95 % band) and ``param_median`` the 50 % quantile. States: posterior mean and std. Outputs
    (measured and virtual sensors alike) at the end of the step: posterior mean and std of the
    noise-free output, band = mean -+ 1.96 std. ``nis`` is the normalised innovation squared
    (NaN when nothing was measured), ``updated`` whether measurements were used, ``reset``
    whether the twin was reset to its prior this step (``reason`` says why). ``innovation``
    and ``innovation_var`` are each measured component's innovation (measurement minus
    predicted output, NaN where not measured) and its predicted variance ``S`` (model spread
    plus measurement noise): what `livetwin.calibrate.fit` judges the model by.
    """

    params: tuple[str, ...]
    states: tuple[str, ...]
    outputs: tuple[str, ...]
    param_mean: np.ndarray
    param_std: np.ndarray
    param_median: np.ndarray
    param_lower: np.ndarray
    param_upper: np.ndarray
    state_mean: np.ndarray
    state_std: np.ndarray
    output_mean: np.ndarray
    output_std: np.ndarray
    output_lower: np.ndarray
    output_upper: np.ndarray
    nis: np.ndarray
    updated: np.ndarray
    reset: np.ndarray
    reason: np.ndarray
    innovation: np.ndarray
    innovation_var: np.ndarray

    def param(self, name: str) -> dict[str, np.ndarray]:
        """``{"mean", "std", "median", "lower", "upper"}`` of one parameter."""
        j = self.params.index(name)
        return {k: getattr(self, f"param_{k}")[..., j] for k in _PARAM_STATS}

    def output(self, name: str) -> dict[str, np.ndarray]:
        """``{"mean", "std", "lower", "upper"}`` of one output (measured or virtual)."""
        j = self.outputs.index(name)
        return {k: getattr(self, f"output_{k}")[..., j] for k in ("mean", "std", "lower", "upper")}


_PARAM_STATS = ("mean", "std", "median", "lower", "upper")


def make_result(
    plan, mean, var, out_mean, out_var, nis, updated, reset, reason, innov, innov_var
) -> StepResult:
    """Assemble a `StepResult` from the filter's theta-space posterior (`mean` and `var`, the
    diagonal of its covariance) and output moments; arrays ``[..., N, columns]`` (a leading
    step axis gives a stacked result)."""
    p = plan.n_params
    std = np.sqrt(np.maximum(var, 0.0))
    stats = plan.tf.describe(mean[..., :p], std[..., :p])
    out_std = np.sqrt(np.maximum(out_var, 0.0))
    return StepResult(
        params=plan.params,
        states=plan.model.states,
        outputs=plan.model.outputs,
        **{f"param_{k}": stats[k] for k in _PARAM_STATS},
        state_mean=mean[..., p:],
        state_std=std[..., p:],
        output_mean=out_mean,
        output_std=out_std,
        output_lower=out_mean - Z95 * out_std,
        output_upper=out_mean + Z95 * out_std,
        nis=nis,
        updated=updated,
        reset=reset,
        reason=reason,
        innovation=innov,
        innovation_var=innov_var,
    )


def stack(results: list[StepResult]) -> StepResult:
    """Results of consecutive steps with a leading time axis."""
    first = results[0]
    kw = {}
    for f in fields(StepResult):
        value = getattr(first, f.name)
        kw[f.name] = (
            value if isinstance(value, tuple) else np.stack([getattr(r, f.name) for r in results])
        )
    return StepResult(**kw)
