"""The compiled (JAX) UKF gives the NumPy UKF's results: same fleets with missing values,
outliers, re-opening and resets agree to 1e-9 relative in float64, step by step."""

from __future__ import annotations

import re

import numpy as np
import pytest

from livetwin.calibrate import BatchUKF, make_filter
from livetwin.calibrate.compiled import PREDICT_BLOCK, CompiledUKF, _compile, _cores, _group
from livetwin.errors import InvalidInput
from livetwin.examples.rollers import roller_fleet, roller_spec
from livetwin.examples.thermal import room, thermal_fleet, thermal_spec
from livetwin.models import model
from livetwin.models.xp import namespace

pytest.importorskip("jax")

RTOL = 1e-9


@model(
    params=("UA", "C"),
    inputs=("t_out", "heat"),
    outputs=("t_in", "heat_loss"),
    states=("t_in",),
    bounds={"UA": (0.0, None), "C": (0.0, None)},
    array_api=True,
)
def flaky_room(states, params, inputs, dt):
    """The room model, NaN for rows whose outdoor temperature is exactly -99 (a model failure)."""
    xp = namespace(states, params)
    new, out = room(states, params, inputs, dt)
    bad = (inputs[:, 0] == -99.0)[:, None]
    return xp.where(bad, xp.nan, new), xp.where(bad, xp.nan, out)


@model(
    params=("UA", "C"),
    inputs=("t_out", "heat"),
    outputs=("t_in", "heat_loss"),
    states=("t_in",),
)
def numpy_room(states, params, inputs, dt):
    """The room model, not declared array_api: NumPy only."""
    return room(np.asarray(states), np.asarray(params), np.asarray(inputs), dt)


def _close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Equal to RTOL relative to each twin's largest entry (covariances have zeros), NaN alike."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.array_equal(np.isnan(a), np.isnan(b)), what
    size = np.abs(np.nan_to_num(a)).reshape(len(a), -1)
    scale = np.where(size.max(axis=1) > 0, size.max(axis=1), 1.0)
    err = np.abs(np.nan_to_num(a - b)).reshape(len(a), -1).max(axis=1) / scale
    assert err.max() <= RTOL, f"{what}: relative difference {err.max():.2e}"


def _agree(spec, sim, steps: int, n: int, mask=None, row_chunk=None, **options) -> tuple:
    """Run both backends side by side on the same data; compare every step."""
    ref, fast = BatchUKF(spec, n, **options), CompiledUKF(spec, n, row_chunk=row_chunk, **options)
    a, b = ref.init(), fast.init()
    for k in range(steps):
        sample = sim.step()
        inputs, z = sample.inputs.copy(), sample.z.copy()
        if mask is not None:
            inputs, z = mask(k, inputs, z)
        a, ra = ref.step(a, inputs, z, sim.dt)
        b, rb = fast.step(b, inputs, z, sim.dt)
        for name in ("mean", "cov", "noise_var", "noise_hist", "noise_sum", "noise_weight"):
            if getattr(a, name) is not None:
                _close(getattr(a, name), getattr(b, name), f"step {k} {name}")
        for name in ("failed", "reason", "rejects", "noise_count"):
            if getattr(a, name) is not None:
                assert np.array_equal(getattr(a, name), getattr(b, name)), f"step {k} {name}"
        for name in ("param_mean", "param_std", "output_mean", "output_std", "nis", "innovation"):
            _close(getattr(ra, name), getattr(rb, name), f"step {k} {name}")
        for name in ("updated", "reset", "reason"):
            assert np.array_equal(getattr(ra, name), getattr(rb, name)), f"step {k} {name}"
    return a, fast


def test_thermal_fleet_with_gaps_outliers_and_resets_agrees():
    """Estimated noise, missing values, a garbage twin (gated, re-opened, then reset), a model
    that fails for some twins, and chunks padded to fixed sizes (37 twins in chunks of 16)."""
    n = 37
    sim = thermal_fleet(n, seed=5)
    spec = thermal_spec(sim.step().z[:, 0], meas_noise=None)
    spec = type(spec)(**{**spec.__dict__, "model": flaky_room})

    def mask(k, inputs, z):
        z[np.random.default_rng(k).random(n) < 0.2] = np.nan  # 20 % missing
        if k >= 20:
            z[3] = 1e4  # garbage from step 20: gated, re-opened, then reset
        if k in (30, 31):
            inputs[11, 0] = -99.0  # the model fails for twin 11
        return inputs, z

    state, fast = _agree(spec, sim, 60, n, mask=mask, chunk_size=16)
    assert state.failed[3] and state.reason[3] == 4  # outliers
    assert state.failed[11] and state.reason[11] == 1  # model failure
    assert state.failed.sum() == 2
    assert set(fast.compile_seconds) == {16}


@pytest.mark.parametrize(
    ("n", "options"),
    [
        (37, {"chunk_size": 16, "row_chunk": 20}),  # groups of 2 twins; 37 = 16 + 16 + 5 padded
        (5, {"row_chunk": 28}),  # fewer twins than a chunk: 5 padded to 16, groups of 4
        (3, {"row_chunk": 5}),  # fewer rows than one twin's sigma points: groups of 1 twin
        (40, {"chunk_size": 64, "row_chunk": 1024}),  # one group: the whole padded chunk
    ],
)
def test_sigma_rows_in_groups_agree(n, options):
    """The model runs on groups of sigma rows inside a compiled chunk (`row_chunk`): fleets that
    are not a multiple of the chunk, smaller than one chunk or one group, padded, all agree."""
    sim = thermal_fleet(n, seed=7)
    spec = thermal_spec(sim.step().z[:, 0], meas_noise=None)

    def mask(k, inputs, z):
        z[np.random.default_rng(k).random(n) < 0.2] = np.nan
        return inputs, z

    _agree(spec, sim, 12, n, mask=mask, **options)


def test_group_sizes():
    """Twins per model call: a power of two dividing the padded chunk, within `row_chunk` rows."""
    assert _group(512, 31, 1024) == 32  # 992 rows
    assert _group(16, 7, 20) == 2
    assert _group(16, 7, 5) == 1  # one twin's rows even when they exceed row_chunk
    assert _group(16, 7, 10_000) == 16  # never more than the chunk
    assert _group(64, 23, 0) == 64  # 0: all rows at once (an accelerator)
    with pytest.raises(InvalidInput) as err:
        CompiledUKF(thermal_spec(20.0), 4, row_chunk=-1)
    assert err.value.field == "row_chunk"


def test_roller_lines_with_given_noise_agree():
    n = 12
    sim = roller_fleet(n, seed=2)
    spec = roller_spec(sim.step().z)

    def mask(k, inputs, z):
        z[k % n, k % 4] = np.nan
        return inputs, z

    _agree(spec, sim, 8, n, mask=mask)


def test_compiled_steps_are_reused_by_a_new_filter():
    sim = thermal_fleet(20, seed=1)
    spec = thermal_spec(20.0)
    first = CompiledUKF(spec, 20)
    state = first.init()
    sample = sim.step()
    first.step(state, sample.inputs, sample.z, sim.dt)
    hits = _compile.cache_info().hits
    second = CompiledUKF(spec, 25)  # 25 twins pad to 32, like 20: the same compiled step
    second.step(second.init(), np.tile(sample.inputs[:1], (25, 1)), np.full((25, 1), 20.0), 900.0)
    assert _compile.cache_info().hits == hits + 1
    assert second.compile_seconds == first.compile_seconds


def test_compiled_steps_split_chunks_over_the_cores_and_never_call_lapack():
    """A chunk runs as one program split over one CPU device per core; it must not call JAX's
    LAPACK kernels, which block on XLA's thread pool: two parts of a chunk did that and waited
    on each other for ever (the forecast hung)."""
    sim = roller_fleet(40, seed=1)
    filt = CompiledUKF(roller_spec(sim.step().z), 40)
    for compiled, arg in ((filt._compiled(64), 1), (filt._compiled(64, PREDICT_BLOCK), 2)):
        calls = re.findall(r'custom_call_target="([^"]+)"', compiled.as_text())
        assert not [c for c in calls if "lapack" in c], calls
        mean_sharding = compiled.input_shardings[0][arg]["mean"]  # arg: the dict holding it
        assert len(mean_sharding.device_set) == len(_cores())
    if len(_cores()) == 1:
        pytest.skip("one CPU device here (one core, or JAX started before livetwin asked)")


def test_float32_is_close_to_float64():
    n = 30
    sim = thermal_fleet(n, seed=3)
    spec = thermal_spec(sim.step().z[:, 0])
    f64, f32 = CompiledUKF(spec, n), CompiledUKF(spec, n, precision="float32")
    a, b = f64.init(), f32.init()
    for _ in range(80):
        s = sim.step()
        a, ra = f64.step(a, s.inputs, s.z, sim.dt)
        b, rb = f32.step(b, s.inputs, s.z, sim.dt)
    rel = np.abs(rb.param_mean / ra.param_mean - 1)
    assert np.median(rel) < 1e-3 and not b.failed.any()


def test_backend_choice_and_errors():
    sim = thermal_fleet(4, seed=1)
    spec = thermal_spec(sim.step().z[:, 0])
    assert isinstance(make_filter(spec, 4), CompiledUKF)  # default: compiled when it can
    assert type(make_filter(spec, 4, backend="numpy")) is BatchUKF
    assert make_filter(spec, 4, estimator="enkf").kind == "enkf"
    numpy_only = type(spec)(**{**spec.__dict__, "model": numpy_room})
    assert type(make_filter(numpy_only, 4)) is BatchUKF
    with pytest.raises(InvalidInput) as err:
        CompiledUKF(numpy_only, 4)
    assert err.value.field == "backend" and "array_api" in err.value.fix
    with pytest.raises(InvalidInput) as err:
        make_filter(spec, 4, estimator="enkf", backend="jax")
    assert err.value.field == "backend"
    with pytest.raises(InvalidInput) as err:
        make_filter(spec, 4, backend="numpy", precision="float32")
    assert err.value.field == "precision"
    with pytest.raises(InvalidInput) as err:
        make_filter(spec, 4, backend="cuda")
    assert err.value.field == "backend"


def test_numpy_arrays_stay_numpy_while_another_thread_imports_jax(monkeypatch):
    """The demo's simulator steps the model while a calibration thread is importing JAX: a
    half-imported module (no `jax.Array` yet) must not fail a NumPy call."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "jax", types.ModuleType("jax"))
    assert namespace(np.zeros(2), np.ones(3)) is np


@pytest.mark.parametrize(
    ("n", "steps", "chunk_size", "row_chunk"),
    [(37, 23, 16, None), (5, 10, 512, None), (3, 1, 512, None), (37, 12, 64, 1), (37, 12, 64, 20)],
)
def test_predict_agrees_with_unmeasured_steps(n, steps, chunk_size, row_chunk):
    """`CompiledUKF.predict` (blocks of steps in one compiled loop, padded in steps and twins;
    the steps looped inside groups of one or a few twins with a small `row_chunk`) gives the
    NumPy filter's unmeasured steps, a model failure and its reset included."""
    sim = thermal_fleet(n, seed=9)
    spec = thermal_spec(sim.step().z[:, 0], meas_noise=None)
    spec = type(spec)(**{**spec.__dict__, "model": flaky_room})
    ref = BatchUKF(spec, n)
    fast = CompiledUKF(spec, n, chunk_size=chunk_size, row_chunk=row_chunk)
    warm = sim.run(15)
    state, _ = ref.run(ref.init(t=0.0), warm.inputs, warm.z, sim.dt)
    inputs = sim.run(steps).inputs
    inputs[min(4, steps - 1), n - 1, 0] = -99.0  # the last twin's model fails once
    a, ra = ref.predict(state, inputs, sim.dt)
    b, rb = fast.predict(state, inputs, sim.dt)
    for name in ("mean", "cov", "noise_var", "noise_hist", "noise_sum", "noise_weight"):
        _close(getattr(a, name), getattr(b, name), name)
    for name in ("failed", "reason", "rejects", "noise_count", "steps"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.t == b.t and a.failed[n - 1] and a.failed.sum() == 1
    for name in ("param_mean", "param_std", "param_lower", "state_mean", "output_mean",
                 "output_std", "innovation_var"):  # fmt: skip
        _close(getattr(ra, name).reshape(-1, n).T, getattr(rb, name).reshape(-1, n).T, name)
    for name in ("updated", "reset", "reason", "nis", "innovation"):
        assert np.array_equal(getattr(ra, name), getattr(rb, name), equal_nan=True), name
    assert rb.param_mean.shape == (steps, n, len(ref.plan.params))


def test_predict_checks_its_inputs():
    spec = thermal_spec(20.0)
    for filt in (BatchUKF(spec, 4), CompiledUKF(spec, 4)):
        state = filt.init()
        for bad in (np.zeros((4, 2)), np.zeros((0, 4, 2)), np.full((3, 4, 2), np.nan)):
            with pytest.raises(InvalidInput) as err:
                filt.predict(state, bad, 900.0)
            assert err.value.field == "inputs"
