"""The batched UKF as one compiled function per chunk of twins (JAX/XLA, on CPU or GPU).

`CompiledUKF` gives the same results as `BatchUKF` (NumPy, the reference; a test holds them to
1e-9 relative in float64) for models written against the array namespace
(``array_api=True``, see `livetwin.models.xp`). One call of the compiled step does everything
`BatchUKF.step` does for a chunk: sigma points, the model (its substep loop compiled, not
unrolled), the masked Kalman update, the outlier gate, re-opening and resets. The measurement
noise estimate (`BatchFilter.noise_before`/`noise_after`, a few array operations per step) and
the summary of the posterior (`make_result`) run in NumPy, shared with the NumPy backend.

* Chunks are padded to a power of two (at least 16 twins), so a fleet that grows compiles a
  handful of shapes, not one per size. Inside a chunk, on a CPU, the model runs on groups of
  about ``row_chunk`` (1,024) sigma rows one after another, so its substep loop works in cache;
  a forecast (`predict`) loops its steps inside those groups. On a CPU with several cores a
  chunk's step is one program split over one JAX CPU device per core (`_split_over_cores`),
  and no LAPACK kernel is called (`_factor`: they block on XLA's pool and deadlocked).
  Compiled steps are kept per model, spec layout, options,
  size and precision in this process (`compile_seconds` says what compiling cost,
  `compile_wait_s` what this filter waited for it: 0 when cached); set
  ``JAX_COMPILATION_CACHE_DIR`` to keep them on disk across processes.
* ``precision="float32"`` halves memory traffic; its accuracy cost is measured by
  ``livetwin bench calibrate`` (parameters against float64).
* ``dt`` is an argument of the compiled step, not a constant: a model must not branch on it.

JAX is an optional extra (``pip install 'livetwin[jax]'``); this module imports it on first use.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from livetwin.calibrate.batch import (
    _NOISE,
    BAD_COV,
    BAD_INNOVATION,
    BAD_MODEL,
    BAD_OUTLIERS,
    check_int,
)
from livetwin.calibrate.linalg import JITTERS
from livetwin.calibrate.results import StepResult, make_result
from livetwin.calibrate.spec import CalibrationSpec
from livetwin.calibrate.state import FilterState
from livetwin.calibrate.transforms import BOTH, LOWER, UPPER
from livetwin.calibrate.ukf import BatchUKF
from livetwin.errors import InvalidInput

PRECISIONS = ("float64", "float32")
MIN_CHUNK = 16
PREDICT_BLOCK = 10  # steps per compiled call of `CompiledUKF.predict`
CPU_CHUNK = 512  # twins per compiled call on a CPU
CPU_ROWS = 1024  # sigma rows per model call on a CPU: the model's intermediates stay in cache
DEVICE_CHUNK = 1 << 20
_COMPILING = threading.Lock()
_PER_STEP = ("means", "vars", "out_mean", "out_var", "reset", "bad", "pzz")


class CompiledUKF(BatchUKF):
    """`BatchUKF` with each chunk's step compiled by JAX (see the module docstring).

    Takes the options of `BatchUKF` (`executor` is not used: XLA runs the chunk),
    `precision` ("float64" or "float32") and `row_chunk` (sigma rows per model call inside a
    chunk; default 1,024 on a CPU, 0 = all at once on an accelerator). The model must be declared
    ``array_api=True``.
    """

    kind = "ukf"

    def __init__(
        self,
        spec: CalibrationSpec,
        n_twins: int,
        *,
        precision: str = "float64",
        chunk_size: int | None = None,
        row_chunk: int | None = None,
        threads: int | None = None,
        **options,
    ):
        jax = _jax()  # fails here, before any work, when JAX is not installed
        on_cpu = jax.default_backend() == "cpu"
        if chunk_size is None:  # cache-sized on a CPU, whole fleets on an accelerator
            chunk_size = CPU_CHUNK * len(_cores()) if on_cpu else DEVICE_CHUNK
        if row_chunk is None:  # an accelerator takes all rows at once
            row_chunk = CPU_ROWS if on_cpu else 0
        check_int("row_chunk", row_chunk, 0)
        super().__init__(spec, n_twins, chunk_size=chunk_size, **options)
        if threads is None:  # chunks one after another: XLA spreads each over the cores;
            threads = 1  # two chunks in flight on a 2-core CPU were seen to hang in XLA
        check_int("threads", threads, 1)
        self.threads = threads
        if precision not in PRECISIONS:
            raise InvalidInput(
                f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}",
                field="precision",
                fix="use float64 (default) or float32",
            )
        model = self.plan.model
        if not model.array_api:
            raise InvalidInput(
                f"model {model.name!r} is NumPy-only: the compiled backend needs a model "
                "written against the array namespace",
                field="backend",
                fix="use backend numpy, or port the model (@model(..., array_api=True), "
                "see livetwin.models.xp)",
            )
        self.precision = precision
        self._dtype = np.dtype(precision)
        self.compile_seconds: dict[int, float] = {}  # padded chunk size -> seconds it took
        self.compile_wait_s = 0.0  # what this filter waited for compiling (0 when cached)
        plan, w = self.plan, self.weights
        self._static = _Static(
            fn=model.fn,
            transient=model.transient,
            n_model_params=len(model.params),
            n_states=len(model.states),
            n_outputs=len(model.outputs),
            n_inputs=len(model.inputs),
            cal_idx=tuple(int(i) for i in plan.cal_idx),
            fixed_idx=tuple(int(i) for i in plan.fixed_idx),
            meas_idx=tuple(int(i) for i in plan.meas_idx),
            tf_kind=tuple(int(k) for k in plan.tf.kind),
            tf_lo=tuple(float(v) for v in plan.tf.lo),
            tf_hi=tuple(float(v) for v in plan.tf.hi),
            scale=w.scale,
            wm=tuple(float(v) for v in w.wm),
            wc=tuple(float(v) for v in w.wc),
            gate_table=tuple(float(v) for v in self.gate_table),
            has_q=plan.q is not None,
            max_rejects=self.max_rejects,
            reopen_after=self.reopen_after,
            precision=precision,
            row_chunk=row_chunk,
        )

    def step(
        self,
        state: FilterState,
        inputs: np.ndarray,
        z: np.ndarray,
        dt: float,
        *,
        t: float | None = None,
    ) -> tuple[FilterState, StepResult]:
        """As `BatchUKF.step`, each chunk in one compiled call."""
        inputs, z = self._check_step(state, inputs, z, dt)
        plan, n = self.plan, self.n_twins
        noise = {k: getattr(state, k) for k in _NOISE if getattr(state, k) is not None}
        new = replace(state, **{k: v.copy() for k, v in noise.items()})
        r, z = self.noise_before(new, z)
        per_twin = {**self._per_twin(state, r), "u": inputs, "z": z}
        dt_arg = self._dtype.type(dt)
        starts = range(0, n, self.chunk_size)
        sizes = [_padded(min(n, lo + self.chunk_size) - lo) for lo in starts]
        compiled = {size: self._compiled(size) for size in set(sizes)}  # here, not on threads

        def run(lo: int) -> dict:
            hi = min(n, lo + self.chunk_size)
            size = _padded(hi - lo)
            chunk = {k: _pad(v[lo:hi], size, self._dtype) for k, v in per_twin.items()}
            out = compiled[size](dt_arg, chunk)
            return {k: np.asarray(v)[: hi - lo] for k, v in out.items()}

        if len(starts) > 1 and self.threads > 1:
            parts = list(_pool(self.threads).map(run, starts))
        else:
            parts = [run(lo) for lo in starts]
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        floats = {
            k: out[k].astype(float)
            for k in ("mean", "cov", "out_mean", "out_var", "nis", "innov", "pzz")
        }
        new = replace(
            new,
            mean=floats["mean"],
            cov=floats["cov"],
            t=float(t) if t is not None else state.t + dt,
            steps=state.steps + 1,
            failed=state.failed | out["reset"],
            reason=np.where(out["reset"], out["bad"], state.reason).astype(np.int8),
            rejects=out["rejects"].astype(np.int32),
        )
        innov_var = self.noise_after(new, r, floats["innov"], floats["pzz"], out["updated"])
        result = make_result(
            plan,
            new.mean,
            np.diagonal(new.cov, axis1=1, axis2=2),
            floats["out_mean"],
            floats["out_var"],
            floats["nis"],
            out["updated"],
            out["reset"],
            out["bad"].astype(np.int8),
            floats["innov"],
            innov_var,
        )
        return new, result

    def predict(
        self, state: FilterState, inputs: np.ndarray, dt: float
    ) -> tuple[FilterState, StepResult]:
        """As `BatchFilter.predict`: per chunk of twins, blocks of `PREDICT_BLOCK` steps in one
        compiled loop (``lax.scan`` over `_ukf_step` with nothing measured), the filter state
        staying in XLA's memory from block to block."""
        inputs = self._check_inputs(inputs)
        self._check_state(state)
        if not (np.isfinite(dt) and dt > 0):
            raise InvalidInput(f"dt must be positive, got {dt}", field="dt", fix="pass dt > 0")
        plan, n, steps = self.plan, self.n_twins, len(inputs)
        none = np.full((n, len(plan.meas_idx)), np.nan)
        new = replace(
            state, **{k: getattr(state, k).copy() for k in _NOISE if getattr(state, k) is not None}
        )
        for _ in range(min(steps, 2)):  # unmeasured steps change only the bootstrap's history
            r, _ = self.noise_before(new, none)
        per_twin = self._per_twin(state, r)
        dt_arg = self._dtype.type(dt)
        parts = []
        for lo in range(0, n, self.chunk_size):
            hi = min(n, lo + self.chunk_size)
            size = _padded(hi - lo)
            compiled = self._compiled(size, PREDICT_BLOCK)
            chunk = {k: _pad(v[lo:hi], size, self._dtype) for k, v in per_twin.items()}
            carry = {k: chunk.pop(k) for k in ("mean", "cov", "rejects")}
            blocks = []
            for first in range(0, steps, PREDICT_BLOCK):
                u = inputs[first : first + PREDICT_BLOCK, lo:hi]
                active = np.arange(PREDICT_BLOCK) < len(u)
                u = _pad(np.swapaxes(u, 0, 1), size, self._dtype)  # twins first, then steps
                u = _pad(np.swapaxes(u, 0, 1), PREDICT_BLOCK, self._dtype)
                carry, out = compiled(dt_arg, chunk, carry, u, active)
                blocks.append({k: np.asarray(v)[: active.sum(), : hi - lo] for k, v in out.items()})
            out = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
            out.update({k: np.asarray(v)[: hi - lo] for k, v in carry.items()})
            parts.append(out)
        out = {k: np.concatenate([p[k] for p in parts], axis=int(k in _PER_STEP)) for k in parts[0]}
        reset, bad = out["reset"], out["bad"].astype(np.int8)
        reason, t = state.reason.copy(), state.t
        for k in range(steps):  # as `steps` unmeasured steps leave them
            reason = np.where(reset[k], bad[k], reason)
            t += dt
        new = replace(
            new,
            mean=out["mean"].astype(float),
            cov=out["cov"].astype(float),
            t=t,
            steps=state.steps + steps,
            failed=state.failed | reset.any(axis=0),
            reason=reason.astype(np.int8),
            rejects=out["rejects"].astype(np.int32),
        )
        pzz = out["pzz"].astype(float)
        nothing = np.full(pzz.shape, np.nan)
        result = make_result(
            plan,
            out["means"].astype(float),
            out["vars"].astype(float),
            out["out_mean"].astype(float),
            out["out_var"].astype(float),
            np.full(reset.shape, np.nan),
            np.zeros(reset.shape, dtype=bool),
            reset,
            bad,
            nothing,
            pzz + np.diagonal(r, axis1=1, axis2=2),
        )
        return new, result

    def _per_twin(self, state: FilterState, r: np.ndarray) -> dict[str, np.ndarray]:
        """The per-twin arrays of a compiled step besides its inputs and measurements."""
        plan = self.plan
        arrays = {
            "mean": state.mean,
            "cov": state.cov,
            "rejects": state.rejects.astype(np.int32),
            "fixed": plan.fixed,
            "prior_mean": plan.prior_mean,
            "prior_cov": plan.prior_cov,
            "r": r,
        }
        if plan.q is not None:
            arrays["q"] = plan.q
        return arrays

    def _compiled(self, size: int, block: int = 0):
        t0 = time.perf_counter()
        with _COMPILING:  # filters on several threads compile a shape once
            fn, seconds = _compile(self._static, size, block)
        self.compile_wait_s += time.perf_counter() - t0
        self.compile_seconds.setdefault((size, block) if block else size, seconds)
        return fn


def _padded(rows: int) -> int:
    """The compiled size for a chunk of `rows` twins: the next power of two, at least 16."""
    return max(MIN_CHUNK, 1 << (rows - 1).bit_length())


@lru_cache(maxsize=8)
def _pool(threads: int) -> ThreadPoolExecutor:
    """Threads that run chunks side by side (XLA releases the GIL while a chunk runs)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="livetwin-ukf")


def _pad(value: np.ndarray, size: int, dtype: np.dtype) -> np.ndarray:
    """Rows up to `size` by repeating the last twin (its results are dropped); floats in the
    filter's precision."""
    if value.dtype.kind == "f":
        value = value.astype(dtype, copy=False)
    if len(value) < size:
        value = np.concatenate([value, np.repeat(value[-1:], size - len(value), axis=0)])
    return value


# ---- the compiled step ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Static:
    """Everything a compiled step depends on besides array shapes: the cache key."""

    fn: object
    transient: bool
    n_model_params: int
    n_states: int
    n_outputs: int
    n_inputs: int
    cal_idx: tuple[int, ...]
    fixed_idx: tuple[int, ...]
    meas_idx: tuple[int, ...]
    tf_kind: tuple[int, ...]
    tf_lo: tuple[float, ...]
    tf_hi: tuple[float, ...]
    scale: float
    wm: tuple[float, ...]
    wc: tuple[float, ...]
    gate_table: tuple[float, ...]
    has_q: bool
    max_rejects: int
    reopen_after: int
    precision: str
    row_chunk: int


def _jax():
    """The `jax` module, with 64-bit floats enabled (float64 is the default precision) and, when
    it is imported here first, one CPU device per core (`_cores`)."""
    try:
        import jax
    except ImportError:
        raise InvalidInput(
            "the compiled (jax) calibration backend needs JAX, which is not installed",
            field="backend",
            fix="pip install 'livetwin[jax]', or use backend numpy",
        ) from None
    if not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    _one_device_per_core(jax)
    return jax


def _one_device_per_core(jax) -> None:
    """Ask JAX for one CPU device per core before it starts its backends (it cannot change
    later), unless the user chose a number (``JAX_NUM_CPU_DEVICES`` or XLA's
    ``--xla_force_host_platform_device_count``)."""
    from jax._src import xla_bridge

    chosen = "JAX_NUM_CPU_DEVICES" in os.environ or "device_count" in os.environ.get(
        "XLA_FLAGS", ""
    )
    if chosen or xla_bridge.backends_are_initialized() or jax.config.jax_num_cpu_devices > 0:
        return
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None  # not macOS
    jax.config.update("jax_num_cpu_devices", len(usable) if usable else os.cpu_count() or 1)


@lru_cache(maxsize=1)
def _cores() -> tuple:
    """The CPU devices a chunk is split over (`shard_map` along its twins: one part per core);
    a power of two of them so padded chunks divide evenly. One device (no split) when JAX runs
    on an accelerator, or when JAX had started before `_jax` could ask for more devices."""
    jax = _jax()
    if jax.default_backend() != "cpu":
        return tuple(jax.devices()[:1])
    devices = jax.devices("cpu")
    return tuple(devices[: 1 << (len(devices).bit_length() - 1)])


@lru_cache(maxsize=64)
def _compile(static: _Static, size: int, block: int = 0):
    """The compiled step of `static` for chunks of `size` twins (with `block` > 0: `block`
    unmeasured steps, `_ukf_predict`), and the seconds it took."""
    jax = _jax()
    dtype = np.dtype(static.precision)
    n, m = len(static.cal_idx) + static.n_states, len(static.meas_idx)

    def shape(*dims: int, kind: object = dtype):
        return jax.ShapeDtypeStruct((size, *dims), kind)

    spec = {
        "mean": shape(n),
        "cov": shape(n, n),
        "rejects": shape(kind=np.int32),
        "u": shape(static.n_inputs),
        "z": shape(m),
        "fixed": shape(len(static.fixed_idx)),
        "prior_mean": shape(n),
        "prior_cov": shape(n, n),
        "r": shape(m, m),
    }
    if static.has_q:
        spec["q"] = shape(n, n)
    t0 = time.perf_counter()
    scalar = jax.ShapeDtypeStruct((), dtype)
    if block:
        carry = {k: spec.pop(k) for k in ("mean", "cov", "rejects")}
        del spec["u"], spec["z"]
        u = jax.ShapeDtypeStruct((block, size, static.n_inputs), dtype)
        active = jax.ShapeDtypeStruct((block,), np.bool_)
        fn = lambda dt, a, c, u, on: _ukf_predict(static, dt, a, c, u, on)  # noqa: E731
        args = (scalar, spec, carry, u, active)
        twin_axis = (None, 0, 0, 1, None), (0, 1)  # arguments, results
    else:
        fn = lambda dt, a: _ukf_step(static, dt, a)  # noqa: E731
        args = (scalar, spec)
        twin_axis = (None, 0), 0
    compiled = _split_over_cores(fn, args, twin_axis, size).compile()
    return compiled, time.perf_counter() - t0


def _split_over_cores(fn, args: tuple, twin_axis: tuple, size: int):
    """`fn` lowered for `args`; on a CPU with several cores (`_cores`) as one program whose parts
    each take an equal share of the chunk's twins (``shard_map``: twins never interact inside a
    step, so the parts run side by side without talking). `twin_axis` gives, for the arguments
    and for the results, the axis of each that runs over twins (None: the same for all)."""
    jax = _jax()
    cores = _cores()
    if len(cores) == 1 or size % len(cores):
        return jax.jit(fn).lower(*args)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(cores), ("twins",))

    def spec(axis):
        return PartitionSpec() if axis is None else PartitionSpec(*[None] * axis, "twins")

    arg_specs, out_specs = (
        tuple(spec(a) for a in twin_axis[0]),
        jax.tree.map(spec, twin_axis[1], is_leaf=lambda a: a is None),
    )
    split = jax.shard_map(fn, mesh=mesh, in_specs=arg_specs, out_specs=out_specs)
    placed = [
        jax.tree.map(lambda a, p=p: a.update(sharding=NamedSharding(mesh, p)), arg)
        for arg, p in zip(args, arg_specs, strict=True)
    ]
    return jax.jit(split).lower(*placed)


def _ukf_predict(static: _Static, dt, a: dict, carry: dict, u, active):
    """`_ukf_step` with nothing measured over the steps of ``u[K, N, u]``; the filter state
    (`carry`: mean, cov, rejects) moves on where `active`. Returns the state and per step the
    posterior means and variances, output moments, resets and the model-output variances of the
    measured outputs.

    Unmeasured twins do not interact, so the loop over steps (``lax.scan``) runs inside the
    loop over groups of twins (`_group`, ``lax.map``): a group's filter state, sigma rows and
    model intermediates stay in cache for all K steps instead of streaming the chunk's through
    memory at every step."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    size, n = carry["mean"].shape[:2]
    group = _group(size, 2 * n + 1, static.row_chunk)
    whole = replace(static, row_chunk=0)  # inside a group the model takes all its rows at once

    def steps(part):
        a_g, carry_g, u_g = part

        def body(now: dict, step):
            u_k, on = step
            out = _ukf_step(whole, dt, {**a_g, **now, "u": u_k}, measured=False)
            later = {k: jnp.where(on, out[k], now[k]) for k in now}
            seen = {k: out[k] for k in ("out_mean", "out_var", "reset", "bad", "pzz")}
            seen.update(means=out["mean"], vars=jnp.diagonal(out["cov"], axis1=1, axis2=2))
            return later, seen

        return lax.scan(body, carry_g, (u_g, active))

    if group == size:
        return steps((a, carry, u))
    parts, block = size // group, u.shape[0]
    split = lambda x: x.reshape(parts, group, *x.shape[1:])  # noqa: E731
    groups_u = jnp.swapaxes(u.reshape(block, parts, group, -1), 0, 1)
    later, seen = lax.map(steps, (jax.tree.map(split, a), jax.tree.map(split, carry), groups_u))
    later = jax.tree.map(lambda x: x.reshape(size, *x.shape[2:]), later)
    seen = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(block, size, *x.shape[3:]), seen)
    return later, seen


def _ukf_step(static: _Static, dt, a: dict, measured: bool = True) -> dict:
    """`BatchUKF.step` for one chunk, traced: `ukf_chunk`, then the gate's bookkeeping,
    re-opening and resets of `BatchFilter.step`, as functional array code. Without `measured`
    (a forecast: `a` has no ``z``) the Kalman update is left out."""
    import jax.numpy as jnp

    dtype = a["mean"].dtype
    mean, cov, z, r = a["mean"], a["cov"], a.get("z"), a["r"]
    n_tw, n = mean.shape
    p = len(static.cal_idx)
    out: dict = {}
    obs = jnp.isfinite(z) if measured else None

    # `ukf_chunk`: sigma points (centre, +-state columns, +-parameter columns), model, update
    wm, wc = jnp.asarray(static.wm, dtype), jnp.asarray(static.wc, dtype)
    prior = cov + a["q"] if static.has_q else cov
    low, cov_ok = _cholesky(prior)
    spread = static.scale * jnp.swapaxes(low, 1, 2)
    centre = mean[:, None, :]
    sig = jnp.concatenate(
        [
            centre,
            centre + spread[:, p:],
            centre - spread[:, p:],
            centre + spread[:, :p],
            centre - spread[:, :p],
        ],
        axis=1,
    )
    y = _propagate_rows(static, sig, a["u"], a["fixed"], dt)
    finite = jnp.isfinite(y).all(axis=(1, 2))
    y = jnp.where((finite & cov_ok)[:, None, None], y, 0.0)
    mu = y[:, 0] + jnp.einsum("k,nkd->nd", wm[1:], y[:, 1:] - y[:, :1])
    dev = y - mu[:, None, :]
    wdev = dev * wc[:, None]
    zi = n + np.asarray(static.meas_idx)
    post = jnp.swapaxes(wdev[:, :, :n], 1, 2) @ dev[:, :, :n]
    out_var = jnp.einsum("nkd,nkd->nd", wdev[:, :, n:], dev[:, :, n:])
    if measured:
        cz = jnp.swapaxes(wdev, 1, 2) @ dev[:, :, zi]
        pzz = cz[:, zi]
        innov = z - mu[:, zi]
        gain, nu, nis, attempted, gated, s_ok = _masked_gain(static, cz, pzz, r, innov, obs)
        out.update(innov=jnp.where(obs, innov, jnp.nan), pzz=jnp.diagonal(pzz, axis1=1, axis2=2))
        mu = mu + (gain @ nu[:, :, None])[:, :, 0]
        post = post - gain[:, :n] @ jnp.swapaxes(cz[:, :n], 1, 2)
        out_var = out_var - jnp.einsum("nij,nij->ni", gain[:, n:], cz[:, n:])
    else:  # nothing measured: no gain; the update's terms are exact zeros, so skipped
        nis = jnp.full(n_tw, jnp.nan, dtype)
        attempted = gated = jnp.zeros(n_tw, bool)
        s_ok = ~attempted
        out.update(pzz=out_var[:, np.asarray(static.meas_idx)])
    post = 0.5 * (post + jnp.swapaxes(post, 1, 2))
    diag = jnp.diagonal(post, axis1=1, axis2=2)
    post_ok = jnp.isfinite(post).all(axis=(1, 2)) & (diag > 0).all(axis=1)
    bad = jnp.select(  # `fail_code`
        [~finite, ~(cov_ok & post_ok), ~s_ok], [BAD_MODEL, BAD_COV, BAD_INNOVATION], 0
    )

    # `BatchFilter.step`: rejects in a row, re-opening, resets
    new_mean, new_cov = mu[:, :n], post
    rejects = jnp.where(attempted, jnp.where(gated, a["rejects"] + 1, 0), a["rejects"])
    bad = jnp.where((bad == 0) & (rejects > static.max_rejects), BAD_OUTLIERS, bad)
    reset = bad != 0
    reopen = ~reset & attempted & gated & (rejects >= static.reopen_after)
    new_cov = jnp.where(reopen[:, None, None], new_cov + a["prior_cov"], new_cov)
    restart = jnp.where((bad == BAD_OUTLIERS)[:, None], new_mean, mean)
    prior_mean = a["prior_mean"]
    model_failed = (bad == BAD_MODEL)[:, None] & (jnp.arange(n) < p)[None, :]
    restart = jnp.where(model_failed, prior_mean, restart)
    restart = jnp.where(jnp.isfinite(restart), restart, prior_mean)
    out.update(
        mean=jnp.where(reset[:, None], restart, new_mean),
        cov=jnp.where(reset[:, None, None], a["prior_cov"], new_cov),
        rejects=jnp.where(reset, 0, rejects),
        out_mean=jnp.where(reset[:, None], jnp.nan, mu[:, n:]),
        out_var=jnp.where(reset[:, None], jnp.nan, out_var),
        nis=nis,
        updated=attempted & ~gated & ~reset,
        reset=reset,
        bad=bad.astype(jnp.int8),
    )
    return out


def _propagate_rows(static: _Static, sig, u, fixed, dt):
    """The model on all sigma points ``sig[N, k, n]`` -> ``[N, k, n + o]``, in groups of twins
    of about `static.row_chunk` sigma rows each, one group after another (``lax.map``): on a
    CPU the model's intermediates then stay in cache instead of streaming ``N * k`` rows through
    memory at every substep. A group is a power of two of twins and chunks are padded to powers
    of two, so groups divide the chunk exactly."""
    from jax import lax

    n_tw, k, n = sig.shape
    group = _group(n_tw, k, static.row_chunk)
    if group == n_tw:
        return _propagate(static, sig.reshape(n_tw * k, n), u, fixed, dt, k).reshape(n_tw, k, -1)

    def one(part):
        s, uu, ff = part
        return _propagate(static, s.reshape(group * k, n), uu, ff, dt, k)

    parts = n_tw // group
    split = (
        sig.reshape(parts, group, k, n),
        u.reshape(parts, group, u.shape[1]),
        fixed.reshape(parts, group, fixed.shape[1]),
    )
    return lax.map(one, split).reshape(n_tw, k, -1)


def _group(n_tw: int, k: int, row_chunk: int) -> int:
    """Twins per model call: the largest power of two with at most `row_chunk` sigma rows (at
    least one twin) that divides `n_tw`; all of them when `row_chunk` is 0."""
    if not row_chunk:
        return n_tw
    group = 1 << max(0, (row_chunk // k).bit_length() - 1)
    while n_tw % group:
        group //= 2
    return min(group, n_tw)


def _propagate(static: _Static, flat, u, fixed, dt, reps: int):
    """`propagate`: all rows of ``flat[M, n]`` through the model -> ``[M, n + o]``."""
    import jax.numpy as jnp

    p = len(static.cal_idx)
    columns = jnp.concatenate([_to_param(static, flat[:, :p]), jnp.repeat(fixed, reps, 0)], 1)
    order = np.argsort(np.array(static.cal_idx + static.fixed_idx, dtype=int))
    params = columns[:, order]
    inputs = jnp.repeat(u, reps, axis=0)
    states = flat[:, p:]
    if static.transient:
        new_states, outputs = static.fn(states, params, inputs, dt)
    else:
        new_states, outputs = states, static.fn(params, inputs, dt)
    rows = flat.shape[0]
    for arr, width, what in (
        (new_states, static.n_states, "states"),
        (outputs, static.n_outputs, "outputs"),
    ):
        if tuple(arr.shape) != (rows, width):
            raise InvalidInput(
                f"model returned {what} of shape {tuple(arr.shape)}, expected {(rows, width)}",
                field="model",
                fix="return one row per input row and one column per declared name",
            )
    return jnp.concatenate([flat[:, :p], new_states.astype(flat.dtype), outputs], axis=1)


def _to_param(static: _Static, theta):
    """`Transforms.to_param` with the kinds known at compile time."""
    import jax.numpy as jnp

    columns = []
    for j, kind in enumerate(static.tf_kind):
        t, lo, hi = theta[:, j], static.tf_lo[j], static.tf_hi[j]
        if kind == LOWER:
            t = jnp.exp(t) + lo
        elif kind == UPPER:
            t = hi - jnp.exp(-t)
        elif kind == BOTH:
            t = lo + (hi - lo) / (1.0 + jnp.exp(-t))
        columns.append(t)
    return jnp.stack(columns, axis=1)


def _cholesky(a):
    """`robust_cholesky`: lower factors and ok per twin; a failing twin is retried with growing
    jitter (only when one fails) and gets an identity factor if that fails too."""
    import jax.numpy as jnp
    from jax import lax

    a = 0.5 * (a + jnp.swapaxes(a, -1, -2))
    ok = jnp.isfinite(a).all(axis=(-2, -1))
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    a = jnp.where(ok[:, None, None], a, eye)
    low = _factor(a)
    good = jnp.isfinite(low).all(axis=(-2, -1))

    def repair(found):  # all jitters in one factorisation; each twin takes its first success
        low, good = found
        scale = jnp.mean(jnp.abs(jnp.diagonal(a, axis1=1, axis2=2)), axis=1)
        scale = jnp.where(scale == 0, 1.0, scale)
        jitter = jnp.asarray(JITTERS, a.dtype)[:, None, None, None] * scale[None, :, None, None]
        retry = _factor(a[None] + jitter * eye)  # [jitters, N, k, k]
        for level in range(len(JITTERS)):
            fine = ~good & jnp.isfinite(retry[level]).all(axis=(-2, -1))
            low = jnp.where(fine[:, None, None], retry[level], low)
            good = good | fine
        return jnp.where(good[:, None, None], low, eye), good

    low, good = lax.cond(good.all(), lambda found: found, repair, (low, good))
    return low, ok & good


def _factor(a):
    """Lower Cholesky factors of ``a[..., k, k]``, column by column as whole-batch array
    operations (NaN where a matrix is not positive definite, as LAPACK's ``potrf`` in JAX).

    Written out instead of ``jnp.linalg.cholesky``: JAX's CPU LAPACK kernel splits a large batch
    over XLA's thread pool and blocks until it is done, and with a chunk split over the cores
    (`_split_over_cores`) both parts then wait on each other's threads for ever (seen: the
    forecast hung). Plain array operations never block, and for the filter's small matrices
    they are as fast."""
    import jax.numpy as jnp

    k = a.shape[-1]
    rows_first = jnp.moveaxis(a, (-2, -1), (0, 1))  # [k, k, ...]: each entry a run over twins
    columns = []
    for j in range(k):
        v = rows_first[j:, j]
        for c in columns:
            v = v - c[j:] * c[j]
        column = v / jnp.sqrt(v[:1])
        columns.append(jnp.concatenate([jnp.zeros((j, *v.shape[1:]), a.dtype), column]))
    return jnp.moveaxis(jnp.stack(columns, axis=1), (0, 1), (-2, -1))


def _lower_inverse(low):
    """The inverse of lower-triangular ``low[..., k, k]`` by forward substitution, row by row as
    whole-batch array operations (no LAPACK call: see `_factor`)."""
    import jax.numpy as jnp

    k = low.shape[-1]
    eye = jnp.eye(k, dtype=low.dtype)
    rows = []
    for i in range(k):
        v = eye[i] + jnp.zeros(low.shape[:-2] + (k,), low.dtype)
        for j, row in enumerate(rows):
            v = v - low[..., i, j : j + 1] * row
        rows.append(v / low[..., i, i : i + 1])
    return jnp.stack(rows, axis=-2)


def _masked_gain(static: _Static, cz, pzz, r, innov, obs):
    """`masked_gain`: the gain from each twin's observed components, gated on its NIS."""
    import jax.numpy as jnp

    m = obs.shape[1]
    both = obs[:, :, None] & obs[:, None, :]
    s = jnp.where(both, pzz + r, 0.0) + jnp.eye(m, dtype=r.dtype) * (~obs)[:, None, :]
    low, ok = _cholesky(s)
    li = _lower_inverse(low)
    s_inv = jnp.swapaxes(li, -1, -2) @ li
    nu = jnp.where(obs, innov, 0.0)
    nis = jnp.einsum("ni,nij,nj->n", nu, s_inv, nu)
    dof = obs.sum(axis=1)
    attempted = dof > 0
    gated = attempted & ~(nis <= jnp.asarray(static.gate_table, r.dtype)[dof])
    use = attempted & ~gated & ok
    gain = ((cz * obs[:, None, :]) @ s_inv) * use[:, None, None]
    return gain, nu, jnp.where(attempted, nis, jnp.nan), attempted, gated & ok, ok
